"""Due schedules become jobs: once per planned time, however many workers run.

Every worker (unless ``runworker --no-scheduler``) runs ``fire_due_schedules``
every ``BGTASKS["SCHEDULER_INTERVAL"]`` seconds. In one transaction it locks
the due schedules (``FOR UPDATE SKIP LOCKED``; on SQLite, the database's
write lock), writes a job per planned time
that has come, and moves ``next_run_at`` on from the planned time. The unique
``(schedule, scheduled_for)`` of jobs makes a second job for the same planned
time impossible, even if a schedule row was edited meanwhile.

Missed times: a planned time more than ``BGTASKS["MISFIRE_GRACE_TIME"]``
seconds past counts as missed (no scheduler ran then). Policy ``run_once``
(the default) runs the schedule once for all its missed times, unless a
planned time within the grace time runs anyway; ``skip`` drops them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, router, transaction

from ..conf import bgtasks_settings
from ..cron import MICROSECOND
from ..db import database_now
from ..locking import lock_for_writing
from ..models import MisfirePolicy, Schedule

logger = logging.getLogger("django_bgtasks.scheduler")

# Due schedules handled per transaction, and jobs one schedule may fire in
# one pass: bounds on the work a pass does while holding its locks.
SCHEDULES_PER_PASS = 100
BATCHES_PER_PASS = 50
JOBS_PER_SCHEDULE = 1000


def fire_due_schedules(*, using: str | None = None, now: datetime | None = None) -> int:
    """Write the jobs of every due schedule; return how many were written."""
    using = using or router.db_for_write(Schedule)
    now = now or database_now(using)
    fired = 0
    for _ in range(BATCHES_PER_PASS):
        with transaction.atomic(using=using):
            schedules = _lock_due(using, now)
            fired += sum(_fire_apart(schedule, now) for schedule in schedules)
        if len(schedules) < SCHEDULES_PER_PASS:
            break
    return fired


def _fire_apart(schedule: Schedule, now: datetime) -> int:
    """Fire one schedule in a savepoint of its own: whatever goes wrong with
    it (a time zone gone from the system, an expression with no more times)
    is recorded on it, and never stops the other schedules."""
    try:
        with transaction.atomic(using=schedule._state.db):
            return fire_schedule(schedule, now=now)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "Schedule %r cannot be fired and is stopped: %s", schedule.name, error
        )
        Schedule.objects.using(schedule._state.db).filter(pk=schedule.pk).update(
            next_run_at=None, last_error=error[:2000], updated_at=now
        )
        return 0


def _lock_due(using: str, now: datetime) -> list[Schedule]:
    lock_for_writing(Schedule, using)
    due = Schedule.objects.using(using).due(now).order_by("next_run_at", "id")
    return list(due.select_for_update(skip_locked=True)[:SCHEDULES_PER_PASS])


def fire_schedule(schedule: Schedule, *, now: datetime) -> int:
    """Fire a locked, due schedule: write its jobs, move ``next_run_at`` on.
    Returns how many jobs were written."""
    times = schedule.planned_times(now=now)
    planned = schedule.next_run_at
    cutoff = now - timedelta(seconds=bgtasks_settings.MISFIRE_GRACE_TIME)

    on_time = []
    moment = planned if planned >= cutoff else times.next_after(cutoff - MICROSECOND)
    while moment is not None and moment <= now and len(on_time) < JOBS_PER_SCHEDULE:
        on_time.append(moment)
        moment = times.next_after(moment)
    next_run_at = moment if moment is None or moment > now else times.next_after(now)

    to_fire = on_time
    missed = times.latest_at_or_before(cutoff) if planned < cutoff else None
    if missed is not None and not on_time:
        logger.warning(
            "Schedule %r missed its runs from %s to %s: %s",
            schedule.name,
            planned.isoformat(),
            missed.isoformat(),
            "running once"
            if schedule.misfire_policy == MisfirePolicy.RUN_ONCE
            else "skipping them",
        )
        if schedule.misfire_policy == MisfirePolicy.RUN_ONCE:
            to_fire = [missed]

    fired = 0
    error = ""
    for scheduled_for in to_fire:
        try:
            with transaction.atomic(using=schedule._state.db):
                schedule.enqueue(scheduled_for=scheduled_for)
        except IntegrityError:
            # That planned time already has its job (the row was edited or
            # fired meanwhile): never a second one.
            continue
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.error(
                "Schedule %r could not enqueue its job: %s", schedule.name, error
            )
            break
        fired += 1

    schedule.next_run_at = next_run_at
    schedule.total_run_count += fired
    if fired:
        schedule.last_run_at = now
    schedule.last_error = error
    schedule.save(
        using=schedule._state.db,
        update_fields=[
            "next_run_at",
            "total_run_count",
            "last_run_at",
            "last_error",
            "updated_at",
        ],
    )
    return fired
