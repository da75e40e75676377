"""What the dashboard shows, as queries that stay fast on large job tables.

No query here counts a whole table: counts are exact up to a cap and
estimated above it (PostgreSQL and MySQL/MariaDB plan estimates); time-based
figures read only a recent window through the ``finished_at`` index.

Every figure is of one database's jobs (``using``: a database alias, as
``databases.job_databases()`` lists them; None for ``default_database()``):
the rows of queues, limits and workers in a database concern its jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connections, transaction
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Min
from django.db.models.functions import TruncMinute
from django.utils import timezone

from .compat import loadable_backends
from .databases import default_database
from .db import database_now
from .limits import QUEUE_PREFIX, Limit, declared_limits, limit_name
from .models import Job, JobStatus, LimitState, Queue, WorkerProcess

COUNT_CAP = 10_000


@dataclass(frozen=True)
class Tally:
    """A count: exact up to the cap, else an estimate (``exact`` False)."""

    value: int
    exact: bool = True

    def __str__(self):
        if self.exact:
            return f"{self.value:,}"
        return f"≈ {self.value:,}"


def tally(queryset, cap: int = COUNT_CAP) -> Tally:
    """Count ``queryset``, reading at most ``cap + 1`` rows; above the cap,
    ask the database's planner for an estimate."""
    bounded = queryset.order_by()[: cap + 1].count()
    if bounded <= cap:
        return Tally(bounded)
    estimate = estimate_count(queryset)
    if estimate is None:
        # SQLite keeps no statistics to estimate from; a development
        # database is small enough to count.
        return Tally(queryset.order_by().count())
    return Tally(max(estimate, bounded), exact=False)


def estimate_count(queryset) -> int | None:
    """The planner's row estimate for ``queryset``; None where there is none."""
    connection = connections[queryset.db]
    if connection.vendor not in ("postgresql", "mysql"):
        return None
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            return int(plan[0]["Plan"]["Plan Rows"])
        cursor.execute(f"EXPLAIN {sql}", params)
        columns = [column[0] for column in cursor.description]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        return int(rows[0].get("rows") or 0) if rows else None


# Every status, in the order a job goes through them (a workflow's step
# WAITING before it is READY): the dashboard's rows, the list's filter.
STATUSES = (
    JobStatus.WAITING,
    *(status for status in JobStatus if status != JobStatus.WAITING),
)


def jobs(using: str | None = None):
    """The Job manager of database ``using`` (None: ``default_database()``)."""
    return Job.objects.using(using or default_database())


def waiting_jobs(using: str | None = None):
    """The WAITING jobs (of database ``using``). Each is a workflow's step:
    the condition on its workflow lets the database read them through the
    workflow index, where no index holds jobs by that status (a full scan of
    the table)."""
    return jobs(using).filter(status=JobStatus.WAITING, workflow_id__isnull=False)


def status_counts(using: str | None = None) -> dict[str, Tally]:
    return {
        status: tally(
            waiting_jobs(using)
            if status == JobStatus.WAITING
            else jobs(using).filter(status=status)
        )
        for status in STATUSES
    }


@dataclass
class QueueState:
    name: str
    ready: Tally  # READY, due or not
    due: Tally
    # Workflow steps WAITING for other jobs: like READY jobs not yet due,
    # they are neither due nor in the lag, whatever their run_after. An
    # exact count: the workflow index is read whole for it anyway.
    waiting: Tally
    running: int
    lag: timedelta | None  # age of the oldest due READY job
    paused: Queue | None = None  # its row, if the queue is paused


def configured_queue_names(using: str | None = None) -> set[str]:
    """The queues the task backends declare (their ``QUEUES``): of every
    backend, or with ``using``, of the backends that keep their jobs in that
    database."""
    names = set()
    for backend in loadable_backends():
        if using is None or getattr(backend, "database", None) == using:
            names |= set(getattr(backend, "queues", ()) or ())
    return names


def queue_states(
    now: datetime | None = None, using: str | None = None
) -> list[QueueState]:
    """Per queue: jobs ready, due, waiting for other jobs and running, how
    late the oldest due job is, and whether it is paused. Every queue
    configured for the database is listed, plus any paused queue or queue
    with jobs that have not ended. A few queries however many queues: each
    figure is read for all of them at once."""
    using = using or default_database()
    now = now or timezone.now()
    names = configured_queue_names(using)
    paused = {queue.name: queue for queue in Queue.objects.using(using).paused()}
    names |= set(paused)
    running = running_counts(using)
    waiting = dict(
        waiting_jobs(using)
        .values_list("queue_name")
        .annotate(n=Count("id"))
        .values_list("queue_name", "n")
    )
    names |= set(running) | set(waiting)
    names |= set(jobs(using).ready().values_list("queue_name", flat=True).distinct())
    ready = ready_counts(names, using=using)
    due = queue_counts(jobs(using).due(now), names, using=using)
    oldest = dict(
        jobs(using)
        .due(now)
        .order_by()
        .values_list("queue_name")
        .annotate(oldest=Min("run_after"))
        .values_list("queue_name", "oldest")
    )
    return [
        QueueState(
            name=name,
            ready=ready[name],
            due=due[name],
            running=running.get(name, 0),
            waiting=Tally(waiting.get(name, 0)),
            lag=(now - oldest[name]) if name in oldest else None,
            paused=paused.get(name),
        )
        for name in sorted(names)
    ]


def running_counts(using: str | None = None) -> dict[str, int]:
    """The RUNNING jobs of each queue that has some."""
    return dict(
        jobs(using)
        .running()
        .order_by()
        .values_list("queue_name")
        .annotate(n=Count("id"))
        .values_list("queue_name", "n")
    )


def active_queue_names(using: str | None = None) -> set[str]:
    """The queues configured for the database and those with READY, RUNNING
    or WAITING jobs, in one query that reads those statuses' indexes, never
    the finished jobs."""
    using = using or default_database()
    selects = (
        queryset.order_by().values_list("queue_name")
        for queryset in (
            jobs(using).ready(),
            jobs(using).running(),
            waiting_jobs(using),
        )
    )
    union = next(selects).union(*selects)  # without ALL: each name once
    return configured_queue_names(using) | {name for (name,) in union}


def ready_counts(
    names, cap: int = COUNT_CAP, using: str | None = None
) -> dict[str, Tally]:
    """The READY jobs of each queue of ``names``, as ``queue_counts``
    counts them."""
    using = using or default_database()
    return queue_counts(jobs(using).ready(), names, cap, using)


def queue_counts(
    queryset, names, cap: int = COUNT_CAP, using: str | None = None
) -> dict[str, Tally]:
    """The jobs of ``queryset`` (READY ones, due ones...) in each queue of
    ``names``, in one query per ``QUEUES_PER_QUERY`` queues: each queue's
    count reads at most ``cap + 1`` entries of the READY index (a paused
    queue's backlog can be large). Above the cap, the planner's estimate,
    as ``tally`` gives it."""
    names = sorted(set(names))
    using = using or default_database()
    queryset = queryset.using(using).order_by()
    counted = {}
    for first in range(0, len(names), QUEUES_PER_QUERY):
        counted |= _counted(queryset, names[first : first + QUEUES_PER_QUERY], cap)
    return {
        name: (
            tally(queryset.filter(queue_name=name), cap)
            if counted.get(name, 0) > cap
            else Tally(counted.get(name, 0))
        )
        for name in names
    }


# Queues counted per query: SQLite allows 500 parts in a compound SELECT.
QUEUES_PER_QUERY = 250
# The name in the compiled read of one queue that each queue's replaces.
SOME_QUEUE = "bgtasks: a queue"


def _counted(queryset, names: list[str], cap: int) -> dict[str, int]:
    """Up to ``cap + 1`` jobs of ``queryset`` counted in each queue of
    ``names``, in one query: a bounded read per queue, each a subquery of
    the list of names (PostgreSQL) or a part of a UNION ALL."""
    using = queryset.db
    connection = connections[using]
    # One queue's read, compiled once (a thousand compilations took 0.3 s),
    # its queue's name a parameter.
    sql, one = (
        queryset.filter(queue_name=SOME_QUEUE)
        .values_list("queue_name")[: cap + 1]
        .query.get_compiler(using)
        .as_sql()
    )
    at = list(one).index(SOME_QUEUE)
    if connection.vendor == "postgresql":
        # Each queue's read as a subquery of a list of names: one short
        # statement to plan, not a union of hundreds (55 ms each).
        pieces = sql.split("%s")
        outer = "%s".join(pieces[: at + 1]) + "names.name" + "%s".join(pieces[at + 1 :])
        with transaction.atomic(using=using), connection.cursor() as cursor:
            # Hundreds of small reads look costly to the planner, which
            # would compile the statement (JIT) each time: 0.1-0.3 s, more
            # than the reads.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(
                f"SELECT names.name, (SELECT COUNT(*) FROM ({outer}) AS one) "
                f"FROM unnest(%s::text[]) AS names(name)",
                [*one[:at], *one[at + 1 :], list(names)],
            )
            return dict(cursor.fetchall())
    parts, params = [], []
    for index, name in enumerate(names):
        parts.append(f"SELECT * FROM ({sql}) {connection.ops.quote_name(f'q{index}')}")
        params.extend([*one[:at], name, *one[at + 1 :]])
    sql = (
        f"SELECT queue_name, COUNT(*) FROM ({' UNION ALL '.join(parts)}) "
        f"{connection.ops.quote_name('counted')} GROUP BY queue_name"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


@dataclass
class Minute:
    at: datetime
    succeeded: int = 0
    failed: int = 0


def throughput(
    now: datetime | None = None, minutes: int = 60, using: str | None = None
) -> list[Minute]:
    """Jobs finished per minute (succeeded, failed) over the last ``minutes``."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes - 1)
    buckets = {
        start + timedelta(minutes=n): Minute(start + timedelta(minutes=n))
        for n in range(minutes)
    }
    rows = (
        jobs(using)
        .filter(
            finished_at__gte=start,
            status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED],
        )
        .annotate(minute=TruncMinute("finished_at", tzinfo=UTC))
        .values("minute", "status")
        .annotate(n=Count("id"))
        .values_list("minute", "status", "n")
    )
    for minute, status, n in rows:
        bucket = buckets.get(minute.astimezone(UTC) if minute.tzinfo else minute)
        if bucket is None:
            continue
        if status == JobStatus.SUCCESSFUL:
            bucket.succeeded += n
        else:
            bucket.failed += n
    return list(buckets.values())


@dataclass
class TaskFigure:
    task_path: str
    value: object
    runs: int


def slowest_tasks(
    now: datetime | None = None,
    window: timedelta = timedelta(hours=1),
    limit: int = 5,
    using: str | None = None,
) -> list[TaskFigure]:
    """Tasks by average run time of their successful jobs in the window."""
    now = now or timezone.now()
    duration = ExpressionWrapper(
        F("finished_at") - F("last_attempted_at"), output_field=DurationField()
    )
    rows = (
        jobs(using)
        .filter(finished_at__gte=now - window, status=JobStatus.SUCCESSFUL)
        .values("task_path")
        .annotate(average=Avg(duration), runs=Count("id"))
        .order_by("-average")[:limit]
    )
    return [TaskFigure(r["task_path"], r["average"], r["runs"]) for r in rows]


def failing_tasks(
    now: datetime | None = None,
    window: timedelta = timedelta(hours=1),
    limit: int = 5,
    using: str | None = None,
) -> list[TaskFigure]:
    """Tasks by number of jobs that ended FAILED in the window."""
    now = now or timezone.now()
    rows = (
        jobs(using)
        .filter(finished_at__gte=now - window, status=JobStatus.FAILED)
        .values("task_path")
        .annotate(failures=Count("id"))
        .order_by("-failures")[:limit]
    )
    return [TaskFigure(r["task_path"], r["failures"], r["failures"]) for r in rows]


@dataclass
class WorkerState:
    worker: WorkerProcess
    alive: bool
    jobs: list[Job] = field(default_factory=list)


def worker_states(
    now: datetime | None = None, using: str | None = None
) -> list[WorkerState]:
    """Every worker process registered in the database, alive or not, with
    its running jobs there."""
    using = using or default_database()
    now = now or timezone.now()
    workers = list(WorkerProcess.objects.using(using).order_by("hostname", "pid"))
    running: dict[str, list[Job]] = {}
    held = jobs(using).running().filter(worker_id__in=[w.pk for w in workers])
    for job in held.only(
        "id",
        "task_path",
        "queue_name",
        "worker_id",
        "last_attempted_at",
        "progress",
        "attempts",
        "max_attempts",
    ):
        running.setdefault(job.worker_id, []).append(job)
    return [
        WorkerState(worker, worker.is_alive(now), running.get(worker.pk, []))
        for worker in workers
    ]


@dataclass(frozen=True)
class LimitFigures:
    """A limit in force now: ``name`` (a task's limit, or ``queue:`` and
    the queue's name), what it allows, its RUNNING jobs (with a key: how
    many values are at their most), its tokens now (with a rate), and the
    due jobs that count against it."""

    name: str
    limit: Limit
    running: int
    full: bool
    keys_full: int
    tokens: float | None
    due: Tally


def limit_figures(using: str | None = None) -> list[LimitFigures]:
    """Every declared limit, with what holds it now in the database: two
    queries and one capped count per limit, reading only unfinished jobs."""
    declared = declared_limits()
    if not declared:
        return []
    using = using or default_database()
    running = list(
        jobs(using)
        .running()
        .values_list("queue_name", "limit_key")
        .annotate(n=Count("id"))
        .values_list("queue_name", "limit_key", "n")
    )
    rated = declared.rated_names()
    now = database_now(using) if rated else None
    buckets = {
        state.name: state
        for state in LimitState.objects.using(using).filter(name__in=rated)
    }
    figures = []
    limits = [(name, limit) for name, limit in declared.by_name.items()]
    limits += [(QUEUE_PREFIX + q, limit) for q, limit in declared.by_queue.items()]
    for name, limit in sorted(limits):
        due = jobs(using).due(now)
        if name.startswith(QUEUE_PREFIX):
            queue = name.removeprefix(QUEUE_PREFIX)
            per_key = {queue: sum(n for q, _, n in running if q == queue)}
            due = due.filter(queue_name=queue)
        else:
            per_key = {}
            for _, key, n in running:
                if key is not None and limit_name(key) == name:
                    per_key[key] = per_key.get(key, 0) + n
            if limit.key is None:
                due = due.filter(limit_key=name)
            else:
                due = due.filter(limit_key__startswith=f"{name}:")
        keys_full = sum(
            limit.concurrency is not None and n >= limit.concurrency
            for n in per_key.values()
        )
        tokens = None
        if limit.rate is not None:
            state = buckets.get(name)
            tokens = limit.rate.refilled(
                state.tokens if state else None,
                (now - state.refilled_at).total_seconds()
                if state and state.refilled_at
                else 0.0,
            )
        figures.append(
            LimitFigures(
                name=name,
                limit=limit,
                running=sum(per_key.values()),
                full=(limit.key is None and keys_full > 0)
                or (tokens is not None and tokens < 1),
                keys_full=keys_full,
                tokens=tokens,
                due=tally(due),
            )
        )
    return figures
