"""The worker process's heartbeat: its row's ``last_heartbeat_at`` kept fresh,
and the stop requests of its jobs read (where NOTIFY does not bring them, or
missed one)."""

from __future__ import annotations

import logging
import threading
import time

from django.db import connections

from ..conf import bgtasks_settings
from ..db import CONNECTION_ERRORS, discard_connection

logger = logging.getLogger("django_bgtasks.worker")

# Seconds between two readings of the database's clock: two clocks drift
# apart by milliseconds a day, not a minute (a jump of the host's clock is
# caught within this).
CLOCK_SYNC_INTERVAL = 60.0


class Heartbeat(threading.Thread):
    """Refresh the worker's row every ``interval`` seconds.

    If the row has gone (another worker judged this one dead), ``on_lost``
    is called: it returns the row registered again, or None to end the
    heartbeat. After each beat that went through, ``after_beat`` (if given)
    is called: the worker reads its jobs' stop requests. Errors are logged
    and the beat retried at the next interval.

    It also says whether this worker may judge others dead
    (``may_judge_others``): only once its own beats have gone through
    without a break for a full WORKER_TIMEOUT. After a database outage, or
    a stall of this process, the others' beats are as old as its own were:
    it waits until they have had a timeout's time to beat again.
    """

    def __init__(
        self, *, process, interval: float, using: str, on_lost, clock, after_beat=None
    ):
        super().__init__(name="bgtasks-heartbeat", daemon=True)
        # This thread's own but the stop event, set from any thread.
        self.process = process
        self.interval = interval
        self.using = using
        self.on_lost = on_lost
        self.after_beat = after_beat
        self.clock = clock  # synced with the database's every minute
        self._stop_event = threading.Event()
        # Monotonic times, written by this thread, read by the maintenance
        # thread (float swaps). The registration was the first beat.
        self._last_beat = time.monotonic()
        self._steady_since: float | None = self._last_beat
        self._synced_at = self._last_beat  # the worker synced it at start

    def may_judge_others(self) -> bool:
        """Whether this worker's beats have gone through without a break
        (none failed, none more than half a WORKER_TIMEOUT after the one
        before) for at least a WORKER_TIMEOUT, up to now."""
        timeout = bgtasks_settings.WORKER_TIMEOUT
        now = time.monotonic()
        steady_since = self._steady_since
        return (
            steady_since is not None
            and now - steady_since >= timeout
            and now - self._last_beat <= timeout / 2
        )

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                self.beat()
        finally:
            connections.close_all()

    def beat(self) -> None:
        """One beat. Never raises: a heartbeat thread that died would leave
        a working worker looking dead."""
        try:
            if self.process.beat() or self._stop_event.is_set():
                self._went_through()
                if time.monotonic() - self._synced_at >= CLOCK_SYNC_INTERVAL:
                    self.clock.sync(self.using)
                    self._synced_at = time.monotonic()
                if self.after_beat is not None:
                    self.after_beat()
                return
            logger.error("Worker %s: its row is gone (judged dead?)", self.process.pk)
            process = self.on_lost()
            if process is None:  # the worker is ending its process
                self.stop()
            else:
                self.process = process
        except CONNECTION_ERRORS as exc:
            self._steady_since = None
            logger.warning("Heartbeat failed (%s); retrying at the next beat", exc)
            discard_connection(self.using)
        except Exception:
            self._steady_since = None
            logger.exception("Heartbeat failed; retrying at the next beat")

    def _went_through(self) -> None:
        now = time.monotonic()
        if (
            self._steady_since is None
            or now - self._last_beat > bgtasks_settings.WORKER_TIMEOUT / 2
        ):
            self._steady_since = now
        self._last_beat = now
