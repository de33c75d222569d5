"""Following a local job from the launcher: its progress lines on the terminal, Ctrl-C that saves.

Local jobs are started with SIGINT ignored (``start_ignoring_interrupts``), so that a Ctrl-C on the
terminal does not make submitit's controller process print a KeyboardInterrupt traceback there; the
task itself restores the default (``jobs.setup_logging``) and the training task turns SIGINT into a
graceful stop (its workers finish the step and save ``last.pt``). ``follow`` echoes the job's
progress lines while it runs; on Ctrl-C ``stop`` asks the job to stop through SIGTERM to submitit's
controller (which forwards it to the task) and waits, bounded, for it to end.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import submitit

PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d step \d+/\d+ ")
"""the lines ``qgface.train.monitor.ProgressReport`` writes to a training job's stdout"""
POLL_S = 1.0
"""seconds between two looks at a running local job's log"""

T = TypeVar("T")


def start_ignoring_interrupts(start: Callable[[], T]) -> T:
    """Call ``start`` (a submission) with SIGINT ignored, so the processes it spawns inherit that."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return start()
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(job: submitit.Job, report: Callable[[str], None], poll_s: float = POLL_S) -> None:
    """Until the job ends, report every new progress line of its stdout log."""
    offset = 0
    while True:
        done = job.done()
        offset = _echo_progress(Path(job.paths.stdout), offset, report)
        if done:
            return
        time.sleep(poll_s)


def _echo_progress(path: Path, offset: int, report: Callable[[str], None]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
    for line in complete.decode(errors="replace").splitlines():
        if PROGRESS_LINE.match(line):
            report(line)
    return offset + len(complete)


def stop(job: submitit.Job, timeout_s: float) -> bool:
    """Ask a local job to stop (SIGTERM to its controller, forwarded to the task) and wait for its end;
    False when it was still running after ``timeout_s`` or a second Ctrl-C (then it is killed)."""
    pid = int(job.job_id)  # the local executor's job id is its controller's pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    try:
        while not job.done():
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        else:
            return True
    except KeyboardInterrupt:
        pass
    _kill(pid)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def last_step(run_dir: Path) -> Any:
    """The step of ``<run>/checkpoints/last.pt``, or None when there is none."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    from qgface.eval.run import checkpoint_info  # torch: only when there is a checkpoint to read

    return checkpoint_info(last)["step"]
