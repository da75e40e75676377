"""Why a job that has not started waits: for the admin's job page and for
code (``why_waiting(job)``).

Each reason is read from the rows that decide it, as a claim would see
them now: the job's ``run_after`` against the database's clock, its
workflow's edges, its queue's pause, the live workers' queues, and the due
jobs a claim of its queue takes before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from .db import database_now
from .models import Job, JobDependency, JobStatus, Queue, WorkerProcess

# Jobs ahead of it counted up to this many: the count reads the READY
# index, and "more than 10,000" says enough.
AHEAD_COUNTED = 10_000


@dataclass(frozen=True, slots=True)
class WaitReason:
    """One reason a job waits: ``code`` for code (``not_due``,
    ``waiting_for_jobs``, ``queue_paused``, ``no_worker``, ``behind``),
    ``message`` for people, and the ids of the jobs it is about, if any."""

    code: str
    message: str
    jobs: list[int] = field(default_factory=list)


def why_waiting(job: Job) -> list[WaitReason]:
    """Why ``job`` (READY or WAITING) has not started, every reason that
    holds now; [] for a job that has started or ended, or that a worker
    will take at its next claim."""
    if job.status not in (JobStatus.READY, JobStatus.WAITING):
        return []
    using = job._state.db or "default"
    now = database_now(using)
    reasons = []
    if job.status == JobStatus.WAITING:
        waited = list(
            JobDependency.objects.using(using)
            .filter(job_id=job.pk, ended_as="")
            .order_by("position")
            .values_list("waits_for_id", flat=True)
        )
        reasons.append(
            WaitReason(
                "waiting_for_jobs",
                f"It waits for {len(waited)} job(s) of its workflow to end: "
                + ", ".join(f"#{pk}" for pk in waited[:20])
                + (" and more" if len(waited) > 20 else "")
                + ".",
                waited,
            )
        )
    if job.run_after > now:
        reasons.append(
            WaitReason(
                "not_due",
                f"It is not due until {job.run_after.isoformat(timespec='seconds')}.",
            )
        )
    queue = Queue.objects.using(using).filter(name=job.queue_name).first()
    if queue is not None and queue.is_paused:
        by = f" by {queue.paused_by}" if queue.paused_by else ""
        reasons.append(
            WaitReason(
                "queue_paused",
                f"Its queue {job.queue_name!r} is paused (since "
                f"{queue.paused_at.isoformat(timespec='seconds')}{by}).",
            )
        )
    serving = [
        queues
        for queues in WorkerProcess.objects.using(using)
        .alive(now)
        .values_list("queues", flat=True)
        if not queues or job.queue_name in queues
    ]
    if not serving:
        reasons.append(
            WaitReason(
                "no_worker",
                f"No live worker serves its queue {job.queue_name!r}.",
            )
        )
    if job.status == JobStatus.READY and job.run_after <= now:
        ahead = (
            Job.objects.using(using)
            .due(now)
            .filter(queue_name=job.queue_name)
            .filter(
                Q(priority__gt=job.priority)
                | Q(priority=job.priority, run_after__lt=job.run_after)
                | Q(priority=job.priority, run_after=job.run_after, pk__lt=job.pk)
            )
            .values_list("pk", flat=True)[: AHEAD_COUNTED + 1]
        )
        count = len(list(ahead))
        if count:
            many = f"more than {AHEAD_COUNTED:,}" if count > AHEAD_COUNTED else count
            reasons.append(
                WaitReason(
                    "behind",
                    f"{many} due job(s) of its queue come before it (higher "
                    f"priority, or older).",
                )
            )
    return reasons
