"""The package's layout: imports run one way (no cycle, counting imports inside functions), module names
are unique, and the command line is derived from the config dataclasses, so neither can drift."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import plaindet

PACKAGE = Path(plaindet.__file__).parent


def module_name(path: Path) -> str:
    parts = ("plaindet", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth of its code (module level, inside
    functions, under ``if TYPE_CHECKING``). ``from a.b import c`` counts as importing ``a.b.c`` when
    that is a module, else ``a.b``; the package ``plaindet`` itself (its ``__init__``) counts too."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    # The check below passes only if this one can fail.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_have_no_cycle():
    graph = import_graph()
    assert graph["plaindet.data.formats"] >= {"plaindet.data.coco", "plaindet.data.yolo", "plaindet.data.voc"}
    assert "plaindet.models.plaindet" in graph["plaindet.models.factory"]
    assert cycles(graph) == []


def test_the_registry_and_the_shared_data_rules_import_no_model_or_reader():
    graph = import_graph()
    assert not {m for m in graph["plaindet.models.registry"] if m.startswith("plaindet.models.")}
    assert not graph["plaindet.data.rules"] & {"plaindet.data.coco", "plaindet.data.yolo", "plaindet.data.voc", "plaindet.data.formats"}


def test_no_two_modules_share_a_name():
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


@pytest.mark.parametrize("command, configs", [("train", ["TrainConfig"]), ("distill", ["TrainConfig", "DistillConfig"])])
def test_training_options_are_the_config_fields(command, configs):
    """Every command-line field of the config is an option with the field's type and help, and no option
    exists that the config doesn't have (besides --config and --set)."""
    import typer.main

    from plaindet.cli import app
    from plaindet.engine.distill import DistillConfig
    from plaindet.engine.train_config import TrainConfig

    classes = {"TrainConfig": TrainConfig, "DistillConfig": DistillConfig}
    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands[command].params}
    expected = {f.name: f for name in configs for f in dataclasses.fields(classes[name]) if f.metadata.get("cli")}
    assert set(params) - {"config", "set_"} == set(expected)
    for name, f in expected.items():
        option = params[name]
        assert option.help.startswith(f.metadata["help"] + "  [default: "), name
        assert option.default is None  # None unless given: the config's default applies
        assert f"--{name.replace('_', '-')}" in option.opts
    # Fields without a command-line option (lists, mappings) are reachable through --set.
    assert {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("cli")} == {"step_epochs", "scales", "model_overrides", "augment"}


def test_benchmark_scripts_import_only_what_exists():
    """The benchmarks are scripts no test runs whole (they take minutes to hours): at least every
    ``from plaindet... import name`` in them, at any depth, names something that exists."""
    import importlib

    scripts = sorted((PACKAGE.parents[1] / "benchmarks").glob("*.py"))
    if not scripts:
        pytest.skip("no benchmarks folder beside the package (an installed copy)")
    missing = []
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plaindet"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        missing.append(f"{script.name}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("plaindet") and importlib.util.find_spec(alias.name) is None:
                        missing.append(f"{script.name}: {alias.name}")
    assert missing == []
