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
from ..notify import CHANNEL, notify_enabled

# Columns an enqueue sets; the rest keep their defaults (NULL, 0).
COLUMNS = {
    "task_path": "text",
    "backend": "text",
    "queue_name": "text",
    "priority": "smallint",
    "status": "text",
    "args": "jsonb",
    "kwargs": "jsonb",
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


def insert_jobs(using: str, rows: list[dict[str, Any]]) -> list[int]:
    """Insert READY jobs (dicts of the COLUMNS) and return their ids, in
    order. Sends NOTIFY for their queues where it is on."""
    if not rows:
        return []
    connection = connections[using]
    if connection.vendor == "postgresql":
        return _insert_postgresql(connection, rows)
    jobs = [Job(**row) for row in rows]
    if connection.features.can_return_rows_from_bulk_insert:
        Job.objects.using(using).bulk_create(jobs)
    else:
        with transaction.atomic(using=using):
            for job in jobs:
                job.save(using=using, force_insert=True)
    return [job.pk for job in jobs]


def _insert_postgresql(connection, rows) -> list[int]:
    table = connection.ops.quote_name(Job._meta.db_table)
    names = list(COLUMNS)
    casts, params = [], []
    for name, kind in COLUMNS.items():
        if kind == "jsonb":  # sent as text, cast in the statement
            casts.append("%s::text[]")
            params.append([json.dumps(row[name]) for row in rows])
        else:
            casts.append(f"%s::{kind}[]")
            params.append([row.get(name) for row in rows])
    selected = ", ".join(
        f"{name}::jsonb" if COLUMNS[name] == "jsonb" else name for name in names
    )
    sql = f"""
        WITH new AS (
            INSERT INTO {table} ({", ".join(names)})
            SELECT {selected}
            FROM unnest({", ".join(casts)})
                WITH ORDINALITY AS row({", ".join(names)}, n)
            ORDER BY n
            RETURNING id, queue_name
        )
    """
    if notify_enabled(connection):
        sql += """,
        woken AS (
            SELECT pg_notify(%s, queue_name)
            FROM (SELECT DISTINCT queue_name FROM new) AS queues
        )
        SELECT id FROM new, (SELECT count(*) FROM woken) AS notified
        """
        params.append(CHANNEL)
    else:
        sql += "SELECT id FROM new"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(row[0] for row in cursor.fetchall())
