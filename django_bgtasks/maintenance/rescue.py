"""Rescuing the jobs of dead workers.

A worker whose heartbeat is older than ``BGTASKS["WORKER_TIMEOUT"]`` is dead:
every worker's maintenance thread looks for such rows and, in one transaction
per dead worker (its row locked with ``SKIP LOCKED``, so several rescuers
never work on one worker), puts its RUNNING jobs back to READY (the attempt
counts; FAILED with a WorkerLost error when no attempt remains) and removes
its row. RUNNING jobs whose worker row is gone altogether are rescued the
same way once they are older than the timeout.

A worker that was only slow and comes back finds its row gone: it cannot
finish a rescued job (a finish is conditional on still holding the job), and
it ends its process so the job does not go on running beside its new run.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import router, transaction

from .. import notify
from ..conf import bgtasks_settings
from ..db import database_now
from ..exceptions import WorkerLost
from ..locking import lock_for_writing
from ..models import Job, WorkerProcess
from ..models.transitions import Lost

logger = logging.getLogger("django_bgtasks.rescue")

WORKERS_PER_PASS = 50


# Steadiness's clock: one that goes on while the host is suspended (a
# paused virtual machine, a laptop's sleep), so that the suspension is a
# gap in its round trips; the monotonic clock stops meanwhile.
_steady_clock = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)


class Steadiness:
    """Whether a process's round trips to the database have gone through
    without a break (none failed, none more than half a WORKER_TIMEOUT
    after the one before) for at least a WORKER_TIMEOUT, up to now: only
    then may it judge other workers dead. After a database outage, or a
    stall of this process, the others' beats are as old as its own were: it
    waits until they have had a timeout's time to beat again.

    Fed by one thread (a worker's heartbeat, a supervisor's maintenance),
    read by another (float swaps). ``went_through``: a round trip was made
    just now (a worker's registration), else it starts at the first."""

    def __init__(self, *, went_through: bool):
        self.last = _steady_clock()
        self.since: float | None = self.last if went_through else None

    def went_through(self) -> None:
        now = _steady_clock()
        if self.since is None or now - self.last > bgtasks_settings.WORKER_TIMEOUT / 2:
            self.since = now
        self.last = now

    def broke(self) -> None:
        self.since = None

    def may_judge_others(self) -> bool:
        timeout = bgtasks_settings.WORKER_TIMEOUT
        now = _steady_clock()
        since = self.since
        return (
            since is not None
            and now - since >= timeout
            and now - self.last <= timeout / 2
        )


@dataclass
class Rescue:
    workers: list[str] = field(default_factory=list)
    jobs: int = 0


def rescue_dead_workers(
    *, using: str | None = None, now: datetime | None = None
) -> Rescue:
    """Rescue the jobs of every dead worker; remove the dead workers' rows."""
    using = using or router.db_for_write(WorkerProcess)
    now = now or database_now(using)
    rescue = Rescue()
    dead = WorkerProcess.objects.using(using).dead(now)
    for worker_id in list(dead.values_list("pk", flat=True)[:WORKERS_PER_PASS]):
        with transaction.atomic(using=using):
            lock_for_writing(WorkerProcess, using)
            # Locked, and dead still: another rescuer may have got there
            # first, or the worker may have beaten meanwhile.
            worker = (
                dead.filter(pk=worker_id).select_for_update(skip_locked=True).first()
            )
            if worker is None:
                continue
            rescue.jobs += worker.rescue_jobs(
                WorkerLost(
                    f"Worker {worker.pk} (pid {worker.pid} on {worker.hostname}) "
                    f"stopped heartbeating at "
                    f"{worker.last_heartbeat_at:%Y-%m-%d %H:%M:%S} while running "
                    f"the job."
                )
            )
            rescue.workers.append(worker.pk)
            worker.delete(using=worker._state.db)
    rescue.jobs += _rescue_orphans(using, now)
    if rescue.workers or rescue.jobs:
        logger.warning(
            "Rescued %d job(s) of %d dead worker(s): %s",
            rescue.jobs,
            len(rescue.workers),
            ", ".join(rescue.workers) or "-",
        )
    return rescue


def _rescue_orphans(using: str, now: datetime) -> int:
    """RUNNING jobs whose worker has no row at all (deleted by hand)."""
    cutoff = now - timedelta(seconds=bgtasks_settings.WORKER_TIMEOUT)
    orphans = (
        Job.objects.using(using)
        .running()
        .filter(last_attempted_at__lt=cutoff)
        .exclude(worker_id__in=WorkerProcess.objects.using(using).values("pk"))
    )
    rescued = 0
    woken = set()
    ids = list(orphans.values_list("pk", flat=True)[:1000])
    for job in Job.objects.using(using).filter(pk__in=ids).for_transitions():
        gone = WorkerLost(f"Worker {job.worker_id} is gone; the job was left RUNNING.")
        change = job.record(Lost(gone), now=now)
        if change is not None:
            rescued += 1
            woken.add(job.queue_name)
    if woken:
        notify.wake(using, woken)
    return rescued
