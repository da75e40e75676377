"""Database connections in long-lived threads (the worker's, the maintenance
duties'): kept open for the thread's lifetime, and survived when lost.

A worker is not a request: Django closes a request's connection at its end
(``CONN_MAX_AGE = 0``, its default) or after an age, but a worker's threads
keep theirs whatever ``CONN_MAX_AGE`` says while they work, and close one
when an error has left it unusable. Reconnecting for every job would cost
the database a new backend per job. A thread that only works with jobs (a
job thread, the completer, the thread that claims urgent jobs) closes its
connections once it has had none for ``IDLE_CONNECTION_SECONDS``: an idle
worker process holds only its claims' and its heartbeat's (and a
standalone one its ``LISTEN`` and maintenance connections).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta

from django.db import (
    DatabaseError,
    Error,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.backends.signals import connection_created
from django.db.models import DateTimeField, Func
from django.db.transaction import TransactionManagementError

from .private_api import keep_open, saw_error, skip_health_check

logger = logging.getLogger("django_bgtasks.worker")

# Errors a reconnect may cure: a dropped connection, a restarted server,
# SQLite's "database is locked".
CONNECTION_ERRORS = (OperationalError, InterfaceError)
# Seconds without work after which a job thread, the completer, a
# supervisor's child's message thread and a worker's listener close their
# connections.
IDLE_CONNECTION_SECONDS = 5.0


def chunks(ids: list, size: int = 1000):
    """``ids`` in lists of at most ``size``: a statement's parameters stay
    within every database's limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def sqlstate(exc: Exception) -> str | None:
    """The PostgreSQL SQLSTATE of the driver's error under Django's ``exc``
    (psycopg 3's ``sqlstate``, psycopg 2's ``pgcode``), or None."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def is_deadlock(exc: Exception) -> bool:
    """Whether ``exc`` is the database breaking a deadlock (PostgreSQL's
    SQLSTATE 40P01, MySQL's error 1213), or MariaDB's 1020 (a row changed
    since the transaction's snapshot, under innodb_snapshot_isolation):
    this transaction was rolled back and may be tried again."""
    if sqlstate(exc) == "40P01":
        return True
    args = getattr(exc.__cause__, "args", ())
    return bool(args) and args[0] in (1213, 1020)  # MySQLdb


def discard_connection(using: str) -> None:
    """Close this thread's connection so the next query opens a new one."""
    # Closing a dead connection can fail; it is gone either way.
    with contextlib.suppress(DatabaseError):
        connections[using].close()


def cancel_query(using: str) -> None:
    """Ask the server to cancel what this thread's connection runs, if
    anything, and close the connection (PostgreSQL; elsewhere only close
    it). For a call cut short in Python (a second stop request), whose
    statement would otherwise run on in the database: a claim behind a lock
    would claim jobs once the lock was free, for a worker gone by then."""
    cancel_statement(connections[using])
    discard_connection(using)


def cancel_statement(connection) -> None:
    """Ask the server to cancel what ``connection`` (a connection wrapper,
    of any thread) runs, if anything: best effort, on PostgreSQL only (the
    drivers' cancel is safe from another thread)."""
    raw = connection.connection
    if raw is not None and connection.vendor == "postgresql":
        with contextlib.suppress(Exception):
            if hasattr(raw, "cancel_safe"):  # psycopg 3, with a deadline
                raw.cancel_safe(timeout=2.0)
            else:  # psycopg 2
                raw.cancel()


# Whether this thread has opened a connection since it last closed them all:
# Django sends ``connection_created`` on the thread that connects, once the
# connection is set up. After a success, a job thread whose tasks have not
# queried since it was last idle skips ``tidy_connections``: asking Django's
# per-thread registry which connections it holds costs some 3 µs, a
# twentieth of a no-op job. A connection that this thread holds unseen (its
# setup failed before the signal, and the task caught that error; or it was
# opened on another thread and shared) is tidied only after an attempt that
# did not succeed, as every connection is then.
_opened = threading.local()


def _note_opened(sender, connection, **kwargs) -> None:
    _opened.here = True


connection_created.connect(_note_opened, dispatch_uid="django_bgtasks.db.opened")


def close_idle_connections() -> None:
    """Close this thread's connections (it has been idle for
    IDLE_CONNECTION_SECONDS); a dead one's error is dropped, and any other
    is logged: the thread (a job thread, the completer) must go on."""
    held = connections.all(initialized_only=True)
    for connection in held:
        try:
            connection.close()
        except DatabaseError:
            pass
        except Exception:
            logger.exception("Closing the idle connection %r failed", connection.alias)
    # One that would not close is still to be tidied.
    _opened.here = any(connection.connection is not None for connection in held)


def tidy_connections(*, succeeded: bool = False) -> None:
    """After a job, on its thread: close the connections an error in the
    task may have left unusable (a reconnect is cheap beside a next job
    failing on a dead one: SQLite cannot even tell), and those it left out
    of autocommit; keep the others open for the thread's next job, whatever
    their age. With ``CONN_HEALTH_CHECKS``, a kept one is checked before its
    next query, as after a request. ``succeeded``: the job succeeded, and
    if this thread has opened no connection, there is nothing to tidy."""
    if succeeded and not getattr(_opened, "here", False):
        return
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if saw_error(connection):
            discard_connection(connection.alias)
        else:
            keep_open(connection)
            connection.close_if_unusable_or_obsolete()


def close_if_unusable(using: str) -> None:
    """Close this thread's connection if an error left it unusable, as
    ``tidy_connections`` does; but a connection kept open is not
    health-checked before its next query. For a query that must not wait a
    round trip more: a connection broken while it waited fails that query,
    and the caller recovers."""
    connection = connections[using]
    if connection.connection is None:
        return
    keep_open(connection)
    connection.close_if_unusable_or_obsolete()
    if connection.connection is not None:
        skip_health_check(connection)


def still_answers(connection) -> bool:
    """Whether ``connection`` is open and answers a ping (Django's
    ``is_usable``, which assumes an open one: a transaction that could not
    roll back has closed it)."""
    return connection.connection is not None and connection.is_usable()


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


def use_wal_journal(using: str) -> None:
    """On SQLite, switch the database file to WAL journal mode (kept once
    set): the web process then reads while a worker writes."""
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
            logger.info("Switched the SQLite database to WAL journal mode")


class DatabaseNow(Func):
    """The database server's current time, in UTC: the one clock that hosts
    compare (heartbeats, rescue deadlines, due jobs, schedules). Unlike
    Django's ``Now()``, independent of a MySQL session's time zone."""

    template = "STATEMENT_TIMESTAMP()"
    output_field = DateTimeField()

    def as_mysql(self, compiler, connection, **extra_context):
        return "UTC_TIMESTAMP(6)", []

    def as_sqlite(self, compiler, connection, **extra_context):
        return "%s", [_sqlite_now()]


def _sqlite_now() -> str:
    """SQLite's clock is the process's own (one host), and its ``'now'`` has
    only millisecond precision: a job enqueued in the same millisecond
    would not yet be due. The process's time, as Django stores it (text in
    UTC, compared as text), has microseconds."""
    return _sqlite_text(datetime.now(UTC))


def _sqlite_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def id_list(ids) -> str:
    """Row ids (integers) as the text of an SQL list, for ``IN (...)``: a
    claim's ids written into its statement rather than sent as parameters,
    which mysqlclient escapes one by one in Python. Format ``d`` refuses anything
    but a number."""
    return ", ".join([f"{pk:d}" for pk in ids])


@contextlib.contextmanager
def statements_in_one_transaction(
    connection, *, isolation: str | None = None, django_knows: bool = False
):
    """MySQL/MariaDB: run the block's statements in one transaction: its own
    (``START TRANSACTION`` ... ``COMMIT``, at the level ``isolation`` if
    given, e.g. ``"REPEATABLE READ"``), or inside a caller's transaction a
    savepoint of it (at the caller's level).

    One round trip fewer than an outermost ``transaction.atomic``, which
    switches autocommit off and on again (a statement each) around its
    commit: on a worker's claim and completion, a round trip costs as much
    client CPU as a few jobs' rows. Django does not know of this
    transaction: the block must make plain statements only (no
    ``transaction.atomic``, ``select_for_update`` or ``on_commit``). With
    ``django_knows`` it is ``transaction.atomic`` at the same level (for a
    block that needs the ORM's transactions)."""
    if in_plain_transaction(connection):
        # START TRANSACTION would commit the one under way.
        raise TransactionManagementError("statements_in_one_transaction is not nested")
    own = connection.get_autocommit()
    if django_knows or not own:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            if own and isolation is not None:  # before its first statement
                cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            yield
        return
    with connection.cursor() as cursor:
        if isolation is not None:  # the next transaction's
            cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        cursor.execute("START TRANSACTION")
        setattr(connection, _IN_PLAIN_TRANSACTION, True)
        try:
            yield
        except BaseException:
            try:
                cursor.execute("ROLLBACK")
            except Error:
                # As Django's atomic does: a connection that cannot roll
                # back is dropped (no transaction left open behind Django).
                connection.close()
            raise
        finally:
            setattr(connection, _IN_PLAIN_TRANSACTION, False)
        cursor.execute("COMMIT")


_IN_PLAIN_TRANSACTION = "_django_bgtasks_in_plain_transaction"


def in_plain_transaction(connection) -> bool:
    """Whether ``connection`` is inside ``statements_in_one_transaction``'s
    own transaction (which Django does not know of)."""
    return getattr(connection, _IN_PLAIN_TRANSACTION, False)


def mariadb_json_table(connection) -> bool:
    """Whether ``connection`` is MariaDB 10.6+, whose JSON_TABLE the bulk
    enqueue and the batch completion read their rows from: one JSON
    document as one parameter, where mysqlclient would escape a parameter
    per value in Python. (MySQL 8 has a JSON_TABLE too, with its own rules
    for a JSON string's text; it keeps the plain statements.)"""
    return (
        connection.vendor == "mysql"
        and connection.mysql_is_mariadb
        and connection.mysql_version >= (10, 6)
    )


def now_sql(connection, at_micros: int | None = None) -> str:
    """``DatabaseNow`` as SQL text for ``connection``'s database, for the
    statements written by hand (the claim); or, given ``at_micros``
    (``micros_since_1970``), that moment, read from the database's clock
    before: a claim's UPDATE stamps the time its read or its tokens had
    (MySQL/MariaDB, SQLite)."""
    if at_micros is not None:
        if connection.vendor == "sqlite":
            return f"'{_sqlite_text(moment_of_micros(at_micros))}'"
        if connection.vendor == "mysql":
            return f"TIMESTAMPADD(MICROSECOND, {at_micros:d}, {_EPOCH_MYSQL})"
        raise NotImplementedError(connection.vendor)
    if connection.vendor == "sqlite":
        return f"'{_sqlite_now()}'"
    return {"postgresql": "STATEMENT_TIMESTAMP()", "mysql": "UTC_TIMESTAMP(6)"}[
        connection.vendor
    ]


def micros_since_1970(moment: datetime) -> int:
    """The aware ``moment`` in whole microseconds since 1970 (UTC), exactly."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def moment_of_micros(micros: int) -> datetime:
    """``micros_since_1970``'s inverse: an aware moment in UTC."""
    return _EPOCH + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MYSQL = "TIMESTAMP'1970-01-01 00:00:00'"


def database_now(using: str) -> datetime:
    """The database server's current time (aware, UTC)."""
    connection = connections[using]
    if connection.vendor == "sqlite":
        return datetime.now(UTC)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {now_sql(connection)}")
        value = cursor.fetchone()[0]
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
