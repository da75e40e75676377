"""The dashboard and the figures behind it; progress reports."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_bgtasks import report_progress, stats
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import run_in_process
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:django_bgtasks_jobdashboard_changelist"


def test_tally_is_exact_up_to_the_cap_then_estimated():
    for _ in range(7):
        make_job(JobStatus.SUCCESSFUL)
    assert stats.tally(Job.objects.all(), cap=10) == stats.Tally(7)
    large = stats.tally(Job.objects.all(), cap=5)
    if connection.vendor == "sqlite":  # no statistics: counted
        assert large == stats.Tally(7)
    else:
        assert not large.exact and large.value >= 6
        assert str(large).startswith("≈ ")


def test_throughput_counts_per_minute():
    now = timezone.now().replace(second=30, microsecond=0)
    for minutes_ago, status in [
        (0, "SUCCESSFUL"),
        (0, "FAILED"),
        (2, "SUCCESSFUL"),
        (2, "SUCCESSFUL"),
        (90, "SUCCESSFUL"),
    ]:
        make_job(status, finished_at=now - timedelta(minutes=minutes_ago))
    minutes = stats.throughput(now)
    assert len(minutes) == 60
    assert (minutes[-1].succeeded, minutes[-1].failed) == (1, 1)
    assert minutes[-3].succeeded == 2
    assert sum(m.succeeded for m in minutes) == 3  # 90 minutes ago is outside


def test_queue_lag_and_slowest_and_failing_tasks():
    now = timezone.now()
    make_job(queue_name="images", run_after=now - timedelta(minutes=5))
    make_job(queue_name="images", run_after=now + timedelta(hours=1))
    started = now - timedelta(seconds=10)
    make_job(
        JobStatus.SUCCESSFUL,
        task_path="tests.tasks.echo",
        last_attempted_at=started,
        finished_at=started + timedelta(seconds=4),
    )
    make_job(
        JobStatus.SUCCESSFUL,
        last_attempted_at=started,
        finished_at=started + timedelta(seconds=1),
    )
    make_job(JobStatus.FAILED, task_path="tests.tasks.echo", finished_at=now)

    images = {q.name: q for q in stats.queue_states(now)}["images"]
    assert (images.ready.value, images.due.value, images.running) == (2, 1, 0)
    assert timedelta(minutes=5) <= images.lag < timedelta(minutes=6)
    slowest = stats.slowest_tasks(now)
    assert [f.task_path for f in slowest] == ["tests.tasks.echo", "tests.tasks.add"]
    assert slowest[0].value == timedelta(seconds=4)
    assert [(f.task_path, f.value) for f in stats.failing_tasks(now)] == [
        ("tests.tasks.echo", 1)
    ]


def test_queue_figures_cost_the_same_queries_for_3_or_30_queues():
    now = timezone.now()
    counts = []
    for extra in (0, 27):
        for index in range(extra):
            make_job(queue_name=f"q{index:02d}", run_after=now - timedelta(minutes=1))
            make_job(queue_name=f"q{index:02d}", run_after=now + timedelta(hours=1))
        with CaptureQueriesContext(connection) as queries:
            states = stats.queue_states(now)
        assert len([s for s in states if s.name.startswith("q")]) == extra
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_queue_figures_of_more_queues_than_one_query_counts():
    # More than SQLite's 500 parts of a compound SELECT, and than two
    # queries' share of queues (stats.QUEUES_PER_QUERY).
    now = timezone.now()
    count = 600
    Job.objects.bulk_create(
        Job(
            task_path="tests.tasks.add",
            queue_name=f"q{index:04d}",
            args=[],
            run_after=now - timedelta(minutes=index % 2),
            enqueued_at=now,
        )
        for index in range(count)
    )
    make_job(queue_name="q0001", run_after=now + timedelta(hours=1))
    states = {s.name: s for s in stats.queue_states(now) if s.name.startswith("q")}
    assert len(states) == count
    assert (states["q0001"].ready.value, states["q0001"].due.value) == (2, 1)
    assert timedelta(minutes=1) <= states["q0001"].lag < timedelta(minutes=2)
    assert (states["q0500"].ready.value, states["q0500"].due.value) == (1, 1)
    assert states["q0500"].lag < timedelta(minutes=1)
    ready = stats.ready_counts(states)  # the queues page's figures
    assert (ready["q0001"], ready["q0599"]) == (stats.Tally(2), stats.Tally(1))


def test_dashboard_page(admin_client):
    now = timezone.now()
    make_worker("w-alive", hostname="web1", pid=10, concurrency=4)
    make_worker(
        "w-dead", hostname="web2", pid=11, concurrency=4, silent_for=timedelta(hours=1)
    )
    running = make_job(
        JobStatus.RUNNING,
        worker_id="w-alive",
        attempts=1,
        task_path="tests.tasks.sleep_for",
    )
    make_job(JobStatus.FAILED, args=["<script>x</script>"])
    make_job(queue_name="other", run_after=now - timedelta(minutes=2))

    response = admin_client.get(reverse(DASHBOARD))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Jobs by status" in page and "Queues" in page
    assert '<svg class="bgtasks-chart"' in page
    assert "w-alive" in page and "w-dead" in page
    assert page.count("bgtasks-dead") == 1
    assert f"#{running.pk} tests.tasks.sleep_for" in page
    assert "<script>x</script>" not in page
    # The dashboard is listed on the admin index.
    assert (
        reverse(DASHBOARD) in admin_client.get(reverse("admin:index")).content.decode()
    )


def test_dashboard_needs_the_view_job_permission(client):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(DASHBOARD)).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert client.get(reverse(DASHBOARD)).status_code == 200


LIVE = "admin:django_bgtasks_jobdashboard_live"


def test_the_live_endpoint_gives_the_figures_of_now_and_no_page_around_them(
    admin_client,
):
    page = admin_client.get(reverse(DASHBOARD), {"refresh": "2"}).content.decode()
    assert f'data-live-url="{reverse(LIVE)}"' in page
    assert 'data-refresh="2"' in page and "dashboard_live.js" in page
    make_job(queue_name="other")
    make_job(queue_name="other")
    response = admin_client.get(reverse(LIVE))
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    assert 'id="bgtasks-statuses"' in body and "<html" not in body
    assert '?status=READY">2</a>' in body
    # A refresh interval out of range is brought within it.
    for given, used in [("0", 1), ("9999", 300), ("x", 5)]:
        page = admin_client.get(reverse(DASHBOARD), {"refresh": given})
        assert f'data-refresh="{used}"' in page.content.decode()


def test_the_live_endpoint_needs_what_the_dashboard_needs(client):
    assert client.get(reverse(LIVE)).status_code == 302  # to the login page
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(LIVE)).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert client.get(reverse(LIVE)).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_running_task_reports_progress():
    result = tasks.reports_progress.enqueue(4)
    run_in_process()
    result.refresh()
    assert result.return_value is True
    progress = Job.objects.get(pk=result.id).progress
    assert (progress["current"], progress["total"], progress["message"]) == (
        4,
        4,
        "step 4",
    )


def test_report_progress_outside_a_worker_does_nothing():
    assert report_progress(1, 2, "not in a worker") is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1,), "current must be"),
        ((float("nan"),), "current must be"),
        ((1, 0), "total must be"),
        ((1, 2, 3), "message must be text"),
    ],
)
def test_report_progress_refuses_bad_values(args, message):
    with pytest.raises(ValueError, match=message):
        report_progress(*args)
