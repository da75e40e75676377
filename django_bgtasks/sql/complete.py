"""Completing jobs in batches: the outcomes of many attempts in one
transaction.

Each completion writes the column changes its transition decided
(``models/transitions.py``), and only if the worker still holds the job
(RUNNING, this worker, this attempt), exactly like ``Job.record``; the ids
that applied come back, so a job taken away meanwhile is never finished
twice.

- PostgreSQL: one ``UPDATE ... FROM jsonb_to_recordset(...) RETURNING id``
  per set of changed columns (a batch of successes is one statement; with
  retries and failures in it, two or three, in one transaction).
- MySQL/MariaDB: one ``UPDATE`` joined to the batch's values per set of
  changed columns (MariaDB: read by ``JSON_TABLE`` from one JSON document;
  MySQL: a ``UNION ALL`` of their rows), in one transaction; if it finds
  fewer jobs than it names, the transaction is undone and each job written
  alone.
- SQLite: one conditional ``UPDATE`` per job (its text made once per set
  of columns), all in one transaction (one commit for the batch).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q

from ..db import mariadb_json_table, statements_in_one_transaction
from ..models import Job, JobStatus
from ..models.dependencies import Ended, jobs_ended


@dataclass(slots=True)
class Completion:
    """The end of one attempt, on its way to the job's row."""

    job_id: int
    attempts: int  # the attempt that ended: the job must still be on it
    changes: dict[str, Any]  # by field name (or attname): JSON-able values
    deletes: bool = False  # the row is deleted instead (delete_on_success)
    # The job ends here and workflow steps wait for it: they are counted
    # down, released or cancelled in the same transaction.
    ends_dependencies: bool = False
    # Written only if no operator has asked the job to stop (Transition.
    # void_if_asked_to_stop): the caller decides again for the ones not.
    unasked: bool = False


def complete_jobs(
    using: str, worker_id: str, completions: list[Completion]
) -> set[int]:
    """Write the completions; return the ids of the jobs they applied to."""
    if not completions:
        return set()
    if any(c.ends_dependencies for c in completions):
        with transaction.atomic(using=using):
            applied = _complete(using, worker_id, completions)
            ending = [
                c for c in completions if c.ends_dependencies and c.job_id in applied
            ]
            if ending:
                jobs_ended(
                    using,
                    [
                        Ended(
                            c.job_id, c.changes["status"], c.changes.get("return_value")
                        )
                        for c in ending
                    ],
                    now=ending[0].changes["finished_at"],
                )
            return applied
    return _complete(using, worker_id, completions)


def _complete(using: str, worker_id: str, completions: list[Completion]) -> set[int]:
    connection = connections[using]
    if any(c.deletes for c in completions):
        # Rare (delete_on_success): the deletions and the updates in one
        # transaction, the updates on the usual path.
        with transaction.atomic(using=using):
            deleted = _delete_held(
                using, worker_id, [c for c in completions if c.deletes]
            )
            kept = [c for c in completions if not c.deletes]
            return deleted | _complete(using, worker_id, kept)
    if connection.vendor == "postgresql":
        return _complete_postgresql(connection, worker_id, completions)
    if connection.vendor == "mysql":
        return _complete_mysql(connection, worker_id, completions)
    return _complete_each(using, worker_id, completions)


def _delete_held(using: str, worker_id: str, completions) -> set[int]:
    """Delete the jobs of ``completions`` this worker still holds (on their
    attempt); their ids. Called inside the batch's transaction."""
    held = Q()
    for completion in completions:
        held |= Q(pk=completion.job_id, attempts=completion.attempts)
    jobs = Job.objects.using(using).filter(
        held, status=JobStatus.RUNNING, worker_id=worker_id
    )
    ids = set(jobs.select_for_update().values_list("pk", flat=True))
    Job.objects.using(using).filter(pk__in=ids).delete()
    return ids


def _by_columns(completions) -> dict[tuple[tuple[str, ...], bool], list[Completion]]:
    """``completions`` by the fields they change (and whether only if no
    operator asked the job to stop): one statement per group."""
    by_columns: dict[tuple[tuple[str, ...], bool], list[Completion]] = {}
    for completion in completions:
        key = (tuple(completion.changes), completion.unasked)
        by_columns.setdefault(key, []).append(completion)
    return by_columns


def _complete_postgresql(connection, worker_id, completions) -> set[int]:
    by_columns = _by_columns(completions)
    applied = set()
    # One statement commits alone; several, together.
    with (
        transaction.atomic(using=connection.alias)
        if len(by_columns) > 1
        else contextlib.nullcontext(),
        connection.cursor() as cursor,
    ):
        for (names, unasked), group in by_columns.items():
            # The batch goes as one JSON document: one parameter to send,
            # parsed by the server, cheaper than a column of arrays.
            cursor.execute(
                _update_sql(connection.alias, names, unasked),
                [
                    _json_batch(group),
                    JobStatus.RUNNING.value,
                    worker_id,
                ],
            )
            applied.update(row[0] for row in cursor.fetchall())
    return applied


@functools.cache
def _update_sql(using: str, names: tuple[str, ...], unasked: bool = False) -> str:
    """The UPDATE writing the fields ``names`` from a JSON array of records
    ``{"_id", "_attempts", name...}``; ``unasked``: only to jobs no operator
    has asked to stop."""
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = {name: Job._meta.get_field(name) for name in names}
    assignments = ", ".join(
        f"{quote(field.column)} = done.{quote(name)}" for name, field in fields.items()
    )
    # The job's id and attempt are named apart from the fields changed (an
    # outcome may one day write ``attempts``).
    record = ", ".join(
        [
            "_id bigint",
            "_attempts integer",
            *(
                f"{quote(name)} {field.db_type(connection)}"
                for name, field in fields.items()
            ),
        ]
    )
    unasked_sql = "AND job.cancel_requested_at IS NULL" if unasked else ""
    return f"""
        UPDATE {quote(Job._meta.db_table)} AS job SET {assignments}
        FROM jsonb_to_recordset(%s::jsonb) AS done({record})
        WHERE job.id = done._id AND job.status = %s AND job.worker_id = %s
            AND job.attempts = done._attempts {unasked_sql}
        RETURNING job.id
    """


def _json_batch(completions: list[Completion]) -> str:
    """The records of ``completions``. None (a task returning None, say)
    goes as JSON null, which the record reads as SQL NULL, as the ORM
    stores it."""
    return json.dumps(
        [{"_id": c.job_id, "_attempts": c.attempts, **c.changes} for c in completions],
        default=_json_default,
    )


def _json_default(value: Any) -> str:
    """A value JSON has no type for: a datetime as ISO text; anything else
    raises TypeError, and the caller records the batch's jobs one by one."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise _unsendable(value)


def _unsendable(value: Any) -> TypeError:
    return TypeError(f"{type(value).__name__} cannot be sent in a batch: {value!r}")


class _NotAllHeld(Exception):
    """A batch's UPDATE found fewer jobs than it names: some were taken
    away from the worker, and MySQL cannot say which."""


def _complete_mysql(connection, worker_id, completions) -> set[int]:
    """One UPDATE per set of changed columns, joined to the batch's values,
    in one transaction: a statement per job cost MariaDB most of its CPU
    per job. MySQL returns no ids from an UPDATE, only how many rows it
    found (Django asks for rows found, not changed): if every job was
    still held, all applied; if not (rare: a job rescued from a worker
    thought dead), the transaction is rolled back and each job written on
    its own, which says which applied."""
    using = connection.alias
    statements = _from_json if mariadb_json_table(connection) else _from_union
    try:
        with (
            statements_in_one_transaction(connection),
            connection.cursor() as cursor,
        ):
            for (names, unasked), group in _by_columns(completions).items():
                for sql, params, count in statements(connection, names, unasked, group):
                    cursor.execute(sql, [*params, JobStatus.RUNNING.value, worker_id])
                    if cursor.rowcount != count:
                        raise _NotAllHeld
    except _NotAllHeld:
        return _complete_each(using, worker_id, completions)
    return {completion.job_id for completion in completions}


# A statement's values (MariaDB: its document's), in characters before
# mysqlclient escapes them, before the rest go in another: escaped (at
# most doubled) they stay within MySQL's and MariaDB's smallest default
# max_allowed_packet (4 MiB before MySQL 8, 16 MiB after). A single value
# larger than the packet fails alone, as it would in a statement of its
# own (the completer then records its job's failure to store it).
STATEMENT_BYTES = 1024 * 1024


def _from_json(connection, names, unasked, group: list[Completion]):
    """MariaDB: the UPDATEs of ``group`` (its completions change the fields
    ``names``), each reading its jobs' values from one JSON document by
    ``JSON_TABLE``, in documents of at most ``STATEMENT_BYTES`` (one job at
    least): each statement's text, parameters and number of jobs."""
    sql, json_at = _update_from_json_sql(connection.alias, names, unasked)
    default = _mysql_json_default(connection)

    def record(completion: Completion) -> tuple[list[str], int]:
        values = [completion.job_id, completion.attempts, *completion.changes.values()]
        for at in json_at:  # a JSON column's value goes as its JSON text
            if values[at] is not None:
                values[at] = json.dumps(values[at])
        text = json.dumps(values, default=default)
        return [text], len(text)

    for records, count in _in_parts(map(record, group)):
        yield sql, [f"[{','.join(records)}]"], count


def _in_parts(items):
    """``items``, each (a list, its size), joined into parts whose sizes
    add up to at most ``STATEMENT_BYTES`` (one item at least): each part's
    lists joined, and its number of items."""
    part, size, count = [], 0, 0
    for values, grown in items:
        if count and size + grown > STATEMENT_BYTES:
            yield part, count
            part, size, count = [], 0, 0
        part += values
        size += grown
        count += 1
    if count:
        yield part, count


def _mysql_json_default(connection):
    """A ``json.dumps`` default writing a time as the ORM sends it to
    MySQL/MariaDB (text, naive, in the connection's time zone where USE_TZ
    is on); anything else, or a time the ORM would warn about or refuse,
    raises TypeError (the caller records the batch's jobs one by one)."""
    zone = connection.timezone if settings.USE_TZ else None

    def default(value: Any) -> str:
        if isinstance(value, datetime) and (value.tzinfo is None) == (zone is None):
            if zone is not None:
                value = value.astimezone(zone).replace(tzinfo=None)
            return value.isoformat(" ")
        raise _unsendable(value)

    return default


@functools.cache
def _update_from_json_sql(using: str, names: tuple[str, ...], unasked: bool) -> tuple:
    """The UPDATE of the jobs held by a worker that a JSON array of records
    ``[id, attempt, value...]`` names, writing each its values of the
    fields ``names``; and the places in a record of the values of JSON
    fields, which come as their JSON text and are read as text (read as
    JSON, MariaDB would nest them two levels deeper, past its limit of 32
    levels for values that ``serialization`` accepts)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = [Job._meta.get_field(name) for name in names]
    json_at = [
        at
        for at, field in enumerate(fields, 2)
        if field.get_internal_type() == "JSONField"
    ]
    columns = ", ".join(
        [
            "_id BIGINT PATH '$[0]'",
            "_attempts INTEGER PATH '$[1]'",
            *(
                f"{quote(name)} "
                f"{'LONGTEXT' if at in json_at else field.db_type(connection)} "
                f"PATH '$[{at}]'"
                for at, (name, field) in enumerate(zip(names, fields, strict=True), 2)
            ),
        ]
    )
    # The document first, each job found by its id: left to itself, the
    # planner knows no size for a JSON_TABLE and reads the jobs first (by
    # their status: every RUNNING job, each one against the document).
    sql = (
        f"UPDATE JSON_TABLE(%s, '$[*]' COLUMNS ({columns})) AS done "
        f"STRAIGHT_JOIN {quote(Job._meta.db_table)} AS job FORCE INDEX (PRIMARY) "
        f"{_joined_to_done(quote, names, fields, unasked)}"
    )
    return sql, json_at


def _joined_to_done(quote, names, fields, unasked: bool) -> str:
    """The rest of an UPDATE of the jobs ``job`` joined to their values
    ``done`` (``_id``, ``_attempts`` and the fields ``names``): each held
    job, on its attempt, gets its values."""
    assignments = ", ".join(
        f"job.{quote(field.column)} = done.{quote(name)}"
        for name, field in zip(names, fields, strict=True)
    )
    unasked_sql = " AND job.cancel_requested_at IS NULL" if unasked else ""
    return (
        f"ON job.id = done._id AND job.attempts = done._attempts "
        f"SET {assignments} WHERE job.status = %s AND job.worker_id = %s"
        f"{unasked_sql}"
    )


def _from_union(connection, names, unasked, group: list[Completion]):
    """MySQL: the UPDATEs of ``group`` (its completions change the fields
    ``names``), each joined to a ``UNION ALL`` of its jobs' values, in parts
    whose values fit in ``STATEMENT_BYTES`` (one job at least): each
    statement's text, parameters and number of jobs."""
    using = connection.alias
    fields = _update_joined_sql(using, names, unasked, 1)[1]

    def params(completion: Completion) -> tuple[list, int]:
        values = _prepared(connection, fields, completion.changes)
        grown = sum(len(v) for v in values if isinstance(v, str | bytes))
        return [completion.job_id, completion.attempts, *values], grown

    for part, count in _in_parts(map(params, group)):
        yield _update_joined_sql(using, names, unasked, count)[0], part, count


@functools.cache
def _update_joined_sql(
    using: str, names: tuple[str, ...], unasked: bool, count: int
) -> tuple:
    """The UPDATE of ``count`` jobs held by a worker, each writing its own
    values of the fields ``names`` (MySQL); and those fields, in the order
    of each job's parameters (after its id and attempt)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = tuple(Job._meta.get_field(name) for name in names)
    first = ", ".join(
        ["%s AS _id", "%s AS _attempts", *(f"%s AS {quote(n)}" for n in names)]
    )
    others = ", ".join(["%s"] * (len(names) + 2))
    rows = " UNION ALL ".join([f"SELECT {first}", *[f"SELECT {others}"] * (count - 1)])
    sql = (
        f"UPDATE {quote(Job._meta.db_table)} AS job JOIN ({rows}) AS done "
        f"{_joined_to_done(quote, names, fields, unasked)}"
    )
    return sql, fields


def _prepared(connection, fields, changes: dict[str, Any]) -> list:
    """The values of ``changes`` as their ``fields`` send them (the ORM's
    preparation); an expression raises TypeError, as on PostgreSQL."""
    values = []
    for field, value in zip(fields, changes.values(), strict=True):
        if hasattr(value, "resolve_expression"):
            raise _unsendable(value)
        values.append(field.get_db_prep_save(value, connection))
    return values


def _complete_each(using, worker_id, completions) -> set[int]:
    """One conditional UPDATE per job, in one transaction: its text made
    once per set of columns, its values prepared by their fields as the ORM
    would, without compiling a query for each job (that compiling was most
    of a MySQL or SQLite worker's CPU)."""
    applied = set()
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for completion in completions:
            changes = completion.changes
            sql, fields = _update_one_sql(using, tuple(changes), completion.unasked)
            params = _prepared(connection, fields, changes)
            cursor.execute(
                sql,
                [
                    *params,
                    completion.job_id,
                    JobStatus.RUNNING.value,
                    worker_id,
                    completion.attempts,
                ],
            )
            if cursor.rowcount:
                applied.add(completion.job_id)
    return applied


@functools.cache
def _update_one_sql(using: str, names: tuple[str, ...], unasked: bool) -> tuple:
    """The UPDATE of one job held by a worker, writing the fields ``names``;
    and those fields, in the order of its parameters."""
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = tuple(Job._meta.get_field(name) for name in names)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    unasked_sql = " AND cancel_requested_at IS NULL" if unasked else ""
    sql = (
        f"UPDATE {quote(Job._meta.db_table)} SET {assignments} "
        f"WHERE id = %s AND status = %s AND worker_id = %s AND attempts = %s"
        f"{unasked_sql}"
    )
    return sql, fields
