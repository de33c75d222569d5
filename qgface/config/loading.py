"""Reading the configuration: defaults, YAML files with ``base:`` inheritance, ``key=value`` overrides.

A YAML file holds only what differs from the defaults and may name a ``base`` file (relative to itself)
to start from. Command-line overrides use dotted keys (``optim.lr=0.05``, ``eval.benchmarks=[hq,tinyface]``),
their values parsed as YAML scalars or lists, as with hydra. Every value is coerced to its key's type in
:mod:`qgface.config.schema`, unknown keys are refused with the closest valid one. Values derived from
the config (world batch, total steps) are computed elsewhere and never written back.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from qgface.atomic import atomic_write_text
from qgface.config.schema import Config, ConfigError


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML chain of ``path`` (base first), then ``key=value`` overrides."""
    values = _read_yaml_chain(Path(path), seen=()) if path is not None else {}
    return _with_overrides(values, overrides, source=str(path) if path else "overrides")


def config_with_overrides(
    values: dict[str, Any], overrides: typing.Sequence[str] = (), source: str = "config"
) -> Config:
    """Defaults, then the nested dict ``values`` (e.g. a checkpoint's saved config), then ``key=value``
    overrides, exactly as :func:`load_config` applies them to a file's values."""
    from_dict(values, source=source)  # the saved values' own mistakes blamed on them
    return _with_overrides(copy.deepcopy(values), overrides, source=source)


def _with_overrides(values: dict[str, Any], overrides: typing.Sequence[str], source: str) -> Config:
    for item in overrides:
        override = _parse_override(item)
        _build(Config, override, prefix="", source=f"override {item!r}")  # its own mistakes blamed on it
        _merge(values, override)
    return from_dict(values, source=source)


def from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a validated ``Config`` from a nested dict (unknown keys and wrong types raise ConfigError)."""
    return _build(Config, values, prefix="", source=source)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), loadable again with ``load_config``."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_keys() -> list[str]:
    """Every dotted key of the tree, for error messages."""
    return [key for key, _, _ in describe_keys()]


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, meaning) for every key; the meaning is the string under each field."""
    meanings = _field_docstrings(cls)
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        hint = _hint(cls, f.name)
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, f"{prefix}{f.name}."))
        else:
            default = yaml.safe_dump(getattr(defaults, f.name), default_flow_style=True).strip()
            rows.append((f"{prefix}{f.name}", default.removesuffix("\n...").strip(), meanings.get(f.name, "")))
    return rows


def _field_docstrings(cls: type) -> dict[str, str]:
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for field_node, doc_node in zip(body, body[1:]):
        if (
            isinstance(field_node, ast.AnnAssign)
            and isinstance(doc_node, ast.Expr)
            and isinstance(doc_node.value, ast.Constant)
        ):
            docs[field_node.target.id] = str(doc_node.value.value)
    return docs


def _read_yaml_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        merged = _read_yaml_chain(path.parent / str(base), seen + (path,))
    _merge(merged, data)
    return merged


def _parse_override(item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build(cls: type, values: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key {dotted!r}{_closest(dotted)}")
        hint = _hint(cls, key)
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, dotted + ".", source)
        else:
            kwargs[key] = _coerce(dotted, hint, value, source)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _coerce(key: str, hint: Any, value: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} expects a list of {item_type.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", item_type, v, source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads exponents without a dot (1e-4) as strings; a float key means a number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    name = hint.__name__ if isinstance(hint, (type, types.GenericAlias)) else str(hint)
    raise ConfigError(f"{source}: {key} expects {name}, got {value!r} ({type(value).__name__})")


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else "; run `python -m qgface.config` to list the valid keys"
