"""Stop requests from Slurm/submitit: SIGUSR1, SIGUSR2 and SIGTERM set a flag (README "Time limits and preemption").

The handler only records the signal; the training loop reads the flag after each step, saves
``last.pt`` and exits with ``REQUEUE_EXIT_CODE``, so a step is never interrupted half-way.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75
"""exit status of a worker that stopped on a signal after saving last.pt: "requeue me" """

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class StopFlag:
    """Context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        # signal.signal only works in the main thread; elsewhere (e.g. a test runner thread) the
        # flag simply never fires
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
