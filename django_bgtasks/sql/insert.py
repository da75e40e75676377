"""Inserting jobs: one statement for one job or many, with its NOTIFY.

- PostgreSQL: ``INSERT ... SELECT FROM unnest(...) RETURNING id``, with the
  ``pg_notify`` of each queue in the same statement (delivered at commit),
  so enqueueing costs one round trip and joins the caller's transaction.
- SQLite and MariaDB: ``bulk_create`` (they return the new ids).
- MySQL: one insert per job, in one transaction (MySQL returns no ids from
  a multi-row insert).

Many jobs go in chunks of ``CHUNK``. On PostgreSQL with psycopg 3 the chunks
are pipelined: the server inserts one chunk while Python checks the next
and makes the results of the last, which nearly halves the time of a large
``enqueue_many``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import connections, transaction

from ..models import Job
from ..notify import CHANNEL, notify_enabled, payload

# Columns an enqueue sets, but for the arguments (the rest keep their
# defaults: NULL, 0); they are the same for every job of one insert.
COMMON = {
    "task_path": "text",
    "backend": "text",
    "queue_name": "text",
    "priority": "smallint",
    "status": "text",
    "run_after": "timestamptz",
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
        with connection.cursor() as cursor:
            _send_postgresql(cursor, common, arguments, notify=True)
            return _ids(cursor)
    jobs = [Job(**common, args=args, kwargs=kwargs) for args, kwargs in arguments]
    if connection.features.can_return_rows_from_bulk_insert:
        Job.objects.using(using).bulk_create(jobs)
    else:
        with transaction.atomic(using=using):
            for job in jobs:
                job.save(using=using, force_insert=True)
    return [job.pk for job in jobs]


def insert_job_chunks(
    using: str, common: dict[str, Any], chunks: Iterable[list[tuple[list, dict]]]
) -> Iterator[tuple[list[int], list[tuple[list, dict]]]]:
    """Insert the jobs of each chunk of ``(args, kwargs)`` like insert_jobs,
    in one transaction; yield each chunk's ids with the chunk.

    ``chunks`` is consumed lazily, and on PostgreSQL a chunk is sent before
    the previous one's ids are yielded: an error raised while the next
    chunk is made, or while the caller handles the ids, rolls back every
    chunk."""
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor != "postgresql":
            for arguments in chunks:
                yield insert_jobs(using, common, arguments), arguments
            return
        with _pipeline(connection):
            sent = None  # the chunk in flight: (cursor, arguments)
            try:
                for arguments in chunks:
                    if sent is None:
                        ready = None
                    else:
                        ready = _ids(sent[0]), sent[1]
                        sent[0].close()
                    cursor = connection.cursor()
                    # One NOTIFY for the lot: it is delivered at commit.
                    _send_postgresql(cursor, common, arguments, notify=ready is None)
                    sent = cursor, arguments
                    if ready is not None:
                        yield ready
                if sent is not None:
                    yield _ids(sent[0]), sent[1]
            finally:
                if sent is not None:
                    sent[0].close()


def _pipeline(connection):
    """psycopg 3's pipeline mode on ``connection``, where the driver and
    libpq have it: a statement is sent without waiting for the last one's
    result."""
    connection.ensure_connection()
    try:
        from psycopg import Pipeline
    except ImportError:  # psycopg2
        return contextlib.nullcontext()
    raw = connection.connection
    if not hasattr(raw, "pipeline") or not Pipeline.is_supported():
        return contextlib.nullcontext()
    return raw.pipeline()


def _ids(cursor) -> list[int]:
    return sorted(row[0] for row in cursor.fetchall())


def _send_postgresql(cursor, common, arguments, *, notify: bool) -> None:
    """Execute the insert of one chunk on ``cursor`` (in pipeline mode, send
    it); its ids are then the cursor's rows."""
    params = [
        json.dumps(common[name]) if kind == "jsonb" else common[name]
        for name, kind in COMMON.items()
    ]
    if len(arguments) == 1:  # the common case, with the simplest statement
        args, kwargs = arguments[0]
        params += [json.dumps(args), json.dumps(kwargs)]
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
# NOTIFY in the same statement: delivered at commit, with the rows.
_NOTIFYING = """
    WITH new AS ({insert}),
    woken AS (SELECT pg_notify(%s, %s) WHERE EXISTS (SELECT 1 FROM new))
    SELECT id FROM new, (SELECT count(*) FROM woken) AS notified
"""
_STATEMENTS = {
    (False, False): _ONE,
    (True, False): _MANY,
    (False, True): _NOTIFYING.format(insert=_ONE),
    (True, True): _NOTIFYING.format(insert=_MANY),
}
