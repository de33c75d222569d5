"""``python -m qgface.eval --checkpoint CKPT|--onnx MODEL.onnx --benchmark NAME [--config YAML]
[--output-dir DIR] [key=value ...]``

Evaluates one checkpoint on one benchmark (compressing the benchmark first when needed) and writes
``<run>/eval/<checkpoint stem>/<NAME>.json`` (docs/method.md §7-8); a checkpoint outside a run's checkpoints/
needs ``--output-dir``. NAME is one of ``qgface.vocab.benchmarks.BENCHMARK_NAMES`` (listed by ``--help``)
or an index into ``eval.benchmarks`` (handy as a Slurm array task id). Exits 1 with one message on failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from qgface.config import ConfigError
from qgface.data.binfile import BinFileError
from qgface.data.recordio import RecordIOError
from qgface.eval.benchmarks import BENCHMARK_NAMES, BenchmarkError
from qgface.eval.compress import StaleRecError
from qgface.eval.run import default_output_dir, evaluate, resolve_benchmark, resolve_config, write_failure
from qgface.models import CheckpointError
from qgface.models.onnx_backbone import OnnxModelError

log = logging.getLogger("qgface.eval")

_USER_ERRORS = (
    BenchmarkError,
    BinFileError,
    CheckpointError,
    ConfigError,
    OnnxModelError,
    RecordIOError,
    StaleRecError,
    FileNotFoundError,
    ValueError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qgface.eval", description=__doc__.split("\n\n")[1])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint file (e.g. <run>/checkpoints/last.pt)")
    model.add_argument(
        "--onnx",
        metavar="MODEL.onnx",
        dest="checkpoint",
        help="score a backbone exported by tools/export_onnx.py (run with onnxruntime) instead",
    )
    parser.add_argument(
        "--benchmark", required=True, help=f"one of {', '.join(BENCHMARK_NAMES)}, or an index into eval.benchmarks"
    )
    parser.add_argument(
        "--config", default=None, help="YAML config; default: the run's config.yaml, else the checkpoint's own config"
    )
    parser.add_argument(
        "--output-dir", default=None, help="results go to DIR/<checkpoint stem>/<benchmark>.json; default <run>/eval"
    )
    parser.add_argument(
        "--no-compress",
        action="store_true",
        help="read the image files when no compressed .rec exists instead of creating one",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides such as eval.data_root=/data/eval")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output_dir, name = args.output_dir, args.benchmark
    try:
        cfg = resolve_config(args.checkpoint, args.config, args.overrides)
        name = resolve_benchmark(args.benchmark, cfg)
        output_dir = Path(output_dir) if output_dir else default_output_dir(args.checkpoint)
        evaluate(args.checkpoint, name, cfg, output_dir, compress=not args.no_compress)
    except Exception as exc:  # one clear message for the user; a traceback only for unexpected errors
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _USER_ERRORS):
            log.debug("evaluation failed", exc_info=True)
        else:
            log.exception("evaluation of %s failed unexpectedly", name)
        if output_dir is not None and name in BENCHMARK_NAMES:
            try:
                write_failure(output_dir, name, args.checkpoint, message)
            except OSError:
                log.warning("could not record the failure in %s", output_dir)
        print(f"qgface.eval: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
