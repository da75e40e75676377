"""Deleting finished jobs once they are old enough.

``BGTASKS["PRUNE_AFTER"]`` gives, per final status, how long a finished job
is kept (a timedelta or a number of days; None keeps it forever). The
maintenance thread of every worker prunes every few minutes, and ``manage.py
prune_jobs`` does it by hand. Jobs go in small batches, each its own short
transaction, so pruning never holds many locks or blocks the queue.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import connections, router, transaction

from ..conf import DEFAULTS, bgtasks_settings
from ..db import database_now
from ..locking import lock_for_writing
from ..models import FINISHED_STATUSES, Job, JobDependency

BATCH_SIZE = 1000
# Seconds between batches on SQLite, where a batch holds the one write lock:
# the queue's own writes go in between. Other databases lock only the rows
# pruned, which no claim or completion touches.
SQLITE_PAUSE_BETWEEN_BATCHES = 0.05


def retention() -> dict[str, timedelta | None]:
    """How long each final status is kept, from the setting; a status the
    setting leaves out keeps its default (None, given, keeps forever)."""
    setting = {**DEFAULTS["PRUNE_AFTER"], **bgtasks_settings.PRUNE_AFTER}
    kept = {}
    for status in FINISHED_STATUSES:
        value = setting[status.value]
        if value is None or isinstance(value, timedelta):
            kept[status.value] = value
        else:
            kept[status.value] = timedelta(days=value)
    return kept


def prunable(status: str, now: datetime, using: str):
    """The jobs of ``status`` old enough to prune (none if kept forever)."""
    age = retention()[status]
    jobs = Job.objects.using(using).filter(status=status)
    if age is None:
        return jobs.none()
    return jobs.filter(finished_at__lt=now - age)


def prune_finished_jobs(
    *,
    using: str | None = None,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete finished jobs past their retention; return how many per status.

    ``max_batches`` bounds the work of one call (the maintenance thread's
    pass); None deletes all there is.
    """
    using = using or router.db_for_write(Job)
    now = now or database_now(using)
    deleted = {status.value: 0 for status in FINISHED_STATUSES}
    batches = 0
    for status in deleted:
        jobs = prunable(status, now, using)
        while max_batches is None or batches < max_batches:
            with transaction.atomic(using=using):
                lock_for_writing(Job, using)  # SQLite
                found, ids = _lock_batch(jobs, batch_size)
                if not ids:
                    break
                # By primary key alone: the rows are locked and checked.
                count, _ = Job.objects.using(using).filter(pk__in=ids).delete()
                # A workflow step's edges go with it (they hold what it was
                # handed); the edges of the jobs it waited for stay theirs.
                JobDependency.objects.using(using).filter(job_id__in=ids).delete()
            deleted[status] += count
            batches += 1
            if found < batch_size:
                break
            if connections[using].vendor == "sqlite":
                time.sleep(SQLITE_PAUSE_BETWEEN_BATCHES)
    return deleted


def _lock_batch(jobs, batch_size: int) -> tuple[int, list[int]]:
    """Lock (in the caller's transaction) up to ``batch_size`` of ``jobs``,
    the oldest first; return how many were found and the ids of those
    locked. Rows another transaction holds are skipped (another worker
    pruning them: this one leaves them to it).

    Found first without locks, then locked by primary key: InnoDB's
    locking read would lock every index record it reads, the one past the
    end of its range too, and in the status index the first job of the
    next status follows the last FAILED one: often a READY job, which every
    claim would then skip until this transaction ended."""
    candidates = jobs.order_by("finished_at").values_list("pk", flat=True)
    found = list(candidates[:batch_size])
    if not found:
        return 0, []
    # By primary key alone, so that no other index is read.
    locked = list(
        Job.objects.using(jobs.db)
        .filter(pk__in=found)
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)
    )
    # Read again, locked: a job retried meanwhile (and maybe finished
    # again since) is no longer one of ``jobs``.
    still = jobs.filter(pk__in=locked).values_list("pk", flat=True)
    return len(found), list(still)
