"""A child process and every descendant it ever had, found through /proc (Linux), stoppable from a signal handler.

The training task runs torchrun through :class:`ProcessTree`: torchrun's workers run in sessions of
their own and can outlive an aborted torchrun, so the tree remembers every descendant it has seen and
waits for all of them; the child gets SIGTERM when the task process dies (``prctl(PR_SET_PDEATHSIG)``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

__all__ = ["ProcessTree"]

PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal a process gets when its parent dies"""


class ProcessTree:
    """A child process in its own process group, plus every descendant it ever had (torchrun workers
    run in sessions of their own and outlive an aborted torchrun), stoppable from a signal handler."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(list(cmd), start_new_session=True, env=env, preexec_fn=_term_with_parent)
        self.known: set[int] = {self.proc.pid}
        self.stop_signal: int | None = None

    def refresh(self) -> None:
        """Remember the current descendants (cheap: one pass over /proc)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                ppid = _stat(int(entry))[1]
                if ppid is not None:
                    children.setdefault(ppid, []).append(int(entry))
        todo = [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in self.known:
                    self.known.add(child)
                    todo.append(child)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the process group of the child once (repeats would abort torchrun's shutdown)."""
        if self.stop_signal is not None:
            return
        self.stop_signal = signum
        self.refresh()
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def alive(self) -> list[int]:
        return [pid for pid in self.known if _stat(pid)[0] not in (None, "Z", "X")]

    def wait(self, poll_s: float = 1.0, stop_when: Callable[[], bool] | None = None) -> int:
        """Exit status of the child; polls so that signal handlers run in between, and stops the
        child (SIGTERM, once) as soon as ``stop_when()`` is true."""
        while True:
            code = self.proc.poll()
            if code is not None:
                return code
            if stop_when is not None and self.stop_signal is None and stop_when():
                self.stop(signal.SIGTERM)
            self.refresh()
            time.sleep(poll_s)

    def wait_all(self, timeout_s: float) -> bool:
        """Wait until the child and all its known descendants have exited; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True


def _term_with_parent() -> None:
    """In the child before exec: SIGTERM it when this task process dies, even by SIGKILL (submitit's
    local executor kills a cancelled task one second after SIGINT), so torchrun never outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stat(pid: int) -> tuple[str | None, int | None]:
    """(state letter, parent pid) of ``pid`` from /proc, (None, None) when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    return fields[0], int(fields[1])
