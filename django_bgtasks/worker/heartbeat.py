"""The worker process's heartbeat: its row's ``last_heartbeat_at`` kept fresh."""

from __future__ import annotations

import logging
import threading

from django.db import connections

from ..db import CONNECTION_ERRORS, discard_connection

logger = logging.getLogger("django_bgtasks.worker")


class Heartbeat(threading.Thread):
    """Refresh the worker's row every ``interval`` seconds.

    If the row has gone (another worker judged this one dead), ``on_lost``
    is called: it returns the row registered again, or None to end the
    heartbeat. Errors are logged and the beat retried at the next interval.
    """

    def __init__(self, *, process, interval: float, using: str, on_lost, clock):
        super().__init__(name="bgtasks-heartbeat", daemon=True)
        # This thread's own but the stop event, set from any thread.
        self.process = process
        self.interval = interval
        self.using = using
        self.on_lost = on_lost
        self.clock = clock  # synced with the database's at each beat
        self._stop_event = threading.Event()

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
                self.clock.sync(self.using)
                return
            logger.error("Worker %s: its row is gone (judged dead?)", self.process.pk)
            process = self.on_lost()
            if process is None:  # the worker is ending its process
                self.stop()
            else:
                self.process = process
        except CONNECTION_ERRORS as exc:
            logger.warning("Heartbeat failed (%s); retrying at the next beat", exc)
            discard_connection(self.using)
        except Exception:
            logger.exception("Heartbeat failed; retrying at the next beat")
