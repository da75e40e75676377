"""Inserting jobs: one statement for one job or many, with its NOTIFY.

- PostgreSQL: ``INSERT ... RETURNING id`` for one job, ``INSERT ... SELECT
  FROM jsonb_array_elements(...)`` for many (their arguments sent as one
  JSON document), with the queue's ``pg_notify`` in the same statement
  (delivered at commit), so enqueueing costs one round trip and joins the
  caller's transaction. Parameters are bound on the server (psycopg 3),
  the statement prepared outside a transaction on a connection straight
  to PostgreSQL, and otherwise where Django's cursors would be
  (``server_side_binding`` and ``prepare_threshold``; by default never).
- MySQL, MariaDB and SQLite: one job, a plain ``INSERT``; many, one
  ``INSERT ... SELECT`` from their arguments as a JSON document,
  ``RETURNING`` their ids (MariaDB, SQLite), else ``bulk_create`` where it
  returns the new ids, else one ``INSERT`` per job in one transaction
  (MySQL).

Many jobs go in chunks of ``CHUNK``. On PostgreSQL with psycopg 3 the chunks
are pipelined: the server inserts one chunk while Python checks the next
and makes the results of the last (a fifth faster than one chunk after
another, on 2 cores).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from ..db import mariadb_json_table, sqlstate
from ..models import Job
from ..notify import CHANNEL, notify_enabled, payload
from ..private_api import wrap_cursor

# Columns an enqueue sets, but for the arguments (the rest keep their
# defaults: NULL, 0); they are the same for every job of one insert.
COMMON = {
    "task_path": "text",
    "backend": "text",
    "queue_name": "text",
    "priority": "smallint",
    "route": "text",
    "trace_context": "jsonb",
    "status": "text",
    "run_after": "timestamptz",
    "task_run_after": "timestamptz",
    "expires_at": "timestamptz",
    "unique_key": "text",
    "limit_key": "text",
    "enqueued_at": "timestamptz",
    "attempts": "integer",
    "max_attempts": "integer",
    "timeout": "float8",
    "backoff": "jsonb",
    "worker_ids": "jsonb",
    "errors": "jsonb",
    "schedule_id": "bigint",
    "scheduled_for": "timestamptz",
}
# The fields of a plain INSERT of one job, in its parameters' order.
_INSERT_FIELDS = [Job._meta.get_field(name) for name in [*COMMON, "args", "kwargs"]]
# Each of those fields with its kind (COMMON's), which _prepared sends by.
_INSERT_KINDS = list(
    zip(_INSERT_FIELDS, [*COMMON.values(), "jsonb", "jsonb"], strict=True)
)
# Jobs per statement in a large insert: large enough that a statement's
# round trip is small beside its rows, small enough to overlap well.
CHUNK = 2000


def insert_jobs(
    using: str, common: dict[str, Any], arguments: list[tuple[list, dict]]
) -> list[int]:
    """Insert READY jobs, one per ``(args, kwargs)`` in ``arguments``, all
    with the other ``common`` columns, in one statement where the database
    allows; return their ids in order. Sends NOTIFY for their queue where it
    is on."""
    if not arguments:
        return []
    connection = connections[using]
    if connection.vendor == "postgresql":
        # A failed insert dooms the caller's transaction, as with the ORM.
        with transaction.mark_for_rollback_on_error(using):
            return _insert_postgresql(connection, common, arguments)
    if len(arguments) == 1:
        return [_insert_one(connection, common, *arguments[0])]
    dialect = _dialect(connection)
    if dialect is not None:
        if dialect == "sqlite" and not any(kwargs for _, kwargs in arguments):
            dialect = "sqlite_args"
        return _insert_from_json(connection, common, arguments, _INSERT_MANY[dialect])
    if connection.features.can_return_rows_from_bulk_insert:
        jobs = [Job(**common, args=args, kwargs=kwargs) for args, kwargs in arguments]
        Job.objects.using(using).bulk_create(jobs)
        return [job.pk for job in jobs]
    with transaction.atomic(using=using):
        return [_insert_one(connection, common, *call) for call in arguments]


def _insert_one(connection, common, args, kwargs) -> int:
    """Insert one job with a plain ``INSERT`` (MySQL, MariaDB, SQLite): the
    values prepared by their fields, as the ORM would, without compiling a
    query for each job."""
    params = _prepared(connection, [*(common[name] for name in COMMON), args, kwargs])
    # A failed insert dooms the caller's transaction, as with the ORM.
    with (
        transaction.mark_for_rollback_on_error(connection.alias),
        connection.cursor() as cursor,
    ):
        cursor.execute(_insert_one_sql(connection.alias), params)
        return connection.ops.last_insert_id(
            cursor, Job._meta.db_table, Job._meta.pk.column
        )


@functools.cache
def _insert_one_sql(using: str) -> str:
    """The plain ``INSERT`` of one job on database ``using`` (made once:
    quoting its two dozen columns took a tenth of an enqueue's Python)."""
    connection = connections[using]
    return (
        f"INSERT INTO {connection.ops.quote_name(Job._meta.db_table)} "
        f"({_columns(connection)}) "
        f"VALUES ({', '.join(['%s'] * len(_INSERT_FIELDS))})"
    )


def _prepared(connection, values: list) -> list:
    """``values`` of the first of ``_INSERT_FIELDS``, as their fields send
    them (the ORM's preparation), for less: an enqueue's values are of
    their columns' types already (checked as the task was validated), which
    the text and number fields send as they are, the JSON fields as
    ``json.dumps`` gives them (they have no encoder), and the time fields,
    for an aware time, as the backend adapts it. Once for the one ``now``
    that both ``run_after`` and ``enqueued_at`` usually hold. Field by
    field, this took a tenth of a single enqueue on SQLite."""
    adapt_time = connection.ops.adapt_datetimefield_value
    prepared = []
    last_time = adapted = None
    for (field, kind), value in zip(_INSERT_KINDS, values, strict=False):
        # None is NULL for every field (JSONField's too, as its
        # get_db_prep_save says): half the values of most jobs.
        if value is None:
            prepared.append(None)
        elif kind == "jsonb":
            prepared.append(_jsonb(value))
        elif kind != "timestamptz":
            prepared.append(value)
        else:
            if value is not last_time:
                last_time = value
                # An aware time is what the field would hand its backend.
                adapted = (
                    adapt_time(value)
                    if timezone.is_aware(value)
                    else field.get_db_prep_save(value, connection)
                )
            prepared.append(adapted)
    return prepared


def _columns(connection) -> str:
    """The columns of ``_INSERT_FIELDS``, quoted, in order."""
    return ", ".join(connection.ops.quote_name(f.column) for f in _INSERT_FIELDS)


def _dialect(connection) -> str | None:
    """Which of ``_INSERT_MANY`` serves ``connection``: MariaDB 10.6+
    (JSON_TABLE; RETURNING from 10.5), SQLite with RETURNING (3.35+) and
    its JSON functions; None for the others."""
    features = connection.features
    if connection.vendor == "mysql":
        return "mariadb" if mariadb_json_table(connection) else None
    if connection.vendor == "sqlite":
        json_functions = features.supports_json_field
        return (
            "sqlite"
            if json_functions and features.can_return_rows_from_bulk_insert
            else None
        )
    return None


# Many jobs in one INSERT ... SELECT from their arguments as one JSON
# document, RETURNING their ids (MariaDB 10.5+, SQLite 3.35+ with its JSON
# functions): 5-10 times bulk_create, which builds a model per job and, on
# SQLite, sends a statement per 40 jobs (its limit on parameters). MySQL
# returns no ids from an INSERT ... SELECT: bulk_create, or one by one.
# MariaDB takes each job's arguments as JSON text inside the document: as
# JSON they would nest two levels deeper than the arguments, past its limit
# of 32 levels for arguments that ``serialization`` accepts.
_INSERT_MANY = {
    "mariadb": """
        INSERT INTO {table} ({columns}) SELECT {common}, given.args, given.kwargs
        FROM JSON_TABLE(%s, '$[*]' COLUMNS (
            n FOR ORDINALITY,
            args LONGTEXT PATH '$[0]', kwargs LONGTEXT PATH '$[1]'
        )) AS given ORDER BY given.n RETURNING id
    """,
    "sqlite": """
        INSERT INTO {table} ({columns}) SELECT {common},
            json_extract(given.value, '$[0]'), json_extract(given.value, '$[1]')
        FROM json_each(%s) AS given ORDER BY given.key RETURNING id
    """,
    # SQLite, every job's kwargs empty (the usual bulk enqueue): the
    # document holds the args alone, one fewer JSON read per job (an eighth
    # of the statement's time).
    "sqlite_args": """
        INSERT INTO {table} ({columns}) SELECT {common}, given.value, '{{}}'
        FROM json_each(%s) AS given ORDER BY given.key RETURNING id
    """,
}


def _insert_from_json(connection, common, arguments, statement) -> list[int]:
    """Insert the jobs of ``arguments`` in one statement (``_INSERT_MANY``),
    the common columns prepared by their fields as the ORM would; their
    ids, in order (ids grow in the order the rows are inserted)."""
    params = _prepared(connection, [common[name] for name in COMMON])
    sql = statement.format(
        table=connection.ops.quote_name(Job._meta.db_table),
        columns=_columns(connection),
        common=", ".join(["%s"] * len(COMMON)),
    )
    if connection.vendor == "mysql":
        document = json.dumps([[json.dumps(a), json.dumps(k)] for a, k in arguments])
    elif statement is _INSERT_MANY["sqlite_args"]:
        document = json.dumps([args for args, _ in arguments])
    else:
        document = json.dumps(arguments)
    with (
        transaction.mark_for_rollback_on_error(connection.alias),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [*params, document])
        return _ids(cursor)


def insert_job_chunks(
    using: str,
    common: dict[str, Any],
    chunks: Iterable[list[tuple[list, dict]]],
    inserted: Callable[[list[int], list[tuple[list, dict]]], None],
) -> None:
    """Insert the jobs of each chunk of ``(args, kwargs)`` like insert_jobs,
    all in one transaction; call ``inserted(ids, chunk)`` for each.

    ``chunks`` is consumed lazily, and on PostgreSQL a chunk is sent before
    ``inserted`` is called for the previous one: an error raised while the
    next chunk is made, or by ``inserted``, rolls back every chunk."""
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor != "postgresql":
            for arguments in chunks:
                inserted(insert_jobs(using, common, arguments), arguments)
            return
        with _pipeline(connection), contextlib.ExitStack() as cursors:
            sent = None  # the chunk in flight: (cursor, arguments)
            for arguments in chunks:
                cursor = cursors.enter_context(_cursor(connection))
                if sent is None:
                    # One NOTIFY for the lot: it is delivered at commit.
                    _send_postgresql(cursor, common, arguments, notify=True)
                else:
                    ids = _ids(sent[0])  # waits for the chunk in flight
                    sent[0].close()
                    _send_postgresql(cursor, common, arguments, notify=False)
                    inserted(ids, sent[1])  # while this chunk is inserted
                sent = cursor, arguments
            if sent is not None:
                inserted(_ids(sent[0]), sent[1])


def _insert_postgresql(connection, common, arguments) -> list[int]:
    """``insert_jobs`` on PostgreSQL, in one statement. Where it may
    (``_cursor``), the statement is prepared; a connection that turns out
    not to keep it (the statement lost: a pooler that hands each
    transaction any server connection) inserts again, unprepared, from then
    on: outside a transaction, the failed statement wrote nothing."""
    try:
        with _cursor(connection, may_prepare=True) as cursor:
            _send_postgresql(cursor, common, arguments, notify=True)
            return _ids(cursor)
    except DatabaseError as exc:
        if not (_may_prepare(connection) and sqlstate(exc) in PREPARED_LOST):
            raise
    connection._bgtasks_straight = (connection.connection, False)
    with _cursor(connection) as cursor:
        _send_postgresql(cursor, common, arguments, notify=True)
        return _ids(cursor)


# A prepared statement missing on the server, or its name taken there.
PREPARED_LOST = {"26000", "42P05"}


def _cursor(connection, *, may_prepare: bool = False):
    """A cursor for an insert: on psycopg 3, one that binds the parameters
    on the server. Django's default cursor quotes each parameter into the
    statement's text on the client, which for an insert's twenty costs more
    than the rest of an enqueue's Python.

    ``may_prepare`` (an insert of one statement, whose cursor is kept:
    ``_KeptCursor``): it prepares its statements (the server then parses and
    plans each once per connection, not at every enqueue: a quarter of an
    enqueue's time) where that is safe (``_may_prepare``). Otherwise it
    prepares as Django's own cursors would (with
    ``OPTIONS["server_side_binding"]`` True, as the connection's
    ``prepare_threshold`` says; by default never), so that it works behind
    PgBouncer in transaction mode as Django's cursor does."""
    connection.close_if_health_check_failed()
    psycopg3 = _psycopg3_of(connection)
    if psycopg3 is None:
        return connection.cursor()
    with connection.wrap_database_errors:
        # Wrapped as Django wraps its own: errors, thread checks, and the
        # query log under DEBUG or in assertNumQueries.
        if connection.settings_dict["OPTIONS"].get("server_side_binding") is True:
            cursor_class = psycopg3.cursor_class
        elif may_prepare and _may_prepare(connection):
            cursor_class = psycopg3.prepared_class
        else:
            cursor_class = psycopg3.unprepared_class
        if may_prepare:  # one statement at a time: the kept cursor serves
            return _KeptCursor.of(connection, cursor_class)
        return wrap_cursor(connection, cursor_class(connection.connection))


class _KeptCursor:
    """The cursor of a connection's one-statement inserts (``insert_jobs``),
    made once and used by each of them (psycopg makes a cursor with a copy
    of its connection's adapters: a seventh of a single enqueue's time on a
    2-vCPU machine, 2026-12-07). A context manager like a cursor: taken
    from its connection as the insert begins and put back as it ends
    without an error (an error drops it), so an insert made meanwhile (by
    an execute wrapper, or another thread on a shared connection) makes a
    cursor of its own and never reads this one's rows. Made again for a new
    connection, another kind of cursor, or when the query log is switched
    on or off (``DEBUG``, ``assertNumQueries``): Django picks the wrapper
    that logs as the cursor is made."""

    __slots__ = ("connection", "cursor", "kind", "logged", "raw")

    def __init__(self, connection, cursor_class):
        self.connection = connection
        self.raw = connection.connection
        self.kind = cursor_class
        self.logged = connection.queries_logged
        self.cursor = wrap_cursor(connection, cursor_class(self.raw))

    @classmethod
    def of(cls, connection, cursor_class) -> _KeptCursor:
        # Taken (one step under the GIL), not shared while in use.
        kept = connection.__dict__.pop(_KEPT, None)
        if kept is None:
            return cls(connection, cursor_class)
        if (
            kept.raw is not connection.connection
            or kept.kind is not cursor_class
            or kept.logged != connection.queries_logged
        ):
            kept.close()
            return cls(connection, cursor_class)
        connection.validate_thread_sharing()  # as making a cursor does
        return kept

    def __enter__(self):
        return self.cursor

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            setattr(self.connection, _KEPT, self)
        else:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cursor.close()


# Where a connection (Django's wrapper) keeps its _KeptCursor between inserts.
_KEPT = "_bgtasks_insert_cursor"


def _may_prepare(connection) -> bool:
    """Whether an insert on ``connection`` may prepare its statement
    although Django's settings do not: outside any transaction (a failure
    can be retried: ``_insert_postgresql``) on a connection straight to
    the server."""
    return (
        connection.get_autocommit()
        and not connection.in_atomic_block
        and _straight_to_server(connection)
    )


def _straight_to_server(connection) -> bool:
    """Whether ``connection`` (psycopg 3, connected) talks to one PostgreSQL
    server process for its whole life, so that statements prepared on it
    stay there: the process that answers is the one whose id the server
    gave when the connection opened. A pooler (PgBouncer, in any mode)
    gives its own id instead; it may hand each transaction another server
    connection, which does not know what this one prepared, or holds other
    statements under the same names. Asked once per connection."""
    raw = connection.connection
    known = getattr(connection, "_bgtasks_straight", None)
    if known is not None and known[0] is raw:
        return known[1]
    if connection.needs_rollback:
        return False  # a failed transaction answers nothing: ask next time
    # A plain cursor of the driver, as Django's own setup of a connection
    # uses: a question about the link, not one of the site's queries.
    with raw.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [(pid,)] = cursor.fetchall()
    straight = pid == raw.info.backend_pid
    connection._bgtasks_straight = (raw, straight)
    return straight


# A prepare_threshold that prepares only the statements that ask for it.
NEVER_BY_COUNT = 2**62


class _Psycopg3(NamedTuple):
    connection_class: type
    cursor_class: type  # binds on the server, prepares by prepare_threshold
    prepared_class: type  # binds on the server, prepares at once
    unprepared_class: type  # binds on the server, never prepares
    has_pipeline: bool  # libpq has pipeline mode


def _psycopg3_of(connection) -> _Psycopg3 | None:
    """What the inserts use of psycopg 3, where ``connection`` (connected
    here) is a psycopg 3 connection; else None (psycopg2)."""
    connection.ensure_connection()
    psycopg3 = _psycopg3_classes()
    if psycopg3 is None or not isinstance(
        connection.connection, psycopg3.connection_class
    ):
        return None
    return psycopg3


@functools.cache
def _psycopg3_classes() -> _Psycopg3 | None:
    """What the inserts use of psycopg 3; None where it is not installed."""
    try:
        import psycopg
    except ImportError:
        return None

    class PreparedCursor(psycopg.Cursor):
        def execute(self, query, params=None, *, prepare=None, binary=None):
            # prepare_threshold None (Django's default) turns preparing off
            # on the connection, even for a statement that asks for it; any
            # other value also has psycopg count and keep every statement
            # it runs, and deallocate them all at a savepoint's rollback.
            # So a count never reached, for this statement only.
            connection = self.connection
            threshold = connection.prepare_threshold
            if threshold is None:
                connection.prepare_threshold = NEVER_BY_COUNT
            try:
                return super().execute(query, params, prepare=True, binary=binary)
            finally:
                if threshold is None:
                    connection.prepare_threshold = None

        def _send_query_prepared(self, name, pgq, **kwargs):
            # psycopg records the query it sends (which Django's query log
            # reads: last_executed_query) only when it is not prepared.
            self._query = pgq
            return super()._send_query_prepared(name, pgq, **kwargs)

    class UnpreparedCursor(psycopg.Cursor):
        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=False, binary=binary)

    return _Psycopg3(
        psycopg.Connection,
        psycopg.Cursor,
        PreparedCursor,
        UnpreparedCursor,
        psycopg.Pipeline.is_supported(),
    )


def _pipeline(connection):
    """psycopg 3's pipeline mode on ``connection``, where libpq has it: a
    statement is sent without waiting for the last one's result."""
    psycopg3 = _psycopg3_of(connection)
    if psycopg3 is None or not psycopg3.has_pipeline:
        return contextlib.nullcontext()
    return connection.connection.pipeline()


def _ids(cursor) -> list[int]:
    return sorted(row[0] for row in cursor.fetchall())


def _send_postgresql(cursor, common, arguments, *, notify: bool) -> None:
    """Execute the insert of one chunk on ``cursor`` (in pipeline mode, send
    it); its ids are then the cursor's rows."""
    params = [
        _jsonb(common[name]) if is_json else common[name]
        for name, is_json in _COMMON_KINDS
    ]
    if len(arguments) == 1:  # the common case, with the simplest statement
        args, kwargs = arguments[0]
        params += [json.dumps(args), _jsonb(kwargs)]
        many = False
    else:
        # The arguments go as one JSON document, one parameter: far cheaper
        # to send than a column of arrays, and the server parses it quickly.
        params.append(json.dumps(arguments))
        many = True
    notify = notify and notify_enabled(cursor.db)
    if notify:
        params += [CHANNEL, payload(common["queue_name"], common["priority"])]
    cursor.execute(_STATEMENTS[many, notify], params)


# COMMON's names, each with whether it is a JSON column.
_COMMON_KINDS = [(name, kind == "jsonb") for name, kind in COMMON.items()]


class EncodedJSON(dict):
    """A JSON object column's value, the same for every job of a task (its
    backoff), with its text made once: not encoded again at every enqueue.
    A dict wherever else it goes (the ORM's inserts, results), but read
    only, so the text stays its value's."""

    __slots__ = ("text",)

    def __init__(self, value: dict):
        super().__init__(value)
        self.text = json.dumps(value)

    def __reduce__(self):
        return (EncodedJSON, (dict(self),))

    def _read_only(self, *args, **kwargs):
        raise TypeError("An EncodedJSON is read only: its text is made once.")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def _jsonb(value: Any) -> str | None:
    """A JSON column's value as its text; None is SQL NULL (trace_context),
    as the ORM stores it. The empty list and object most jobs hold (their
    errors, worker_ids, kwargs) are written without the encoder."""
    if value is None:
        return None
    kind = type(value)
    if kind is EncodedJSON:
        return value.text
    if not value and kind in _EMPTY_JSON:
        return _EMPTY_JSON[kind]
    return json.dumps(value)


_EMPTY_JSON = {list: "[]", dict: "{}"}


_TABLE = f'"{Job._meta.db_table}"'
_COLUMNS = ", ".join([*COMMON, "args", "kwargs"])
_CASTS = ", ".join(f"%s::{kind}" for kind in COMMON.values())
_ONE = f"""
    INSERT INTO {_TABLE} ({_COLUMNS}) VALUES ({_CASTS}, %s::jsonb, %s::jsonb)
    RETURNING id
"""
_MANY = f"""
    INSERT INTO {_TABLE} ({_COLUMNS})
    SELECT {_CASTS}, call.value -> 0, call.value -> 1
    FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS call(value, n)
    ORDER BY call.n
    RETURNING id
"""
# NOTIFY in the same statement: delivered at commit, with the rows. One
# row notifies from its RETURNING (cheaper to plan than a CTE); many rows
# notify once, from a CTE.
_NOTIFYING = """
    WITH new AS ({insert}),
    woken AS (SELECT pg_notify(%s, %s) WHERE EXISTS (SELECT 1 FROM new))
    SELECT id FROM new, (SELECT count(*) FROM woken) AS notified
"""
_STATEMENTS = {
    (False, False): _ONE,
    (True, False): _MANY,
    (False, True): _ONE.replace("RETURNING id", "RETURNING id, pg_notify(%s, %s)"),
    (True, True): _NOTIFYING.format(insert=_MANY),
}


def insert_rows(using: str, model, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows of ``model`` that differ in every column (a workflow's
    jobs and edges), each a dict by field name, all with the same names;
    return their ids in order. One statement on PostgreSQL (the rows as
    one JSON document), ``bulk_create`` elsewhere (MySQL, which returns no
    ids from it: one INSERT per row)."""
    if not rows:
        return []
    connection = connections[using]
    if connection.vendor != "postgresql":
        objects = [model(**row) for row in rows]
        if connection.features.can_return_rows_from_bulk_insert:
            model.objects.using(using).bulk_create(objects)
        else:
            for obj in objects:
                obj.save(using=using, force_insert=True)
        return [obj.pk for obj in objects]
    names = tuple(rows[0])
    with (
        transaction.mark_for_rollback_on_error(using),
        _cursor(connection) as cursor,
    ):
        cursor.execute(
            _rows_sql(using, model, names),
            [json.dumps([[row[name] for name in names] for row in rows], default=str)],
        )
        return _ids(cursor)


@functools.cache
def _rows_sql(using: str, model, names: tuple[str, ...]) -> str:
    """INSERT ... SELECT from a JSON array of arrays, one per row, holding
    the values of the fields ``names`` in order; RETURNING the new ids in
    the rows' order (the ids follow the ORDER BY)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = [model._meta.get_field(name) for name in names]
    values = []
    for n, field in enumerate(fields):
        kind = field.db_type(connection)
        if kind == "jsonb":
            # None is SQL NULL, as the ORM stores it, not JSON null.
            values.append(f"NULLIF(row.value -> {n}, 'null'::jsonb)")
        else:
            # Text, not varchar(n): a value too long is the column's error,
            # not cut short by the cast.
            kind = "text" if kind.startswith("varchar") else kind
            values.append(f"(row.value ->> {n})::{kind}")
    return f"""
        INSERT INTO {quote(model._meta.db_table)}
            ({", ".join(quote(field.column) for field in fields)})
        SELECT {", ".join(values)}
        FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS row(value, n)
        ORDER BY row.n
        RETURNING id
    """
