"""``python -m qgface.aggregate RUN_DIR``: results.csv + TensorBoard from ``RUN_DIR/eval/<checkpoint>/<benchmark>.json``.

Exits 1 naming the benchmarks that are missing or failed (their cells stay empty), 2 (creating nothing)
when RUN_DIR is no run directory; see :mod:`qgface.eval.aggregate` for the columns.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from qgface.eval.aggregate import HEADLINE, aggregate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qgface.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run directory (holds eval/<checkpoint>/<benchmark>.json)")
    parser.add_argument("--no-tensorboard", action="store_true", help="write only results.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = aggregate(args.run_dir, tensorboard=not args.no_tensorboard)
    except FileNotFoundError as err:
        print(f"qgface.aggregate: error: {err}", file=sys.stderr)
        return 2
    for row in result.rows:
        cells = ", ".join(f"{k}={row[k]:.2f}" for k in HEADLINE if row.get(k) is not None)
        print(f"{Path(row['checkpoint']).name} (step {row['step']}): {cells}")
    print(f"wrote {result.csv_path}")
    problems = [f"missing: {name}" for name in result.missing]
    problems += [f"failed: {name} ({error})" for name, error in result.failed.items()]
    if problems:
        print("qgface.aggregate: error: incomplete results; " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
