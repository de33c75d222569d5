"""Checks on the login node, before a run directory exists or anything is submitted (launch.py).

Each mistake a user can make in the config that would otherwise surface minutes (or a queue wait)
later, inside a job, is refused here with one line naming the key or file and what to do: the
benchmark names, the backbone, the metric that chooses best.pt (``eval.best_metric``), the training data
(``data.root``: a readable ``train.rec/.idx`` with
a valid InsightFace header, or image folders), the evaluation data of the chosen benchmarks
(``eval.data_root``) and explicitly named checkpoints (``eval.checkpoints``).
"""

from __future__ import annotations

from pathlib import Path

from qgface.config import Config
from qgface.vocab.benchmarks import BENCHMARK_NAMES, HQ_SETS

__all__ = ["PreflightError", "check_launch", "eval_data_problem"]


class PreflightError(ValueError):
    """A launch refused before anything was created or submitted; the message is one line."""


def check_launch(cfg: Config, evaluate: bool = True) -> None:
    """Raise PreflightError for the first problem found (cheap checks first)."""
    from qgface.models import BACKBONES

    if cfg.model.backbone not in BACKBONES:
        raise PreflightError(
            f"model.backbone={cfg.model.backbone!r} is not a backbone; choose one of {', '.join(BACKBONES)}"
        )
    if cfg.eval.every_steps:
        _check_best_metric(cfg)
    if evaluate:
        _check_benchmarks(cfg)
        _check_checkpoints(cfg)
    if cfg.data.root:
        _check_train_data(Path(cfg.data.root))
    if evaluate and cfg.eval.data_root:
        for name in cfg.eval.benchmarks:
            problem = eval_data_problem(name, Path(cfg.eval.data_root), cfg)
            if problem:
                raise PreflightError(problem)


def _check_benchmarks(cfg: Config) -> None:
    for name in cfg.eval.benchmarks:
        if name not in BENCHMARK_NAMES:
            hint = " (LFW, CFP-FP, AgeDB-30, CALFW and CPLFW are evaluated together as hq)" if name in HQ_SETS else ""
            raise PreflightError(
                f"eval.benchmarks: {name!r} is not a benchmark; choose from "
                f"{', '.join(BENCHMARK_NAMES)}{hint} (launch.py --benchmarks ...)"
            )


def _check_best_metric(cfg: Config) -> None:
    """Validation during training chooses best.pt by a metric its benchmarks must produce."""
    from qgface.config import ConfigError
    from qgface.train.validation import best_metric_benchmark

    try:
        best_metric_benchmark(cfg.eval.val_benchmarks, cfg.eval.best_metric)
    except ConfigError as err:
        raise PreflightError(str(err)) from None


def eval_data_problem(name: str, root: Path, cfg: Config) -> str:
    """'' when ``root`` holds what benchmark ``name`` reads first, else one line saying what is missing."""
    needs = {
        "hq": [f"{s}.bin" for s in HQ_SETS],
        "crlfw": ["lfw.bin"],
        "tinyface": [
            "tinyface/Testing_Set/probe_img_ID_pairs.mat",
            "tinyface/Testing_Set/gallery_match_img_ID_pairs.mat",
            cfg.eval.tinyface_aligned_dir,
        ],
        "scface": ["scface/all.txt", cfg.eval.scface_aligned_dir],
        "ijbb": ["IJBB/meta", "IJBB/loose_crop"],
        "ijbc": ["IJBC/meta", "IJBC/loose_crop"],
    }[name]
    if not root.is_dir():
        return (
            f"eval.data_root={root} does not exist or is not a folder; point it at the evaluation data (README 'Data')"
        )
    for rel in needs:
        if not (root / rel).exists():
            return (
                f"eval.data_root={root}: benchmark {name} needs {rel}, which is missing; add it (README 'Data' "
                f"shows the layout) or leave {name} out of eval.benchmarks"
            )
    return ""


def _check_train_data(root: Path) -> None:
    from qgface.data.datasets import DatasetLayoutError, open_train_dataset
    from qgface.data.recordio import RecordIOError

    try:
        open_train_dataset(root)
    except (DatasetLayoutError, RecordIOError, OSError) as err:
        raise PreflightError(f"data.root={root}: {(str(err).splitlines() or [''])[0]}") from None


def _check_checkpoints(cfg: Config) -> None:
    """Checkpoints named by absolute path must exist now; names in checkpoints/ appear during training."""
    if cfg.eval.checkpoints in ("last", "all", "best"):
        return
    for name in (n.strip() for n in cfg.eval.checkpoints.split(",")):
        if Path(name).is_absolute() and not Path(name).is_file():
            raise PreflightError(f"eval.checkpoints: checkpoint {name} does not exist")
