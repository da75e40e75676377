"""Rows the tests build by hand: jobs in any state, worker processes."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from django_bgtasks.models import Job, JobStatus, WorkerProcess


def make_job(status=JobStatus.READY, *, using: str = "default", **fields) -> Job:
    """A job of ``tests.tasks.add`` in ``status`` in database ``using``,
    with the timestamps that status implies; ``fields`` override any
    column."""
    now = timezone.now()
    values = {
        "task_path": "tests.tasks.add",
        "args": [1, 2],
        "run_after": now,
        "enqueued_at": now,
        "status": status,
        "max_attempts": 3,
    }
    if status in (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED):
        values["finished_at"] = now
    if status in (JobStatus.SUCCESSFUL, JobStatus.FAILED):
        values.update(attempts=1, started_at=now, last_attempted_at=now)
    return Job.objects.using(using).create(**{**values, **fields})


def make_worker(
    worker_id: str = "worker",
    *,
    silent_for: timedelta = timedelta(0),
    using: str = "default",
    **fields,
) -> WorkerProcess:
    """The row of a worker process whose last heartbeat was ``silent_for``
    ago (alive by default), in database ``using``; ``fields`` override any
    column."""
    beat = timezone.now() - silent_for
    values = {
        "id": worker_id,
        "hostname": "host",
        "pid": 1,
        "concurrency": 1,
        "version": "x",
        "started_at": beat,
        "last_heartbeat_at": beat,
    }
    return WorkerProcess.objects.using(using).create(**{**values, **fields})
