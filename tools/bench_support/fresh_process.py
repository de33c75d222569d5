"""Run one benchmark case in a fresh Python process and read back its result (shared by the bench tools).

A case that measures memory must start from a process that has allocated nothing else; the bench
tools therefore re-run themselves with ``--child`` per case. The child prints its result as one JSON
object on its last line of standard output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_case(script: str, child_args: list[str], threads: int) -> dict:
    """``python script --child *child_args`` with ``threads`` OpenMP/BLAS threads; its JSON result."""
    done = subprocess.run(
        [sys.executable, script, "--child", *child_args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
