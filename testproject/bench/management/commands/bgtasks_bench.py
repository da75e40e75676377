"""``manage.py bgtasks_bench``: how fast the queue is, as a table of figures.

Scenarios, each run ``--runs`` times (medians printed), on the database of
``DATABASE_URL`` with a no-op task taking one integer, results stored:

- enqueue: ``task.enqueue()`` from Django code, one transaction each, in
  turns with the bare INSERTs of the database alone;
- bulk: one ``task.enqueue_many()`` of ``--bulk`` jobs;
- drain: ``runworker --processes P --concurrency 16 --prefetch 48`` (the
  tuned worker) drains jobs enqueued at once (for each P of
  ``--processes``), with the workers' CPU per job and the PostgreSQL
  server's where it runs on this host, and the jobs per second one core of
  each carries at that cost (capacity); beside it, on PostgreSQL and
  MariaDB, the drain of as many bare loops of the database alone
  (``testproject/bench/bare.py``), and their latency; where the database
  has no NOTIFY, the tuned workers (in every scenario) and the bare loops
  look for due jobs every 10 ms when idle (``--poll-interval 0.01``), so
  that the drain is not counted from a sleeping worker;
- untuned: the same drain, priority and memory figures for ``runworker
  --processes 2`` with no tuning options on ``CONN_MAX_AGE = 0`` (Django's
  default): what a user who tunes nothing gets, beside the tuned worker
  (where the database has no NOTIFY, its drains count the sleep of its
  default 1 s poll after the backlog's commit);
- latency: from an enqueue's commit (when ``enqueue()`` returns), and from
  its call, to the start of the task, idle workers. The workers and the
  bare loops take turns (as many as ``--runs`` or ``--turns``, the larger),
  each side started afresh at each, the one that goes first alternating:
  the ``--runs`` drains are spread over the turns, and each turn takes its
  share of the latency's jobs and of the priority's backlogs, so that each
  figure and its ceiling are of the same minutes;
- priority: the same for high-priority jobs enqueued one at a time behind
  ``--backlog`` others (10 behind each of ``--priority-runs`` backlogs; the
  50th and 99th percentiles of those that started while some of the
  backlog was still waiting);
- memory: each worker process's resident memory, at rest and after draining;
- idle: transactions per second the idle workers cost the database
  (PostgreSQL);
- celery: where Celery and a Redis client are installed and Redis answers
  (``testproject/bench/celery_app.py``), the enqueue, drain (2 prefork
  processes), latency and memory figures of Celery with Redis as broker
  and result store, on the same machine in the same run, and the ratios;
- steady: ``--steady`` jobs flow through 2 worker processes that prune each
  finished job at once (``testproject.bench.settings``), the backlog topped
  up as it drains; throughput of the first and the last tenth of them, and
  the table's size, show whether the table bloats and slows the queue;
- chord: a chord of ``--chord`` no-op members and one callback, drained
  by 2 tuned worker processes: its enqueue (one call, every row), its drain,
  and the time from the last member's end to the callback's start, by the
  database's clock;
- limited: the drain of 2 tuned worker processes that know of a limit
  (``testproject/bench/limited.py``, so every claim is a limited claim),
  beside the same workers without it; then the no-ops' drain behind
  ``--limited`` jobs of 10 ms (of higher priority), unlimited on the first
  workers, limited to 2 at once on the second, the most limited jobs
  seen running at once (from their spans), and the CPU per no-op of the
  workers and of PostgreSQL until the last no-op ended (steadier than the
  rates on a machine whose speed varies by the minute);
- many-idle (only when named): ``--idle-workers`` idle worker processes,
  their connections (in all and per process) and transactions, and the CPU
  of the PostgreSQL server where it runs on this host;
- scale (only when named: minutes, and gigabytes of disk): the drain, the
  claim, the admin's pages, ``manage.py bgtasks status``, ``--queues``
  queues of work and ``--schedules`` schedules, beside a small history of
  finished jobs and beside ``--history`` of them, with the ratio
  (``testproject/bench/scale.py``).

Not a test: it asserts nothing and prints figures. Run it on a quiet
machine; ``--quick`` runs small sizes once (CI uses it to prove it works).
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from django_bgtasks import chord
from django_bgtasks.models import Job, JobDependency, JobStatus, WorkerProcess
from django_bgtasks.notify import notify_enabled
from testproject.bench.noop import count_results, noop, sleep_10ms
from testproject.bench.scale import Scale

MANAGE_PY = os.path.join(os.path.dirname(__file__), *[os.pardir] * 4, "manage.py")


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def database_cpu_seconds() -> float | None:
    """The CPU time of this host's database server processes (PostgreSQL's,
    or MariaDB's / MySQL's on those), in seconds; None where none can be
    read (a server on another host, or SQLite's, which runs in the
    workers)."""
    servers = {b"mariadbd", b"mysqld"} if connection.vendor == "mysql" else set()
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                program = cmdline.read().split(b"\0")[0]
            # The server, and its processes under their titles ("postgres:
            # 15/main: checkpointer", "postgres: 15/main: user db ... idle").
            if servers:
                if os.path.basename(program) not in servers:
                    continue
            elif not (
                program.startswith(b"postgres:")
                or os.path.basename(program) == b"postgres"
            ):
                continue
        except OSError:
            continue  # gone, or not ours to read
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime and stime, and of the children it has reaped (the postmaster
        # holds those of ended connections).
        total += sum(int(field) for field in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK") if total else None


def _stat_fields(pid: str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command's name (the
    state first), or None if the process is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu_seconds(root: int) -> float:
    """The CPU time of process ``root`` and of every process under it, in
    seconds (the workers of a supervisor)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat_fields(pid)
        if fields is not None:
            parents[int(pid)] = (int(fields[1]), sum(int(f) for f in fields[11:13]))
    tree, total = {root}, 0
    for pid in sorted(parents):  # children have higher pids, mostly
        parent, ticks = parents[pid]
        if pid == root or parent in tree:
            tree.add(pid)
            total += ticks
    return total / os.sysconf("SC_CLK_TCK")


class CpuSpent:
    """The CPU the workers (the process tree of ``root``) and the PostgreSQL
    server spend from now on."""

    def __init__(self, root: int):
        self.root = root
        self.workers = tree_cpu_seconds(root)
        # The server's processes; SQLite has none (it runs in the workers).
        self.database = (
            database_cpu_seconds() if connection.vendor != "sqlite" else None
        )

    def per_job(self, count: int) -> tuple[float, float | None]:
        """Until now, per job of ``count``, in ms: the workers' and the
        database's (None where it cannot be read)."""
        workers = (tree_cpu_seconds(self.root) - self.workers) * 1000 / count
        database = database_cpu_seconds()
        if database is None or self.database is None:
            return workers, None
        return workers, (database - self.database) * 1000 / count


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def p50_p99(values) -> tuple[float, float]:
    """The 50th and 99th percentiles of ``values``."""
    return percentile(values, 0.5), percentile(values, 0.99)


def latencies(samples) -> dict[str, tuple[float, float]]:
    """From each job's enqueue to the start of its task (``samples``): the
    50th and 99th percentile, counted from the commit and from the call."""
    return {since: p50_p99([sample[since] for sample in samples]) for since, _ in SINCE}


class Drain(NamedTuple):
    """A drain's figures: jobs per second, and the CPU per job of the
    workers (or bare loops) and of the database server (None where it
    cannot be read), in ms."""

    rate: float
    workers_cpu: float
    database_cpu: float | None


def drain_medians(drains: list[Drain]) -> Drain:
    """Each figure's median over ``drains``."""
    databases = [d.database_cpu for d in drains if d.database_cpu is not None]
    return Drain(
        statistics.median(d.rate for d in drains),
        statistics.median(d.workers_cpu for d in drains),
        statistics.median(databases) if databases else None,
    )


def share(total: int, turn: int, turns: int) -> int:
    """Turn ``turn``'s share of ``total`` split over ``turns`` turns."""
    return total * (turn + 1) // turns - total * turn // turns


def percentiles(values) -> str:
    """The 50th and 99th percentiles of ``values``, as a figure."""
    p50, p99 = p50_p99(values)
    return f"{p50:.1f} / {p99:.1f}"


SCENARIOS = (
    "enqueue",
    "bulk",
    "workers",
    "untuned",
    "chord",
    "limited",
    "steady",
    "celery",
)
# Run only when asked for: PostgreSQL's default max_connections (100) holds
# about 45 idle worker processes (two connections each).
# The scale scenario writes --history rows (10,000,000: minutes, and GBs).
OPTIONAL_SCENARIOS = ("many-idle", "scale")
SIZES = [  # the integer options: name, default, help
    ("runs", 3, "Runs per figure."),
    ("enqueue", 3000, "Jobs enqueued one by one."),
    ("bulk", 50_000, "Jobs enqueued in bulk."),
    ("drain", 20_000, "Jobs per drain run."),
    ("concurrency", 16, "Threads per process."),
    ("prefetch", 48, "runworker --prefetch."),
    ("latency", 1000, "Jobs timed one at a time."),
    (
        "turns",
        5,
        "Turns the workers and the bare loop take (at least --runs).",
    ),
    ("backlog", 10_000, "Jobs ahead of the high-priority one."),
    (
        "priority_runs",
        10,
        "Backlogs behind which high-priority jobs are timed (10 each).",
    ),
    ("chord", 1000, "Members of the chord scenario's chord."),
    ("limited", 200, "Limited jobs ahead of the no-ops in the limited scenario."),
    ("steady", 1_000_000, "Jobs through the table in the steady-state scenario."),
    ("idle_workers", 40, "Worker processes in the many-idle scenario."),
    ("history", 10_000_000, "Finished jobs kept in the scale scenario."),
    ("queues", 1000, "Queues of ready jobs in the scale scenario."),
    ("schedules", 10_000, "Enabled schedules in the scale scenario."),
]
# Seconds between an idle tuned worker's looks for due jobs (and a bare
# loop's) where the database has no NOTIFY to wake it: with the default 1 s,
# a drain of a few seconds would count up to a second of sleep after the
# backlog's commit, which is latency (measured apart), not throughput.
POLL_INTERVAL = 0.01
# The vendors with a bare loop (bare.py).
BARE_LOOPS = {"postgresql", "mysql"}
# Turns the enqueue scenario's timings take (enqueue_rates).
ENQUEUE_ROUNDS = 10
# High-priority jobs timed one after another in each priority run (10
# backlogs of 10 by default: a p99 of the 15 samples of before was their
# largest, one slow moment of the machine's).
PRIORITY_SAMPLES = 10
# Where latencies are counted from: the enqueue's commit, and its call.
SINCE = [("commit", "from the commit"), ("call", "from the call")]
# The columns a bare INSERT of a job row sets (the database-alone figures).
BARE_COLUMNS = (
    "task_path, backend, queue_name, priority, status, args, kwargs, run_after, "
    "enqueued_at, attempts, max_attempts, backoff, worker_ids, errors"
)


class Command(BaseCommand):
    help = "Measure enqueue, bulk enqueue, drain, latency, memory and idle cost."

    def add_arguments(self, parser):
        parser.add_argument(
            "--scenarios",
            default=",".join(SCENARIOS),
            help=f"Which to run, of {', '.join(SCENARIOS + OPTIONAL_SCENARIOS)} "
            f"(default: {', '.join(SCENARIOS)}).",
        )
        for name, default, help_text in SIZES:
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=int,
                default=default,
                help=help_text,
            )
        parser.add_argument(
            "--processes",
            default="2",
            help="Worker processes to drain with, e.g. 1,2,4 (default: 2).",
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="Small sizes, one run: proves the benchmark works.",
        )

    def handle(self, *args, **options):
        # The workers started below register the no-op task from here
        # (testproject/settings.py reads it).
        os.environ["BGTASKS_TASK_MODULES"] = "testproject.bench.noop"
        if options["quick"]:
            options.update(
                runs=1, enqueue=200, bulk=2000, drain=1000, latency=20, turns=1,
                backlog=500, processes="1", priority_runs=1, steady=20_000,
                idle_workers=2, chord=200, limited=20, history=50_000, queues=100,
                schedules=1000,
            )  # fmt: skip
        scenarios = options["scenarios"].split(",")
        unknown = set(scenarios) - set(SCENARIOS + OPTIONAL_SCENARIOS)
        if unknown:
            raise CommandError(f"Unknown scenario(s): {', '.join(sorted(unknown))}")
        self.options = options
        runs = options["runs"]
        self.say(
            f"django-bgtasks benchmark on {connection.display_name} "
            f"({connection.settings_dict['NAME']}), {os.cpu_count()} CPUs, "
            f"medians of {runs} run(s)"
        )
        rows = []

        def row(label, value, unit):
            rows.append((label, value, unit))

        ours = self.ours = {}  # figures to compare with Celery's
        if "enqueue" in scenarios:
            # Interleaved, so that each sees the machine of the same minutes.
            timers = [self.enqueue, self.bare_insert]
            if self.can_prepare():
                timers.append(self.enqueue_prepared)
            ours["enqueue"], bare, *prepared = self.run_medians(
                lambda: self.enqueue_rates(*timers)
            )
            row("enqueue, one transaction each", ours["enqueue"], "jobs/s")
            row("  the database alone: bare INSERTs", bare, "rows/s")
            row("  enqueue / bare", f"{ours['enqueue'] / bare:.1%}", "")
            if prepared:
                row("enqueue, prepared statements (server_side_binding)",
                    prepared[0], "jobs/s")  # fmt: skip
                row("  prepared / bare", f"{prepared[0] / bare:.1%}", "")
        if "bulk" in scenarios:
            bulk, bare = self.medians(self.bulk, self.bare_bulk_insert)
            row("bulk enqueue (enqueue_many)", bulk, "jobs/s")
            row("  the database alone: INSERT ... SELECT", bare, "rows/s")
            row("  bulk / bare", f"{bulk / bare:.1%}", "")
        processes = [int(p) for p in options["processes"].split(",")]
        for count in processes if "workers" in scenarios else []:
            # The idle cost and the latencies are measured once, with the
            # first count of processes (and with 2, the usual one).
            measured = count in (processes[0], 2)
            drain = self.workers(row, count, tuned=True, measured=measured)
            if count == 2 or "drain" not in ours:
                ours["drain"] = drain
        if "untuned" in scenarios:
            untuned = self.workers(row, 2, tuned=False, measured=True)
            if "drain" in ours:
                row(
                    "untuned / tuned: drain",
                    f"{untuned / ours['drain']:.2f}",
                    "x (2 processes each)",
                )
        if "chord" in scenarios:
            self.chord(row)
        if "limited" in scenarios:
            self.limited(row)
        if "steady" in scenarios:
            self.steady(row)
        if "celery" in scenarios:
            self.celery(row)
        if "scale" in scenarios:
            Scale(self).run(row)
        if "many-idle" in scenarios:
            if connection.vendor == "postgresql":
                self.many_idle(row)
            else:
                self.say("(many-idle: PostgreSQL only)")
        self.say("")
        width = max((len(label) for label, _, _ in rows), default=0)
        for label, value, unit in rows:
            shown = f"{value:,.0f}" if isinstance(value, int | float) else value
            self.say(f"  {label:<{width}}  {shown:>14}  {unit}")

    def say(self, text):
        self.stdout.write(text)
        self.stdout.flush()

    def median(self, scenario):
        return statistics.median(scenario() for _ in range(self.options["runs"]))

    def medians(self, *scenarios) -> list[float]:
        """The median of each scenario, their runs interleaved."""
        return self.run_medians(lambda: [scenario() for scenario in scenarios])

    def run_medians(self, figures) -> list[float]:
        """The median of each of the figures ``figures()`` returns, over
        ``--runs`` calls."""
        runs = [figures() for _ in range(self.options["runs"])]
        return [statistics.median(column) for column in zip(*runs, strict=True)]

    # The scale scenario's history of finished jobs: the jobs up to this id,
    # which clear() leaves (None: it empties the table).
    history_kept: int | None = None

    def clear(self):
        with connection.cursor() as cursor:
            if self.history_kept is not None:
                table = connection.ops.quote_name(Job._meta.db_table)
                kept = [self.history_kept]
                cursor.execute(f"DELETE FROM {table} WHERE id > %s", kept)
                JobDependency.objects.all().delete()
            elif connection.vendor == "postgresql":
                cursor.execute(
                    f"TRUNCATE {Job._meta.db_table}, {JobDependency._meta.db_table}"
                )
            else:
                Job.objects.all().delete()
                JobDependency.objects.all().delete()

    # Enqueueing --------------------------------------------------------------

    def enqueue_rates(self, *timers) -> list[float]:
        """Jobs (rows) per second of each of ``timers``, each called with a
        count of jobs to insert and returning the seconds it took: they take
        turns in ``ENQUEUE_ROUNDS`` blocks of ``--enqueue`` / rounds jobs,
        so that each sees the machine of the same seconds (its speed moves
        by the minute: runs of 3,000 one after the other put one enqueue at
        78-100% of the bare INSERTs over a few hours)."""
        self.clear()
        block = max(1, self.options["enqueue"] // ENQUEUE_ROUNDS)
        seconds = [0.0] * len(timers)
        for turn in range(ENQUEUE_ROUNDS):
            # Each goes first in turn: no timer always follows the same one.
            for step in range(len(timers)):
                n = (turn + step) % len(timers)
                seconds[n] += timers[n](block)
        return [block * ENQUEUE_ROUNDS / spent for spent in seconds]

    @staticmethod
    def enqueue(count: int) -> float:
        started = time.perf_counter()
        for number in range(count):
            noop.enqueue(number)
        return time.perf_counter() - started

    @staticmethod
    def can_prepare() -> bool:
        """Whether the connection is psycopg 3's, which prepares statements
        as its ``prepare_threshold`` says (Django's default: never)."""
        connection.ensure_connection()
        return hasattr(connection.connection, "prepare_threshold")

    def enqueue_prepared(self, count: int) -> float:
        """``enqueue`` on a connection that prepares its statements at once,
        as ``OPTIONS`` ``server_side_binding`` True and ``prepare_threshold``
        0 make it (not behind PgBouncer before 1.21)."""
        raw, options = connection.connection, connection.settings_dict["OPTIONS"]
        before = raw.prepare_threshold, options.get("server_side_binding")
        raw.prepare_threshold, options["server_side_binding"] = 0, True
        try:
            return self.enqueue(count)
        finally:
            raw.prepare_threshold, options["server_side_binding"] = before

    @staticmethod
    def bare_insert(count: int) -> float:
        """What the database does alone: one-row INSERTs of a job row through
        the cursor, one commit each; a ceiling for ``enqueue``."""
        table = connection.ops.quote_name(Job._meta.db_table)
        sql = (
            f"INSERT INTO {table} ({BARE_COLUMNS}) VALUES ('noop', 'default', "
            f"'default', 0, 'READY', %s, '{{}}', %s, %s, 0, 3, '{{}}', '[]', '[]')"
        )
        with connection.cursor() as cursor:
            started = time.perf_counter()
            for number in range(count):
                now = connection.ops.adapt_datetimefield_value(timezone.now())
                cursor.execute(sql, [f"[{number}]", now, now])
            return time.perf_counter() - started

    def bare_bulk_insert(self) -> float:
        """What the database does alone: job rows made by the server in
        chunks (PostgreSQL: generate_series; elsewhere a recursive CTE, of
        1,000 rows, MySQL's default recursion limit); a ceiling for
        ``bulk``."""
        self.clear()
        count = self.options["bulk"]
        if connection.vendor == "postgresql":
            chunk, numbers = 5000, "generate_series(1, %s) n"
            values = "'noop', 'default', 'default', 0, 'READY', jsonb_build_array(n)"
            times = "now(), now()"
        else:
            chunk = 1000
            numbers = (
                "(WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 "
                "FROM seq WHERE n < %s) SELECT n FROM seq) AS numbers"
            )
            values = "'noop', 'default', 'default', 0, 'READY', json_array(n)"
            times = "%s, %s"
        sql = (
            f"INSERT INTO {Job._meta.db_table} ({BARE_COLUMNS}) SELECT {values}, "
            f"'{{}}', {times}, 0, 3, '{{}}', '[]', '[]' FROM {numbers}"
        )
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            for start in range(0, count, chunk):
                size = min(chunk, count - start)
                if connection.vendor == "postgresql":
                    cursor.execute(sql, [size])
                else:
                    now = connection.ops.adapt_datetimefield_value(timezone.now())
                    # The times come after the numbers in the text.
                    cursor.execute(sql, [now, now, size])
        return count / (time.perf_counter() - started)

    def bulk(self) -> float:
        self.clear()
        count = self.options["bulk"]
        started = time.perf_counter()
        noop.enqueue_many(((n,), {}) for n in range(count))
        return count / (time.perf_counter() - started)

    # Workers -----------------------------------------------------------------

    def workers(self, row, count: int, *, tuned: bool, measured: bool) -> float:
        """The drain of ``count`` worker processes, and where ``measured``
        their latencies, memory and idle cost; returns the drain's rate."""
        options = self.options
        name = "" if tuned else "untuned: "
        # The ceiling: the same figures of a bare loop (bare.py).
        with_bare = tuned and connection.vendor in BARE_LOOPS
        figures = self.take_turns(count, tuned=tuned, measured=measured, bare=with_bare)
        ours = figures["ours"]
        drain, workers_cpu, database_cpu = drain_medians(ours["drains"])
        row(f"{name}drain {options['drain']:,} jobs, {count} process(es)",
            drain, "jobs/s")  # fmt: skip
        if with_bare:
            bare = figures["bare"]
            bare_drain, loops, database = drain_medians(bare["drains"])
            row("  the database alone: claim and complete 100 at a time",
                bare_drain, "jobs/s")  # fmt: skip
            row("  drain / bare", f"{drain / bare_drain:.1%}", "")
            row("  the database alone: its loops' / the database's CPU per job",
                f"{loops:.3f} / {'-' if database is None else f'{database:.3f}'}",
                "ms")  # fmt: skip
        # Capacity: what one core of each side carries at this pace.
        row(f"  {name}workers' CPU per job", f"{workers_cpu:.3f}", "ms")
        row(f"  {name}jobs per worker core", 1000 / workers_cpu, "jobs/s")
        if database_cpu is not None:
            row(f"  {name}{connection.display_name} CPU per job",
                f"{database_cpu:.3f}",
                "ms")  # fmt: skip
            row(f"  {name}jobs per {connection.display_name} core",
                1000 / database_cpu,
                "jobs/s")  # fmt: skip
        if not measured:
            return drain
        if tuned:
            latency = latencies(ours["latency"])
            self.ours["latency"] = latency["commit"]
            for since, label in SINCE:
                p50, p99 = latency[since]
                row(
                    f"latency p50 / p99 {label}, {count} process(es)",
                    f"{p50:.1f} / {p99:.1f}",
                    "ms",
                )
            if with_bare:
                p50, p99 = latencies(bare["latency"])["commit"]
                row("  the database alone: latency p50 / p99 from the commit",
                    f"{p50:.1f} / {p99:.1f}", "ms")  # fmt: skip
        for since, label in SINCE:
            delays = [sample[since] for sample in ours["priority"]]
            label = f"{name}high priority behind {options['backlog']:,} {label}"
            if delays:
                row(label, percentiles(delays), f"ms, p50 / p99 of {len(delays)}")
            else:
                row(label, "none", "(the backlog always ran out first)")
            if since == "commit" and with_bare:
                delays = [sample["commit"] for sample in bare["priority"]]
                row(f"  the database alone: high priority behind "
                    f"{options['backlog']:,} from the commit",
                    percentiles(delays) if delays else "none",
                    f"ms, p50 / p99 of {len(delays)}" if delays
                    else "(the backlog always ran out first)")  # fmt: skip
        row(f"{name}worker RSS at rest / after",
            f"{ours['rest']:.0f} / {max(ours['after']):.0f}",
            "MB, largest")  # fmt: skip
        if ours["idle"] is not None:
            row("idle worker's database transactions", f"{ours['idle']:.1f}",
                "per second")  # fmt: skip
        return drain

    def take_turns(
        self, count: int, *, tuned: bool, measured: bool, bare: bool
    ) -> dict:
        """The figures of ``count`` worker processes (``"ours"``) and, if
        ``bare``, of as many bare loops (``"bare"``): their ``--runs``
        drains (``drain``), and where ``measured`` their latency
        (``latency``) and high-priority (``priority_samples``) samples, and
        our workers' memory at rest (before their work) and after each
        turn's drain, and idle cost.

        The two sides take turns, as many as ``--runs`` or ``--turns`` (the
        larger), each started afresh at each (the one that goes first
        alternating): the drains are spread over the turns, and each turn
        takes its share of the latency's jobs and of the backlogs, so that
        each figure and its ceiling are measured in the same minutes. This
        machine's pace changes from one minute to the next, and a 99th
        percentile is a few slow moments of it. Without a bare loop, the
        workers take the turns alone: every drain is of workers started
        afresh."""
        options = self.options
        runs = options["runs"]
        sides = {"ours": lambda: self.start_workers(count, tuned=tuned)}
        if bare:
            sides["bare"] = lambda: self.start_bare(count)
        turns = max(runs, options["turns"] if measured else 1)
        figures = {
            side: {"drains": [], "latency": [], "priority": [], "after": []}
            for side in sides
        }
        for turn in range(turns):
            order = list(sides.items())
            for side, start in order[::-1] if turn % 2 else order:
                mine = figures[side]
                start()
                try:
                    if side == "ours" and turn == 0 and measured:
                        # First, while the table is quiet.
                        mine["rest"] = self.memory()
                        mine["idle"] = (
                            self.idle(count)
                            if tuned and connection.vendor == "postgresql"
                            else None
                        )
                    drains = share(runs, turn, turns)
                    mine["drains"] += [self.drain() for _ in range(drains)]
                    if side == "ours" and measured and drains:
                        mine["after"].append(self.memory())
                    if measured and tuned:
                        jobs = share(options["latency"], turn, turns)
                        mine["latency"] += self.latency(jobs)
                    if measured:
                        backlogs = share(options["priority_runs"], turn, turns)
                        mine["priority"] += self.priority_samples(backlogs)
                finally:
                    self.stop_workers()
        return figures

    # Workflows ---------------------------------------------------------------

    def chord(self, row) -> None:
        """A chord of ``--chord`` members and its callback through 2 tuned
        worker processes."""
        count = self.options["chord"]
        self.start_workers(2)
        try:
            figures = [self.one_chord(count) for _ in range(self.options["runs"])]
        finally:
            self.stop_workers()
        enqueue, drain, gap = (statistics.median(f) for f in zip(*figures, strict=True))
        row(f"chord of {count:,}: enqueue, one call", f"{enqueue:.1f}", "ms")
        row(f"chord of {count:,}: drain, 2 process(es)", drain, "jobs/s")
        row(
            f"chord of {count:,}: last member's end to the callback's start",
            f"{gap:.1f}",
            "ms",
        )

    def one_chord(self, count: int) -> tuple[float, float, float]:
        """Enqueue one chord and wait for its callback: the enqueue's time
        in ms, the drain's rate (from the enqueue's commit to the callback's
        end), and from the last member's end to the
        callback's start in ms (the database's clock: both are its times)."""
        self.clear()
        started = time.perf_counter()
        workflow = chord(
            [noop.step(n) for n in range(count)], count_results.step()
        ).enqueue()
        enqueued = time.perf_counter() - started
        started += enqueued  # the drain counts from the commit
        callback = Job.objects.filter(workflow_id=workflow.id, has_dependents=False)
        deadline = time.monotonic() + 600
        while callback.filter(finished_at__isnull=True).exists():
            self.check_workers(deadline)
            time.sleep(0.01)
        drained = time.perf_counter() - started
        last_end = Job.objects.filter(
            workflow_id=workflow.id, has_dependents=True
        ).aggregate(last=Max("finished_at"))["last"]
        [(start, handed)] = callback.values_list("started_at", "return_value")
        if handed != count:
            raise SystemExit(f"The chord's callback was handed {handed} results.")
        gap = (start - last_end).total_seconds() * 1000
        return enqueued * 1000, (count + 1) / drained, gap

    # Limits ------------------------------------------------------------------

    def limited(self, row) -> None:
        """Drains of no-ops by workers that know of no limit and by workers
        that know of one; and of no-ops behind ``--limited`` 10 ms jobs, by
        the first kind (the jobs unlimited) and by the second (the jobs
        limited to 2 at once)."""
        runs = self.options["runs"]
        plain, known, mixed, beside, most = [], [], [], [], []
        # CPU per no-op job (ms), of the workers and of PostgreSQL: steadier
        # than a rate on a machine whose speed varies by the minute.
        cpu = {"unlimited": [], "limited": []}
        for _ in range(runs):
            # Alternated, so that both see the machine of the same minutes.
            self.start_workers(2)
            try:
                plain.append(self.drain().rate)
                rate, _, spent = self.drain_behind(sleep_10ms)
                mixed.append(rate)
                cpu["unlimited"].append(spent)
            finally:
                self.stop_workers()
            self.start_workers(2, limits=True)
            try:
                from testproject.bench.limited import two_at_a_time

                known.append(self.drain().rate)
                rate, seen, spent = self.drain_behind(two_at_a_time)
                beside.append(rate)
                most.append(seen)
                cpu["limited"].append(spent)
            finally:
                self.stop_workers()
        drain = self.options["drain"]
        # Each run's pair: the machine's speed moves between runs more than
        # within one, so the ratios of pairs say more than a ratio of medians.
        pairs = [b / m for b, m in zip(beside, mixed, strict=True)]
        plain, known, mixed, beside = (
            statistics.median(f) for f in (plain, known, mixed, beside)
        )
        ahead = self.options["limited"]
        row(f"drain {drain:,}, 2 processes, no limit known", plain, "jobs/s")
        row(f"drain {drain:,}, 2 processes, a limit known", known, "jobs/s")
        row(f"drain {drain:,} behind {ahead:,} 10 ms jobs", mixed, "jobs/s (no-ops)")
        row(
            f"drain {drain:,} behind {ahead:,} 10 ms jobs limited to 2",
            beside,
            "jobs/s (no-ops)",
        )
        row(
            "  limit known / none; behind limited / unlimited",
            f"{known / plain:.2f}; {beside / mixed:.2f}",
            "x",
        )
        if len(pairs) > 1:
            row(
                "  behind limited / unlimited, each run",
                " ".join(f"{pair:.2f}" for pair in pairs),
                "x",
            )
        row("  most limited jobs running at once", max(most), "(limit: 2)")
        for kind, spent in cpu.items():
            workers = statistics.median(w for w, _ in spent)
            database = [d for _, d in spent if d is not None]
            figure = f"{workers:.3f}"
            if database:
                figure += f" + {statistics.median(database):.3f}"
            row(f"  CPU per no-op behind {kind}, workers + database", figure, "ms")

    def drain_behind(self, task) -> tuple[float, int, tuple]:
        """The no-ops' rate behind ``--limited`` jobs of ``task`` (10 ms
        each, of higher priority), the most of those that ran at once, and
        the workers' and the database's CPU per no-op (ms; the database's
        None where it cannot be read)."""
        self.clear()
        count = self.options["drain"]
        with transaction.atomic():
            ahead = task.enqueue_many(
                ((n,), {}) for n in range(self.options["limited"])
            )
            noop.enqueue_many(((n,), {}) for n in range(count))
        spent = CpuSpent(self.supervisor.pid)
        started = time.perf_counter()
        free = Job.objects.filter(task_path=noop.module_path).exclude(
            status=JobStatus.SUCCESSFUL
        )
        deadline = time.monotonic() + 600
        while free.exists():
            self.check_workers(deadline)
            time.sleep(0.01)
        rate = count / (time.perf_counter() - started)
        # Until the last no-op: the limited jobs may run on alone after it.
        per_job = spent.per_job(count)
        self.wait_for_workers()
        moments = []
        for began, ended in Job.objects.filter(
            pk__in=[result.id for result in ahead]
        ).values_list("return_value", flat=True):
            moments += [(began, 1), (ended, -1)]
        running = most = 0
        for _, change in sorted(moments):
            running += change
            most = max(most, running)
        return rate, most, per_job

    def start_workers(
        self,
        count: int,
        *,
        maintenance: bool = False,
        tuned: bool = True,
        limits: bool = False,
        clear: bool = True,
    ) -> None:
        """Start ``runworker --processes count``; with ``maintenance``, its
        workers prune every finished job at once. Not ``tuned``: without
        ``--concurrency`` and ``--prefetch``, on ``CONN_MAX_AGE = 0``. With
        ``limits``: they know of the limited task's limit. Not ``clear``:
        the jobs in the table are left for them."""
        if clear:
            self.clear()
        WorkerProcess.objects.all().delete()
        command = [
            sys.executable, MANAGE_PY, "runworker", "--processes", str(count),
            "--no-scheduler", "-v", "0",
        ]  # fmt: skip
        environment = dict(os.environ)
        if limits:
            environment["BGTASKS_TASK_MODULES"] += ",testproject.bench.limited"
        if tuned:
            command += ["--concurrency", str(self.options["concurrency"])]
            command += ["--prefetch", str(self.options["prefetch"])]
            if not notify_enabled(connection):
                command += ["--poll-interval", str(POLL_INTERVAL)]
        else:
            environment["CONN_MAX_AGE"] = "0"
        if maintenance:
            environment["DJANGO_SETTINGS_MODULE"] = "testproject.bench.settings"
        else:
            command.append("--no-maintenance")
        self.supervisor = subprocess.Popen(command, env=environment)
        deadline = time.monotonic() + 60 + count
        while WorkerProcess.objects.count() < count:
            if time.monotonic() > deadline:
                self.stop_workers()
                raise SystemExit("The workers did not start in time.")
            time.sleep(0.05)
        time.sleep(0.5)  # let them settle into their idle wait

    def start_bare(self, count: int) -> None:
        """Start ``count`` bare loops, and wait until every one is connected
        (and on PostgreSQL listening)."""
        self.clear()
        settings = connection.settings_dict
        database = {"vendor": connection.vendor}
        database.update(
            (key, str(settings[key] or ""))
            for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT")
        )
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "testproject.bench.bare", str(count)]
            + ([] if notify_enabled(connection) else [str(POLL_INTERVAL)]),
            cwd=os.path.dirname(MANAGE_PY),
            env={**os.environ, "BGTASKS_BARE_DATABASE": json.dumps(database)},
            stdout=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([self.supervisor.stdout], [], [], 60)
        if not ready or self.supervisor.stdout.readline().strip() != "ready":
            self.stop_workers()
            raise SystemExit("The bare loops did not start.")

    def stop_workers(self) -> None:
        """Stop the workers, or the bare loops (``start_bare``)."""
        self.supervisor.send_signal(signal.SIGTERM)
        try:
            self.supervisor.wait(60)
        except subprocess.TimeoutExpired:
            self.supervisor.kill()
            self.supervisor.wait()
        if self.supervisor.stdout is not None:  # the bare loops' "ready"
            self.supervisor.stdout.close()

    def drain(self) -> Drain:
        """The figures of the workers (or bare loops) draining a backlog."""
        self.clear()
        count = self.options["drain"]
        with transaction.atomic():
            noop.enqueue_many(((n,), {}) for n in range(count))
        spent = CpuSpent(self.supervisor.pid)
        started = time.perf_counter()
        self.wait_for_workers()
        rate = count / (time.perf_counter() - started)
        return Drain(rate, *spent.per_job(count))

    def wait_for_workers(self, timeout: float = 600) -> None:
        """Until no job is READY or RUNNING (the queue is drained)."""
        # READY and RUNNING rows, through their small partial indexes: the
        # watching must not take the database's time from the workers. (Not
        # "status IN (READY, RUNNING)", which no partial index serves: a
        # parallel scan of the table, 1 s each at 10,000,000 finished jobs.)
        deadline = time.monotonic() + timeout
        while Job.objects.ready().exists() or Job.objects.running().exists():
            self.check_workers(deadline)
            time.sleep(0.01)

    def check_workers(self, deadline: float) -> None:
        if self.supervisor.poll() is not None:
            raise SystemExit("The workers exited during the benchmark.")
        if time.monotonic() > deadline:
            raise SystemExit("The workers did not finish in time.")

    def latency(self, count: int) -> list[dict[str, float]]:
        """The ``samples`` of ``count`` jobs enqueued one at a time, each
        once the workers are idle again."""
        self.clear()
        sent = {}
        for number in range(1, count + 1):
            sent.update(self.enqueue_timed(noop, -number))
            time.sleep(0.01)  # one at a time: the workers are idle again
        return list(self.samples(sent).values())

    @staticmethod
    def enqueue_timed(task, number) -> dict[int, tuple[float, float]]:
        """Enqueue a timed job (a negative ``number``: the task returns when
        it started), in autocommit (one transaction); the job's id, and when
        ``enqueue()`` was called and when it returned, committed."""
        called = time.time()
        job_id = int(task.enqueue(number).id)
        return {job_id: (called, time.time())}

    def samples(self, sent) -> dict[int, dict[str, float]]:
        """By job id, each timed job's delay from its enqueue to the start of
        its task (which returns the time, in the worker's clock: the same
        host's), in ms, counted from the call and from the commit (when
        ``enqueue()`` returned). The job is visible to workers from a moment
        in between: the worker may start it before the commit's reply
        reaches the enqueuer, so a delay from the commit may be below
        zero."""
        deadline = time.monotonic() + 60
        while Job.objects.filter(pk__in=sent, finished_at__isnull=True).exists():
            if time.monotonic() > deadline:
                raise SystemExit("Jobs did not finish within 60 s.")
            time.sleep(0.01)
        starts = Job.objects.filter(pk__in=sent).values_list("pk", "return_value")
        samples = {}
        for pk, start in starts:
            called, committed = sent[pk]
            samples[pk] = {
                "call": (start - called) * 1000,
                "commit": (start - committed) * 1000,
            }
        return samples

    def priority_samples(self, runs: int) -> list[dict[str, float]]:
        """``priority``'s samples behind each of ``runs`` backlogs."""
        return [sample for _ in range(runs) for sample in self.priority()]

    def priority(self) -> list[dict[str, float]]:
        """The delays of high-priority jobs enqueued one at a time while the
        workers drain a backlog of ``--backlog`` jobs; only those of the jobs
        that started while some of the backlog was still waiting (a job
        claimed after the backlog ran out proves nothing)."""
        self.clear()
        with transaction.atomic():
            noop.enqueue_many(((n,), {}) for n in range(self.options["backlog"]))
        time.sleep(0.05)  # the workers have woken up to the backlog
        sent = {}
        for number in range(PRIORITY_SAMPLES):
            sent.update(self.enqueue_timed(noop.using(priority=100), -number - 1))
            time.sleep(0.02)  # one at a time, the backlog still there
        samples = self.samples(sent)
        self.wait_for_workers()  # the next run starts with quiet workers
        # A claim dates its jobs: a high-priority job started behind the
        # backlog if some of the backlog was claimed after it.
        backlog_started = Job.objects.filter(priority=0).aggregate(
            last=Max("started_at")
        )["last"]
        if backlog_started is None:
            return []  # no backlog at all
        started = dict(Job.objects.filter(pk__in=sent).values_list("pk", "started_at"))
        return [
            sample for pk, sample in samples.items() if started[pk] < backlog_started
        ]

    def memory(self) -> float:
        """The largest worker's RSS, once the workers are at rest (they go
        idle once their last outcomes are written)."""
        time.sleep(0.5)
        return self.largest_rss()

    def largest_rss(self) -> float:
        """The largest worker's RSS now, in MB."""
        sizes = [
            rss_mb(pid) for pid in WorkerProcess.objects.values_list("pid", flat=True)
        ]
        return max((size for size in sizes if size), default=0.0)

    def idle(self, count: int) -> float:
        """Transactions per second each of ``count`` idle workers costs."""
        transactions, _ = self.idle_figures()
        return transactions / count

    def idle_figures(self) -> tuple[float, float | None]:
        """Over 10 s of the workers' idle wait: the database's transactions
        per second, and the share of one core its server used (None where
        it runs on another host), in %."""
        # The workers settle into their idle wait, and the statistics of their
        # start-up reach pg_stat_database (an idle backend reports up to 10 s
        # late).
        time.sleep(11)
        query = (
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        with connection.cursor() as cursor:
            cursor.execute(query)
            before, cpu_before = cursor.fetchone()[0], database_cpu_seconds()
            time.sleep(10)
            cursor.execute(query)
            after, cpu_after = cursor.fetchone()[0], database_cpu_seconds()
        transactions = (after - before - 1) / 10  # less this query's own
        if cpu_before is None or cpu_after is None:
            return transactions, None
        return transactions, 100 * (cpu_after - cpu_before) / 10

    def many_idle(self, row) -> None:
        """``--idle-workers`` idle worker processes: their connections, their
        transactions and, where the server runs on this host, its CPU."""
        count = self.options["idle_workers"]
        self.start_workers(count)
        try:
            transactions, cpu_share = self.idle_figures()
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                connections_held = cursor.fetchone()[0]
        finally:
            self.stop_workers()
        label = f"{count} idle worker processes"
        row(f"{label}: connections", connections_held, "")
        row(f"  {label}: connections per process", f"{connections_held / count:.2f}",
            "(the supervisor's included)")  # fmt: skip
        row(f"{label}: transactions", transactions, "per second, in all")
        if cpu_share is not None:
            row(f"{label}: database CPU", f"{cpu_share:.2f}", "% of one core")

    # Steady state ------------------------------------------------------------

    def steady(self, row) -> None:
        total = self.options["steady"]
        tenth = max(1, total // 10)
        batch = min(5000, tenth)
        self.start_workers(2, maintenance=True)
        try:
            before = self.table_size()
            enqueued = finished = 0
            marks = [(0, time.perf_counter())]  # (jobs finished, when)
            largest = 0
            busy_rss = []  # the largest worker's RSS at each tenth, at work
            deadline = time.monotonic() + 3600
            while finished < total:
                self.check_workers(deadline)
                waiting = Job.objects.ready().count() + Job.objects.running().count()
                finished = enqueued - waiting
                if finished >= len(marks) * tenth:
                    marks.append((finished, time.perf_counter()))
                    largest = max(largest, self.table_size())
                    busy_rss.append(self.largest_rss())
                if waiting < 4 * batch and enqueued < total:
                    count = min(batch, total - enqueued)
                    noop.enqueue_many(((n,), {}) for n in range(count))
                    enqueued += count
                else:
                    time.sleep(0.05)
            rss = self.memory()
        finally:
            self.stop_workers()
        rates = [
            (done - done_before) / (at - at_before)
            for (done_before, at_before), (done, at) in itertools.pairwise(marks)
        ]
        row(f"steady: first {tenth:,} of {total:,} jobs", rates[0], "jobs/s")
        row(f"steady: last {tenth:,} of {total:,} jobs", rates[-1], "jobs/s")
        row(
            "steady: job table before / largest",
            f"{before / 2**20:.1f} / {largest / 2**20:.1f}",
            "MiB" if connection.vendor == "postgresql" else "MiB (PostgreSQL only)",
        )
        row(
            f"steady: worker RSS after {tenth:,} jobs, at work",
            f"{busy_rss[0]:.0f}",
            "MB, largest",
        )
        row(
            f"steady: worker RSS, largest at work / at rest after {total:,}",
            f"{max(busy_rss):.0f} / {rss:.0f}",
            "MB, largest",
        )

    def table_size(self) -> int:
        """The job table's size with its indexes, in bytes (PostgreSQL)."""
        if connection.vendor != "postgresql":
            return 0
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_total_relation_size(%s::regclass)", [Job._meta.db_table]
            )
            return cursor.fetchone()[0]

    # Celery, for comparison ----------------------------------------------------

    def celery(self, row) -> None:
        try:
            from testproject.bench import celery_app

            celery_app.client.ping()
        except Exception as exc:  # not installed, or no Redis: say why
            self.say(f"Celery comparison skipped: {exc!r}")
            return
        bench = CeleryBench(celery_app, self.options)
        enqueue = self.median(bench.enqueue)
        row("Celery + Redis: enqueue, one at a time", enqueue, "tasks/s")
        bench.start_worker()
        try:
            rest = bench.memory()
            drain = self.median(bench.drain)
            row(
                f"Celery: drain {self.options['drain']:,} tasks, prefork -c 2",
                drain,
                "tasks/s",
            )
            p50, p99 = bench.latency()
            row(
                "Celery: latency p50 / p99 from the publish",
                f"{p50:.1f} / {p99:.1f}",
                "ms",
            )
            row(
                "Celery: worker RSS at rest / after",
                f"{rest:.0f} / {bench.memory():.0f}",
                "MB, all 3 processes",
            )
        finally:
            bench.stop_worker()
        ours = self.ours
        if "enqueue" in ours:
            row(
                "django-bgtasks / Celery: enqueue",
                f"{ours['enqueue'] / enqueue:.1f}",
                "x",
            )
        if "drain" in ours:
            row("django-bgtasks / Celery: drain", f"{ours['drain'] / drain:.1f}", "x")
        if "latency" in ours:
            row(
                "Celery / django-bgtasks: latency p50",
                f"{p50 / ours['latency'][0]:.1f}",
                "x",
            )


class CeleryBench:
    """The same workload on Celery: one worker, ``prefork -c 2``."""

    def __init__(self, module, options):
        self.module = module
        self.options = options
        self.worker = None

    def clear(self) -> None:
        self.module.app.control.purge()
        self.module.client.delete(self.module.DONE, self.module.STARTS)

    def enqueue(self) -> float:
        self.clear()
        count = self.options["enqueue"]
        started = time.perf_counter()
        for number in range(count):
            self.module.noop.delay(number)
        elapsed = time.perf_counter() - started
        self.clear()
        return count / elapsed

    def start_worker(self) -> None:
        self.clear()
        command = [
            sys.executable, "-m", "celery", "-A", self.module.__name__, "worker",
            "-c", "2", "-P", "prefork", "-l", "warning", "-Q", self.module.QUEUE,
            "-n", f"bgtasks-bench-{os.getpid()}@%h",
        ]  # fmt: skip
        self.worker = subprocess.Popen(  # its banner on stdout is not wanted
            command, cwd=os.path.dirname(MANAGE_PY), stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while not self.module.app.control.ping(timeout=0.5):
            if time.monotonic() > deadline:
                raise SystemExit("The Celery worker did not start within 60 s.")
        time.sleep(1)  # let it settle into its idle wait

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.clear()

    def drain(self) -> float:
        """Queued while the worker does not consume, then timed from the
        moment it does to the last task's end."""
        self.clear()
        control = self.module.app.control
        control.cancel_consumer(self.module.QUEUE, reply=True)
        count = self.options["drain"]
        for number in range(count):
            self.module.noop.delay(number)
        started = time.perf_counter()
        control.add_consumer(self.module.QUEUE, reply=True)
        deadline = time.monotonic() + 600
        while int(self.module.client.get(self.module.DONE) or 0) < count:
            if time.monotonic() > deadline:
                raise SystemExit("Celery did not drain within 600 s.")
            time.sleep(0.01)
        return count / (time.perf_counter() - started)

    def latency(self) -> dict[str, tuple[float, float]]:
        self.clear()
        sent = {}
        for number in range(1, self.options["latency"] + 1):
            self.module.noop.delay(-number)
            sent[number] = time.time()  # published: the task is in Redis
            time.sleep(0.01)  # one at a time: the worker is idle again
        deadline = time.monotonic() + 60
        while self.module.client.llen(self.module.STARTS) < len(sent):
            if time.monotonic() > deadline:
                raise SystemExit("Celery tasks did not start within 60 s.")
            time.sleep(0.01)
        delays = []
        for entry in self.module.client.lrange(self.module.STARTS, 0, -1):
            number, started = entry.decode().split()
            delays.append((float(started) - sent[int(number)]) * 1000)
        return p50_p99(delays)

    def memory(self) -> float:
        """The resident memory of the worker and its pool processes, in MB."""
        pids = [self.worker.pid]
        try:
            with open(f"/proc/{self.worker.pid}/task/{self.worker.pid}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
        except OSError:
            pass
        return sum(rss_mb(pid) or 0 for pid in pids)
