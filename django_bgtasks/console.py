"""What ``manage.py bgtasks`` shows and does, apart from its parsing: jobs
picked by filters, each job and the whole system as plain data (what
``--json`` prints), and a task enqueued by its path.

Each command works on one database's jobs (``--database``; by default
``default_database()``): ``databases.job_database`` says which.

Every change goes through the jobs' own verbs (``JobQuerySet.retry``,
``cancel``, ``run_now``, ``delete_jobs``), the admin's too, with their
rules: a running job is asked to stop, never deleted; a job workflow steps
wait for is cancelled with them, never deleted.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import registry, stats
from .databases import default_database
from .db import database_now
from .models import Job, JobStatus
from .models.transitions import OPERATOR_ACTIONS
from .waits import why_waiting

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str, using: str = "default", *, ahead: bool = False) -> datetime:
    """A time given on the command line: ISO 8601 (``2026-12-05T10:00``,
    in the current time zone if it names none), or a span by the database's
    clock (``30m``, ``2h``, ``1d``, ``90s``): before now, or after it if
    ``ahead``."""
    span = _SPAN.match(text)
    if span:
        number, unit = span.groups()
        seconds = float(number) * _UNITS[unit]
        return database_now(using) + timedelta(seconds=seconds if ahead else -seconds)
    try:
        parsed = parse_datetime(text.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError(
            f"{text!r} is not a time: give one like 2026-12-05T10:00 or a span "
            f"like 30m, 2h or 1d."
        )
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


def shell_user(command: str) -> str:
    """Who acts from a shell, for the record: its user, and the command."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name to be found (a container's uid)
        user = "unknown"
    return f"{user} (manage.py {command})"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a command is about; each field left empty matches all.
    ``tasks``: task paths, each exact or a prefix ending in ``*``. The time
    window is of when jobs were enqueued."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __bool__(self) -> bool:
        return any(
            (self.ids, self.statuses, self.tasks, self.queues, self.since, self.until)
        )

    def jobs(self, using: str | None = None):
        """The matching jobs of database ``using`` (None: the default's)."""
        jobs = Job.objects.using(using or default_database())
        if self.ids:
            jobs = jobs.filter(pk__in=self.ids)
        if self.statuses:
            unknown = set(self.statuses) - set(JobStatus.values)
            if unknown:
                raise ValueError(
                    f"No such status: {', '.join(sorted(unknown))} (the statuses: "
                    f"{', '.join(JobStatus.values)})."
                )
            jobs = jobs.filter(status__in=self.statuses)
        if self.tasks:
            exact = [t for t in self.tasks if not t.endswith("*")]
            prefixes = [t[:-1] for t in self.tasks if t.endswith("*")]
            if any("*" in t for t in [*exact, *prefixes]):
                raise ValueError(
                    "A task is a path, or a prefix of paths ending in '*' "
                    "(such as 'myapp.tasks.*')."
                )
            matching = Q(task_path__in=exact) if exact else Q()
            for prefix in prefixes:
                matching |= Q(task_path__startswith=prefix)
            jobs = jobs.filter(matching)
        if self.queues:
            jobs = jobs.filter(queue_name__in=self.queues)
        if self.since is not None:
            jobs = jobs.filter(enqueued_at__gte=self.since)
        if self.until is not None:
            jobs = jobs.filter(enqueued_at__lt=self.until)
        return jobs


def would_change(verb: str, jobs) -> int:
    """How many of ``jobs`` the action would change now, for a dry run: the
    jobs its outcomes' conditions take (``OPERATOR_ACTIONS``; a workflow's
    step that another step's failure cancelled is counted, though a retry
    of it alone leaves it)."""
    if verb == "delete":
        return jobs.deletable().count()
    return jobs.applicable(*OPERATOR_ACTIONS[verb.replace("-", "_")]).count()


def apply_verb(verb: str, jobs, *, by: str) -> dict[str, int]:
    """Apply ``verb`` to ``jobs``: how many changed (for a cancel, how many
    ended and how many running ones were asked to stop)."""
    if verb == "retry":
        return {"retried": jobs.retry()}
    if verb == "cancel":
        cancellation = jobs.cancel(by=by)
        return {
            "cancelled": cancellation.cancelled,
            "asked_to_stop": cancellation.asked_to_stop,
        }
    if verb == "run-now":
        return {"made_due": jobs.run_now()}
    if verb == "delete":
        return {"deleted": jobs.delete_jobs()}
    raise ValueError(f"No such action: {verb!r}.")


def job_data(job: Job, *, whole: bool = False) -> dict:
    """A job as plain data; ``whole``: with its arguments, result, errors
    and why it waits."""
    data = {
        "id": job.pk,
        "database": job._state.db,
        "task": job.task_path,
        "queue": job.queue_name,
        "priority": job.priority,
        "route": job.route or None,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "enqueued_at": job.enqueued_at,
        "run_after": job.run_after,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "worker": job.worker_id,
    }
    if whole:
        data.update(
            args=job.args,
            kwargs=job.kwargs,
            return_value=job.return_value,
            progress=job.progress,
            errors=job.error_list,
            workflow=str(job.workflow_id) if job.workflow_id else None,
            cancel_requested_at=job.cancel_requested_at,
            cancel_requested_by=job.cancel_requested_by,
            waits_because=[
                {"code": r.code, "message": r.message, "jobs": r.jobs}
                for r in why_waiting(job)
            ],
        )
    return data


def status_data(using: str | None = None) -> dict:
    """The queues (depth, due, running, lag, paused), the workers (host,
    pid, busy slots, last heartbeat, alive) and the jobs by status, of
    database ``using`` (None: ``default_database()``)."""
    using = using or default_database()
    now = timezone.now()
    queues = [
        {
            "name": state.name,
            "ready": state.ready.value,
            "ready_exact": state.ready.exact,
            "due": state.due.value,
            "running": state.running,
            "waiting": state.waiting.value,
            "lag_seconds": state.lag.total_seconds() if state.lag else None,
            "paused": state.paused is not None,
            "paused_by": state.paused.paused_by if state.paused else None,
        }
        for state in stats.queue_states(now, using=using)
    ]
    workers = [
        {
            "id": state.worker.pk,
            "host": state.worker.hostname,
            "pid": state.worker.pid,
            "queues": state.worker.queues,
            "state": state.worker.state,
            "slots": state.worker.concurrency,
            "busy": len(state.jobs),
            "last_heartbeat_at": state.worker.last_heartbeat_at,
            "alive": state.alive,
        }
        for state in stats.worker_states(now, using=using)
    ]
    counts = {
        status: tally.value for status, tally in stats.status_counts(using).items()
    }
    return {"database": using, "queues": queues, "workers": workers, "jobs": counts}


def enqueue(
    task_path: str,
    args: list,
    kwargs: dict,
    *,
    queue: str | None = None,
    priority: int | None = None,
    run_after: datetime | None = None,
):
    """Enqueue the registered task at ``task_path`` (never a module a path
    names that no task registered: ``registry.resolve``) with these JSON
    arguments, as its code would: the task's own checks apply."""
    task = registry.resolve(task_path).using(
        queue_name=queue, priority=priority, run_after=run_after
    )  # (None: the task's own)
    return task.enqueue(*args, **kwargs)


@dataclass(frozen=True)
class Throughput:
    """One queue over a span of ``seconds``: jobs ended (by status), and
    READY and RUNNING now."""

    queue: str
    seconds: float
    ended: dict[str, int]
    ready: int
    running: int

    @property
    def per_second(self) -> float:
        return sum(self.ended.values()) / self.seconds if self.seconds else 0.0


def throughput_since(
    since: datetime, until: datetime, using: str | None = None
) -> list[Throughput]:
    """What each queue of database ``using`` (None: ``default_database()``)
    ended between ``since`` and ``until`` (through the index of finished
    jobs by time), with its READY and RUNNING jobs."""
    using = using or default_database()
    ended: dict[str, dict[str, int]] = {}
    rows = (
        Job.objects.using(using)
        .finished()
        .filter(finished_at__gt=since, finished_at__lte=until)
        .order_by()
        .values_list("queue_name", "status")
    )
    for queue, status, count in rows.annotate(n=Count("id")).values_list(
        "queue_name", "status", "n"
    ):
        ended.setdefault(queue, {})[status] = count
    ready = stats.ready_counts(
        stats.active_queue_names(using) | set(ended), using=using
    )
    running = stats.running_counts(using)
    seconds = (until - since).total_seconds()
    return [
        Throughput(
            name, seconds, ended.get(name, {}), ready[name].value, running.get(name, 0)
        )
        for name in sorted(ready)
    ]
