"""A run's record of its own config: ``<run>/config_history.yaml`` and the rules for continuing a run.

A run directory's ``config.yaml`` says how its model was trained, so it must never change silently.
Continuing a run (``run_dir=<run>``, or ``python launch.py <run>/config.yaml``) with other values is
refused when a changed key changes what is trained (the model, data, losses, optimiser, seed), unless
the user allows it; changes that do not (more epochs, other benchmarks, cluster settings) are
accepted. Either way every change is appended to ``config_history.yaml`` with the step it took effect
at (the step of the checkpoint the run continues from), after the first entry that names the config
file the run was launched with.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import yaml

from qgface.atomic import atomic_write_text
from qgface.config import Config, ConfigError, load_config, save_config

__all__ = ["HISTORY_FILE", "config_changes", "launched_config_file", "read_history", "record_config", "training_keys"]

HISTORY_FILE = "config_history.yaml"
FREE_KEYS = (
    "name",
    "run_dir",
    "output_root",
    "optim.epochs",
    "train.max_steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.max_restarts",
    "train.resume",
    "data.num_workers",
)
"""keys a continued run may change freely: where things go, how long it trains, how often it logs"""
FREE_SECTIONS = ("eval.", "cluster.")
"""sections a continued run may change freely: evaluation and Slurm settings do not touch the model"""
PATH_KEYS = ("run_dir", "output_root", "data.root", "data.synthetic_dir", "eval.data_root", "eval.rec_dir")
"""paths compared as absolute paths (a relative and an absolute spelling of one folder are no change)"""


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = os.path.abspath(value) if f"{prefix}{key}" in PATH_KEYS and value else value
    return out


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every key whose value differs."""
    before, after = _flat(old.to_dict()), _flat(new.to_dict())
    return {key: (before.get(key), after[key]) for key in after if before.get(key) != after[key]}


def training_keys(changes: dict[str, Any]) -> list[str]:
    """The changed keys that change what is trained (neither in FREE_KEYS nor in FREE_SECTIONS)."""
    return [key for key in changes if key not in FREE_KEYS and not key.startswith(FREE_SECTIONS)]


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``<run>/config_history.yaml`` (empty when the run has none)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of entries, got {type(entries).__name__}; move it away")
    return entries


def launched_config_file(run_dir: str | Path) -> str:
    """The config file the run was first launched with ('' when the run has no history)."""
    history = read_history(run_dir)
    return str(history[0].get("source", "")) if history else ""


def record_config(
    run_dir: str | Path, cfg: Config, step: int, source: str, allow_training_changes: bool = False
) -> None:
    """Write ``cfg`` as the run's ``config.yaml`` and record it in the history, or refuse it.

    A new run gets its config and a first entry naming ``source``. An existing one keeps its
    config.yaml when nothing changed; changed keys that change what is trained are refused with a
    ConfigError naming each, once ``step`` > 0 (something was trained), unless
    ``allow_training_changes``; accepted changes rewrite config.yaml and are recorded at ``step``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    history = read_history(run_dir)
    if not path.is_file():
        save_config(cfg, path)
        _write_history(run_dir, history + [_entry(step, source, {})])
        return
    changes = config_changes(load_config(path), cfg)
    if not changes:
        return
    refused = training_keys(changes)
    if refused and step > 0 and not allow_training_changes:
        listed = "; ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise ConfigError(
            f"{path}: the run was trained up to step {step} with other values of keys that change what is "
            f"trained ({listed}); continue it with its own settings (python launch.py {path}), start a new "
            "run, or allow the change explicitly (launch.py --allow-changes, or python -m qgface.train --allow-changes)"
        )
    save_config(cfg, path)
    _write_history(run_dir, history + [_entry(step, source, changes)])


def _entry(step: int, source: str, changes: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {
        "step": step,
        "source": source,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changes": {key: {"from": old, "to": new} for key, (old, new) in changes.items()},
    }


def _write_history(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / HISTORY_FILE, yaml.safe_dump(entries, sort_keys=False))
