"""The worker process's heartbeat: its row's ``last_heartbeat_at`` kept fresh,
and the stop requests of its jobs read (where NOTIFY does not bring them, or
missed one)."""

from __future__ import annotations

import logging
import threading
import time

from django.db import connections

from ..db import CONNECTION_ERRORS, discard_connection
from ..maintenance.rescue import Steadiness

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

    Its beats make its ``steadiness``, which says whether this worker may
    judge others dead.
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
        # The registration was the first beat.
        self.steadiness = Steadiness(went_through=True)
        self._synced_at = time.monotonic()  # the worker synced it at start

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
                self.steadiness.went_through()
                if time.monotonic() - self._synced_at >= CLOCK_SYNC_INTERVAL:
                    self.clock.sync(self.using)
                    self._synced_at = time.monotonic()
                if self.after_beat is not None:
                    self._after_beat()
                return
            logger.error("Worker %s: its row is gone (judged dead?)", self.process.pk)
            process = self.on_lost()
            if process is None:  # the worker is ending its process
                self.stop()
            else:
                self.process = process
        except CONNECTION_ERRORS as exc:
            self.steadiness.broke()
            logger.warning("Heartbeat failed (%s); retrying at the next beat", exc)
            discard_connection(self.using)
        except Exception:
            self.steadiness.broke()
            logger.exception("Heartbeat failed; retrying at the next beat")

    def _after_beat(self) -> None:
        """What the worker does after each beat. Its error is not the
        beat's: the beat went through, and the worker may still judge
        others dead."""
        try:
            self.after_beat()
        except Exception:
            logger.exception("Acting after a heartbeat failed")
