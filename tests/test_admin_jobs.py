"""The job admin: list, filters, search, detail page, actions, permissions."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from django_bgtasks.admin import jobs as jobs_admin
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db

JOBS = "admin:django_bgtasks_job_changelist"


def listed(client, **params) -> list[int]:
    response = client.get(reverse(JOBS), params)
    assert response.status_code == 200
    return [job.pk for job in response.context["cl"].result_list]


def act(client, action, jobs):
    return client.post(
        reverse(JOBS),
        {"action": action, "_selected_action": [job.pk for job in jobs]},
        follow=True,
    )


def user_with(client, *codenames):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


def test_list_is_newest_first_with_badges_and_attempts(admin_client):
    first = make_job(JobStatus.SUCCESSFUL)
    second = make_job(JobStatus.FAILED, attempts=3)
    response = admin_client.get(reverse(JOBS))
    page = response.content.decode()
    assert [job.pk for job in response.context["cl"].result_list] == [
        second.pk,
        first.pk,
    ]
    assert 'class="bgtasks-badge"' in page and ">Failed<" in page
    assert "3/3" in page and "1/3" in page


def test_filters(admin_client):
    ready = make_job()
    failed = make_job(JobStatus.FAILED, queue_name="other")
    echo = make_job(JobStatus.SUCCESSFUL, task_path="tests.tasks.echo")
    old = make_job(
        JobStatus.SUCCESSFUL, enqueued_at=timezone.now() - timedelta(days=30)
    )
    assert listed(admin_client, status="FAILED") == [failed.pk]
    assert listed(admin_client, queue_name="other") == [failed.pk]
    assert listed(admin_client, task_path="tests.tasks.echo") == [echo.pk]
    recent = timezone.now() - timedelta(days=7)
    assert old.pk not in listed(admin_client, enqueued_at__gte=recent.isoformat())
    assert ready.pk in listed(admin_client, finished_at__isnull="True")
    assert listed(admin_client, status="FAILED", queue_name="default") == []


def test_task_and_queue_filters_list_jobs_of_every_status(admin_client):
    """They read a task's or queue's jobs status by status (through the
    indexes each status has): none is left out."""
    jobs = [
        make_job(status, task_path="tests.tasks.echo", queue_name="other")
        for status in JobStatus
    ]
    make_job(JobStatus.SUCCESSFUL)  # another task, another queue
    newest_first = sorted((job.pk for job in jobs), reverse=True)
    assert listed(admin_client, task_path="tests.tasks.echo") == newest_first
    assert listed(admin_client, queue_name="other") == newest_first
    assert listed(admin_client, q="tests.tasks.echo") == newest_first


def test_a_task_or_queue_is_found_through_indexes_not_the_table():
    """The list of one task's or queue's jobs can be read through the list
    indexes. PostgreSQL, with only bitmap scans allowed (which read nothing
    but indexes whose conditions the query implies, then those rows): its
    partial indexes serve every status's part. SQLite: its plan reads the
    index. (Whether a planner prefers them for a given value is its
    statistics' call: ``bgtasks_bench --scenarios scale`` measures it.)"""
    from django.db import connection, transaction

    if connection.vendor not in ("postgresql", "sqlite"):
        pytest.skip("MariaDB's plan of a tiny table is its own choice")
    for lookups, index in [
        ({"task_path": "tests.tasks.echo"}, "bgtasks_job_task_idx"),
        ({"queue_name": "other"}, "bgtasks_job_queue_idx"),
    ]:
        query = Job.objects.matching(**lookups).order_by("-pk")[:100]
        sql, params = query.query.sql_with_params()
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for scan in ("seqscan", "indexscan", "indexonlyscan"):
                    cursor.execute(f"SET LOCAL enable_{scan} = off")
                cursor.execute("EXPLAIN " + sql, params)
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = " ".join(str(row) for row in cursor.fetchall())
        assert index in plan, plan
        assert "Seq Scan" not in plan and "SCAN " not in plan, plan


def test_filter_choices_come_from_configuration_not_the_table(admin_client):
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert "?queue_name=images" in page  # from QUEUES, with no job in it
    assert "?task_path=tests.tasks.record" in page  # a registered task


def test_search_by_id_and_task(admin_client):
    add = make_job()
    echo = make_job(task_path="tests.tasks.echo")
    assert listed(admin_client, q=str(add.pk)) == [add.pk]
    assert listed(admin_client, q="echo") == [echo.pk]
    assert listed(admin_client, q="no-such-task") == []
    assert listed(admin_client, q="9" * 30) == []


def test_a_task_no_longer_registered_is_searched_among_the_newest_jobs(
    admin_client, monkeypatch
):
    gone = make_job(JobStatus.SUCCESSFUL, task_path="old.tasks.gone")
    assert listed(admin_client, q="gone") == [gone.pk]  # the table is small
    newer = [make_job(JobStatus.SUCCESSFUL) for _ in range(3)]
    monkeypatch.setattr(jobs_admin, "SEARCH_WINDOW", 2)
    response = admin_client.get(reverse(JOBS), {"q": "gone"})
    assert list(response.context["cl"].result_list) == []
    assert [str(m) for m in response.context["messages"]] == [
        "No registered task's path contains gone: only the newest 2 jobs were "
        "searched for it."
    ]
    newest = make_job(JobStatus.FAILED, task_path="old.tasks.gone")
    assert listed(admin_client, q="gone") == [newest.pk]
    # A registered task's jobs are found however old.
    assert listed(admin_client, q="tasks.add") == [n.pk for n in reversed(newer)]


def test_detail_page_shows_everything_escaped(admin_client):
    job = make_job(
        JobStatus.FAILED,
        args=["<script>alert('args')</script>"],
        kwargs={"to": "a&b"},
        attempts=2,
        worker_ids=["w1", "w2"],
        errors=[
            {
                "exception_class_path": "builtins.ValueError",
                "traceback": "Traceback ...\nValueError: <img src=x onerror=alert(1)>",
                "attempt": attempt,
                "worker_id": f"w{attempt}",
                "at": timezone.now().isoformat(),
            }
            for attempt in (1, 2)
        ],
        progress={"current": 5, "total": 20, "message": "<b>bold</b>", "at": "now"},
    )
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[job.pk])
    ).content.decode()
    assert "&lt;script&gt;alert(&#x27;args&#x27;)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("builtins.ValueError") == 2
    assert "&quot;to&quot;: &quot;a&amp;b&quot;" in page
    assert 'value="25"' in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "w1, w2" in page
    assert 'name="task_path"' not in page  # nothing editable


def test_detail_page_links_the_schedule_and_shows_the_return_value(admin_client):
    from django_bgtasks.models import Schedule

    schedule = Schedule.objects.create(
        name="hourly", task_path="tests.tasks.add", cron="0 * * * *", timezone="UTC"
    )
    job = make_job(
        JobStatus.SUCCESSFUL,
        schedule=schedule,
        scheduled_for=timezone.now(),
        return_value={"total": 3},
    )
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[job.pk])
    ).content.decode()
    assert reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk]) in page
    assert "&quot;total&quot;: 3" in page or '"total": 3' in page


def test_jobs_cannot_be_edited_or_added(admin_client):
    job = make_job()
    response = admin_client.post(
        reverse("admin:django_bgtasks_job_change", args=[job.pk]),
        {"task_path": "os.system"},
    )
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:django_bgtasks_job_add")).status_code == 403


def test_retry_extends_attempts_and_skips_what_it_does_not_apply_to(admin_client):
    failed = make_job(JobStatus.FAILED, attempts=3, errors=[{"traceback": "x"}])
    cancelled = make_job(JobStatus.CANCELLED)
    succeeded = make_job(JobStatus.SUCCESSFUL)
    before = timezone.now()
    page = act(
        admin_client, "retry_jobs", [failed, cancelled, succeeded]
    ).content.decode()
    assert "2 jobs will run again." in page
    assert "1 skipped: only FAILED or CANCELLED jobs can be retried" in page
    failed.refresh_from_db()
    assert failed.status == JobStatus.READY and failed.finished_at is None
    assert failed.run_after >= before
    assert (failed.attempts, failed.max_attempts) == (3, 4)  # one more attempt
    assert failed.errors == [{"traceback": "x"}]  # history kept
    cancelled.refresh_from_db()
    assert cancelled.status == JobStatus.READY and cancelled.max_attempts == 3
    succeeded.refresh_from_db()
    assert succeeded.status == JobStatus.SUCCESSFUL


@pytest.mark.django_db(transaction=True)
def test_retried_job_runs_again(admin_client):
    result = tasks.always_fails.using(max_attempts=1).enqueue()
    from tests.conftest import run_in_process

    run_in_process()
    act(admin_client, "retry_jobs", [Job.objects.get()])
    run_in_process()
    result.refresh()
    assert result.status == "FAILED" and result.attempts == 2


def test_cancel_ends_ready_jobs_and_asks_running_ones_to_stop(admin_client):
    ready = make_job()
    running = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    finished = make_job(JobStatus.SUCCESSFUL)
    jobs = [ready, running, finished]
    page = act(admin_client, "cancel_jobs", jobs).content.decode()
    assert "1 job cancelled." in page and "1 skipped" in page
    assert "1 running job was asked to stop; it ends CANCELLED." in page
    for job in jobs:
        job.refresh_from_db()
    assert ready.status == JobStatus.CANCELLED and ready.finished_at is not None
    assert ready.cancel_requested_at is None
    # A running job is not ended by the cancel: its worker stops it.
    assert running.status == JobStatus.RUNNING
    assert running.cancel_requested_by == "admin"
    assert running.cancel_requested_at is not None
    assert finished.status == JobStatus.SUCCESSFUL
    assert finished.cancel_requested_at is None
    # Asked once: a second cancel keeps the first request.
    first = running.cancel_requested_at
    page = act(admin_client, "cancel_jobs", [running]).content.decode()
    assert "1 skipped" in page and "was asked to stop" not in page
    running.refresh_from_db()
    assert running.cancel_requested_at == first


def test_a_cancelled_running_jobs_page_says_who_cancelled_it_and_when(admin_client):
    job = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    Job.objects.filter(pk=job.pk).cancel(by="alice")
    job.refresh_from_db()
    url = reverse("admin:django_bgtasks_job_change", args=[job.pk])
    page = admin_client.get(url).content.decode()
    when = timezone.localtime(job.cancel_requested_at).strftime("%Y-%m-%d %H:%M:%S")
    assert "by alice at " + when in page
    # A job never cancelled has no such line.
    other = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    url = reverse("admin:django_bgtasks_job_change", args=[other.pk])
    assert "by alice" not in admin_client.get(url).content.decode()


def test_cancel_of_running_jobs_needs_the_cancel_permission(client):
    running = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    user_with(client, "view_job")
    act(client, "cancel_jobs", [running])
    running.refresh_from_db()
    assert running.cancel_requested_at is None


def test_run_now_makes_delayed_jobs_due(admin_client):
    later = make_job(run_after=timezone.now() + timedelta(hours=2))
    due = make_job()
    page = act(admin_client, "run_jobs_now", [later, due]).content.decode()
    assert "1 job is due now." in page
    later.refresh_from_db()
    assert later.run_after <= timezone.now()
    assert Job.objects.due().count() == 2


def test_delete_spares_running_jobs(admin_client):
    done = make_job(JobStatus.SUCCESSFUL)
    running = make_job(JobStatus.RUNNING, worker_id="w", attempts=1)
    response = admin_client.post(
        reverse(JOBS),
        {
            "action": "delete_jobs",
            "_selected_action": [done.pk, running.pk],
            "post": "yes",
        },
        follow=True,
    )
    assert "1 running job is left alone." in response.content.decode()
    assert list(Job.objects.values_list("pk", flat=True)) == [running.pk]
    response = admin_client.get(
        reverse("admin:django_bgtasks_job_delete", args=[running.pk])
    )
    assert response.status_code == 403


def test_a_viewer_can_look_but_not_act(client):
    viewer = user_with(client, "view_job")
    failed = make_job(JobStatus.FAILED)
    ready = make_job()
    page = viewer.get(reverse(JOBS)).content.decode()
    assert str(failed.pk) in page
    for action in ("retry_jobs", "cancel_jobs", "run_jobs_now", "delete_jobs"):
        assert f'value="{action}"' not in page
        act(viewer, action, [failed, ready])
    assert (
        viewer.get(
            reverse("admin:django_bgtasks_job_change", args=[failed.pk])
        ).status_code
        == 200
    )
    failed.refresh_from_db()
    ready.refresh_from_db()
    assert (failed.status, ready.status) == (JobStatus.FAILED, JobStatus.READY)
    assert Job.objects.count() == 2


@pytest.mark.parametrize(
    ("codename", "allowed", "refused"),
    [
        ("retry_job", "retry_jobs", "cancel_jobs"),
        ("cancel_job", "cancel_jobs", "run_jobs_now"),
        ("run_job", "run_jobs_now", "retry_jobs"),
    ],
)
def test_each_action_needs_its_own_permission(client, codename, allowed, refused):
    operator = user_with(client, "view_job", codename)
    page = operator.get(reverse(JOBS)).content.decode()
    assert f'value="{allowed}"' in page
    assert f'value="{refused}"' not in page


def test_no_permission_no_page(client):
    user_with(client)
    assert client.get(reverse(JOBS)).status_code == 403


def test_workers_list_and_delete_rules(admin_client):
    alive = make_worker("alive")
    dead = make_worker("dead", pid=2, silent_for=timedelta(hours=1))
    page = admin_client.get(
        reverse("admin:django_bgtasks_workerprocess_changelist")
    ).content.decode()
    assert page.count("icon-yes.svg") == 1 and page.count("icon-no.svg") == 1
    delete = "admin:django_bgtasks_workerprocess_delete"
    assert admin_client.get(reverse(delete, args=[alive.pk])).status_code == 403
    assert (
        admin_client.post(reverse(delete, args=[dead.pk]), {"post": "yes"}).status_code
        == 302
    )
    assert list(WorkerProcess.objects.values_list("pk", flat=True)) == ["alive"]


def test_odd_stored_values_never_break_the_pages(admin_client):
    from django_bgtasks.models import Schedule

    job = make_job(
        JobStatus.FAILED,
        worker_ids=[1, 2],
        progress={"message": "no numbers", "current": None},
    )
    page = admin_client.get(reverse("admin:django_bgtasks_job_change", args=[job.pk]))
    assert page.status_code == 200 and "1, 2" in page.content.decode()
    schedule = Schedule.objects.create(
        name="odd", task_path="tests.tasks.add", cron="0 * * * *", timezone="UTC",
        next_run_at=timezone.now(),
    )  # fmt: skip
    Schedule.objects.filter(pk=schedule.pk).update(timezone="Mars/Olympus")
    changelist = reverse("admin:django_bgtasks_schedule_changelist")
    assert admin_client.get(changelist).status_code == 200
    change = reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk])
    assert admin_client.get(change).status_code == 200
    assert listed(admin_client, q="²") == []
    preview = reverse("admin:django_bgtasks_schedule_preview")
    data = admin_client.get(preview, {"interval": "99999999 00:00:00"}).json()
    assert data["errors"]


def test_the_worker_column_shows_who_ran_a_finished_job(admin_client):
    make_job(JobStatus.SUCCESSFUL, worker_ids=["web1.1.a", "web2.2.b"])
    assert "web2.2.b" in admin_client.get(reverse(JOBS)).content.decode()


def page_of(job) -> str:
    return reverse("admin:django_bgtasks_job_change", args=[job.pk])


def button_url(job, button) -> str:
    return reverse("admin:django_bgtasks_job_button", args=[job.pk, button])


def buttons_on(client, job) -> list[str]:
    return [name for name, *_ in client.get(page_of(job)).context["job_buttons"]]


def test_a_jobs_page_has_the_buttons_of_the_actions_that_apply_to_it(admin_client):
    later = timezone.now() + timedelta(hours=1)
    running = make_job(JobStatus.RUNNING, worker=make_worker())
    assert buttons_on(admin_client, make_job(JobStatus.FAILED)) == ["retry"]
    assert buttons_on(admin_client, make_job(JobStatus.CANCELLED)) == ["retry"]
    assert buttons_on(admin_client, make_job(run_after=later)) == ["cancel", "run"]
    assert buttons_on(admin_client, make_job()) == ["cancel"]  # due already
    assert buttons_on(admin_client, running) == ["cancel"]
    assert buttons_on(admin_client, make_job(JobStatus.SUCCESSFUL)) == []
    Job.objects.filter(pk=running.pk).update(cancel_requested_at=timezone.now())
    assert buttons_on(admin_client, running) == []  # asked to stop already
    page = admin_client.get(page_of(make_job(JobStatus.FAILED))).content.decode()
    assert 'class="bgtasks-job-button"' in page and "csrfmiddlewaretoken" in page


def test_a_button_runs_its_action_on_the_job_as_the_list_does(admin_client):
    failed = make_job(JobStatus.FAILED)
    response = admin_client.post(button_url(failed, "retry"), follow=True)
    assert response.redirect_chain[-1][0] == page_of(failed)
    assert "1 job will run again." in response.content.decode()
    assert Job.objects.get(pk=failed.pk).status == JobStatus.READY

    later = make_job(run_after=timezone.now() + timedelta(hours=1))
    admin_client.post(button_url(later, "run"))
    assert Job.objects.get(pk=later.pk).run_after <= timezone.now()
    running = make_job(JobStatus.RUNNING, worker=make_worker())
    admin_client.post(button_url(running, "cancel"))
    running = Job.objects.get(pk=running.pk)
    assert (running.status, running.cancel_requested_by) == ("RUNNING", "admin")
    # A button's action applies only where it applies.
    done = make_job(JobStatus.SUCCESSFUL)
    admin_client.post(button_url(done, "retry"))
    assert Job.objects.get(pk=done.pk).status == JobStatus.SUCCESSFUL


def test_a_button_needs_a_post_its_permission_and_a_job(client):
    failed = make_job(JobStatus.FAILED)
    viewer = user_with(client, "view_job")
    assert buttons_on(viewer, failed) == []
    assert viewer.post(button_url(failed, "retry")).status_code == 403
    assert Job.objects.get(pk=failed.pk).status == JobStatus.FAILED
    viewer.logout()
    # The permission to act, without the one to view jobs: refused too.
    blind = User.objects.create_user("blind", password="pw", is_staff=True)
    blind.user_permissions.add(Permission.objects.get(codename="retry_job"))
    client.force_login(blind)
    assert client.post(button_url(failed, "retry")).status_code == 403
    client.logout()
    operator = User.objects.create_user("retrier", password="pw", is_staff=True)
    for codename in ("view_job", "retry_job"):
        operator.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(operator)
    assert buttons_on(client, failed) == ["retry"]
    assert client.get(button_url(failed, "retry")).status_code == 405
    assert client.post(button_url(failed, "explode")).status_code == 404
    assert (
        client.post(
            reverse("admin:django_bgtasks_job_button", args=["abc", "retry"])
        ).status_code
        == 404
    )
    missing = reverse("admin:django_bgtasks_job_button", args=[999999, "retry"])
    assert client.post(missing).status_code == 404
    assert client.post(button_url(failed, "retry")).status_code == 302
    assert Job.objects.get(pk=failed.pk).status == JobStatus.READY


def test_a_running_jobs_page_reads_its_progress_from_a_small_endpoint(admin_client):
    running = make_job(
        JobStatus.RUNNING,
        worker=make_worker(),
        progress={"current": 3, "total": 4, "message": "<b>rows</b>", "at": "x"},
    )
    page = admin_client.get(page_of(running)).content.decode()
    url = reverse("admin:django_bgtasks_job_progress", args=[running.pk])
    assert f'data-progress-url="{url}"' in page and "job_live.js" in page
    response = admin_client.get(url)
    data = response.json()
    assert data["status"] == "RUNNING" and "no-cache" in response["Cache-Control"]
    assert 'value="75"' in data["progress_html"]
    assert "&lt;b&gt;rows&lt;/b&gt;" in data["progress_html"]
    # A page of a job that is not running follows nothing.
    done = make_job(JobStatus.SUCCESSFUL)
    assert "data-progress-url" not in admin_client.get(page_of(done)).content.decode()
