"""The worker's LISTEN connection: NOTIFY wake-ups and stop requests on
PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time

from django.db import connections
from django.utils.crypto import get_random_string

from ..conf import bgtasks_settings
from ..db import IDLE_CONNECTION_SECONDS, close_idle_connections
from ..notify import CHANNEL, STOP_CHANNEL, parse
from .pipe import Requests

logger = logging.getLogger("django_bgtasks.worker")


class Listener(threading.Thread):
    """LISTEN on a dedicated connection; call ``on_notify(priority)`` for our
    queues (``priority``: the highest notified, None if any came without),
    and ``on_stop_request(worker_id)`` when jobs of worker ``worker_id``
    were asked to stop (of any worker, if ``worker_id`` is None: a
    supervisor's, for its children), and ``on_warm()`` when another thread
    asks for it (``ask_to_warm``: the wait for notifications ends at
    once). The connections these open on this thread (a claim's, a
    read's) are closed after IDLE_CONNECTION_SECONDS without a notification
    or a request to warm.

    Reconnects with a growing pause when the connection drops, and calls
    both after reconnecting (``on_stop_request(None)``), since
    notifications may have been missed meanwhile.
    """

    # The longest wait for notifications, between looks at the stop event
    # and at the connection's idleness.
    WAIT_SECONDS = 1.0

    def __init__(
        self,
        using: str,
        queues: list[str] | None,
        on_notify,
        *,
        worker_id: str | None = None,
        on_stop_request=None,
        on_warm=None,
    ):
        super().__init__(name="bgtasks-listener", daemon=True)
        # This thread's own but the stop event, set from any thread.
        self.using = using
        # LISTEN goes over this alias's connection: the claims' own, or one
        # that reaches PostgreSQL directly where they go through a pooler.
        self.listen_using = bgtasks_settings.LISTEN_DATABASE or using
        self.queues = None if queues is None else set(queues)
        self.on_notify = on_notify
        self.worker_id = worker_id
        self.on_stop_request = on_stop_request
        self.on_warm = on_warm
        # ask_to_warm's flag, and its byte (and stop's) that ends the wait
        # for notifications.
        self._warm_asked = threading.Event()
        self._wakes = Requests()
        self._stop_event = threading.Event()
        self._connection = None
        self._checked = False  # it heard a notification sent from elsewhere

    def stop(self) -> None:
        self._stop_event.set()
        self._wakes.send(b"s")

    def ask_to_warm(self) -> None:
        """Have ``on_warm()`` called on this thread (from any thread)."""
        self._warm_asked.set()
        self._wakes.send(b"w")

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
                if not self._checked:
                    if not self._hears_others():
                        logger.warning(
                            "LISTEN on database %r does not hear a NOTIFY sent "
                            "through %r (a pooler in transaction mode, such as "
                            "PgBouncer?): this worker polls only. Set "
                            "BGTASKS['LISTEN_DATABASE'] to an alias that "
                            "reaches PostgreSQL directly.",
                            self.listen_using,
                            self.using,
                        )
                        return
                    self._checked = True
                pause = 0.5
                self._tell(self.on_notify, None)
                if self.on_stop_request is not None:
                    self._tell(self.on_stop_request, None)
                heard_at = time.monotonic()
                while not self._stop_event.is_set():
                    if self._wait(timeout=self.WAIT_SECONDS):
                        heard_at = time.monotonic()
                    if self._warm_asked.is_set():
                        self._warm()
                        heard_at = time.monotonic()
                    elif time.monotonic() - heard_at >= IDLE_CONNECTION_SECONDS:
                        # The connection its claims and reads opened; once
                        # per quiet spell, not at every timeout.
                        close_idle_connections()
                        heard_at = time.monotonic()
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
        self._connection = _new_connection(self.listen_using)
        with self._connection.cursor() as cursor:
            cursor.execute(f'LISTEN "{CHANNEL}"')
            if self.on_stop_request is not None:
                cursor.execute(f'LISTEN "{STOP_CHANNEL}"')

    def _hears_others(self, within: float = 5.0) -> bool:
        """Whether this connection hears a NOTIFY that another connection
        (through the claims' alias, as enqueues send theirs) sends on a
        channel of its own: a pooled connection in transaction mode does
        not. The notifications of the jobs that come meanwhile are passed
        on."""
        probe = f"{CHANNEL}_probe_{get_random_string(12).lower()}"
        with self._connection.cursor() as cursor:
            cursor.execute(f'LISTEN "{probe}"')
        sender = _new_connection(self.using)
        try:
            with sender.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [probe, "probe"])
        finally:
            sender.close()
        deadline = time.monotonic() + within
        heard = False
        while not heard and (left := deadline - time.monotonic()) > 0:
            notes = self._receive(left)
            heard = any(channel == probe for channel, _ in notes)
            self._pass_on([note for note in notes if note[0] != probe])
        with self._connection.cursor() as cursor:
            cursor.execute(f'UNLISTEN "{probe}"')
        return heard

    def _wait(self, timeout: float) -> bool:
        """Pass on what comes within ``timeout`` seconds, or until another
        thread asks to warm; whether any of it was for this listener
        (another queue's jobs are not)."""
        return self._pass_on(self._receive(timeout, or_warm=True))

    def _warm(self) -> None:
        self._warm_asked.clear()
        self._wakes.drain()
        if self.on_warm is not None:
            try:
                self.on_warm()
            except Exception:
                logger.exception("Readying the claims' connection failed")

    def _receive(
        self, timeout: float, *, or_warm: bool = False
    ) -> list[tuple[str, str]]:
        """The notifications that come within ``timeout`` seconds (at least
        one, or none at the timeout, or once another thread asks to warm,
        if ``or_warm``): (channel, text)."""
        conn = self._connection
        wakes = [self._wakes.fd] if or_warm else []
        if callable(getattr(conn, "notifies", None)):  # psycopg 3.2+
            # Those it has read already first (a select would not see
            # them), then the socket and the requests at once.
            notes = self._received(conn, 0.0 if wakes else timeout)
            if notes or not wakes:
                return notes
            readable, _, _ = select.select([conn.fileno(), *wakes], [], [], timeout)
            return self._received(conn, 0.0) if conn.fileno() in readable else []
        readable, _, _ = select.select([conn, *wakes], [], [], timeout)  # psycopg2
        if conn not in readable:
            return []
        conn.poll()
        notes = [(n.channel, n.payload) for n in conn.notifies]
        conn.notifies.clear()
        return notes

    @staticmethod
    def _received(conn, timeout: float) -> list[tuple[str, str]]:
        """psycopg 3's notifications within ``timeout`` seconds."""
        notifies = conn.notifies(timeout=timeout, stop_after=1)
        return [(n.channel, n.payload) for n in notifies]

    def _pass_on(self, notes: list[tuple[str, str]]) -> bool:
        """Call back for what of ``notes`` is ours; whether any was."""
        ours = [
            priority
            for queue_name, priority in (
                parse(text) for channel, text in notes if channel == CHANNEL
            )
            if self.queues is None or queue_name in self.queues
        ]
        if ours:
            self._tell(self.on_notify, None if None in ours else max(ours))
        if self.on_stop_request is None:
            return bool(ours)
        stops = {
            text
            for channel, text in notes
            if channel == STOP_CHANNEL
            and (self.worker_id is None or text == self.worker_id)
        }
        for worker_id in stops:
            self._tell(self.on_stop_request, worker_id)
        return bool(ours or stops)

    @staticmethod
    def _tell(callback, argument) -> None:
        """``callback(argument)``. What it raises is the worker's error, not
        the connection's: logged, and the connection kept (a reconnect
        would only call it again)."""
        try:
            callback(argument)
        except Exception:
            logger.exception("Acting on a notification failed")

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _new_connection(using: str):
    """A new autocommit connection of alias ``using``, outside Django's
    connection handling (it is this thread's alone)."""
    wrapper = connections[using]
    conn = wrapper.get_new_connection(wrapper.get_connection_params())
    conn.autocommit = True
    return conn


def _psycopg_version() -> tuple[int, ...]:
    """The version of psycopg 3, or (2,) when Django uses psycopg2."""
    try:
        import psycopg
    except ImportError:
        return (2,)
    return tuple(int(part) for part in psycopg.__version__.split(".")[:2])
