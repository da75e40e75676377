"""The backend as the docs of Django's tasks framework describe a backend:
``get_result`` gives back the task as enqueued, on the backend it is asked
of; one unusable alias in ``TASKS`` stops nothing that does not use it."""

import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_bgtasks.admin.schedules import ScheduleForm
from django_bgtasks.compat import TaskResultDoesNotExist, loadable_backends
from django_bgtasks.models import Job, JobStatus, Schedule
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

DATABASE = "django_bgtasks.backend.DatabaseBackend"
TWO_BACKENDS = {
    "default": {"BACKEND": DATABASE, "QUEUES": ["default", "images", "other"]},
    "other": {"BACKEND": DATABASE},
}


def test_get_result_gives_back_the_result_and_task_as_enqueued():
    result = tasks.add.enqueue(1, 2)
    got = tasks.add.get_backend().get_result(result.id)
    assert got == result
    assert got.task == result.task and got.task.run_after is None
    # Re-enqueued, it is due as soon as possible, not at a fixed time.
    again = got.task.enqueue(1, 2)
    assert again.task.run_after is None


def test_get_result_keeps_a_run_after_the_task_was_given():
    when = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    result = tasks.add.using(run_after=when).enqueue(1, 2)
    got = tasks.add.get_backend().get_result(result.id)
    assert got.task.run_after == when and got == result


def test_a_retried_job_still_has_no_run_after_of_its_own():
    result = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(
        run_after=timezone.now() + timedelta(minutes=5)
    )  # as a retry's backoff moves it
    assert tasks.add.get_backend().get_result(result.id).task.run_after is None


@override_settings(TASKS=TWO_BACKENDS)
def test_get_result_finds_only_the_jobs_of_its_own_backend():
    from django_bgtasks.compat import task_backends

    elsewhere = tasks.add.using(backend="other").enqueue(1, 2)
    assert task_backends["other"].get_result(elsewhere.id).backend == "other"
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(elsewhere.id)


BROKEN = {
    **TWO_BACKENDS,
    "broken": {"BACKEND": "no.such.module.Backend"},
}


@override_settings(TASKS=BROKEN)
def test_a_backend_that_cannot_load_is_left_out_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="django_bgtasks"):
        aliases = [backend.alias for backend in loadable_backends()]
    assert aliases == ["default", "other"]
    assert "'broken' cannot be loaded" in caplog.text


@override_settings(TASKS=BROKEN)
def test_runworker_serves_its_backends_beside_one_that_cannot_load():
    result = tasks.add.enqueue(2, 3)
    call_command(
        "runworker", "--burst", "--no-scheduler", "--no-maintenance", "-v", "0"
    )
    assert Job.objects.get(pk=result.id).status == JobStatus.SUCCESSFUL


def test_a_schedule_made_with_the_orm_gets_its_next_run():
    schedule = Schedule.objects.create(
        name="orm", task_path="tests.tasks.add", args=[1, 1], cron="*/5 * * * *"
    )
    assert schedule.next_run_at is not None
    assert schedule.next_run_at > timezone.now() - timedelta(seconds=1)
    schedule.refresh_from_db()
    assert schedule.next_run_at is not None


def test_a_disabled_schedule_made_with_the_orm_has_no_next_run():
    schedule = Schedule.objects.create(
        name="off", task_path="tests.tasks.add", cron="*/5 * * * *", enabled=False
    )
    assert schedule.next_run_at is None


@override_settings(TIME_ZONE="Europe/Paris")
def test_the_add_schedule_form_starts_in_the_projects_time_zone():
    assert ScheduleForm()["timezone"].value() == "Europe/Paris"


# What a first user saw ------------------------------------------------------


def test_the_worker_list_says_every_queue_as_the_dashboard_does(admin_client):
    from django.urls import reverse

    from tests.factories import make_worker

    make_worker("everywhere", queues=[])
    make_worker("some", queues=["images", "other"])
    page = admin_client.get(
        reverse("admin:django_bgtasks_workerprocess_changelist")
    ).content.decode()
    assert '<td class="field-queue_list">*</td>' in page
    assert '<td class="field-queue_list">images, other</td>' in page


def test_the_empty_schedule_form_says_how_to_see_its_times(admin_client):
    from django.urls import reverse

    page = admin_client.get(reverse("admin:django_bgtasks_schedule_add")).content
    assert b"Save to see them" not in page
    assert b"Give it a cron expression or an interval to see them." in page


def test_a_normal_stop_is_logged_at_info(caplog):
    from django_bgtasks.worker import Worker

    worker = Worker(concurrency=1, burst=True)
    with caplog.at_level(logging.INFO, logger="django_bgtasks"):
        worker._on_stop_request("SIGTERM", 1)
        worker._on_stop_request("SIGTERM", 2)
    levels = {
        record.getMessage().split(":")[0]: record.levelname
        for record in caplog.records
        if record.getMessage().startswith("SIGTERM")
    }
    assert levels == {"SIGTERM received": "INFO", "SIGTERM received again": "WARNING"}


def test_the_admin_names_a_jobs_duration_for_what_it_measures(admin_client):
    from django.urls import reverse

    result = tasks.add.enqueue(1, 1)
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[result.id])
    ).content
    assert b"claim to finish" in page.lower()
