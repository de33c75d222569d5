"""The run directory: created (or continued) with the resolved config before anything is submitted.

``prepare_run`` makes ``<output_root>/<name>-<YYYYmmdd-HHMMSS>`` (or uses ``run_dir``), its ``slurm/``,
``checkpoints/``, ``tb/`` and ``eval/`` folders, and records the config with absolute paths;
``ensure_data`` generates the synthetic dataset once, in the launching process, when it is needed.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from qgface.config import Config, from_dict
from qgface.history import record_config

__all__ = ["PATH_KEYS", "Run", "ensure_data", "prepare_run"]

log = logging.getLogger(__name__)

PATH_KEYS = ("output_root", "run_dir", "data.root", "data.synthetic_dir", "eval.data_root", "eval.rec_dir")
"""config paths made absolute at launch, so jobs, sbatch scripts and later re-evaluations agree on them"""


@dataclass(frozen=True)
class Run:
    """A prepared run directory: the resolved config is written to ``config_path``."""

    cfg: Config
    run_dir: Path
    config_path: Path


def prepare_run(
    cfg: Config, now: datetime.datetime | None = None, *, source: str = "", allow_changes: bool = False
) -> Run:
    """Create the run directory (``<output_root>/<name>-<YYYYmmdd-HHMMSS>`` unless ``run_dir`` is set)
    and write the resolved config, with absolute paths, to its ``config.yaml``.

    Continuing a run (``run_dir`` set and holding a config) goes through ``qgface.history.record_config``:
    changes of keys that change what is trained are refused (ConfigError, nothing written) unless
    ``allow_changes``; accepted changes are recorded with the step of ``last.pt``. ``source`` is the
    config file the user gave, recorded for results.csv's ``config`` column."""
    cfg = _absolute_paths(cfg)
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if (run_dir / "config.yaml").is_file():  # refuse before touching anything
            record_config(run_dir, cfg, _trained_steps(run_dir), source, allow_training_changes=allow_changes)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = _new_run_dir(Path(cfg.output_root), cfg.name, now or datetime.datetime.now())
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    for sub in ("slurm", "checkpoints", "tb", "eval"):
        (run_dir / sub).mkdir(exist_ok=True)
    config_path = run_dir / "config.yaml"
    record_config(run_dir, cfg, _trained_steps(run_dir), source, allow_training_changes=allow_changes)
    return Run(cfg, run_dir, config_path)


def _trained_steps(run_dir: Path) -> int:
    """The step of ``<run>/checkpoints/last.pt`` (0 when there is none): where a continued run resumes."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return 0
    from qgface.eval.run import checkpoint_info  # torch: only for a run that has a checkpoint

    return int(checkpoint_info(last)["step"] or 0)


def ensure_data(run: Run, evaluate: bool = True) -> None:
    """Generate the synthetic dataset when a data root it stands in for is empty: once, in the
    launching process, before any job starts, so that no two jobs race to create it."""
    if run.cfg.data.root and (run.cfg.eval.data_root or not evaluate):
        return
    from qgface.data.synthetic import ensure_synthetic

    log.info("checking the synthetic dataset under %s (generated once, a minute or two)", run.cfg.data.synthetic_dir)
    ensure_synthetic(run.cfg)


def _absolute_paths(cfg: Config) -> Config:
    values = cfg.to_dict()
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node[part]
        if node[leaf] and not Path(node[leaf]).is_absolute():
            node[leaf] = str(Path(node[leaf]).absolute())
    return from_dict(values, source="launch")


def _new_run_dir(root: Path, name: str, now: datetime.datetime) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{now:%Y%m%d-%H%M%S}"
    for suffix in [""] + [f"-{i}" for i in range(1, 100)]:
        candidate = root / (base + suffix)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{root / base}: 100 run directories with this name and second already exist")
