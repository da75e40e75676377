"""Prometheus metrics: ``runworker --metrics-port``. Real worker processes
(one, and a supervisor of two) are scraped over HTTP and their counts
compared with the jobs they ran; the database's gauges with the rows."""

import json
import signal
import socket
import urllib.request
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_bgtasks import metrics
from django_bgtasks.models import Job, JobStatus, Queue, WorkerProcess
from tests import tasks
from tests.conftest import EVERY_SECOND, wait_until
from tests.factories import make_job, make_worker

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is not installed"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict:
    """The samples served on ``port``: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def served(port: int) -> dict | None:
    try:
        return scrape(port)
    except OSError:
        return None


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def task_labels(task, queue="default") -> dict:
    return {"task": task.module_path, "queue": queue}


@pytest.mark.django_db
def test_the_database_gauges_read_the_rows():
    worker = make_worker("w1", concurrency=4)
    make_worker("gone", concurrency=8, silent_for=timedelta(hours=1))
    make_job(JobStatus.RUNNING, queue_name="images", worker=worker)
    make_job(queue_name="images", run_after=timezone.now() - timedelta(seconds=30))
    make_job(queue_name="images", run_after=timezone.now() + timedelta(hours=1))
    Queue.objects.pause("other")

    families = list(metrics.DatabaseCollector().collect())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
    images = {"database": "default", "queue": "images"}
    default = {"database": "default"}
    assert value(samples, "bgtasks_queue_ready", **images) == 2
    assert value(samples, "bgtasks_queue_due", **images) == 1
    assert value(samples, "bgtasks_queue_running", **images) == 1
    assert value(samples, "bgtasks_queue_lag_seconds", **images) >= 30
    assert value(samples, "bgtasks_queue_paused", queue="other", **default) == 1
    assert value(samples, "bgtasks_queue_paused", **images) == 0
    assert value(samples, "bgtasks_workers_alive", **default) == 1
    assert value(samples, "bgtasks_worker_slots", **default) == 4
    assert value(samples, "bgtasks_worker_slots_busy", **default) == 1
    assert value(samples, "bgtasks_database_up", **default) == 1


@pytest.mark.django_db
def test_jobs_enqueued_in_a_counting_process_are_counted():
    from prometheus_client import REGISTRY

    metrics.count_jobs()
    labels = task_labels(tasks.add, queue="other")

    def enqueued():
        return REGISTRY.get_sample_value("bgtasks_jobs_enqueued_total", labels) or 0

    before = enqueued()
    tasks.add.using(queue_name="other").enqueue(1, 2)
    tasks.add.using(queue_name="other").enqueue_many([((1, 2), {}), ((3, 4), {})])
    assert enqueued() - before == 3


def test_without_prometheus_client_metrics_are_refused_with_the_way_to_get_them(
    monkeypatch,
):
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setattr(metrics, "prometheus_client", None)
    with pytest.raises(ImproperlyConfigured, match=r"django-bgtasks\[metrics\]"):
        metrics.require()


@pytest.mark.django_db
def test_runworker_with_metrics_but_no_prometheus_client_says_what_to_install(
    monkeypatch,
):
    monkeypatch.setattr(metrics, "prometheus_client", None)
    for processes in ([], ["--processes", "2"]):
        with pytest.raises(CommandError, match=r"django-bgtasks\[metrics\]"):
            call_command("runworker", "--metrics-port", str(free_port()), *processes)


@pytest.mark.parametrize("port", ["0", "70000", "x"])
def test_a_bad_metrics_port_is_a_usage_error(port):
    with pytest.raises(CommandError, match="--metrics-port"):
        call_command("runworker", "--metrics-port", port)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [None, 2])
def test_a_workers_metrics_count_the_jobs_it_ran(workers, processes):
    """One worker process, or a supervisor that sums its two children's:
    the counts are of the attempts run, by outcome, and the gauges of the
    rows."""
    port = free_port()
    args = ["--metrics-port", str(port), "--concurrency", "2", "--no-scheduler"]
    if processes:
        args += ["--processes", str(processes)]
    process = workers.start(*args)
    wait_until(lambda: served(port), timeout=60, message="metrics served")
    wait_until(
        lambda: WorkerProcess.objects.count() == (processes or 1),
        timeout=60,
        message="the worker processes registered",
    )

    tasks.add.enqueue_many(((n, n), {}) for n in range(20))
    failing = tasks.always_fails.enqueue("no")  # 3 attempts: 2 retried, 1 failed
    recorded = tasks.echo.enqueue("x")
    jobs = Job.objects.all()
    wait_until(
        lambda: not jobs.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists(),
        timeout=60,
        message="every job ended",
    )

    def counted():
        samples = scrape(port)
        ended = value(
            samples,
            "bgtasks_attempts_ended_total",
            outcome="failed",
            **task_labels(tasks.always_fails),
        )
        return samples if ended == 1 else None

    samples = wait_until(counted, timeout=20, message="the last outcome counted")
    add = task_labels(tasks.add)
    assert value(samples, "bgtasks_attempts_started_total", **add) == 20
    assert (
        value(samples, "bgtasks_attempts_ended_total", outcome="succeeded", **add) == 20
    )
    assert value(samples, "bgtasks_attempt_seconds_count", **add) == 20
    fails = task_labels(tasks.always_fails)
    assert value(samples, "bgtasks_attempts_started_total", **fails) == 3
    assert (
        value(samples, "bgtasks_attempts_ended_total", outcome="retried", **fails) == 2
    )
    assert Job.objects.get(pk=failing.id).attempts == 3
    assert Job.objects.get(pk=recorded.id).status == JobStatus.SUCCESSFUL
    default = {"database": "default"}
    assert value(samples, "bgtasks_workers_alive", **default) == (processes or 1)
    assert value(samples, "bgtasks_queue_ready", queue="default", **default) == 0
    assert value(samples, "bgtasks_database_up", **default) == 1

    process.terminate()
    assert workers.wait(process) == 0


@pytest.mark.slow
def test_metrics_on_a_port_in_use_stop_the_worker_with_a_reason(workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = workers.start("--metrics-port", str(port), "--burst")
        assert workers.wait(process) == 1
    log = workers.tmp_path / "worker-1.log"
    assert f"Cannot serve metrics on 127.0.0.1:{port}" in log.read_text()


@pytest.mark.slow
def test_a_supervisor_counts_the_jobs_its_scheduler_enqueued(workers):
    """The scheduler runs in the supervisor: its jobs are in the sum too."""
    port = free_port()
    process = workers.start(
        "--metrics-port", str(port), "--processes", "1",
        env={"BGTASKS_TEST_SCHEDULES": json.dumps(EVERY_SECOND)},
    )  # fmt: skip
    wait_until(lambda: served(port), timeout=60, message="metrics served")
    wait_until(
        lambda: Job.objects.filter(schedule__name="tick").count() >= 3,
        timeout=60,
        message="three scheduled jobs",
    )
    labels = task_labels(tasks.record)
    counted = wait_until(
        lambda: (
            (n := value(scrape(port), "bgtasks_jobs_enqueued_total", **labels)) >= 3
            and n
        ),
        timeout=30,
        message="the scheduler's jobs counted",
    )
    process.send_signal(signal.SIGTERM)
    assert workers.wait(process, timeout=30) == 0
    assert 3 <= counted <= Job.objects.filter(schedule__name="tick").count()
