"""Why a job that has not started waits: for the admin's job page and for
code (``why_waiting(job)``).

Each reason is read from the rows that decide it, as a claim would see
them now: the job's ``run_after`` against the database's clock, its
workflow's edges, its queue's pause, the RUNNING jobs and tokens of the
limits it counts against, the live workers' queues, and the due jobs a
claim of its queue takes before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from .db import database_now
from .limits import QUEUE_PREFIX, declared_limits, limit_name
from .models import Job, JobDependency, JobStatus, LimitState, Queue, WorkerProcess

# The jobs holding a full limit, listed up to this many.
HOLDERS_LISTED = 20
# Jobs ahead of it counted up to this many: the count reads the READY
# index, and "more than 10,000" says enough.
AHEAD_COUNTED = 10_000


@dataclass(frozen=True, slots=True)
class WaitReason:
    """One reason a job waits: ``code`` for code (``not_due``,
    ``waiting_for_jobs``, ``queue_paused``, ``limit_full``,
    ``rate_limited``, ``no_worker``, ``behind``),
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
    reasons += _limit_reasons(job, using, now)
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


def _limit_reasons(job: Job, using: str, now) -> list[WaitReason]:
    """The limits ``job`` counts against that have no room now."""
    declared = declared_limits()
    jobs = Job.objects.using(using)
    limits = []  # (limit, what it is, its jobs, its row's name)
    limit = declared.for_key(job.limit_key)
    if limit is not None:
        limits.append(
            (
                limit,
                f"limit {job.limit_key!r}",
                jobs.filter(limit_key=job.limit_key),
                limit_name(job.limit_key),
            )
        )
    queue_limit = declared.by_queue.get(job.queue_name)
    if queue_limit is not None:
        limits.append(
            (
                queue_limit,
                f"the limit of queue {job.queue_name!r}",
                jobs.filter(queue_name=job.queue_name),
                QUEUE_PREFIX + job.queue_name,
            )
        )
    reasons = []
    for limit, what, its_jobs, row in limits:
        if limit.concurrency is not None:
            holders = list(
                its_jobs.filter(status=JobStatus.RUNNING)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if len(holders) >= limit.concurrency:
                listed = ", ".join(f"#{pk}" for pk in holders[:HOLDERS_LISTED])
                reasons.append(
                    WaitReason(
                        "limit_full",
                        f"{what[0].upper()}{what[1:]} is full: "
                        f"{len(holders)} of {limit.concurrency} running ({listed}).",
                        holders[:HOLDERS_LISTED],
                    )
                )
        if limit.rate is not None:
            state = LimitState.objects.using(using).filter(name=row).first()
            if state is not None and state.refilled_at is not None:
                seconds = (now - state.refilled_at).total_seconds()
                tokens = limit.rate.refilled(state.tokens, seconds)
                if tokens < 1:
                    wait = limit.rate.seconds_to_token(tokens)
                    reasons.append(
                        WaitReason(
                            "rate_limited",
                            f"The rate of {what} ({limit.rate}) is used up: "
                            f"its next start is allowed in {wait:.1f} s.",
                        )
                    )
    return reasons
