"""Every code block of README.md runs, so the README cannot rot.

The blocks run in a temporary folder holding the files they name (``my_data/``, ``data.yaml``,
``street.jpg``, ...: small shapes datasets and images made here), with a local Hugging Face cache in
which ``openai/clip-vit-base-patch16`` is a randomly initialized ViT-B/16 (nothing is downloaded).

- ``python`` blocks run in order in one namespace, like a notebook.
- ``bash`` blocks: each ``plaindet ...`` command runs through the CLI in this process, each
  ``torchrun ...`` command as a subprocess, and must exit with code 0. The README's two set-up
  commands are checked differently: the demo command's ``plaindet demo`` runs, and the test command
  must be the one ``.ci/run`` runs.

What is changed, so that the suite stays fast (and nothing else): every training run stops after
two optimizer steps at 64 px on a built-in shapes set (``--data shapes``) of 24 images (``_Run``
is capped below; ``torchrun`` commands get ``--max-steps 2
--image-size 64 --batch-size 2`` appended), the demo runs at toy size, ``plaindet benchmark`` gets
``--size 64 --runs 1 --warmup 0``, and in the two-node ``torchrun`` example both nodes run on this
machine (``HOST0`` is 127.0.0.1 on a free port, one process per node instead of 8).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def code_blocks(language: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block of ``language`` in the README."""
    text = README.read_text()
    blocks = []
    for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        blocks.append((text[: m.start()].count("\n") + 2, m.group(1)))
    return blocks


def commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block, as argument lists (continuations joined, comments dropped)."""
    return [shlex.split(line, comments=True) for line in code.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with every file the README's blocks name."""
    import torch
    from safetensors.torch import save_file

    from plaindet.data.convert import convert_dataset
    from plaindet.data.shapes import ensure_shapes
    from plaindet.models.vit import ViT, clip_config

    work = tmp_path_factory.mktemp("readme")
    data = ensure_shapes(work / "my_data", train=8, val=4, seed=1)
    shutil.copytree(data, work / "my_coco")
    convert_dataset(data, "yolo", work / "yolo")
    spec = yaml.safe_load((work / "yolo" / "data.yaml").read_text())
    (work / "data.yaml").write_text(yaml.safe_dump({"path": "yolo", **spec}))
    images = sorted((data / "valid").glob("*.jpg"))
    for name, image in zip(("street.jpg", "img1.jpg", "img2.jpg"), images):
        shutil.copy(image, work / name)
    (work / "more_images").mkdir()
    for image in images[:3]:
        shutil.copy(image, work / "more_images" / image.name)
    # The Hub's openai/clip-vit-base-patch16, as a snapshot in a local cache: a random CLIP ViT-B/16.
    snapshot = work / "hub" / "models--openai--clip-vit-base-patch16" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    save_file(ViT(clip_config(768, 12, 12)).state_dict(), str(snapshot / "model.safetensors"))
    return work


@pytest.fixture
def readme_env(workdir, monkeypatch):
    """Run in ``workdir``, offline, with the local Hub cache, training capped and the demo at toy size."""
    import huggingface_hub.constants

    import plaindet.demo
    from plaindet.engine import train as train_module

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(workdir / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workdir / "hub"))
    original = train_module._Run.__init__

    def capped(self, cfg, datasets, world):
        small = dict(shapes_train=16, shapes_val=4, shapes_test=4)  # a built-in shapes set of 24 images, not 2,400
        original(self, dataclasses.replace(cfg, max_steps=2, image_size=64, batch_size=2, **small), datasets, world)

    monkeypatch.setattr(train_module._Run, "__init__", capped)
    toy = functools.partial(plaindet.demo.DemoSettings, train_images=8, val_images=4, test_images=4, epochs=1, batch_size=4, samples_to_draw=1)
    monkeypatch.setattr(plaindet.demo, "DemoSettings", toy)
    return workdir


def run_plaindet(args: list[str]) -> None:
    from typer.testing import CliRunner

    from plaindet.cli import app

    if args[:1] == ["benchmark"]:
        args = [*args, "--size", "64", "--runs", "1", "--warmup", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"plaindet {shlex.join(args)}:\n{result.output}\n{result.exception!r}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args: list[str], cwd: Path) -> None:
    budget = ["--max-steps", "2", "--image-size", "64", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if "--nnodes" not in args:
        proc = subprocess.run([*launcher, *args[1:], *budget], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return
    # Both nodes on this machine: HOST0 is loopback, one process per node.
    endpoint = f"127.0.0.1:{free_port()}"
    line = " ".join(args[1:]).replace("HOST0:29500", endpoint).replace("--nproc-per-node 8", "--nproc-per-node 1")
    nodes = [subprocess.Popen([*launcher, *shlex.split(line.replace("--node-rank 0", f"--node-rank {rank}")), *budget],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]  # fmt: skip
    for node in nodes:
        out, _ = node.communicate(timeout=600)
        assert node.returncode == 0, f"{shlex.join(args)}:\n{out}"


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(code_blocks("python")) >= 3 and len(code_blocks("bash")) >= 4
    assert {m.group(1) for m in re.finditer(r"^```(\w*)$", README.read_text(), re.MULTILINE)} <= {"python", "bash", ""}


def test_the_readmes_pictures_and_local_links_exist():
    targets = re.findall(r"\]\(([^)#\s]+)\)", README.read_text())
    local = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))]
    assert "docs/serve_page.jpg" in local
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_python_blocks_run(readme_env):
    namespace: dict = {}
    for line, code in code_blocks("python"):
        exec(compile(code, f"README.md, the block at line {line}", "exec"), namespace)
    # The blocks did what they say.
    assert (readme_env / "model-int8.onnx").is_file() and (readme_env / "runs" / "exp" / "best.safetensors").is_file()
    assert type(namespace["deployable"]).__name__ == "PlainDet" and namespace["metrics"].num_images == 4


def test_bash_blocks_run(readme_env):
    ran = 0
    for _, code in code_blocks("bash"):
        for args in commands(code):
            if args[0] == "python3":  # the set-up commands: checked below
                continue
            if args[0] == "plaindet":
                run_plaindet(args[1:])
            elif args[0] == "torchrun":
                run_torchrun(args, readme_env)
            else:
                pytest.fail(f"the README runs {args[0]!r}, which this test does not know how to run")
            ran += 1
    assert ran >= 20
    assert (readme_env / "runs" / "exp" / "best-int8-static.onnx").is_file() and (readme_env / "runs" / "ddp2" / "last.safetensors").is_file()


def test_the_two_set_up_commands(readme_env):
    demo, tests = (code for _, code in code_blocks("bash")[:2])
    assert demo.strip().endswith("&& .venv/bin/plaindet demo")
    run_plaindet(["demo"])
    assert (readme_env / "plaindet-demo" / "summary.json").is_file()
    # CI runs exactly the README's test command.
    assert tests.strip() in (ROOT / ".ci" / "run").read_text()
