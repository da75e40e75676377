"""Inserting jobs: one statement for one job or many, with its NOTIFY.

- PostgreSQL: ``INSERT ... SELECT FROM unnest(...) RETURNING id``, with the
  ``pg_notify`` of each queue in the same statement (delivered at commit),
  so enqueueing costs one round trip and joins the caller's transaction.
- SQLite and MariaDB: ``bulk_create`` (they return the new ids).
- MySQL: one insert per job, in one transaction (MySQL returns no ids from
  a multi-row insert).
"""

from __future__ import annotations

import json
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


def insert_jobs(
    using: str, common: dict[str, Any], arguments: list[tuple[list, dict]]
) -> list[int]:
    """Insert READY jobs, one per ``(args, kwargs)`` in ``arguments``, all
    with the other ``common`` columns; return their ids in order. Sends
    NOTIFY for their queue where it is on."""
    if not arguments:
        return []
    connection = connections[using]
    if connection.vendor == "postgresql":
        return _insert_postgresql(connection, common, arguments)
    jobs = [Job(**common, args=args, kwargs=kwargs) for args, kwargs in arguments]
    if connection.features.can_return_rows_from_bulk_insert:
        Job.objects.using(using).bulk_create(jobs)
    else:
        with transaction.atomic(using=using):
            for job in jobs:
                job.save(using=using, force_insert=True)
    return [job.pk for job in jobs]


def _insert_postgresql(connection, common, arguments) -> list[int]:
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
    notify = notify_enabled(connection)
    if notify:
        params += [CHANNEL, payload(common["queue_name"], common["priority"])]
    sql = _STATEMENTS[many, notify]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(row[0] for row in cursor.fetchall())


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
