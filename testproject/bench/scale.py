"""``bgtasks_bench --scenarios scale``: whether the queue stays flat when the
job table keeps a long history, and with many queues and schedules.

Each figure is measured twice: beside a small history (``SMALL_HISTORY``
finished jobs), then beside ``--history`` of them, written by the database
(``history.py``) and analysed. The figures: the drain; the claim (its time,
and on PostgreSQL its plan by ``EXPLAIN ANALYZE``: execution time, and the
scans of the job table, which must be index scans); each admin page of
``admin_pages.py``; ``manage.py bgtasks status``; then with ``--queues``
queues of a few ready jobs each, the claim of a worker serving every queue,
the dashboard, the status command and the drain; and with ``--schedules``
enabled schedules, one scheduler pass with none due and one with some due.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from datetime import timedelta

from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Max, Min
from django.urls import reverse

from django_bgtasks.db import database_now
from django_bgtasks.maintenance.scheduler import fire_due_schedules
from django_bgtasks.models import Job, JobStatus, Schedule
from django_bgtasks.sql.claim import (
    claim_jobs,
    claim_statement_postgresql,
    locking_reads_mysql,
)
from django_bgtasks.sql.pinned import NO_SORT

from .admin_pages import AdminTimer, admin_pages
from .history import analyze, seed_history
from .noop import noop

SMALL_HISTORY = 10_000
# Jobs in each of the many queues, schedules made due in the second pass,
# claims timed, and the batch a claim takes (runworker's --prefetch 48).
JOBS_PER_QUEUE = 5
DUE_SCHEDULES = 100
CLAIMS_TIMED = 20
CLAIM_LIMIT = 48


class Scale:
    """The scenario, run by the benchmark command ``bench`` (whose workers,
    drain and options it uses)."""

    def __init__(self, bench):
        self.bench = bench
        self.options = bench.options
        self.repeat = max(3, self.options["runs"])

    def run(self, row) -> None:
        history = self.options["history"]
        small_size = min(SMALL_HISTORY, history)
        self.seed(small_size)
        small = self.figures()
        self.seed(history)
        large = self.figures()
        self.bench.history_kept = None
        self.bench.clear()  # gigabytes: not left behind
        for label, (value, unit) in small.items():
            big, _ = large[label]
            if isinstance(value, str):
                row(f"scale: {label}", f"{value} | {big}", unit)
                continue
            ratio = big / value if value else float("nan")
            row(
                f"scale: {label}",
                f"{_shown(value)} | {_shown(big)} | {ratio:.2f}x",
                f"{unit} ({small_size:,} | {history:,} finished)",
            )

    def seed(self, count: int) -> None:
        """An empty table, then ``count`` finished jobs, analysed; they stay
        through the bench's ``clear()`` from then on."""
        self.bench.history_kept = None
        self.bench.clear()
        started = time.perf_counter()
        seed_history(count, say=self.bench.say)
        analyze()
        self.bench.say(
            f"scale: {count:,} finished jobs written and analysed in "
            f"{time.perf_counter() - started:.0f} s"
        )
        last = Job.objects.aggregate(last=Max("id"))["last"]
        self.bench.history_kept = last or 0

    def figures(self) -> dict[str, tuple[float | str, str]]:
        figures = {}
        bench = self.bench
        bench.start_workers(2)
        try:
            rates = [bench.drain().rate for _ in range(self.options["runs"])]
        finally:
            bench.stop_workers()
        figures[f"drain {self.options['drain']:,}, 2 processes"] = (
            statistics.median(rates),
            "jobs/s",
        )
        bench.clear()
        noop.enqueue_many(((n,), {}) for n in range(1000))
        figures.update(self.claim("claim, 1,000 ready"))
        bench.clear()
        timer = AdminTimer()
        for label, url in admin_pages():
            figures[f"admin: {label}"] = (timer.median(url, self.repeat), "ms")
        figures["manage.py bgtasks status"] = (self.status_command(), "ms")
        figures.update(self.many_queues(timer))
        figures.update(self.schedules())
        return figures

    # The claim -------------------------------------------------------------

    def claim(self, label: str) -> dict[str, tuple[float | str, str]]:
        """The claim of a worker serving every queue: its time (median of
        ``CLAIMS_TIMED``, each rolled back), and on PostgreSQL its plan."""
        timings = []
        for _ in range(CLAIMS_TIMED):
            if connection.vendor == "mysql":
                timings.append(self.claim_put_back())
                continue
            with transaction.atomic():
                self.pin_plan()
                started = time.perf_counter()
                claim_jobs(
                    "default", worker_id="bench-scale", queues=None, limit=CLAIM_LIMIT
                )
                timings.append((time.perf_counter() - started) * 1000)
                transaction.set_rollback(True)
        figures = {f"{label}: claim time": (statistics.median(timings), "ms")}
        if connection.vendor == "postgresql":
            execution, scans = self.plan()
            figures[f"{label}: EXPLAIN ANALYZE execution"] = (execution, "ms")
            figures[f"{label}: scans of the job table"] = (scans, "")
        elif connection.vendor == "mysql":
            figures[f"{label}: the locking read's plan"] = (self.plan_mysql(), "")
        return figures

    @staticmethod
    def claim_put_back() -> float:
        """MySQL/MariaDB: one claim in its own transaction, as a worker's
        runs (at REPEATABLE READ: ``sql/claim.py``; in a transaction of the
        benchmark's it would keep that one's level), timed in ms; then its
        jobs are deleted and as many enqueued, for the next."""
        started = time.perf_counter()
        jobs = claim_jobs(
            "default", worker_id="bench-scale", queues=None, limit=CLAIM_LIMIT
        )
        elapsed = (time.perf_counter() - started) * 1000
        Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
        noop.enqueue_many(((n,), {}) for n in range(len(jobs)))
        return elapsed

    @staticmethod
    def plan_mysql() -> str:
        """The claim's locking read as EXPLAIN sees it: the index it walks,
        the rows it expects to read, and a sort if it needs one."""
        [(sql, params)] = locking_reads_mysql(connection, None, (), CLAIM_LIMIT)
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}", params)
            columns = [column[0] for column in cursor.description]
            plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        return "; ".join(
            f"{step['type']} on {step['key']}, {step['rows']} rows"
            + (", a sort!" if "filesort" in (step.get("Extra") or "") else "")
            for step in plan
        )

    @staticmethod
    def pin_plan() -> None:
        """As the claim does in autocommit (``sql/claim.py``): no sort."""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(NO_SORT)

    def plan(self) -> tuple[float, str]:
        """The claim's execution time by ``EXPLAIN ANALYZE`` (rolled back),
        and its scans of the job table: each node's type and index."""
        sql, params = claim_statement_postgresql(
            connection, "bench-scale", None, CLAIM_LIMIT
        )
        with transaction.atomic():
            self.pin_plan()
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
                plan = cursor.fetchone()[0]
            transaction.set_rollback(True)
        plan = json.loads(plan) if isinstance(plan, str) else plan
        scans = [
            node
            for node in _nodes(plan[0]["Plan"])
            if node.get("Relation Name") == Job._meta.db_table
            and "Scan" in node["Node Type"]
        ]
        if any(node["Node Type"] == "Seq Scan" for node in scans):
            return plan[0]["Execution Time"], "a Seq Scan!"
        indexes = sorted({node.get("Index Name", node["Node Type"]) for node in scans})
        return plan[0]["Execution Time"], "indexes " + ", ".join(indexes)

    # The status command ----------------------------------------------------

    def status_command(self) -> float:
        timings = []
        for _ in range(self.repeat):
            started = time.perf_counter()
            call_command("bgtasks", "status", stdout=io.StringIO())
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)

    # Many queues -----------------------------------------------------------

    def many_queues(self, timer: AdminTimer) -> dict[str, tuple[float | str, str]]:
        """``--queues`` queues of ``JOBS_PER_QUEUE`` ready jobs each: the
        claim of a worker serving all (``*``), the dashboard and the status
        command while they wait, then their drain by 2 worker processes
        serving all, from the first start to the last end (the database's
        times: the workers' wake-up is left out)."""
        count = self.options["queues"]
        label = f"{count:,} queues"
        bench = self.bench
        bench.clear()
        now = database_now("default")
        Job.objects.bulk_create(
            Job(
                task_path=noop.module_path,
                queue_name=f"scale-{number % count:05}",
                status=JobStatus.READY,
                args=[number],
                kwargs={},
                run_after=now,
                enqueued_at=now,
            )
            for number in range(count * JOBS_PER_QUEUE)
        )
        figures = self.claim(label)
        dashboard = reverse("admin:django_bgtasks_jobdashboard_changelist")
        figures[f"{label}: admin dashboard"] = (
            timer.median(dashboard, self.repeat),
            "ms",
        )
        figures[f"{label}: manage.py bgtasks status"] = (self.status_command(), "ms")
        os.environ["BGTASKS_ANY_QUEUE"] = "1"  # the workers' settings.py reads it
        try:
            bench.start_workers(2, clear=False)
            try:
                bench.wait_for_workers()
            finally:
                bench.stop_workers()
        finally:
            del os.environ["BGTASKS_ANY_QUEUE"]
        failed = Job.objects.filter(pk__gt=bench.history_kept).exclude(
            status=JobStatus.SUCCESSFUL
        )
        if failed.exists():
            raise SystemExit(f"Jobs of the {label} did not succeed: {failed[0]}.")
        span = Job.objects.filter(pk__gt=bench.history_kept).aggregate(
            first=Min("started_at"), last=Max("finished_at")
        )
        seconds = (span["last"] - span["first"]).total_seconds()
        figures[f"{label}: drain, 2 processes serving *"] = (
            count * JOBS_PER_QUEUE / seconds,
            "jobs/s",
        )
        bench.clear()
        return figures

    # Schedules ---------------------------------------------------------------

    def schedules(self) -> dict[str, tuple[float | str, str]]:
        """``--schedules`` enabled schedules, none due: one scheduler pass
        (median of several); then ``DUE_SCHEDULES`` of them due: one pass,
        which fires their jobs."""
        count = self.options["schedules"]
        now = database_now("default")
        Schedule.objects.all().delete()
        Schedule.objects.bulk_create(
            Schedule(
                name=f"scale-{number:05}",
                task_path=noop.module_path,
                interval=timedelta(days=1),
                args=[number],
                next_run_at=now + timedelta(seconds=60 + number * 86400 / count),
            )
            for number in range(count)
        )
        timings = []
        for _ in range(self.repeat * 3):
            started = time.perf_counter()
            fired = fire_due_schedules()
            timings.append((time.perf_counter() - started) * 1000)
            if fired:
                raise SystemExit(f"{fired} schedules fired: none was due.")
        due = Schedule.objects.order_by("id").values_list("id", flat=True)
        Schedule.objects.filter(id__in=list(due[:DUE_SCHEDULES])).update(
            next_run_at=now - timedelta(seconds=1)
        )
        started = time.perf_counter()
        fired = fire_due_schedules()
        elapsed = (time.perf_counter() - started) * 1000
        if fired != DUE_SCHEDULES:
            raise SystemExit(f"{fired} schedules fired, not {DUE_SCHEDULES}.")
        self.bench.clear()
        Schedule.objects.all().delete()
        label = f"{count:,} schedules"
        return {
            f"{label}: scheduler pass, none due": (statistics.median(timings), "ms"),
            f"{label}: scheduler pass, {DUE_SCHEDULES} due": (elapsed, "ms"),
        }


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def _shown(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
