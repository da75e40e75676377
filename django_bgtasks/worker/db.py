"""Surviving a lost database connection in the worker's threads."""

from __future__ import annotations

import contextlib
import logging
import threading

from django.db import DatabaseError, InterfaceError, OperationalError, connections

logger = logging.getLogger("django_bgtasks.worker")

# Errors a reconnect may cure: a dropped connection, a restarted server,
# SQLite's "database is locked".
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def discard_connection(using: str) -> None:
    """Close this thread's connection so the next query opens a new one."""
    # Closing a dead connection can fail; it is gone either way.
    with contextlib.suppress(DatabaseError):
        connections[using].close()


def close_if_obsolete(using: str) -> None:
    """Close this thread's connection if an error left it unusable or it is
    past its ``CONN_MAX_AGE``, as ``close_old_connections()`` does; but a
    connection kept open is not health-checked before its next query. For a
    query that must not wait a round trip more: a connection broken while
    it waited fails that query, and the caller recovers."""
    connection = connections[using]
    checked = connection.health_check_done
    connection.close_if_unusable_or_obsolete()
    if connection.connection is not None:
        connection.health_check_done = checked


def database_reachable(using: str) -> bool:
    """Whether a fresh connection can run a query now."""
    try:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        discard_connection(using)
        return False


def retry_until_done(operation, *, using: str, what: str, give_up: threading.Event):
    """Run ``operation()`` until it does not fail with a connection error.

    Between tries the connection is discarded and the pause grows from 0.2 s
    to 10 s. Returns the operation's result, or None once ``give_up`` is set.
    While the database is reachable the error is raised after three tries:
    then it is the statement's, not the connection's.
    Used where losing the work is not an option, such as recording a
    finished job's result.
    """
    pause = 0.2
    failures_while_reachable = 0
    while True:
        try:
            return operation()
        except CONNECTION_ERRORS as exc:
            discard_connection(using)
            if database_reachable(using):
                # The server answers: the error may be the statement's own
                # (MySQL's max_allowed_packet is an OperationalError too).
                failures_while_reachable += 1
                if failures_while_reachable >= 3:
                    raise
            logger.warning(
                "Database error while %s (%s); retrying in %.1f s", what, exc, pause
            )
            if give_up.wait(pause):
                logger.error("Gave up %s: the worker is exiting", what)
                return None
            pause = min(pause * 2, 10.0)
