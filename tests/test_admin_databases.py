"""The admin with jobs in two databases ("default" and "other", the
``elsewhere`` backend's): the switch, and every page, action and button on
the rows of the database its URL names only. The same ids in both databases
make a page on the wrong one show."""

import html
import re
import uuid
from urllib.parse import urlencode, urljoin

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

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


# The add form's fields of a schedule of tests.tasks.record (the default
# backend's task, unless a test routes it).
NEW_SCHEDULE = {
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


def listed(client, name=JOBS, **params) -> list:
    response = client.get(reverse(name), params)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def on_other(url: str) -> str:
    """``url`` on "other", as the switch's links and the pages' own name it."""
    return f"{url}?database=other"


def status_in(using: str, pk: int) -> str:
    return Job.objects.using(using).get(pk=pk).status


def unescaped(value: str) -> str:
    return html.unescape(value)


def button_urls(page: str) -> dict[str, str]:
    """A job page's buttons: name -> the URL its form posts to."""
    forms = re.findall(
        r'<form method="post" action="([^"]*)" class="bgtasks-button-form">.*?'
        r'name="button" value="(\w+)"',
        page,
        re.S,
    )
    return {name: unescaped(action) for action, name in forms}


def form_action(page: str, marker: str, page_url: str) -> str:
    """Where the form of the page at ``page_url`` that holds ``marker`` (in
    its tag or its body) posts: its action, else the page's own URL (as a
    browser does)."""
    (tag,) = [
        tag
        for tag, body in re.findall(r"(<form[^>]*>)(.*?)</form>", page, re.S)
        if marker in tag or marker in body
    ]
    action = re.search(r'action="([^"]*)"', tag)
    return urljoin(page_url, unescaped(action.group(1)) if action else "")


def test_with_one_database_no_switch_shows_and_the_parameter_is_harmless(
    admin_client,
):
    job = make_job(JobStatus.READY)
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert "bgtasks-database-switch" not in page
    response = admin_client.get(reverse(JOBS), {"database": "other"})
    assert response.status_code == 200  # not a lookup: no error page
    assert [j.pk for j in response.context["cl"].result_list] == [job.pk]
    # Nothing names a database: the links and forms are as they were.
    change = reverse("admin:django_bgtasks_job_change", args=[job.pk])
    page = admin_client.get(change).content.decode()
    assert "database" not in page.replace("database_switch", "")
    assert "database=" not in admin_client.get(reverse(DASHBOARD)).content.decode()


def test_the_list_shows_the_named_databases_jobs_and_the_switch(
    admin_client, elsewhere
):
    here = make_job(task_path="tests.tasks.echo")
    there = make_job(using="other", queue_name="heavy")
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert [j.pk for j in listed(admin_client)] == [here.pk]
    assert 'class="bgtasks-database-switch"' in page
    assert '<strong aria-current="true">default</strong>' in page
    assert f'href="{reverse(JOBS)}?database=other"' in page

    jobs = listed(admin_client, database="other")
    assert [(j.pk, j.queue_name, j._state.db) for j in jobs] == [
        (there.pk, "heavy", "other")
    ]
    response = admin_client.get(on_other(reverse(JOBS)))
    page = response.content.decode()
    assert '<strong aria-current="true">other</strong>' in page
    assert f'href="{reverse(JOBS)}?database=default"' in page
    # Its sort, filter and search links, and the search form, keep it.
    cl = response.context["cl"]
    assert "database=other" in cl.get_query_string({"status": "READY"})
    assert 'href="?database=other&amp;o=' in page
    assert 'href="?database=other&amp;status=FAILED"' in page
    assert '<input type="hidden" name="database" value="other">' in page
    # Row links carry it to the job's page (Django's preserved filters).
    assert f"/{there.pk}/change/?_changelist_filters=database%3Dother" in page
    # Filters and search work on it too.
    assert [j.pk for j in listed(admin_client, database="other", status="READY")] == [
        there.pk
    ]
    assert listed(admin_client, database="other", q="tests.tasks.echo") == []
    # A bad lookup's error page is on it too.
    response = admin_client.get(
        reverse(JOBS), {"database": "other", "workflow_id": "x"}, follow=True
    )
    assert response.redirect_chain[-1][0] == f"{reverse(JOBS)}?e=1&database=other"
    assert '<strong aria-current="true">other</strong>' in response.content.decode()


def test_the_queue_filter_lists_the_named_databases_queues(admin_client, elsewhere):
    def queues(**params) -> set[str]:
        response = admin_client.get(reverse(JOBS), params)
        (spec,) = [
            spec
            for spec in response.context["cl"].filter_specs
            if getattr(spec, "parameter_name", None) == "queue_name"
        ]
        return {value for value, _label in spec.lookup_choices}

    # The default backend's queues and its tasks' ("other" is a task's).
    assert {"images", "other"} <= queues() and "heavy" not in queues()
    assert queues(database="other") == {"default", "heavy"}


def test_a_database_named_once_leaves_nothing_behind(admin_client, elsewhere):
    here = make_job()
    there = make_job(using="other")
    assert [j.pk for j in listed(admin_client, database="other")] == [there.pk]
    assert not [key for key, _value in admin_client.session.items() if "bgtasks" in key]
    # The next page that names none is on the default database.
    assert [j.pk for j in listed(admin_client)] == [here.pk]
    body = admin_client.get(reverse(LIVE)).content.decode()
    assert '?status=READY&amp;database=default">1</a>' in body


def test_an_unknown_database_shows_the_default_with_a_warning(admin_client, elsewhere):
    job = make_job()
    response = admin_client.get(reverse(JOBS), {"database": "nope"})
    assert response.status_code == 200
    assert [j.pk for j in response.context["cl"].result_list] == [job.pk]
    warnings = [str(m) for m in response.context["messages"]]
    assert any("“nope”" in m and "“default”" in m for m in warnings)
    # A database of the settings that holds no jobs is unknown here too.
    dashboard = admin_client.get(reverse(DASHBOARD), {"database": "nope"})
    assert dashboard.status_code == 200
    # And on an object's page, named in the list's query string.
    change = reverse("admin:django_bgtasks_job_change", args=[job.pk])
    query = urlencode({"_changelist_filters": "database=nope"})
    assert admin_client.get(f"{change}?{query}").status_code == 200


def test_actions_change_the_named_databases_rows_only(admin_client, elsewhere):
    here = make_job(JobStatus.FAILED, id=SHARED_ID)
    there = make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    ready_there = make_job(using="other")

    # The actions form posts to the list's own URL.
    response = admin_client.post(
        on_other(reverse(JOBS)),
        {"action": "retry_jobs", "_selected_action": [there.pk]},
        follow=True,
    )
    assert "1 job will run again." in response.content.decode()
    assert response.redirect_chain[-1][0] == on_other(reverse(JOBS))
    assert status_in("other", SHARED_ID) == JobStatus.READY
    assert status_in("default", here.pk) == JobStatus.FAILED

    admin_client.post(
        on_other(reverse(JOBS)),
        {"action": "cancel_jobs", "_selected_action": [ready_there.pk, SHARED_ID]},
    )
    assert status_in("other", ready_there.pk) == JobStatus.CANCELLED
    assert status_in("other", SHARED_ID) == JobStatus.CANCELLED
    assert status_in("default", here.pk) == JobStatus.FAILED


def test_a_jobs_page_and_its_buttons_are_the_named_databases(admin_client, elsewhere):
    make_job(JobStatus.FAILED, id=SHARED_ID, task_path="tests.tasks.echo")
    make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    change = reverse("admin:django_bgtasks_job_change", args=[SHARED_ID])
    page = admin_client.get(on_other(change)).content.decode()
    assert "tests.tasks.add" in page and "tests.tasks.echo" not in page
    # The switch there lists the other database's jobs.
    assert f'href="{reverse(JOBS)}?database=default"' in page

    button = button_urls(page)["retry"]
    assert button == on_other(
        reverse("admin:django_bgtasks_job_button", args=[SHARED_ID, "retry"])
    )
    response = admin_client.post(button)
    assert response.status_code == 302 and response["Location"] == on_other(change)
    assert status_in("other", SHARED_ID) == JobStatus.READY
    assert status_in("default", SHARED_ID) == JobStatus.FAILED


def test_a_running_jobs_progress_is_read_in_the_named_database(admin_client, elsewhere):
    make_job(JobStatus.READY, id=SHARED_ID)
    make_job(JobStatus.RUNNING, id=SHARED_ID, using="other", progress={"current": 3})
    change = reverse("admin:django_bgtasks_job_change", args=[SHARED_ID])
    response = admin_client.get(on_other(change))
    progress = response.context["progress_url"]
    assert progress == on_other(
        reverse("admin:django_bgtasks_job_progress", args=[SHARED_ID])
    )
    assert admin_client.get(progress).json()["status"] == JobStatus.RUNNING


def test_a_jobs_page_links_to_jobs_and_lists_of_its_database(admin_client, elsewhere):
    workflow_id = uuid.uuid4()
    first, second = (
        make_job(using="other", workflow_id=workflow_id, id=SHARED_ID + n)
        for n in range(2)
    )
    change = reverse("admin:django_bgtasks_job_change", args=[first.pk])
    page = admin_client.get(on_other(change)).content.decode()
    second_page = reverse("admin:django_bgtasks_job_change", args=[second.pk])
    assert f'href="{on_other(second_page)}"' in page
    workflow_list = f"{reverse(JOBS)}?workflow_id={workflow_id}&amp;database=other"
    assert f'href="{workflow_list}"' in page


def test_the_delete_view_deletes_in_the_named_database(admin_client, elsewhere):
    make_job(JobStatus.FAILED, id=SHARED_ID)
    make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    delete = reverse("admin:django_bgtasks_job_delete", args=[SHARED_ID])
    response = admin_client.post(on_other(delete), {"post": "yes"})
    assert response.status_code == 302
    assert not Job.objects.using("other").filter(pk=SHARED_ID).exists()
    assert Job.objects.using("default").filter(pk=SHARED_ID).exists()


def test_a_pages_forms_act_on_its_database_whatever_another_tab_shows(
    admin_client, elsewhere
):
    """Job 424242 of "other" opened from its list; another tab then shows
    "default"'s list; the first tab's buttons and delete act on "other"'s
    job 424242, never on "default"'s."""
    make_job(JobStatus.READY, id=SHARED_ID)
    make_job(JobStatus.READY, id=SHARED_ID, using="other")
    make_job(JobStatus.FAILED, id=SHARED_ID + 1)
    make_job(JobStatus.FAILED, id=SHARED_ID + 1, using="other")
    listing = admin_client.get(on_other(reverse(JOBS))).content.decode()

    def page_from_the_list(pk: int) -> str:
        (url,) = {
            unescaped(href)
            for href in re.findall(rf'href="([^"]*/{pk}/change/[^"]*)"', listing)
        }
        return admin_client.get(url).content.decode()

    page = page_from_the_list(SHARED_ID)
    (history,) = re.findall(r'<a [^>]*href="([^"]*)" class="historylink"', page)
    assert "_changelist_filters=database%3Dother" in history
    cancel = button_urls(page)["cancel"]
    other_tab = listed(admin_client, database="default")  # its switch's link
    assert {job._state.db for job in other_tab} == {"default"}
    response = admin_client.post(cancel)
    assert response.status_code == 302
    assert status_in("other", SHARED_ID) == JobStatus.CANCELLED
    assert status_in("default", SHARED_ID) == JobStatus.READY
    # Back on the job's page, on its database still.
    page = admin_client.get(response["Location"]).content.decode()
    assert '<strong aria-current="true">other</strong>' in page

    # The delete link of a page opened from the list, its confirmation, and
    # the confirmation's form.
    page = page_from_the_list(SHARED_ID + 1)
    (delete,) = re.findall(r'<a [^>]*href="([^"]*)" class="deletelink"', page)
    delete = unescaped(delete)
    confirmation = admin_client.get(delete).content.decode()
    assert "tests.tasks.add" in confirmation
    other_tab = listed(admin_client, database="default")  # its switch's link
    assert {job._state.db for job in other_tab} == {"default"}
    response = admin_client.post(
        form_action(confirmation, 'name="post"', delete), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Job.objects.using("other").filter(pk=SHARED_ID + 1).exists()
    assert Job.objects.using("default").filter(pk=SHARED_ID + 1).exists()


@pytest.fixture
def record_elsewhere(elsewhere, settings):
    """tests.tasks.record's jobs, and so its schedules, in "other"."""
    settings.BGTASKS = {
        **settings.BGTASKS,
        "ROUTES": {"tests.tasks.record": {"backend": elsewhere}},
    }


def test_a_schedules_change_form_saves_in_the_named_database(
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
    change = on_other(reverse("admin:django_bgtasks_schedule_change", args=[SHARED_ID]))
    page = admin_client.get(change)
    form = page.context["adminform"].form
    # The form posts to its page's URL, which names the database.
    change = form_action(page.content.decode(), 'id="schedule_form"', change)
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
    # Another tab switches to "default".
    listed(admin_client, "admin:django_bgtasks_schedule_changelist", database="default")
    response = admin_client.post(change, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    # Back to the list of its database.
    schedules = reverse("admin:django_bgtasks_schedule_changelist")
    assert response["Location"] == on_other(schedules)
    assert Schedule.objects.using("other").get(pk=SHARED_ID).cron == "0 9 * * *"
    assert Schedule.objects.using("default").get(pk=SHARED_ID).cron == "30 2 * * *"

    # "Save and continue" and "Save and add another" stay on it.
    response = admin_client.post(
        change, {**data, "cron": "0 8 * * *", "_continue": "1"}
    )
    assert "_changelist_filters=database%3Dother" in response["Location"]
    page = admin_client.get(response["Location"])
    assert page.context["adminform"].form.instance.cron == "0 8 * * *"
    assert Schedule.objects.using("default").get(pk=SHARED_ID).cron == "30 2 * * *"
    response = admin_client.post(change, {**data, "_addanother": "1"})
    add = reverse("admin:django_bgtasks_schedule_add")
    assert response["Location"].startswith(add)
    page = admin_client.get(response["Location"]).content.decode()
    assert '<strong aria-current="true">other</strong>' in page


def test_a_schedules_name_is_free_or_taken_in_the_named_database(
    admin_client, record_elsewhere
):
    Schedule.objects.create(
        name="report", task_path="tests.tasks.record", cron="* * * * *"
    )
    add = on_other(reverse("admin:django_bgtasks_schedule_add"))
    data = dict(NEW_SCHEDULE)
    # Taken in "default" only: free here.
    assert admin_client.post(add, data).status_code == 302
    assert Schedule.objects.using("other").filter(name="report").exists()
    # Taken here now: the form says so (not a database error).
    response = admin_client.post(add, data)
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Schedule.objects.using("other").filter(name="report").count() == 1


def test_a_schedule_is_added_only_where_its_tasks_jobs_are(admin_client, elsewhere):
    data = dict(NEW_SCHEDULE)  # its task: the default backend's
    add = on_other(reverse("admin:django_bgtasks_schedule_add"))
    response = admin_client.post(add, data)
    assert response.status_code == 200
    assert "kept in database “default”" in response.content.decode()
    assert not Schedule.objects.using("other").exists()


def test_queues_list_and_pause_in_the_named_database(admin_client, elsewhere):
    make_job(using="other", queue_name="heavy")
    response = admin_client.get(on_other(reverse(QUEUES)))
    names = {queue.name for queue in response.context["cl"].result_list}
    # The elsewhere backend's queues, not the default backend's "images".
    assert names == {"default", "heavy"}
    assert set(Queue.objects.using("other").values_list("name", flat=True)) == names
    page = response.content.decode()
    # Its ready jobs link to the list of that database's.
    assert "?status=READY&amp;queue_name=heavy&amp;database=other" in page

    pause = form_action(
        page, 'class="bgtasks-pause-form"', response.request["PATH_INFO"]
    )
    assert pause == on_other(reverse("admin:django_bgtasks_queue_pause"))
    listed(admin_client, QUEUES, database="default")  # another tab
    response = admin_client.post(pause, {"name": "heavy"})
    assert response["Location"] == on_other(reverse(QUEUES))
    assert Queue.objects.using("other").get(name="heavy").is_paused
    assert not Queue.objects.using("default").filter(name="heavy").exists()

    admin_client.post(
        on_other(reverse(QUEUES)),
        {"action": "resume_queues", "_selected_action": ["heavy"]},
    )
    assert not Queue.objects.using("other").get(name="heavy").is_paused


def test_workers_list_the_named_databases(admin_client, elsewhere):
    make_worker("here")
    make_worker("there", using="other")
    workers = listed(
        admin_client, "admin:django_bgtasks_workerprocess_changelist", database="other"
    )
    assert [w.pk for w in workers] == ["there"]
    assert WorkerProcess.objects.using("default").filter(pk="here").exists()


def test_the_dashboard_and_its_refresh_count_the_named_databases_jobs(
    admin_client, elsewhere
):
    make_job()
    for _ in range(3):
        make_job(using="other", queue_name="heavy")
    make_worker("there-worker", using="other")

    body = admin_client.get(reverse(LIVE)).content.decode()
    assert '?status=READY&amp;database=default">1</a>' in body
    assert "there-worker" not in body

    page = admin_client.get(reverse(DASHBOARD), {"database": "other"})
    assert page.status_code == 200
    assert '<strong aria-current="true">other</strong>' in page.content.decode()
    # Its refreshes, and its links to other pages, name the database.
    live = page.context["live_url"]
    assert live == on_other(reverse(LIVE))
    body = admin_client.get(live).content.decode()
    assert '?status=READY&amp;database=other">3</a>' in body
    assert "heavy" in body and "there-worker" in body
    links = re.findall(r'href="([^"]*)"', body)
    assert links and all(link.endswith("database=other") for link in links)


def test_no_page_on_the_other_database_reads_the_apps_tables_in_default(
    admin_client, elsewhere
):
    """Every page reads the app's rows in the database the URL names only. The
    delete confirmations too: Django's collector there is on the routers'
    database, but the app's relations (DO_NOTHING, SET_NULL) read nothing."""
    job = make_job(JobStatus.FAILED, using="other")
    schedule = Schedule(
        name="nightly", task_path="tests.tasks.record", cron="* * * * *"
    )
    schedule.reschedule()
    schedule.save(using="other")
    make_worker("there", using="other")
    pages = [
        reverse(JOBS),
        f"{reverse(JOBS)}?status=WAITING",
        reverse("admin:django_bgtasks_job_change", args=[job.pk]),
        reverse("admin:django_bgtasks_job_delete", args=[job.pk]),
        reverse("admin:django_bgtasks_job_history", args=[job.pk]),
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
            url = f"{page}{'&' if '?' in page else '?'}database=other"
            assert admin_client.get(url).status_code == 200, url
        # The delete action's confirmation page.
        response = admin_client.post(
            on_other(reverse(JOBS)),
            {"action": "delete_jobs", "_selected_action": [job.pk]},
        )
        assert response.status_code == 200
        assert "Are you sure" in response.content.decode()
    read_here = [q["sql"] for q in queries if "django_bgtasks_" in q["sql"]]
    assert read_here == []
