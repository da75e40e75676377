"""The worker's LISTEN connection: NOTIFY wake-ups on PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import select
import threading

from django.db import connections

from ..notify import CHANNEL, parse

logger = logging.getLogger("django_bgtasks.worker")


class Listener(threading.Thread):
    """LISTEN on a dedicated connection; call ``on_notify(priority)`` for our
    queues (``priority``: the highest notified, None if any came without).

    Reconnects with a growing pause when the connection drops, and calls
    ``on_notify`` after reconnecting, since notifications may have been
    missed meanwhile.
    """

    def __init__(self, using: str, queues: list[str] | None, on_notify):
        super().__init__(name="bgtasks-listener", daemon=True)
        # This thread's own but the stop event, set from any thread.
        self.using = using
        self.queues = None if queues is None else set(queues)
        self.on_notify = on_notify
        self._stop_event = threading.Event()
        self._connection = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        version = _psycopg_version()
        if (3,) <= version < (3, 2):
            # Waiting for notifications with a timeout needs psycopg 3.2.
            logger.warning("psycopg %s.%s cannot LISTEN here; polling only", *version)
            return
        pause = 0.5
        while not self._stop_event.is_set():
            try:
                self._connect()
                pause = 0.5
                self.on_notify(None)
                while not self._stop_event.is_set():
                    self._wait(timeout=1.0)
            except Exception as exc:
                if self._stop_event.is_set():
                    break
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._stop_event.wait(pause)
                pause = min(pause * 2, 10.0)
            finally:
                self._close()
        # on_notify may have used this thread's own database connection.
        connections.close_all()

    def _connect(self) -> None:
        wrapper = connections[self.using]
        conn = wrapper.get_new_connection(wrapper.get_connection_params())
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'LISTEN "{CHANNEL}"')
        self._connection = conn

    def _wait(self, timeout: float) -> None:
        conn = self._connection
        if callable(getattr(conn, "notifies", None)):  # psycopg 3.2+
            notifies = conn.notifies(timeout=timeout, stop_after=1)
            payloads = [n.payload for n in notifies]
        else:  # psycopg2
            readable, _, _ = select.select([conn], [], [], timeout)
            if not readable:
                return
            conn.poll()
            payloads = [n.payload for n in conn.notifies]
            conn.notifies.clear()
        ours = [
            priority
            for queue_name, priority in map(parse, payloads)
            if self.queues is None or queue_name in self.queues
        ]
        if ours:
            self.on_notify(None if None in ours else max(ours))

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _psycopg_version() -> tuple[int, ...]:
    """The version of psycopg 3, or (2,) when Django uses psycopg2."""
    try:
        import psycopg
    except ImportError:
        return (2,)
    return tuple(int(part) for part in psycopg.__version__.split(".")[:2])
