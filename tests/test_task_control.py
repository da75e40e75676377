"""A task steers its job by raising RetryJob, SnoozeJob, FailJob or
CancelJob, or declares which errors are retried (``retry_on``, ``fail_on``):
run by a real worker, on each database."""

from datetime import timedelta

import pytest

from django_bgtasks import CancelJob, FailJob, RetryJob, SnoozeJob, task
from django_bgtasks.compat import InvalidTask, TaskResultStatus
from django_bgtasks.db import database_now
from django_bgtasks.exceptions import JobCancelled
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import run_in_process

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = 3600


def run_once(result) -> Job:
    """Run what is due with a real worker; the job's row after."""
    run_in_process()
    return Job.objects.get(pk=result.id)


def make_due(result) -> None:
    Job.objects.filter(pk=result.id).run_now()


def naive_now():
    return database_now("default").replace(tzinfo=None)


def error_classes(job: Job) -> list[str]:
    return [e["exception_class_path"].rpartition(".")[2] for e in job.errors]


def test_retry_after_a_delay_counts_an_attempt():
    result = tasks.steered.enqueue(["retry:3600", "done"])
    before = database_now("default")
    job = run_once(result)
    assert (job.status, job.attempts) == (JobStatus.READY, 1)
    later = job.run_after - before
    assert timedelta(seconds=HOUR) <= later < timedelta(seconds=HOUR + 60)
    assert error_classes(job) == ["RetryJob"]
    assert "later, please" in job.errors[0]["traceback"]
    make_due(result)
    job = run_once(result)
    assert (job.status, job.attempts, job.return_value) == (
        JobStatus.SUCCESSFUL,
        2,
        "done",
    )


def test_retry_at_a_time_and_after_the_backoff():
    at = (database_now("default") + timedelta(days=2)).replace(microsecond=0)
    result = tasks.steered.enqueue([f"retry-at:{at.isoformat()}", "retry", "x"])
    job = run_once(result)
    assert job.status == JobStatus.READY and job.run_after == at
    make_due(result)
    before = database_now("default")
    job = run_once(result)
    # No time given: the job's backoff (its second delay: 1,200 s).
    assert (job.status, job.attempts) == (JobStatus.READY, 2)
    later = job.run_after - before
    assert timedelta(seconds=1200) <= later < timedelta(seconds=1260)


def test_a_retry_with_no_attempt_left_fails():
    result = tasks.steered.using(max_attempts=1).enqueue(["retry:60"])
    job = run_once(result)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert error_classes(job) == ["RetryJob"]


def test_a_snooze_does_not_count_an_attempt_nor_record_an_error():
    result = tasks.steered.using(max_attempts=1).enqueue(
        ["snooze:3600", "snooze:3600", "done"]
    )
    for claims in (1, 2):
        before = database_now("default")
        job = run_once(result)
        assert (job.status, job.attempts, job.errors) == (JobStatus.READY, 0, [])
        assert job.run_after - before >= timedelta(seconds=HOUR)
        assert len(job.worker_ids) == claims
        make_due(result)
    job = run_once(result)
    # One attempt allowed, and the run after two snoozes still had it.
    assert (job.status, job.attempts, job.return_value) == (
        JobStatus.SUCCESSFUL,
        1,
        "done",
    )


def test_fail_job_ends_it_with_attempts_left():
    result = tasks.steered.enqueue(["fail", "never"])  # max_attempts=3
    job = run_once(result)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert error_classes(job) == ["FailJob"]
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is FailJob


def test_cancel_job_ends_it_cancelled_with_its_reason_and_cause():
    result = tasks.steered.enqueue(["cancel"])
    job = run_once(result)
    assert (job.status, job.attempts) == (JobStatus.CANCELLED, 1)
    assert job.finished_at is not None
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors  # the task's own reason, not a second entry
    assert error.exception_class is JobCancelled
    assert "The task cancelled its job: nothing left to do" in error.traceback
    assert "the order is gone" in error.traceback  # the cause it was raised from


def test_an_ordinary_error_is_still_retried():
    result = tasks.steered.enqueue(["error", "done"])
    job = run_once(result)
    assert (job.status, job.attempts) == (JobStatus.READY, 1)
    assert error_classes(job) == ["RuntimeError"]


@pytest.mark.parametrize(
    ("name", "status", "attempts"),
    [
        ("ConnectionResetError", JobStatus.READY, 1),  # a ConnectionError
        ("ConnectionRefusedError", JobStatus.FAILED, 1),  # fail_on wins
        ("ValueError", JobStatus.FAILED, 1),  # not in retry_on
    ],
)
def test_retry_on_and_fail_on_choose_what_is_retried(name, status, attempts):
    result = tasks.raises_builtin.enqueue(name)
    job = run_once(result)
    assert (job.status, job.attempts) == (status, attempts)
    assert error_classes(job) == [name]


def test_the_task_keeps_its_retry_on_and_fail_on():
    assert tasks.raises_builtin.retry_on == (ConnectionError,)
    assert tasks.raises_builtin.fail_on == (ConnectionRefusedError,)
    assert tasks.raises_builtin.using(priority=3).retry_on == (ConnectionError,)


@pytest.mark.parametrize("value", ["ValueError", 3, (ValueError, "x"), object])
def test_retry_on_and_fail_on_take_only_exception_classes(value):
    with pytest.raises(InvalidTask, match="exception classes"):
        task(retry_on=value)(tasks.plain_function)
    with pytest.raises(InvalidTask, match="exception classes"):
        task(fail_on=value)(tasks.plain_function)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: RetryJob(delay=-1), ValueError),
        (lambda: RetryJob(delay=float("nan")), ValueError),
        (lambda: RetryJob(delay="soon"), TypeError),
        (lambda: RetryJob(delay=1, at=database_now("default")), TypeError),
        (lambda: SnoozeJob(), TypeError),
        (lambda: SnoozeJob(at=naive_now()), ValueError),
    ],
)
def test_bad_requests_are_refused_where_the_task_raises_them(make, error):
    with pytest.raises(error):
        make()


def test_the_requests_say_what_they_ask():
    assert str(RetryJob(delay=timedelta(minutes=5))) == "for 300 s"
    assert str(SnoozeJob("busy", delay=5)) == "busy"
    assert str(FailJob("bad input")) == "bad input"
    assert isinstance(CancelJob(), Exception)


def test_a_projects_tests_see_them_through_run_jobs():
    from django_bgtasks.testing import run_jobs

    result = tasks.steered.enqueue(["snooze:60", "retry:60", "done"])
    [snoozed] = run_jobs()
    assert snoozed.status == TaskResultStatus.READY
    assert run_jobs() == []  # not due yet
    later = database_now("default") + timedelta(minutes=2)
    [retried] = run_jobs(now=later)
    assert (retried.status, len(retried.errors)) == (TaskResultStatus.READY, 1)
    [done] = run_jobs(now=later + timedelta(minutes=2))
    assert (done.id, done.status, done.return_value) == (
        result.id,
        TaskResultStatus.SUCCESSFUL,
        "done",
    )
    assert Job.objects.get(pk=result.id).attempts == 2  # the snooze gave one back
