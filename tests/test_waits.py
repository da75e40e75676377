"""Why a job waits: every reason that holds, from the rows a claim reads,
in code and on the job's admin page."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from django_bgtasks import chain
from django_bgtasks.models import Job, Queue, WorkerProcess
from django_bgtasks.testing import run_jobs
from django_bgtasks.waits import why_waiting
from tests import tasks

pytestmark = pytest.mark.django_db


def codes(result) -> list[str]:
    return [reason.code for reason in why_waiting(Job.objects.get(pk=result.id))]


def register_worker(worker_id="w1", queues=()):
    now = timezone.now()
    WorkerProcess.objects.create(
        id=worker_id,
        hostname="host",
        pid=1,
        queues=list(queues),
        concurrency=1,
        version="x",
        started_at=now,
        last_heartbeat_at=now,
    )


def test_a_job_with_no_worker_to_take_it():
    result = tasks.echo.enqueue("x")
    assert codes(result) == ["no_worker"]
    register_worker(queues=["images"])
    assert codes(result) == ["no_worker"]  # a worker, of another queue
    register_worker("w2")  # every queue
    assert codes(result) == []


def test_a_delayed_job_in_a_paused_queue_behind_others():
    register_worker()
    later = timezone.now() + timedelta(hours=1)
    delayed = tasks.echo.using(run_after=later).enqueue("later")
    assert codes(delayed) == ["not_due"]
    assert "not due until" in why_waiting(Job.objects.get(pk=delayed.id))[0].message

    first, second = tasks.echo.enqueue("1"), tasks.echo.enqueue("2")
    urgent = tasks.echo.using(priority=10).enqueue("urgent")
    assert codes(urgent) == []  # first in line
    assert codes(first) == ["behind"]
    [behind] = why_waiting(Job.objects.get(pk=second.id))
    assert behind.code == "behind" and behind.message.startswith("2 due job(s)")
    assert "not_due" not in codes(second)

    Queue.objects.pause("default", by="ops")
    [paused, _] = why_waiting(Job.objects.get(pk=second.id))
    assert paused.code == "queue_paused" and "by ops" in paused.message


def test_a_workflow_step_waits_for_the_jobs_before_it():
    register_worker()
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    first, second = (m.id for m in workflow.members)
    [reason] = why_waiting(Job.objects.get(pk=second))
    assert reason.code == "waiting_for_jobs"
    assert reason.jobs == [int(first)] and f"#{first}" in reason.message
    run_jobs()
    assert why_waiting(Job.objects.get(pk=second)) == []  # it has ended


def test_the_job_page_says_why_it_waits(admin_client):
    result = tasks.echo.enqueue("x")
    Queue.objects.pause("default")
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[result.id])
    ).content.decode()
    assert "why it waits" in page.lower()
    assert "is paused" in page and "No live worker serves" in page
    run_jobs(queues=["other"])  # nothing: the page of a finished job says nothing
    Queue.objects.resume("default")
    run_jobs()
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[result.id])
    ).content.decode()
    assert "why it waits" not in page.lower()
