"""Cancelling a running job: the request, how the worker hears it, how the
task stops (by itself, or past its grace period), and every other way a job
asked to stop leaves RUNNING. Real worker processes on the test database."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_bgtasks import chain
from django_bgtasks.exceptions import WorkerLost
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.models.transitions import (
    Expired,
    Failed,
    Interrupted,
    Lost,
    RetryRequested,
    Snoozed,
    Succeeded,
    TimedOut,
    Verdict,
    transition,
)
from django_bgtasks.sql.claim import claim_jobs
from django_bgtasks.sql.complete import Completion, complete_jobs
from tests import tasks
from tests.conftest import wait_until
from tests.factories import make_job
from tests.models import Execution

POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql"))
# Where NOTIFY does not bring the request, the heartbeat does: a short one.
HEARTBEAT = 0.5


def runs(result) -> int:
    return Execution.objects.filter(job_id=int(result.id)).count()


def job_of(result) -> Job:
    return Job.objects.get(pk=result.id)


def wait_for_status(result, status, timeout=30.0) -> Job:
    wait_until(
        lambda: job_of(result).status == status,
        timeout=timeout,
        message=f"job {result.id} {status}",
    )
    return job_of(result)


def wait_running(result, timeout=30.0) -> None:
    wait_until(lambda: runs(result), timeout=timeout, message="the task running")


def cancelled_entry(job: Job) -> dict:
    """The error the job ended CANCELLED with, which says who and when."""
    entry = job.errors[-1]
    assert entry["exception_class_path"] == "django_bgtasks.exceptions.JobCancelled"
    at = job.cancel_requested_at.isoformat()
    assert f"by {job.cancel_requested_by} (asked at {at})" in entry["traceback"]
    return entry


# The request, without a worker ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_ends_ready_jobs_as_before_and_leaves_finished_ones():
    ready = make_job()
    waiting = make_job(JobStatus.WAITING)
    succeeded = make_job(JobStatus.SUCCESSFUL)
    failed = make_job(JobStatus.FAILED)
    running = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    ids = [job.pk for job in (ready, waiting, succeeded, failed, running)]
    done = Job.objects.filter(pk__in=ids).cancel(by="alice")
    assert (done, done.cancelled, done.asked_to_stop) == (3, 2, 1)
    jobs = Job.objects.in_bulk(ids)
    assert jobs[ready.pk].status == jobs[waiting.pk].status == JobStatus.CANCELLED
    assert jobs[ready.pk].cancel_requested_at is None
    assert jobs[succeeded.pk].status == JobStatus.SUCCESSFUL
    assert jobs[failed.pk].status == JobStatus.FAILED
    for pk in (succeeded.pk, failed.pk):
        assert jobs[pk].cancel_requested_at is None
        assert jobs[pk].cancel_requested_by is None
    assert jobs[running.pk].status == JobStatus.RUNNING
    assert jobs[running.pk].cancel_requested_by == "alice"
    assert jobs[running.pk].cancel_requested_at is not None
    # Nothing is left to cancel.
    again = Job.objects.filter(pk__in=ids).cancel(by="bob")
    assert (again.cancelled, again.asked_to_stop) == (0, 0)
    assert Job.objects.get(pk=running.pk).cancel_requested_by == "alice"


def test_a_job_asked_to_stop_ends_cancelled_whatever_ended_its_attempt():
    now = timezone.now()
    asked = Job(
        pk=1,
        attempts=1,
        max_attempts=3,
        worker_id="w",
        errors=[],
        backoff={},
        cancel_requested_at=now - timedelta(seconds=2),
        cancel_requested_by="alice",
    )
    error = ValueError("boom")
    outcomes = [
        Succeeded(1),
        Failed(error),
        RetryRequested(error),
        Snoozed(error),
        Expired(error),
        TimedOut(error),
        Interrupted(error),
        Interrupted(),
        Lost(WorkerLost("gone")),
    ]
    for outcome in outcomes:
        change = transition(asked, outcome, now=now)
        assert change.verdict is Verdict.CANCELLED, outcome
        assert change.changes["status"] == JobStatus.CANCELLED
        assert change.changes["finished_at"] == now
        assert change.changes["worker_id"] is None
        [entry] = change.changes["errors"]
        assert entry["exception_class_path"].endswith("JobCancelled")
        assert "cancelled by alice" in entry["traceback"]
    # Unasked, the same outcomes do what they always did.
    asked.cancel_requested_at = asked.cancel_requested_by = None
    assert transition(asked, Succeeded(1), now=now).verdict is Verdict.SUCCEEDED
    assert transition(asked, Failed(error), now=now).verdict is Verdict.RETRYING


@pytest.mark.django_db(transaction=True)
def test_an_end_decided_before_the_request_was_heard_is_decided_again():
    """A retry decided by a worker that had not heard of the request is not
    written (the job would be READY with a request): the job ends CANCELLED.
    In a batch, the write skips it; one by one, it is decided again."""
    first = tasks.always_fails.enqueue()
    second = tasks.always_fails.enqueue()
    jobs = claim_jobs("default", worker_id="w", queues=None, limit=2)
    assert len(jobs) == 2 and all(job.cancel_requested_at is None for job in jobs)
    Job.objects.filter(pk__in=[first.id, second.id]).cancel(by="alice")
    now = timezone.now()
    one, two = sorted(jobs, key=lambda job: job.pk)
    change = transition(one, Failed(ValueError("boom")), now=now)
    assert change.verdict is Verdict.RETRYING and change.void_if_asked_to_stop
    batch = [Completion(one.pk, one.attempts, change.changes, unasked=True)]
    assert complete_jobs("default", "w", batch) == set()
    assert job_of(first).status == JobStatus.RUNNING
    recorded = one.record(Failed(ValueError("boom")))
    assert recorded.verdict is Verdict.CANCELLED
    assert one.cancel_requested_by == "alice"
    ended = job_of(first)
    assert ended.status == JobStatus.CANCELLED and ended.worker_id is None
    cancelled_entry(ended)
    # A success that was not told stands: it returned before noticing.
    assert two.record(Succeeded("done")).verdict is Verdict.SUCCEEDED
    assert job_of(second).status == JobStatus.SUCCESSFUL


# Real workers -------------------------------------------------------------------


def start_worker(workers, *args, **env):
    values = {
        "BGTASKS_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        **{f"BGTASKS_{name}": str(value) for name, value in env.items()},
    }
    return workers.start("--concurrency", "1", "--prefetch", "0", *args, env=values)


def stop(workers, process) -> None:
    process.send_signal(signal.SIGTERM)
    assert workers.wait(process, timeout=30) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("via", "processes"),
    [("context", []), ("function", []), ("context", ["--processes", "1"])],
)
def test_a_task_that_checks_stops_and_ends_cancelled_with_who_and_when(
    workers, tmp_path, via, processes
):
    """On PostgreSQL the worker hears by NOTIFY (its heartbeat is slow here,
    and cannot be what told it), a supervisor's child through the
    supervisor, which listens for it; elsewhere, at its next heartbeat."""
    noticed = tmp_path / "noticed"
    # On PostgreSQL a heartbeat too slow to be what brings the request.
    beat = 10.0 if POSTGRES else HEARTBEAT
    process = start_worker(workers, *processes, HEARTBEAT_INTERVAL=beat)
    result = tasks.until_cancelled.enqueue(str(noticed), via=via)
    wait_running(result)
    before = time.time()
    done = Job.objects.filter(pk=result.id).cancel(by="alice")
    assert done.asked_to_stop == 1
    wait_until(noticed.exists, timeout=30, message="the task noticed")
    delay = float(noticed.read_text() or "inf") - before
    vendor = connection.vendor
    print(f"the task saw its cancel {delay * 1000:.0f} ms after it ({vendor})")
    assert delay < (1.0 if POSTGRES else HEARTBEAT + 0.3)
    job = wait_for_status(result, JobStatus.CANCELLED)
    assert job.cancel_requested_by == "alice"
    assert job.finished_at >= job.cancel_requested_at
    assert len(job.errors) == 1 and job.attempts == 1
    cancelled_entry(job)
    result.refresh()
    assert result.status == "FAILED"  # the framework's reading of CANCELLED
    assert runs(result) == 1
    stop(workers, process)


@pytest.mark.slow
def test_a_task_that_reports_progress_is_stopped_by_its_report(workers):
    """The report hears of the request itself: no NOTIFY, a heartbeat of
    10 s, and the task stops within a second."""
    process = start_worker(workers, HEARTBEAT_INTERVAL=10, NOTIFY=0)
    result = tasks.reports_until_stopped.enqueue()
    wait_until(lambda: job_of(result).progress, timeout=30, message="a progress report")
    asked = time.monotonic()
    Job.objects.filter(pk=result.id).cancel(by="alice")
    job = wait_for_status(result, JobStatus.CANCELLED, timeout=5)
    assert time.monotonic() - asked < 2.0  # a report, not the heartbeat
    entry = cancelled_entry(job)
    # Raised by report_progress, in the task.
    assert "report_progress" in entry["traceback"]
    assert "the task is stopped" in entry["traceback"]
    assert job.attempts == 1 and runs(result) == 1
    stop(workers, process)


@pytest.mark.slow
def test_a_task_that_ignores_the_request_is_stopped_after_the_grace_period(
    workers, tmp_path
):
    grace = 1.5
    gate = tmp_path / "gate"
    process = workers.start(
        "--concurrency",
        "2",
        env={
            "BGTASKS_HEARTBEAT_INTERVAL": str(HEARTBEAT),
            "BGTASKS_CANCEL_GRACE_PERIOD": str(grace),
        },
    )
    deaf = tasks.ignores_cancel.enqueue(120.0)
    neighbour = tasks.wait_for_file.enqueue(str(gate))
    wait_running(deaf)
    wait_until(
        lambda: job_of(neighbour).status == JobStatus.RUNNING,
        message="the neighbour running",
    )
    Job.objects.filter(pk=deaf.id).cancel(by="alice")
    job = wait_for_status(deaf, JobStatus.CANCELLED)
    # Its grace period was given (counted from when the worker heard).
    assert job.finished_at - job.cancel_requested_at >= timedelta(seconds=grace)
    entry = cancelled_entry(job)
    assert "did not stop within 1.5 s of its cancel" in entry["traceback"]
    assert job.attempts == 1 and runs(deaf) == 1
    # Its neighbour was put back, unharmed, and runs again in the process
    # that took the old one's place.
    gate.touch()
    ended = wait_for_status(neighbour, JobStatus.SUCCESSFUL, timeout=60)
    assert ended.errors[0]["exception_class_path"].endswith("JobInterrupted")
    assert ended.cancel_requested_at is None
    stop(workers, process)


@pytest.mark.slow
def test_a_job_asked_to_stop_whose_worker_dies_is_rescued_cancelled(workers):
    """Its worker is killed before the grace period ends: the rescue ends it
    CANCELLED, and it never runs again."""
    env = {"WORKER_TIMEOUT": 2, "CANCEL_GRACE_PERIOD": 600}
    victim = start_worker(workers, **env)
    result = tasks.ignores_cancel.enqueue(120.0)
    wait_running(result)
    Job.objects.filter(pk=result.id).cancel(by="alice")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    rescuer = start_worker(workers, **env)
    job = wait_for_status(result, JobStatus.CANCELLED, timeout=60)
    entry = cancelled_entry(job)
    assert "WorkerLost" in entry["traceback"]
    assert job.attempts == 1 and runs(result) == 1
    stop(workers, rescuer)
    assert runs(result) == 1


@pytest.mark.slow
def test_a_job_asked_to_stop_that_its_stopping_worker_gives_back_ends_cancelled(
    workers,
):
    """A worker stopped (SIGTERM, no time to wait) does not put a job asked
    to stop back to READY: it ends CANCELLED."""
    process = start_worker(workers, CANCEL_GRACE_PERIOD=600)
    result = tasks.ignores_cancel.enqueue(120.0)
    wait_running(result)
    Job.objects.filter(pk=result.id).cancel(by="alice")
    process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: "SIGTERM received" in workers.output(process), message="the stop"
    )
    process.send_signal(signal.SIGTERM)  # again: at once
    workers.wait(process, timeout=30)
    job = job_of(result)
    assert job.status == JobStatus.CANCELLED
    assert "JobInterrupted" in cancelled_entry(job)["traceback"]


@pytest.mark.slow
def test_a_workflow_step_cancelled_while_it_runs_cancels_the_steps_after_it(
    workers, tmp_path
):
    noticed = tmp_path / "noticed"
    process = start_worker(workers)
    workflow = chain(
        tasks.until_cancelled.step(str(noticed), via="function"),
        tasks.echo.step(),
        tasks.echo.step(),
    ).enqueue()
    first, *after = workflow.members
    wait_running(first)
    Job.objects.filter(pk=first.id).cancel(by="alice")
    cancelled_entry(wait_for_status(first, JobStatus.CANCELLED))
    for step in after:
        job = wait_for_status(step, JobStatus.CANCELLED, timeout=10)
        assert job.errors[-1]["exception_class_path"].endswith("DependencyFailed")
        assert job.started_at is None
    stop(workers, process)


@pytest.mark.slow
def test_a_retry_of_a_job_cancelled_while_it_ran_clears_the_request(workers, tmp_path):
    process = start_worker(workers)
    result = tasks.until_cancelled.enqueue(str(tmp_path / "noticed"))
    wait_running(result)
    Job.objects.filter(pk=result.id).cancel(by="alice")
    wait_for_status(result, JobStatus.CANCELLED)
    assert Job.objects.filter(pk=result.id).retry() == 1
    job = job_of(result)
    assert job.cancel_requested_at is None and job.cancel_requested_by is None
    job = wait_for_status(result, JobStatus.SUCCESSFUL)
    assert job.return_value == "ran again" and runs(result) == 2
    assert job.cancel_requested_at is None
    stop(workers, process)
