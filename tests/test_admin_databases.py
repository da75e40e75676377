"""The admin with jobs in two databases ("default" and "other", the
``elsewhere`` backend's): the switch, and every page, action and button on
the chosen database's rows only. The same ids in both databases make a page
on the wrong one show."""

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_bgtasks.admin.databases import SESSION_KEY
from django_bgtasks.models import Job, JobStatus, Queue, Schedule, WorkerProcess
from tests.conftest import BOTH_DATABASES
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db(databases=BOTH_DATABASES)

JOBS = "admin:django_bgtasks_job_changelist"
QUEUES = "admin:django_bgtasks_queue_changelist"
DASHBOARD = "admin:django_bgtasks_jobdashboard_changelist"
LIVE = "admin:django_bgtasks_jobdashboard_live"
# An id both databases give a job of their own.
SHARED_ID = 424242


def listed(client, name=JOBS, **params) -> list:
    response = client.get(reverse(name), params)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def on_other(client):
    """Choose "other" as the switch's link does; the choice stays."""
    response = client.get(reverse(JOBS), {"database": "other"})
    # The list's own query string loses it (not a lookup of the list).
    assert response.status_code == 302 and response["Location"] == reverse(JOBS)
    assert client.session[SESSION_KEY] == "other"
    return client


def status_in(using: str, pk: int) -> str:
    return Job.objects.using(using).get(pk=pk).status


def test_with_one_database_no_switch_shows_and_the_parameter_is_harmless(
    admin_client,
):
    job = make_job()
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert "bgtasks-database-switch" not in page
    response = admin_client.get(reverse(JOBS), {"database": "other"}, follow=True)
    assert [j.pk for j in response.context["cl"].result_list] == [job.pk]
    assert "?e=1" not in response.redirect_chain[-1][0]  # no lookup error


def test_the_list_shows_the_chosen_databases_jobs_and_the_switch(
    admin_client, elsewhere
):
    here = make_job(task_path="tests.tasks.echo")
    there = make_job(using="other", queue_name="heavy")
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert [j.pk for j in listed(admin_client)] == [here.pk]
    assert 'class="bgtasks-database-switch"' in page
    assert '<strong aria-current="true">default</strong>' in page
    assert f'href="{reverse(JOBS)}?database=other"' in page

    on_other(admin_client)
    jobs = listed(admin_client)
    assert [(j.pk, j.queue_name, j._state.db) for j in jobs] == [
        (there.pk, "heavy", "other")
    ]
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert '<strong aria-current="true">other</strong>' in page
    # Filters and search work on it too.
    assert [j.pk for j in listed(admin_client, status="READY")] == [there.pk]
    assert listed(admin_client, q="tests.tasks.echo") == []


def test_an_unknown_database_shows_the_default_with_a_warning(admin_client, elsewhere):
    job = make_job()
    on_other(admin_client)
    response = admin_client.get(reverse(JOBS), {"database": "nope"}, follow=True)
    assert response.status_code == 200
    assert [j.pk for j in response.context["cl"].result_list] == [job.pk]
    warnings = [str(m) for m in response.context["messages"]]
    assert any("“nope”" in m and "“default”" in m for m in warnings)
    # A database of the settings that holds no jobs is unknown here too.
    dashboard = admin_client.get(reverse(DASHBOARD), {"database": "nope"})
    assert dashboard.status_code == 200


def test_actions_change_the_chosen_databases_rows_only(admin_client, elsewhere):
    here = make_job(JobStatus.FAILED, id=SHARED_ID)
    there = make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    ready_there = make_job(using="other")
    on_other(admin_client)

    response = admin_client.post(
        reverse(JOBS),
        {"action": "retry_jobs", "_selected_action": [there.pk]},
        follow=True,
    )
    assert "1 job will run again." in response.content.decode()
    assert status_in("other", SHARED_ID) == JobStatus.READY
    assert status_in("default", here.pk) == JobStatus.FAILED

    admin_client.post(
        reverse(JOBS),
        {"action": "cancel_jobs", "_selected_action": [ready_there.pk, SHARED_ID]},
    )
    assert status_in("other", ready_there.pk) == JobStatus.CANCELLED
    assert status_in("other", SHARED_ID) == JobStatus.CANCELLED
    assert status_in("default", here.pk) == JobStatus.FAILED


def test_a_jobs_page_and_its_buttons_are_the_chosen_databases(admin_client, elsewhere):
    make_job(JobStatus.FAILED, id=SHARED_ID, task_path="tests.tasks.echo")
    make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    on_other(admin_client)
    change = reverse("admin:django_bgtasks_job_change", args=[SHARED_ID])
    page = admin_client.get(change).content.decode()
    assert "tests.tasks.add" in page and "tests.tasks.echo" not in page
    # The switch there lists the other database's jobs.
    assert f'href="{reverse(JOBS)}?database=default"' in page

    button = reverse("admin:django_bgtasks_job_button", args=[SHARED_ID, "retry"])
    assert admin_client.post(button).status_code == 302
    assert status_in("other", SHARED_ID) == JobStatus.READY
    assert status_in("default", SHARED_ID) == JobStatus.FAILED


def test_the_delete_view_deletes_in_the_chosen_database(admin_client, elsewhere):
    make_job(JobStatus.FAILED, id=SHARED_ID)
    make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    on_other(admin_client)
    delete = reverse("admin:django_bgtasks_job_delete", args=[SHARED_ID])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not Job.objects.using("other").filter(pk=SHARED_ID).exists()
    assert Job.objects.using("default").filter(pk=SHARED_ID).exists()


@pytest.fixture
def record_elsewhere(elsewhere, settings):
    """tests.tasks.record's jobs, and so its schedules, in "other"."""
    settings.BGTASKS = {
        **settings.BGTASKS,
        "ROUTES": {"tests.tasks.record": {"backend": elsewhere}},
    }


def test_a_schedules_change_form_saves_in_the_chosen_database(
    admin_client, record_elsewhere
):
    for using in BOTH_DATABASES:
        schedule = Schedule(
            pk=SHARED_ID,
            name="nightly",
            task_path="tests.tasks.record",
            cron="30 2 * * *",
            timezone="UTC",
        )
        schedule.reschedule()
        schedule.save(using=using)
    on_other(admin_client)
    change = reverse("admin:django_bgtasks_schedule_change", args=[SHARED_ID])
    form = admin_client.get(change).context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if name in form.fields and value is not None
    }
    data.update(
        cron="0 9 * * *",
        args="[]",
        kwargs="{}",
        start_at_0="",
        start_at_1="",
        end_at_0="",
        end_at_1="",
        enabled="on",
    )
    response = admin_client.post(change, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Schedule.objects.using("other").get(pk=SHARED_ID).cron == "0 9 * * *"
    assert Schedule.objects.using("default").get(pk=SHARED_ID).cron == "30 2 * * *"


def test_a_schedules_name_is_free_or_taken_in_the_chosen_database(
    admin_client, record_elsewhere
):
    Schedule.objects.create(
        name="report", task_path="tests.tasks.record", cron="* * * * *"
    )
    on_other(admin_client)
    add = reverse("admin:django_bgtasks_schedule_add")
    data = {
        "name": "report",
        "task_path": "tests.tasks.record",
        "cron": "0 9 * * *",
        "timezone": "UTC",
        "args": "[]",
        "kwargs": "{}",
        "queue_name": "default",
        "priority": "0",
        "enabled": "on",
        "misfire_policy": "run_once",
    }
    # Taken in "default" only: free here.
    assert admin_client.post(add, data).status_code == 302
    assert Schedule.objects.using("other").filter(name="report").exists()
    # Taken here now: the form says so (not a database error).
    response = admin_client.post(add, data)
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Schedule.objects.using("other").filter(name="report").count() == 1


def test_a_schedule_is_added_only_where_its_tasks_jobs_are(admin_client, elsewhere):
    on_other(admin_client)
    data = {
        "name": "report",
        "task_path": "tests.tasks.record",  # the default backend's
        "cron": "0 9 * * *",
        "timezone": "UTC",
        "args": "[]",
        "kwargs": "{}",
        "queue_name": "default",
        "priority": "0",
        "enabled": "on",
        "misfire_policy": "run_once",
    }
    response = admin_client.post(reverse("admin:django_bgtasks_schedule_add"), data)
    assert response.status_code == 200
    assert "kept in database “default”" in response.content.decode()
    assert not Schedule.objects.using("other").exists()


def test_queues_list_and_pause_in_the_chosen_database(admin_client, elsewhere):
    on_other(admin_client)
    names = {queue.name for queue in listed(admin_client, QUEUES)}
    # The elsewhere backend's queues, not the default backend's "images".
    assert names == {"default", "heavy"}
    assert set(Queue.objects.using("other").values_list("name", flat=True)) == names

    admin_client.post(reverse("admin:django_bgtasks_queue_pause"), {"name": "heavy"})
    assert Queue.objects.using("other").get(name="heavy").is_paused
    assert not Queue.objects.using("default").filter(name="heavy").exists()

    admin_client.post(
        reverse(QUEUES), {"action": "resume_queues", "_selected_action": ["heavy"]}
    )
    assert not Queue.objects.using("other").get(name="heavy").is_paused


def test_workers_list_the_chosen_databases(admin_client, elsewhere):
    make_worker("here")
    make_worker("there", using="other")
    on_other(admin_client)
    workers = listed(admin_client, "admin:django_bgtasks_workerprocess_changelist")
    assert [w.pk for w in workers] == ["there"]
    assert WorkerProcess.objects.using("default").filter(pk="here").exists()


def test_the_dashboard_and_its_refresh_count_the_chosen_databases_jobs(
    admin_client, elsewhere
):
    make_job()
    for _ in range(3):
        make_job(using="other", queue_name="heavy")
    make_worker("there-worker", using="other")

    body = admin_client.get(reverse(LIVE)).content.decode()
    assert '?status=READY">1</a>' in body and "there-worker" not in body

    page = admin_client.get(reverse(DASHBOARD), {"database": "other"})
    assert page.status_code == 200
    assert '<strong aria-current="true">other</strong>' in page.content.decode()
    body = admin_client.get(reverse(LIVE)).content.decode()  # the session's
    assert '?status=READY">3</a>' in body
    assert "heavy" in body and "there-worker" in body


def test_no_page_on_the_other_database_reads_the_apps_tables_in_default(
    admin_client, elsewhere
):
    """Every page reads the app's rows in the chosen database only. The
    delete confirmations too: Django's collector there is on the routers'
    database, but the app's relations (DO_NOTHING, SET_NULL) read nothing."""
    job = make_job(JobStatus.FAILED, using="other")
    schedule = Schedule(
        name="nightly", task_path="tests.tasks.record", cron="* * * * *"
    )
    schedule.reschedule()
    schedule.save(using="other")
    make_worker("there", using="other")
    on_other(admin_client)
    pages = [
        reverse(JOBS),
        f"{reverse(JOBS)}?status=WAITING",
        reverse("admin:django_bgtasks_job_change", args=[job.pk]),
        reverse("admin:django_bgtasks_job_delete", args=[job.pk]),
        reverse("admin:django_bgtasks_job_progress", args=[job.pk]),
        reverse(QUEUES),
        reverse("admin:django_bgtasks_schedule_changelist"),
        reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk]),
        reverse("admin:django_bgtasks_schedule_delete", args=[schedule.pk]),
        reverse("admin:django_bgtasks_workerprocess_changelist"),
        reverse(DASHBOARD),
        reverse(LIVE),
    ]
    with CaptureQueriesContext(connections["default"]) as queries:
        for page in pages:
            assert admin_client.get(page).status_code == 200, page
        # The delete action's confirmation page.
        response = admin_client.post(
            reverse(JOBS), {"action": "delete_jobs", "_selected_action": [job.pk]}
        )
        assert response.status_code == 200
        assert "Are you sure" in response.content.decode()
    read_here = [q["sql"] for q in queries if "django_bgtasks_" in q["sql"]]
    assert read_here == []
