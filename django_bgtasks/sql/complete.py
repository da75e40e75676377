"""Completing jobs in batches: the outcomes of many attempts in one statement.

Each outcome applies only if the worker still holds the job (RUNNING, this
worker, this attempt), exactly like ``Job._update_if_held``; the ids that
applied come back, so a job taken away meanwhile is never finished twice.

- PostgreSQL: one ``UPDATE ... FROM unnest(...) RETURNING id``.
- MySQL/MariaDB and SQLite: one conditional ``UPDATE`` per job, all in one
  transaction (one commit for the batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from ..models import Job, JobStatus


@dataclass(slots=True)
class Completion:
    """What an attempt's end writes to its job."""

    job_id: int
    attempts: int  # the attempt that ended: the job must still be on it
    status: str
    return_value: Any = None
    errors: list | None = None  # every attempt's error, this one included
    finished_at: datetime | None = None
    run_after: datetime | None = None  # for a retry

    def changes(self) -> dict[str, Any]:
        changes = {"status": self.status, "worker": None}
        if self.status == JobStatus.SUCCESSFUL:
            changes.update(return_value=self.return_value)
        if self.errors is not None:
            changes.update(errors=self.errors)
        if self.finished_at is not None:
            changes.update(finished_at=self.finished_at)
        if self.run_after is not None:
            changes.update(run_after=self.run_after)
        return changes


def complete_jobs(
    using: str, worker_id: str, completions: list[Completion]
) -> set[int]:
    """Write the completions; return the ids of the jobs they applied to."""
    if not completions:
        return set()
    connection = connections[using]
    if connection.vendor == "postgresql":
        return _complete_postgresql(connection, worker_id, completions)
    return _complete_each(using, worker_id, completions)


def _complete_postgresql(connection, worker_id, completions) -> set[int]:
    table = connection.ops.quote_name(Job._meta.db_table)
    sql = f"""
        UPDATE {table} AS job SET
            status = done.status,
            return_value = CASE WHEN done.status = %s
                THEN done.return_value::jsonb ELSE job.return_value END,
            errors = COALESCE(done.errors::jsonb, job.errors),
            finished_at = COALESCE(done.finished_at, job.finished_at),
            run_after = COALESCE(done.run_after, job.run_after),
            worker_id = NULL
        FROM unnest(
            %s::bigint[], %s::integer[], %s::text[], %s::text[], %s::text[],
            %s::timestamptz[], %s::timestamptz[]
        ) AS done(id, attempts, status, return_value, errors, finished_at, run_after)
        WHERE job.id = done.id AND job.status = %s AND job.worker_id = %s
            AND job.attempts = done.attempts
        RETURNING job.id
    """
    params = [
        JobStatus.SUCCESSFUL.value,
        [c.job_id for c in completions],
        [c.attempts for c in completions],
        [c.status for c in completions],
        [_json(c.return_value) for c in completions],
        [None if c.errors is None else json.dumps(c.errors) for c in completions],
        [c.finished_at for c in completions],
        [c.run_after for c in completions],
        JobStatus.RUNNING.value,
        worker_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _json(value: Any) -> str | None:
    # A task returning None stores SQL NULL, as the ORM does for JSONField.
    return None if value is None else json.dumps(value)


def _complete_each(using, worker_id, completions) -> set[int]:
    applied = set()
    jobs = Job.objects.using(using)
    with transaction.atomic(using=using):
        for completion in completions:
            updated = jobs.filter(
                pk=completion.job_id,
                status=JobStatus.RUNNING,
                worker_id=worker_id,
                attempts=completion.attempts,
            ).update(**completion.changes())
            if updated:
                applied.add(completion.job_id)
    return applied
