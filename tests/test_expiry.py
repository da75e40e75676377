"""Expiry: a job not started by its ``expires`` time never runs and ends
CANCELLED with a JobExpired error; through a real worker on each
database, the test helpers' clock, and the admin."""

from datetime import datetime, timedelta

import pytest
from django.urls import reverse

from django_bgtasks.admin.jobs import format_moment
from django_bgtasks.compat import InvalidTask, TaskResultStatus
from django_bgtasks.db import database_now
from django_bgtasks.exceptions import JobExpired
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.conftest import run_in_process
from tests.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def now():
    return database_now("default")


def test_a_tasks_timedelta_counts_from_each_enqueue():
    first, second = tasks.expires_soon.enqueue(), tasks.expires_soon.enqueue()
    many = tasks.expires_soon.enqueue_many([((), {}), ((), {})])
    for result in (first, second, *many):
        job = Job.objects.get(pk=result.id)
        assert job.expires_at == job.enqueued_at + timedelta(minutes=10)


def test_a_calls_timedelta_counts_from_the_using_call():
    before = now()
    task = tasks.record.using(expires=timedelta(minutes=10))
    result = task.enqueue(label="a")
    expires_at = Job.objects.get(pk=result.id).expires_at
    assert expires_at == task.expires
    assert timedelta(minutes=10) <= expires_at - before < timedelta(minutes=11)


def test_an_expired_job_never_runs_and_says_why():
    result = tasks.record.using(expires=now() - timedelta(seconds=1)).enqueue(
        label="late"
    )
    fresh = tasks.record.using(expires=now() + timedelta(hours=1)).enqueue(
        label="on time"
    )
    run_in_process()
    assert list(Execution.objects.values_list("label", flat=True)) == ["on time"]
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == (JobStatus.CANCELLED, 0)
    assert job.finished_at is not None
    [error] = job.errors
    assert error["exception_class_path"] == "django_bgtasks.exceptions.JobExpired"
    assert "expired at" in error["traceback"]
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [framework_error] = result.errors
    assert framework_error.exception_class is JobExpired
    assert Job.objects.get(pk=fresh.id).status == JobStatus.SUCCESSFUL


def test_the_test_helpers_judge_expiry_by_their_clock():
    later = now() + timedelta(minutes=10)
    kept = tasks.record.using(run_after=later, expires=timedelta(minutes=30))
    gone = tasks.record.using(run_after=later, expires=timedelta(minutes=5))
    kept_result, gone_result = kept.enqueue(label="kept"), gone.enqueue(label="gone")
    ran = run_jobs(now=later + timedelta(minutes=1))
    assert {r.id: r.status for r in ran} == {
        kept_result.id: TaskResultStatus.SUCCESSFUL,
        gone_result.id: TaskResultStatus.FAILED,
    }
    assert list(Execution.objects.values_list("label", flat=True)) == ["kept"]


def test_get_result_gives_back_the_task_as_enqueued_with_its_expiry():
    when = (now() + timedelta(hours=2)).replace(microsecond=0)
    result = tasks.add.using(expires=when).enqueue(1, 2)
    got = tasks.add.get_backend().get_result(result.id)
    assert got == result and got.task.expires == when
    result = tasks.expires_soon.enqueue()
    got = tasks.expires_soon.get_backend().get_result(result.id)
    assert got.task.expires == timedelta(minutes=10) and got == result


@pytest.mark.parametrize(
    "value",
    [timedelta(0), timedelta(seconds=-1), "soon", 60, datetime(2030, 1, 1)],
)
def test_a_bad_expiry_is_refused_before_a_row(value):
    with pytest.raises(InvalidTask, match="expires"):
        tasks.add.using(expires=value).enqueue(1, 2)
    assert not Job.objects.exists()


def test_the_admin_shows_when_a_job_expires(admin_client):
    result = tasks.add.using(expires=timedelta(hours=1)).enqueue(1, 2)
    never = tasks.add.enqueue(1, 2)
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[result.id])
    ).content.decode()
    job = Job.objects.get(pk=result.id)
    assert format_moment(job.expires_at) in page
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[never.id])
    ).content.decode()
    assert "never" in page


def test_a_retry_after_the_expiry_is_not_started_and_an_operator_retry_clears_it():
    soon = now() + timedelta(seconds=3)
    # (A claim that found it expired counts in context.attempt: three steps.)
    result = tasks.steered.using(expires=soon).enqueue(["retry:60", "-", "done"])
    run_in_process()
    assert Job.objects.get(pk=result.id).status == JobStatus.READY  # retrying
    # Its retry comes due after its expiry: not started again.
    Job.objects.filter(pk=result.id).update(run_after=soon - timedelta(seconds=1))
    ran = run_jobs(now=soon + timedelta(seconds=1))
    assert [r.status for r in ran] == [TaskResultStatus.FAILED]
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == (JobStatus.CANCELLED, 1)
    assert job.errors[-1]["exception_class_path"].endswith("JobExpired")
    # The operator wants it run after all.
    assert Job.objects.filter(pk=result.id).retry() == 1
    run_jobs(now=soon + timedelta(seconds=2))
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.return_value, job.expires_at) == (
        JobStatus.SUCCESSFUL,
        "done",
        None,
    )
