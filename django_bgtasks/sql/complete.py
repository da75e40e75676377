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
        changes = {"status": self.status, "worker_id": None}
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
    # The batch goes as one JSON document: one parameter to send, parsed by
    # the server, cheaper than a column of arrays.
    sql = f"""
        UPDATE {table} AS job SET
            status = done.status,
            return_value = CASE WHEN done.status = %s
                THEN done.return_value ELSE job.return_value END,
            errors = COALESCE(done.errors, job.errors),
            finished_at = COALESCE(done.finished_at, job.finished_at),
            run_after = COALESCE(done.run_after, job.run_after),
            worker_id = NULL
        FROM jsonb_to_recordset(%s::jsonb) AS done(
            id bigint, attempts integer, status text, return_value jsonb,
            errors jsonb, finished_at timestamptz, run_after timestamptz
        )
        WHERE job.id = done.id AND job.status = %s AND job.worker_id = %s
            AND job.attempts = done.attempts
        RETURNING job.id
    """
    batch = json.dumps(
        [
            {
                "id": c.job_id,
                "attempts": c.attempts,
                "status": c.status,
                "return_value": c.return_value,
                "errors": c.errors,
                "finished_at": c.finished_at and c.finished_at.isoformat(),
                "run_after": c.run_after and c.run_after.isoformat(),
            }
            for c in completions
        ]
    )
    params = [
        JobStatus.SUCCESSFUL.value,
        batch,
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
