"""What a supervisor tells its worker processes: a line each, on the child's
standard input.

============  ==============================================================
``stop``      stop: finish the running jobs (``StopRequests``)
``now``       stop at once
``wake P``    a NOTIFY for the children's queues came (``P``: the priority
              of its jobs where one applies to all, else ``-``)
``jobs-stop`` jobs of worker ``ID`` (``jobs-stop ID``), or of any worker
              (``jobs-stop``: notifications may have been missed), were
              asked to stop
============  ==============================================================

The supervisor holds the one LISTEN connection of its processes, so an idle
child holds two connections of its own (its claims' and its heartbeat's):
the notifications it hears reach the children through here. The end of the
stream (the supervisor is gone) means ``stop``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from django.db import connections

from ..db import IDLE_CONNECTION_SECONDS

logger = logging.getLogger("django_bgtasks.worker")

STOP = "stop"
NOW = "now"
WAKE = "wake"
JOBS_STOP = "jobs-stop"
# How long the supervisor tries to hand a child a stop request that its full
# pipe will not take (a child not reading: stopped, or stuck).
STOP_WRITE_SECONDS = 5.0


def wake(priority: int | None) -> str:
    return f"{WAKE} {'-' if priority is None else priority}"


def jobs_stop(worker_id: str | None) -> str:
    return JOBS_STOP if worker_id is None else f"{JOBS_STOP} {worker_id}"


class ChildPipe:
    """The supervisor's end of a child's standard input. A line is written
    whole or not at all (one ``write`` of at most ``PIPE_BUF`` bytes), and
    never blocks the supervisor: a wake-up the child cannot take now is
    dropped (its polling, and the next one, make up for it); a stop request
    is tried again for ``STOP_WRITE_SECONDS``. Several threads send (the
    main thread's stop requests, the listener's notifications)."""

    def __init__(self, stream):
        self.stream = stream
        self.fd = stream.fileno()
        os.set_blocking(self.fd, False)
        self._lock = threading.Lock()

    def send(self, line: str) -> bool:
        """Whether the child got ``line``."""
        data = (line + "\n").encode()
        deadline = time.monotonic() + STOP_WRITE_SECONDS
        while True:
            with self._lock:
                if self.fd < 0:
                    return False  # closed: the child has ended
                try:
                    os.write(self.fd, data)
                    return True
                except BlockingIOError:
                    pass
                except OSError:  # the child has just ended
                    return False
            if line.startswith(WAKE) or time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def close(self) -> None:
        with self._lock:  # no write lands on a number reused meanwhile
            self.fd = -1
            with contextlib.suppress(OSError):
                self.stream.close()


class SupervisorMessages(threading.Thread):
    """In a child: read the supervisor's lines from ``fd`` and call
    ``on_stop(count, source)`` (count 1: stop, 2: at once; 1 when the
    stream ends), ``on_wake(priority)``, ``on_jobs_stop(worker_id or
    None)``."""

    def __init__(
        self,
        fd: int,
        *,
        on_stop: Callable[[int, str], None],
        on_wake: Callable[[int | None], None],
        on_jobs_stop: Callable[[str | None], None],
    ):
        super().__init__(name="bgtasks-supervisor", daemon=True)
        self.fd = fd
        self.on_stop = on_stop
        self.on_wake = on_wake
        self.on_jobs_stop = on_jobs_stop

    def run(self) -> None:
        pending = b""
        # When a message last used the database (an urgent claim, a read of
        # stop requests): its connection is closed once idle.
        used_at: float | None = None
        try:
            while True:
                ready, _, _ = select.select([self.fd], [], [], 1.0)
                if not ready:
                    if (
                        used_at is not None
                        and time.monotonic() - used_at > IDLE_CONNECTION_SECONDS
                    ):
                        connections.close_all()
                        used_at = None
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                if self._take(lines):
                    used_at = time.monotonic()
        finally:
            # The supervisor is gone: do not run on alone.
            self.on_stop(1, "the supervisor's exit")
            connections.close_all()

    def _take(self, lines: list[bytes]) -> bool:
        """Act on each line; whether one may have used the database."""
        used = False
        for line in lines:
            message = line.decode(errors="replace").strip()
            try:
                used = self._dispatch(message) or used
            except Exception:
                logger.exception("Acting on %r from the supervisor failed", message)
        return used

    def _dispatch(self, message: str) -> bool:
        """Act on one line; whether it may have used the database."""
        kind, _, argument = message.partition(" ")
        if kind == STOP:
            self.on_stop(1, "the supervisor")
        elif kind == NOW:
            self.on_stop(2, "the supervisor")
        elif kind == WAKE:
            self.on_wake(None if argument in ("", "-") else int(argument))
            return True
        elif kind == JOBS_STOP:
            self.on_jobs_stop(argument or None)
            return True
        elif message:
            logger.warning("Unknown message from the supervisor: %r", message)
        return False
