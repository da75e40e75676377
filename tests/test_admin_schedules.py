"""The schedule admin: list, form, preview, actions, permissions."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from django_bgtasks.models import Job, Schedule

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_bgtasks_schedule_changelist"
PREVIEW = "admin:django_bgtasks_schedule_preview"


def make_schedule(name="nightly", **fields) -> Schedule:
    fields = {
        "task_path": "tests.tasks.record",
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        **fields,
    }
    schedule = Schedule(name=name, **fields)
    schedule.full_clean()
    schedule.reschedule()
    schedule.save()
    return schedule


def form_data(**overrides):
    data = {
        "name": "report",
        "task_path": "tests.tasks.record",
        "cron": "0 9 * * 1-5",
        "interval": "",
        "timezone": "Europe/Paris",
        "args": "[]",
        "kwargs": '{"label": "report"}',
        "queue_name": "default",
        "priority": "0",
        "enabled": "on",
        "start_at_0": "",
        "start_at_1": "",
        "end_at_0": "",
        "end_at_1": "",
        "misfire_policy": "run_once",
    }
    return {**data, **overrides}


@pytest.fixture
def viewer(client):
    """A staff user who may look at schedules but not change or run them."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(user)
    return client


def test_list_shows_timing_description_and_both_zones(admin_client):
    make_schedule()
    make_schedule("poll", cron="", interval=timedelta(minutes=5), timezone="UTC")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "nightly" in page and "30 2 * * *" in page
    assert "At 02:30" in page  # the description
    assert "CET" in page or "CEST" in page  # its zone
    assert "UTC" in page  # yours (TIME_ZONE)
    assert "every 0:05:00" in page


def test_add_computes_the_next_run(admin_client):
    response = admin_client.post(
        reverse("admin:django_bgtasks_schedule_add"), form_data()
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    schedule = Schedule.objects.get(name="report")
    assert schedule.kwargs == {"label": "report"}
    local = schedule.next_run_at.astimezone(schedule.zone)
    assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert schedule.next_run_at > timezone.now()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cron": "61 * * * *"}, "is not a valid cron expression"),
        ({"cron": "", "interval": ""}, "Give either a cron expression or an interval"),
        ({"timezone": "Mars/Olympus"}, "Select a valid choice"),
        ({"task_path": "os.system"}, "Select a valid choice"),
        ({"args": '[{"a": NaN}]'}, "is not a JSON number"),
        (
            {"queue_name": "nope"},
            "Queue &#x27;nope&#x27; is not one of the backend&#x27;s QUEUES",
        ),
    ],
)
def test_invalid_input_is_refused_with_a_message(admin_client, overrides, message):
    response = admin_client.post(
        reverse("admin:django_bgtasks_schedule_add"), form_data(**overrides)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Schedule.objects.exists()


def test_change_form_shows_upcoming_times_and_recent_jobs(admin_client):
    schedule = make_schedule()
    result = schedule.run_now()
    page = admin_client.get(
        reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk])
    ).content.decode()
    assert page.count("02:30:00 CE") == 5  # five planned times in its zone
    assert 'id="bgtasks-upcoming"' in page and "schedule_preview.js" in page
    assert reverse("admin:django_bgtasks_job_change", args=[result.id]) in page


def test_editing_timing_reschedules_and_keeps_the_run_count(admin_client):
    schedule = make_schedule()
    url = reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk])
    admin_client.get(url)
    # A scheduler pass lands while the operator edits the form.
    Schedule.objects.filter(pk=schedule.pk).update(total_run_count=41)
    response = admin_client.post(
        url, form_data(name="nightly", cron="45 3 * * *", kwargs="{}")
    )
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert schedule.total_run_count == 41
    local = schedule.next_run_at.astimezone(schedule.zone)
    assert (local.hour, local.minute) == (3, 45)


def test_schedules_declared_in_code_are_read_only_here(admin_client):
    schedule = make_schedule(declared_in_code=True)
    page = admin_client.get(
        reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk])
    ).content.decode()
    assert 'name="cron"' not in page and 'name="task_path"' not in page
    assert 'name="enabled"' in page


def test_preview(admin_client):
    response = admin_client.get(
        reverse(PREVIEW), {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris"}
    )
    data = response.json()
    assert data["description"] == "At 09:00, Monday through Friday"
    assert len(data["times"]) == 5
    assert all(
        here.endswith(("09:00:00 CET", "09:00:00 CEST")) for here, _ in data["times"]
    )

    data = admin_client.get(reverse(PREVIEW), {"interval": "00:10:00"}).json()
    assert len(data["times"]) == 5

    data = admin_client.get(
        reverse(PREVIEW), {"cron": "nope", "timezone": "UTC"}
    ).json()
    assert "A cron expression has 5 fields" in data["errors"][0]
    data = admin_client.get(
        reverse(PREVIEW), {"cron": "* * * * *", "timezone": "Nowhere/Land"}
    ).json()
    assert "Unknown time zone" in data["errors"][0]


def test_preview_needs_view_permission(client):
    assert client.get(reverse(PREVIEW)).status_code == 302  # to the login
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(PREVIEW)).status_code == 403


def test_enable_disable_and_run_now_actions(admin_client):
    first = make_schedule("first")
    second = make_schedule("second")
    ids = [first.pk, second.pk]

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "disable_schedules", "_selected_action": ids},
        follow=True,
    )
    assert "2 schedules disabled." in response.content.decode()
    assert not Schedule.objects.filter(enabled=True).exists()
    assert not Schedule.objects.filter(next_run_at__isnull=False).exists()

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "enable_schedules", "_selected_action": [first.pk]},
        follow=True,
    )
    assert "1 schedule enabled." in response.content.decode()
    first.refresh_from_db()
    assert first.enabled and first.next_run_at is not None

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "run_schedules_now", "_selected_action": ids},
        follow=True,
    )
    assert "2 jobs enqueued." in response.content.decode()
    assert Job.objects.filter(schedule__in=ids, scheduled_for__isnull=True).count() == 2
    first.refresh_from_db()
    assert first.total_run_count == 0  # a run now does not move the schedule


def test_a_viewer_can_look_but_not_act(viewer):
    schedule = make_schedule()
    page = viewer.get(reverse(CHANGELIST)).content.decode()
    assert "nightly" in page
    assert "disable_schedules" not in page and "run_schedules_now" not in page
    for action in ("disable_schedules", "run_schedules_now"):
        viewer.post(
            reverse(CHANGELIST), {"action": action, "_selected_action": [schedule.pk]}
        )
    schedule.refresh_from_db()
    assert schedule.enabled
    assert not Job.objects.exists()
    response = viewer.post(
        reverse("admin:django_bgtasks_schedule_change", args=[schedule.pk]),
        form_data(name="nightly", cron="* * * * *"),
    )
    assert response.status_code == 403
