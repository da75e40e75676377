"""Prometheus metrics, with the optional ``metrics`` extra
(``prometheus_client``): ``runworker --metrics-port PORT``.

Counters come from the workers, as they run jobs: jobs enqueued (by
workers: workflows' steps, schedules, tasks that enqueue), attempts
started, and attempts ended by outcome, with a histogram of their run
time, each per task and queue. A supervisor (``--processes``) serves the
sum of its children's and its own (its scheduler's jobs), in
``prometheus_client``'s multiprocess mode: each writes its counts to files
in a folder the supervisor made.

Gauges come from the databases when Prometheus scrapes, each labelled with
its ``database`` (every database that holds jobs): per queue, jobs READY
(exact up to 10,000, then the planner's estimate), due, RUNNING, the lag of
its oldest due job and whether it is paused; workers alive, their slots and
how many are busy; whether the database could be read. Their queries read
the READY and RUNNING jobs' indexes, not the finished jobs (``stats.py``).
"""

from __future__ import annotations

import logging
import threading
import time

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from . import stats
from .backend import DatabaseBackend
from .compat import task_enqueued
from .databases import job_databases

logger = logging.getLogger("django_bgtasks.worker")

try:
    import prometheus_client
    from prometheus_client import multiprocess, values
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra is not installed
    prometheus_client = None

# An attempt's run time, in seconds: from a millisecond job to an hour's.
RUN_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip


def require() -> None:
    """Raise ImproperlyConfigured unless ``prometheus_client`` is installed."""
    if prometheus_client is None:
        raise ImproperlyConfigured(
            "Metrics need prometheus_client: pip install 'django-bgtasks[metrics]'."
        )


class JobCounters:
    """The counters of this process's jobs (in the default registry, or in
    the multiprocess folder under a supervisor)."""

    def __init__(self):
        labels = ["task", "queue"]
        self.enqueued = prometheus_client.Counter(
            "bgtasks_jobs_enqueued", "Jobs enqueued by this process.", labels
        )
        self.started = prometheus_client.Counter(
            "bgtasks_attempts_started", "Attempts started.", labels
        )
        self.ended = prometheus_client.Counter(
            "bgtasks_attempts_ended",
            "Attempts ended, by outcome: succeeded, failed (for good), retried "
            "(READY again after its backoff), snoozed, cancelled, put_back (its "
            "worker stopped), lost (taken from this worker).",
            [*labels, "outcome"],
        )
        self.run_seconds = prometheus_client.Histogram(
            "bgtasks_attempt_seconds",
            "How long attempts ran, in seconds.",
            labels,
            buckets=RUN_SECONDS_BUCKETS,
        )

    def job_enqueued(self, sender=None, task_result=None, **kwargs) -> None:
        if not (isinstance(sender, type) and issubclass(sender, DatabaseBackend)):
            return  # another backend's job
        task = task_result.task
        self.enqueued.labels(task.module_path, task.queue_name).inc()


# This process's counters, once counting (``count_jobs``); None otherwise:
# the worker's hot paths test it and do nothing more.
counters: JobCounters | None = None
_counting_lock = threading.Lock()


def count_jobs() -> JobCounters:
    """Count this process's jobs from now on (idempotent), in
    ``prometheus_client``'s default registry: in a worker, the attempts and
    the jobs it enqueues; in a web process (call it at start), the jobs it
    enqueues."""
    global counters
    require()
    with _counting_lock:
        if counters is None:
            counters = JobCounters()
            task_enqueued.connect(
                counters.job_enqueued, dispatch_uid="django_bgtasks.metrics"
            )
    return counters


def count_jobs_in_folder() -> JobCounters:
    """In a supervisor, count its jobs (its scheduler's) into the folder of
    its children's counts (``PROMETHEUS_MULTIPROC_DIR``, set before): the
    sum it serves is then everyone's."""
    require()
    # prometheus_client chose its kind of value when first imported, before
    # the folder was named: choose again (values are made with the metric).
    values.ValueClass = values.get_value_class()
    return count_jobs()


def attempt_started(job) -> None:
    """The worker starts an attempt of ``job`` (``worker/attempt.py``)."""
    if counters is not None:
        counters.started.labels(job.task_path, job.queue_name).inc()


def attempt_ended(job, outcome: str, elapsed_ms: float) -> None:
    """An attempt of ``job`` ended as ``outcome`` after ``elapsed_ms``
    (``worker/completer.py``, once its outcome is written)."""
    if counters is not None:
        counters.ended.labels(job.task_path, job.queue_name, outcome).inc()
        counters.run_seconds.labels(job.task_path, job.queue_name).observe(
            elapsed_ms / 1000
        )


class DatabaseCollector:
    """Gauges read from the databases at each scrape (``stats.py``), each
    labelled with its ``database``: those given, or every database that
    holds jobs."""

    def __init__(self, databases: list[str] | None = None):
        self.databases = databases

    def describe(self):
        return []  # read at each scrape: nothing to describe at registration

    def collect(self):
        up = GaugeMetricFamily(
            "bgtasks_database_up",
            "1 if the last scrape read the database.",
            labels=["database"],
        )
        families = {
            name: GaugeMetricFamily(name, text, labels=labels)
            for name, text, labels in GAUGES
        }
        started = time.monotonic()
        try:
            for using in self.databases or job_databases():
                try:
                    # Read whole before any is added: a database away
                    # leaves no half of its figures.
                    samples = list(_read(using))
                except Exception as exc:  # away: say so, serve the others
                    logger.warning("Metrics: cannot read database %s: %s", using, exc)
                    up.add_metric([using], 0)
                    continue
                for name, labels, value in samples:
                    families[name].add_metric(labels, value)
                up.add_metric([using], 1)
        finally:
            # The scrape's thread is the HTTP server's: its connections are
            # not kept between scrapes.
            connections.close_all()
        yield from families.values()
        yield up
        took = GaugeMetricFamily(
            "bgtasks_scrape_seconds", "How long reading the databases took."
        )
        took.add_metric([], time.monotonic() - started)
        yield took


# The gauges read from each database: (name, help, labels).
_QUEUE = ["database", "queue"]
GAUGES = [
    (
        "bgtasks_queue_ready",
        "READY jobs (above 10,000: the planner's estimate).",
        _QUEUE,
    ),
    ("bgtasks_queue_due", "READY jobs due now (above 10,000: an estimate).", _QUEUE),
    ("bgtasks_queue_running", "RUNNING jobs.", _QUEUE),
    ("bgtasks_queue_waiting", "Workflow steps waiting for other jobs.", _QUEUE),
    ("bgtasks_queue_lag_seconds", "Age of the oldest due job (0 if none).", _QUEUE),
    ("bgtasks_queue_paused", "1 if the queue is paused.", _QUEUE),
    ("bgtasks_workers_alive", "Worker processes alive.", ["database"]),
    ("bgtasks_worker_slots", "Job threads of the live workers.", ["database"]),
    ("bgtasks_worker_slots_busy", "Jobs the live workers run now.", ["database"]),
]


def _read(using: str):
    """The gauges' samples of database ``using``: (name, labels, value)."""
    now = timezone.now()
    for state in stats.queue_states(now, using=using):
        labels = [using, state.name]
        yield "bgtasks_queue_ready", labels, state.ready.value
        yield "bgtasks_queue_due", labels, state.due.value
        yield "bgtasks_queue_running", labels, state.running
        yield "bgtasks_queue_waiting", labels, state.waiting.value
        lag = state.lag.total_seconds() if state.lag else 0.0
        yield "bgtasks_queue_lag_seconds", labels, lag
        yield "bgtasks_queue_paused", labels, 1 if state.paused else 0
    alive = [state for state in stats.worker_states(now, using=using) if state.alive]
    yield "bgtasks_workers_alive", [using], len(alive)
    slots = sum(state.worker.concurrency for state in alive)
    yield "bgtasks_worker_slots", [using], slots
    yield "bgtasks_worker_slots_busy", [using], sum(len(state.jobs) for state in alive)


def serve(
    port: int,
    host: str,
    *,
    multiprocess_folder: str | None = None,
    databases: list[str] | None = None,
):
    """Serve the metrics on ``host:port`` (a thread of this process): this
    process's counters, or with ``multiprocess_folder`` those its children
    write there, and the gauges of ``databases`` (None: every database that
    keeps jobs). Returns the server."""
    require()
    if multiprocess_folder is None:
        registry = prometheus_client.REGISTRY
    else:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_folder)
    registry.register(DatabaseCollector(databases))
    server, _thread = prometheus_client.start_http_server(port, host, registry)
    logger.info("Metrics served on http://%s:%d/metrics", host, port)
    return server


def child_ended(pid: int, multiprocess_folder: str) -> None:
    """A supervisor's child ``pid`` has ended: its live gauges go (its
    counts stay: counters add up over the children that came and went, and
    each leaves its two files, read at every scrape, until the supervisor
    stops)."""
    if prometheus_client is not None:
        multiprocess.mark_process_dead(pid, multiprocess_folder)
