"""What a supervisor tells its worker processes: a line each, on the child's
standard input.

============  ==============================================================
``stop``      stop: finish the running jobs (``StopRequests``; sent as
              SIGUSR1 too)
``now``       stop at once (and SIGUSR2)
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
from collections.abc import Callable

from ..db import IDLE_CONNECTION_SECONDS, close_idle_connections

logger = logging.getLogger("django_bgtasks.worker")

STOP = "stop"
NOW = "now"
WAKE = "wake"
JOBS_STOP = "jobs-stop"


def wake(priority: int | None) -> str:
    return f"{WAKE} {'-' if priority is None else priority}"


def jobs_stop(worker_id: str | None) -> str:
    """The line for the jobs of ``worker_id`` (a notification's text): of
    any worker's where it is not a worker's id (no line of its own)."""
    if worker_id is None or len(worker_id) > 100 or not worker_id.isprintable():
        return JOBS_STOP
    return f"{JOBS_STOP} {worker_id}"


class Requests:
    """Requests from other threads to a thread that waits in ``select``
    (on ``fd``): a byte each on a pipe, never blocking the asking thread (a
    full pipe holds requests enough)."""

    def __init__(self):
        self.fd, self._write_end = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_end, False)

    def send(self, kind: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write_end, kind)

    def drain(self) -> None:
        """Take what was sent (the waiting thread, once ``fd`` is ready)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 4096)


class ChildPipe:
    """The supervisor's end of a child's standard input. A line is written
    whole or not at all (one ``write`` of at most ``PIPE_BUF`` bytes), and
    never blocks the sender: a line the child's full pipe cannot take is
    not sent (``send`` says so; the supervisor signals a stop instead, and
    a wake-up is made up for by the child's polling and the next one).
    Several threads send (the main thread's stop requests, the listener's
    notifications)."""

    def __init__(self, stream):
        self.stream = stream
        self.fd = stream.fileno()
        os.set_blocking(self.fd, False)
        self._lock = threading.Lock()

    def send(self, line: str) -> bool:
        """Whether the child got ``line``."""
        data = (line + "\n").encode()
        with self._lock:
            if self.fd < 0:
                return False  # closed: the child has ended
            try:
                return os.write(self.fd, data) == len(data)
            except OSError:  # full (BlockingIOError), or the child has ended
                return False

    def close(self) -> None:
        with self._lock:  # no write lands on a number reused meanwhile
            self.fd = -1
            with contextlib.suppress(OSError):
                self.stream.close()


class SupervisorMessages(threading.Thread):
    """In a child: read the supervisor's lines from ``fd`` and act on them
    on this thread, so that a wake-up's urgent claim is made one thread
    hand-off after the notification came (each hand-off costs up to a
    switch interval, 5 ms, behind busy job threads). A stop request,
    ``on_stop(count, source)`` (count 1: stop, 2: at once; 1 when the
    stream ends), comes as a signal too (``StopRequests``), so one never
    waits behind a notice's database work here. The lines read at once
    are merged: one ``on_wake(priority)`` (the highest priority, or None
    if any came without one) and one ``on_jobs_stop()`` for this worker's
    (``worker_id``) jobs or any worker's, whatever piled up meanwhile. Its
    connection (an urgent claim's, a read's) is closed after
    IDLE_CONNECTION_SECONDS without a line or a request to warm it
    (``ask_to_warm``: ``on_warm()`` is then called on this thread). If
    reading fails (not the end of the stream: an error), ``on_failure()``,
    once it is logged."""

    def __init__(
        self,
        fd: int,
        *,
        worker_id: str,
        on_stop: Callable[[int, str], None],
        on_wake: Callable[[int | None], None],
        on_jobs_stop: Callable[[], None],
        on_failure: Callable[[], None],
        on_warm: Callable[[], None] = lambda: None,
    ):
        super().__init__(name="bgtasks-supervisor", daemon=True)
        self.fd = fd
        self.worker_id = worker_id
        self.on_stop = on_stop
        self.on_wake = on_wake
        self.on_jobs_stop = on_jobs_stop
        self.on_failure = on_failure
        self.on_warm = on_warm
        self._warm_requests = Requests()

    def ask_to_warm(self) -> None:
        """Have ``on_warm()`` called on this thread (from any thread)."""
        self._warm_requests.send(b"w")

    def run(self) -> None:
        try:
            self._read()
        except Exception:
            # Deaf to its supervisor, the process must not run on.
            logger.exception("Reading the supervisor's messages failed")
            self.on_failure()
        else:
            # The supervisor is gone: do not run on alone.
            self.on_stop(1, "the supervisor's exit")

    def _read(self) -> None:
        """Act on the lines until the stream ends."""
        pending = b""
        while True:
            ready, _, _ = select.select(
                [self.fd, self._warm_requests.fd], [], [], IDLE_CONNECTION_SECONDS
            )
            if not ready:
                close_idle_connections()
                continue
            if self.fd in ready:  # first: an urgent claim must not wait
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return
                *lines, pending = (pending + chunk).split(b"\n")
                self._act_on([line.decode(errors="replace").strip() for line in lines])
            if self._warm_requests.fd in ready:
                self._warm_requests.drain()
                try:
                    self.on_warm()
                except Exception:
                    logger.exception("Readying the claims' connection failed")

    def _act_on(self, messages: list[str]) -> None:
        """Act on the lines read at once: stops first, then the merged
        notices."""
        woken, priority, jobs_stop = False, None, False
        for message in messages:
            kind, _, argument = message.partition(" ")
            if kind == STOP:
                self.on_stop(1, "the supervisor")
            elif kind == NOW:
                self.on_stop(2, "the supervisor")
            elif kind == WAKE:
                try:
                    value = None if argument in ("", "-") else int(argument)
                except ValueError:
                    value = None
                if not woken:
                    woken, priority = True, value
                elif priority is not None:
                    priority = None if value is None else max(priority, value)
            elif kind == JOBS_STOP:
                jobs_stop = jobs_stop or argument in ("", self.worker_id)
            elif message:
                logger.warning("Unknown message from the supervisor: %r", message)
        try:
            if woken:
                self.on_wake(priority)
            if jobs_stop:
                self.on_jobs_stop()
        except Exception:
            logger.exception("Acting on the supervisor's notice failed")
