"""``python -m qgface.train [CONFIG] [key=value ...]``: logging, config, ``Trainer(cfg).train()``, exit code.

Exit status: 0 = training complete (or already complete), ``REQUEUE_EXIT_CODE`` (75) = stopped by
SIGUSR1/SIGUSR2/SIGTERM after saving last.pt, 1 = a failure (one clear message for errors a user can
cause: config, checkpoint, dataset layout, a non-finite loss).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from qgface.atomic import atomic_write_text
from qgface.config import ConfigError, load_config
from qgface.data.recordio import RecordIOError
from qgface.models import CheckpointError
from qgface.train import dist

log = logging.getLogger("qgface.train")


def _setup_logging() -> None:
    # called before the process group exists: torchrun's RANK says which process this is
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    # progress lines go to stdout: the launcher's terminal in local mode, the job's .out log on Slurm
    to_stdout = logging.StreamHandler(sys.stdout)
    to_stdout.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    progress_log = logging.getLogger("qgface.train.progress")
    progress_log.addHandler(to_stdout)
    progress_log.setLevel(level)
    progress_log.propagate = False


def _record_error(err: BaseException, deterministic: bool) -> None:
    """Tell the launching task why this worker stopped (``QGFACE_TRAIN_ERROR_FILE``, set by
    ``qgface.cluster.jobs.TrainTask``): a deterministic error is not worth a torchrun restart."""
    path = os.environ.get("QGFACE_TRAIN_ERROR_FILE")
    if not path:
        return
    line = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    try:
        atomic_write_text(path, json.dumps({"deterministic": deterministic, "error": line}))
    except OSError as exc:
        log.warning("could not record the error in %s: %s", path, exc)


def main(argv: Sequence[str]) -> int:
    """Train with the config ``argv[0]`` (optional, a YAML file) and ``key=value`` overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m qgface.train",
        description="Train a QGFace model (docs/method.md §5). Exit status: 0 = complete, "
        "75 = stopped by a signal after saving last.pt (requeue), 1 = failure.",
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] key=value",
        help="a YAML config file (optional, first) then dotted overrides, e.g. optim.lr=0.05",
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="continue a run even when keys that change what is trained differ from its "
        "config.yaml (the change is recorded in config_history.yaml)",
    )
    args = parser.parse_intermixed_args(list(argv))
    items = args.items
    config = items[0] if items and "=" not in items[0] else None
    overrides = items[1:] if config else items
    _setup_logging()

    from qgface.data.datasets import DatasetLayoutError
    from qgface.train.engine import NonFiniteLossError, Trainer

    trainer, code = None, None
    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg, config_source=config or "python -m qgface.train", allow_changes=args.allow_changes)
        code = trainer.train()
        return code
    except (ConfigError, CheckpointError, DatasetLayoutError, NonFiniteLossError, RecordIOError) as err:
        log.error("%s", err)
        _record_error(err, deterministic=True)
        return 1
    except Exception as err:
        _record_error(err, deterministic=False)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        trainer = None  # its DDP reducer holds the process group: freed before the group (dist.destroy)
        dist.destroy(after_success=code is not None)
