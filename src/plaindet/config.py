"""Strict, typed overrides of dataclass configs.

Dataclasses are the single source of defaults. Overrides come from Python keyword arguments, the
command line or YAML; all go through :func:`apply_overrides`, which rejects unknown keys with a
close-match suggestion and checks types, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any

from plaindet.errors import ConfigError


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {where} key {key!r}{hint}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and where lossless, convert) ``value`` against a field's type annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return apply_overrides(annotation(), value, where=key)
        raise ConfigError(f"{key}: expected a mapping for {annotation.__name__}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, str) and isinstance(value, annotation) and not isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def apply_overrides(config: Any, overrides: dict[str, Any], where: str = "config") -> Any:
    """A copy of dataclass ``config`` with ``overrides`` applied (nested dataclasses take dicts)."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise _unknown(key, sorted(fields), where)
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value, where=f"{where}.{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return dataclasses.replace(config, **changes)  # re-runs the config's own checks (__post_init__)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config; tuples become lists."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a dataclass config from :func:`to_dict`'s output, strictly. A field in the class's
    ``ADDED_FIELDS`` (``{name: value}``: fields added with a default that changes behaviour) that
    ``data`` lacks takes that value, what a file written before the field existed meant."""
    data = {**getattr(cls, "ADDED_FIELDS", {}), **data}
    return apply_overrides(cls(), data, where=cls.__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Fields with help text, and command-line options derived from them


def setting(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING, cli: bool = True) -> Any:
    """A dataclass field with its ``help`` text; ``cli=False`` keeps it out of the derived command-line
    options (lists and mappings: set them with ``--set key=value`` or a YAML config)."""
    metadata = {"help": help, "cli": cli}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_name(field_name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def cli_parameters(cls: type, *, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list:
    """``inspect.Parameter`` objects for a typer command: one ``--option`` per field of dataclass ``cls``
    marked for the command line, typed from its annotation, with its help text and its default shown.

    Every option's value is ``None`` unless given, so a command can tell what the user set (and
    layer it over a YAML config or a resumed run's settings); :func:`given_options` collects them.
    ``defaults`` replaces the default shown for some fields (a command whose own default differs).
    """
    import inspect

    import typer

    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.metadata.get("cli", False):
            continue
        kind = _scalar_type(hints[f.name])
        default = (defaults or {}).get(f.name, f.default)
        shown = "none" if default in (None, "") else str(default).lower() if isinstance(default, bool) else str(default)
        names = [f"{option_name(f.name)}/--no-{f.name.replace('_', '-')}"] if kind is bool else [option_name(f.name)]
        # The default goes into the help text: the option's own default is None (see above), and a
        # string show_default would print in parentheses.
        option = typer.Option(None, *names, help=f"{f.metadata['help']}  [default: {shown}]", show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typing.Optional[kind]))
    return params


def _scalar_type(annotation: Any) -> type:
    """``int``, ``float``, ``str`` or ``bool`` from a field annotation (``X | None`` is ``X``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    if kind not in (int, float, str, bool):
        raise TypeError(f"a command-line option needs an int, float, str or bool field, not {annotation!r}")
    return kind


def given_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options of :func:`cli_parameters` that were given (not ``None``), paths as strings."""
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in values.items() if v is not None}
