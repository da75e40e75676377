"""Ending a worker process that resumes from a stall its lease may not have
survived.

A process that is not scheduled for a while (SIGSTOP, a paused virtual
machine, C code holding the GIL) writes no heartbeat. Past WORKER_TIMEOUT
another worker rescues its jobs and runs them again; when the stalled
process resumes, its job threads would run on beside the new runs until
its heartbeat found the row gone. To stop that, the process keeps a
wall-clock timer (``ITIMER_REAL``) set ``STALL_LIMIT`` ahead, pushed back
every ``STALL_LIMIT / 4``. A process that runs never lets it expire; one
that was not scheduled for ``STALL_LIMIT`` finds it expired, and its
SIGALRM, left to the default action, has the kernel end the process before
any of its threads runs again (exit by signal 14, SIGALRM).

``STALL_LIMIT`` is half of WORKER_TIMEOUT less HEARTBEAT_INTERVAL (7.5 s
by default): a process whose last beat is at most a HEARTBEAT_INTERVAL old
when it stalls, and that resumes within the limit, still has that much
margin for its overdue beat to land before anyone may judge it dead.
"""

from __future__ import annotations

import logging
import signal
import threading

from ..conf import bgtasks_settings

logger = logging.getLogger("django_bgtasks.worker")


def stall_limit() -> float:
    """Seconds without being scheduled after which a worker process ends
    as it resumes."""
    timeout = bgtasks_settings.WORKER_TIMEOUT
    beat = bgtasks_settings.HEARTBEAT_INTERVAL
    return max(timeout - beat, 0.0) / 2


class StallGuard(threading.Thread):
    """While running, a process that stalls for ``limit`` seconds ends as it
    resumes. One per process: it uses the process's one real-time timer
    (the one ``signal.alarm`` and ``signal.setitimer`` set), which tasks
    must then leave alone. Where SIGALRM has a handler, or there is no such
    timer (Windows), it does nothing and says so."""

    def __init__(self, limit: float | None = None):
        super().__init__(name="bgtasks-stall-guard", daemon=True)
        self.limit = stall_limit() if limit is None else limit
        self._stop_event = threading.Event()

    def usable(self) -> bool:
        if self.limit <= 0:
            return False
        if not hasattr(signal, "setitimer"):
            logger.warning("No ITIMER_REAL here: a stalled worker is not ended")
            return False
        if signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL:
            logger.warning(
                "SIGALRM has a handler in this process: a stalled worker is "
                "not ended as it resumes"
            )
            return False
        return True

    def run(self) -> None:
        try:
            while True:
                signal.setitimer(signal.ITIMER_REAL, self.limit)
                if self._stop_event.wait(self.limit / 4):
                    return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def stop(self) -> None:
        self._stop_event.set()

    def __enter__(self) -> StallGuard:
        if self.usable():
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
        if self.is_alive():
            self.join()
