"""What every claim shares (``claim.py``, ``limited.py``): the columns it
sets, the paused queues it leaves out, and how a PostgreSQL claim returns
its rows lean and makes Jobs of them."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings

from ..db import (
    CONNECTION_ERRORS,
    discard_connection,
    id_list,
    is_deadlock,
    moment_of_micros,
    still_answers,
)
from ..models import Job, JobStatus, Queue
from ..private_api import model_from_row

# The queues paused now (models/queues.py): a claim takes none of their jobs.
PAUSED_QUEUES = f"SELECT name FROM {Queue._meta.db_table} WHERE paused_at IS NOT NULL"

# Columns every claim sets; {now} is the database's time (its clock is the
# one all hosts compare), {append} the vendor's "append to a JSON array".
CLAIM_SET = """
    status = %s,
    attempts = {job}.attempts + 1,
    started_at = COALESCE({job}.started_at, {now}),
    last_attempted_at = {now},
    worker_id = %s,
    worker_ids = {append}
"""


def as_claimed(values: dict, worker_id, now: datetime) -> None:
    """Make ``values``, a due job's row read before its claim's UPDATE (the
    MySQL/MariaDB claim's locking read), what ``CLAIM_SET`` makes of it,
    with ``now`` the time the UPDATE is given."""
    values["status"] = JobStatus.RUNNING.value
    values["attempts"] += 1
    if values["started_at"] is None:
        values["started_at"] = now
    values["last_attempted_at"] = now
    values["worker_id"] = worker_id
    worker_ids = values["worker_ids"]
    if type(worker_ids) is not list:  # JSON_ARRAY_APPEND would wrap it
        raise TypeError(f"worker_ids is not a list: {worker_ids!r}")
    values["worker_ids"] = [*worker_ids, worker_id]


def queue_literal(connection, value: str) -> str:
    """The queue name ``value`` as an SQL literal, quoted by the driver, for
    a claim's text (then run with parameters: ``%`` doubled). A claim of
    one queue writes it in its text rather than take it as a parameter: its
    plan is made once for any parameters (``pinned.py``), and one made for
    any queue might walk the READY index of all queues past another
    queue's backlog."""
    key = (connection.alias, value)
    literal = _LITERALS.get(key)
    if literal is None:
        if len(_LITERALS) > 1024:
            _LITERALS.clear()
        with connection.wrap_database_errors:  # a NUL: Django's DataError
            literal = connection.ops.compose_sql("%s", [value])
        literal = literal.replace("%", "%%")
        _LITERALS[key] = literal
    return literal


# The queue names' literals made so far, by alias and name.
_LITERALS: dict[tuple[str, str], str] = {}


def set_params(worker_id):
    return [JobStatus.RUNNING.value, worker_id, worker_id]


def named_params(worker_id, limit) -> dict:
    """A PostgreSQL claim's parameters by name (``set_params``' status and
    worker, the worker twice: a varchar and a text, for the PREPARE)."""
    status, worker, _ = set_params(worker_id)
    return {"limit": limit, "status": status, "worker": worker, "worker_text": worker}


def jobs_from(connection, rows):
    """The Jobs of the claimed ``rows`` (PostgreSQL's lean RETURNING), and
    the ids of those that cannot be read, with why."""
    moments = {}
    jobs, unreadable = [], {}
    for row in rows:
        try:
            jobs.append(_job(connection.alias, row, moments))
        except Exception as exc:  # a time or JSON it cannot read
            unreadable[row[ID_AT]] = exc
    return jobs, unreadable


# A claimed row comes back lean: the JSON columns as one JSON array (one
# parse), the times as seconds since the epoch (no per-column loaders), and
# without the columns no worker reads (deferred on the Job: one read of
# such a field would cost a query; test_claim.py checks none is read).
NOT_RETURNED = {
    "task_run_after",
    "unique_key",
    "workflow_id",
    "waiting_for",
    "limit_key",
}
# Nor the stop request, NULL on every claimed row (a READY job never
# carries one: models/transitions.py): set so, not read. The worker sets it
# when it hears of one.
UNSET_WHEN_CLAIMED = {"cancel_requested_at": None, "cancel_requested_by": None}
_FIELDS = [
    f
    for f in Job._meta.concrete_fields
    if f.name not in NOT_RETURNED and f.name not in UNSET_WHEN_CLAIMED
]
_JSON = [f for f in _FIELDS if f.get_internal_type() == "JSONField"]
_TIMES = [f for f in _FIELDS if f.get_internal_type() == "DateTimeField"]
_PLAIN = [f for f in _FIELDS if f not in _JSON and f not in _TIMES]
RETURNING = ", ".join(
    [
        *(f"job.{f.column}" for f in _PLAIN),
        # date_part gives float8 directly: half the server's time of
        # extract's numeric cast to float8 (2 µs less per claimed row).
        *(f"date_part('epoch', job.{f.column})" for f in _TIMES),
        f"jsonb_build_array({', '.join(f'job.{f.column}' for f in _JSON)})::text",
    ]
)


_PLAIN_NAMES = [f.attname for f in _PLAIN]
ID_AT = _PLAIN_NAMES.index("id")
_TIME_NAMES = [f.attname for f in _TIMES]
_JSON_NAMES = [f.attname for f in _JSON]
_TIMES_AT = slice(len(_PLAIN), len(_PLAIN) + len(_TIMES))


def _job(using: str, row, moments: dict[float, datetime]) -> Job:
    """A Job from a claimed row, built without the ORM's per-column loaders
    and converters: the claim is the worker's hottest query. ``moments``:
    the times made so far for this claim's rows, by their seconds (the
    claim's own time is on every row, and jobs enqueued together share
    theirs)."""
    values = dict(zip(_PLAIN_NAMES, row, strict=False))  # the row goes on
    _put_times(values, _TIME_NAMES, row[_TIMES_AT], moments, _from_seconds)
    values.update(zip(_JSON_NAMES, _decode_json(row[-1]), strict=True))
    values.update(UNSET_WHEN_CLAIMED)
    return model_from_row(Job, using, values)


def _put_times(values: dict, names, numbers, moments: dict, make) -> None:
    """Set ``values``' times ``names`` from their ``numbers`` (None: NULL),
    each distinct number made into a time by ``make`` once (``moments``)."""
    for name, number in zip(names, numbers, strict=True):
        if number is None:
            values[name] = None
            continue
        moment = moments.get(number)
        if moment is None:
            moment = moments[number] = make(number)
        values[name] = moment


def _from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


_decode_json = json.JSONDecoder().decode  # json.loads, without its checks


# SQLite, and MySQL/MariaDB where the claim's locking read did not return
# the claimed rows (several queues, limited claims, a row it could not
# make a job of), read their claimed jobs after the claim's UPDATE (no
# UPDATE ... RETURNING there): the same columns, every one (a plain
# SELECT costs nothing more for them), converted by the converters the ORM
# would apply, without compiling a query or running Model.__init__.
_READ_FIELDS = [f for f in Job._meta.concrete_fields if f.name not in NOT_RETURNED]
_READ_NAMES = [f.attname for f in _READ_FIELDS]


def jobs_read(connection, ids: list[int]) -> list[Job]:
    """The Jobs of ``ids`` (committed claims of this worker), as the ORM
    would load them but for the deferred ``NOT_RETURNED``; raises whatever
    a row's value raises (the caller then reads them with the ORM)."""
    if connection.vendor == "mysql":
        try:
            return _jobs_read_lean(connection, ids)
        except CONNECTION_ERRORS as exc:
            # mysqlclient raises many a server's refusal of a statement as
            # an OperationalError, as it does a lost connection: read with
            # the plain columns below if the connection still answers.
            if not still_answers(connection):
                raise
            refuse_lean(exc)
    quote = connection.ops.quote_name
    converters = _converters(connection, _READ_FIELDS)
    columns = ", ".join(quote(field.column) for field in _READ_FIELDS)
    marks = ", ".join(["%s"] * len(ids))
    sql = f"SELECT {columns} FROM {quote(Job._meta.db_table)} WHERE id IN ({marks})"
    with connection.cursor() as cursor:
        cursor.execute(sql, ids)
        rows = cursor.fetchall()
    jobs = []
    for row in rows:
        values = dict(zip(_READ_NAMES, row, strict=True))
        _convert(connection, values, converters)
        jobs.append(model_from_row(Job, connection.alias, values))
    return jobs


def _converters(connection, fields) -> list:
    """The ORM's converters of ``fields`` that have any, in its order (the
    backend's, then the column's own), with each field's attname and
    column."""
    converters = []
    for field in fields:
        column = field.get_col(Job._meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(
            connection
        )
        if found:
            converters.append((field.attname, column, found))
    return converters


def _convert(connection, values: dict, converters) -> None:
    for name, column, found in converters:
        value = values[name]
        for convert in found:
            value = convert(value, column, connection)
        values[name] = value


# MySQL/MariaDB's read comes back lean, as PostgreSQL's RETURNING does: its
# times as whole microseconds since 1970 (each distinct one converted once;
# mysqlclient's parsing of a DATETIME, and Django's conversion of it, cost
# more than the rest of the row), its JSON columns joined into one array
# (one parse), and the other columns as they are.
_LEAN_PLAIN = [f for f in _READ_FIELDS if f not in _JSON and f not in _TIMES]
_LEAN_TIMES = [f for f in _READ_FIELDS if f in _TIMES]
_LEAN_JSON = [f for f in _READ_FIELDS if f in _JSON]
_LEAN_NAMES = [f.attname for f in _LEAN_PLAIN]
_LEAN_TIME_NAMES = [f.attname for f in _LEAN_TIMES]
_LEAN_JSON_NAMES = [f.attname for f in _LEAN_JSON]
_LEAN_TIMES_AT = slice(len(_LEAN_PLAIN), len(_LEAN_PLAIN) + len(_LEAN_TIMES))
_EPOCH = datetime(1970, 1, 1)
# The error of a lean read the server refused, once logged.
_LEAN_REFUSED: list[Exception] = []


def lean_refused() -> bool:
    """Whether the server refused the lean read's columns (then claims and
    reads of claimed jobs go without them)."""
    return bool(_LEAN_REFUSED)


def refuse_lean(exc: Exception) -> None:
    """Read without the lean read's columns from now on: the server
    refused them with ``exc`` (logged once)."""
    if not _LEAN_REFUSED:
        _LEAN_REFUSED.append(exc)
        logger.warning("Claimed jobs read without the lean read: %s", exc)


logger = logging.getLogger("django_bgtasks.worker")


def micros_sql(column: str) -> str:
    """MySQL/MariaDB: the DATETIME ``column`` (its SQL: a name, quoted if it
    needs to be) as whole microseconds since 1970, an integer that
    mysqlclient reads without parsing."""
    return f"TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {column})"


def lean_columns(connection) -> str:
    """The columns of the lean read (the same text for every MySQL
    connection: made once)."""
    if _LEAN_COLUMNS:
        return _LEAN_COLUMNS[0]
    quote = connection.ops.quote_name
    joined = ", ',', ".join(
        f"COALESCE({quote(f.column)}, 'null')" if f.null else quote(f.column)
        for f in _LEAN_JSON
    )
    columns = [
        *(quote(f.column) for f in _LEAN_PLAIN),
        *(micros_sql(quote(f.column)) for f in _LEAN_TIMES),
        f"CONCAT('[', {joined}, ']')",
    ]
    _LEAN_COLUMNS.append(", ".join(columns))
    return _LEAN_COLUMNS[0]


_LEAN_COLUMNS: list[str] = []


def _lean_converters(connection) -> tuple[list, tuple]:
    """The ORM's converters of the lean read's plain columns, and of its
    times (a column and its converters: none where USE_TZ is off, naive);
    found once per connection and USE_TZ (finding them cost more than
    converting a claim's rows), and kept on the connection (they hold
    it)."""
    found = getattr(connection, _LEAN_CONVERTERS, None)
    if found is None or found[0] != settings.USE_TZ:
        [(_, column, converters)] = _converters(connection, _LEAN_TIMES[:1]) or [
            (None, None, [])
        ]
        found = (
            settings.USE_TZ,
            _converters(connection, _LEAN_PLAIN),
            (column, converters),
        )
        setattr(connection, _LEAN_CONVERTERS, found)
    return found[1], found[2]


_LEAN_CONVERTERS = "_django_bgtasks_lean_converters"


def _jobs_read_lean(connection, ids: list[int]) -> list[Job]:
    table = connection.ops.quote_name(Job._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {lean_columns(connection)} FROM {table} "
            f"WHERE id IN ({id_list(ids)})"
        )
        rows = cursor.fetchall()
    return lean_jobs(connection, rows)


def lean_jobs(connection, rows, *, claimed_by=None, now_micros=None) -> list[Job]:
    """The Jobs of the lean read's ``rows`` (``lean_columns``, first);
    with ``now_micros``, of rows read before their claim's UPDATE, which
    was given that time (``as_claimed``): claimed by ``claimed_by``. Raises
    whatever a row's value raises."""
    converters, (column, found) = _lean_converters(connection)

    def from_micros(micros: int) -> datetime:
        moment = _EPOCH + timedelta(microseconds=micros)
        for convert in found:
            moment = convert(moment, column, connection)
        return moment

    moments: dict[int, datetime] = {}
    now = None if now_micros is None else from_micros(now_micros)
    jobs = []
    for row in rows:
        values = dict(zip(_LEAN_NAMES, row, strict=False))  # the row goes on
        _convert(connection, values, converters)
        _put_times(values, _LEAN_TIME_NAMES, row[_LEAN_TIMES_AT], moments, from_micros)
        json_values = _decode_json(row[_LEAN_JSON_AT])
        values.update(zip(_LEAN_JSON_NAMES, json_values, strict=True))
        if now is not None:
            as_claimed(values, claimed_by, now)
        jobs.append(model_from_row(Job, connection.alias, values))
    return jobs


_LEAN_JSON_AT = len(_LEAN_PLAIN) + len(_LEAN_TIMES)


# Reads of claimed jobs after a lost connection (MySQL, SQLite) before its
# error is raised: about 3 s of pauses in all.
LOAD_TRIES = 5


def read_again(using: str, read):
    """``read()``, a read of jobs this worker has claimed, so one that must
    not be given up at the first lost connection: opened again and tried
    again (``LOAD_TRIES`` in all, with pauses); the last try's error is
    raised."""
    pause = 0.2
    for _ in range(LOAD_TRIES - 1):
        try:
            return read()
        except CONNECTION_ERRORS:
            discard_connection(using)
            time.sleep(pause)
            pause *= 2
    return read()


def commit_went_unanswered(connection, exc, own: bool, marked) -> bool:
    """Whether ``exc``, raised by a claim that ran in a transaction of its
    own (``own``) and marked jobs claimed (``marked`` true), leaves it
    unknown whether the claim committed: on MySQL/MariaDB, a connection
    lost as it committed (``claimed_after_all`` then reads what it
    claimed). Not so before its commit (a lost transaction is undone), nor
    for the server's own answer (a deadlock: undone, claimed again), nor
    on SQLite (no server to lose)."""
    return (
        connection.vendor == "mysql" and own and bool(marked) and not is_deadlock(exc)
    )


def claimed_after_all(connection, ids, worker_id, now_micros=None) -> list[int]:
    """The ids among ``ids`` that a claim (MySQL/MariaDB) whose commit went
    unanswered did claim: a server that ends a connection (KILL, restart)
    may do so after the commit and before its answer, and only the rows
    can tell. Its jobs are those RUNNING for ``worker_id`` (and, if the
    claim stamped ``now_micros``, a time it had read, last attempted then):
    its locking reads held them READY until its end, and a worker's claims
    on MySQL/MariaDB are its main loop's alone. Left unread, they would
    stay RUNNING for a live worker that knows nothing of them. Read on a
    new connection, tried again as ``read_again``; if the database stays
    away, its error is raised (the jobs are put back when the worker stops:
    ``Lease.give_back`` asks the database)."""
    kept = Job.objects.using(connection.alias).filter(
        pk__in=ids, status=JobStatus.RUNNING, worker_id=worker_id
    )
    if now_micros is not None:
        kept = kept.filter(last_attempted_at=moment_of_micros(now_micros))
    discard_connection(connection.alias)
    try:
        found = read_again(
            connection.alias, lambda: list(kept.values_list("pk", flat=True))
        )
    except CONNECTION_ERRORS:
        logger.error(
            "A claim's commit went unanswered and the database cannot be read: "
            "job(s) %s may stay RUNNING for this worker until it stops",
            ", ".join(map(str, ids)),
        )
        raise
    logger.warning(
        "A claim's commit went unanswered: %d of its %d job(s) were claimed",
        len(found),
        len(ids),
    )
    return found
