"""The queue admin: the list, pausing and resuming, permissions, the
dashboard's paused marker."""

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_bgtasks import stats
from django_bgtasks.models import JobStatus, Queue
from tests.factories import make_job
from tests.test_admin_jobs import user_with

pytestmark = pytest.mark.django_db

QUEUES = "admin:django_bgtasks_queue_changelist"
PAUSE = "admin:django_bgtasks_queue_pause"
DASHBOARD = "admin:django_bgtasks_jobdashboard_changelist"


def listed(client, **params) -> dict[str, Queue]:
    response = client.get(reverse(QUEUES), params)
    assert response.status_code == 200
    return {queue.name: queue for queue in response.context["cl"].result_list}


def act(client, action, *names):
    return client.post(
        reverse(QUEUES),
        {"action": action, "_selected_action": list(names)},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_lists_configured_queues_and_queues_with_jobs(admin_client):
    make_job(queue_name="reports")  # READY
    make_job(JobStatus.RUNNING, queue_name="mail")
    make_job(JobStatus.SUCCESSFUL, queue_name="finished-only")
    queues = listed(admin_client)
    # default, images, other: the test settings' QUEUES.
    assert set(queues) == {"default", "images", "other", "reports", "mail"}
    assert not any(queue.is_paused for queue in queues.values())
    assert str(queues["reports"].ready) == "1"
    assert str(queues["images"].ready) == "0"


def test_pause_and_resume_record_who_and_report(admin_client):
    make_job(queue_name="images")
    response = act(admin_client, "pause_queues", "images", "other")
    assert messages_of(response) == [
        "2 queues paused: their running jobs finish, no other starts."
    ]
    images = Queue.objects.get(name="images")
    assert images.is_paused and images.paused_by == "admin (admin)"
    assert Queue.objects.paused_names() == {"images", "other"}

    page = response.content.decode()
    assert 'alt="True"' in page  # the boolean icon of a paused queue

    response = act(admin_client, "pause_queues", "images", "default")
    assert messages_of(response) == [
        "1 queue paused: its running jobs finish, no other starts.",
        "1 skipped: paused already.",
    ]
    assert Queue.objects.get(name="images").paused_at == images.paused_at

    response = act(admin_client, "resume_queues", "images")
    assert messages_of(response) == ["1 queue resumed."]
    response = act(admin_client, "resume_queues", "images")
    assert messages_of(response) == ["0 queues resumed.", "1 skipped: not paused."]
    assert Queue.objects.paused_names() == {"other", "default"}
    assert Queue.objects.get(name="images").paused_by == ""
    assert set(listed(admin_client, paused="yes")) == {"other", "default"}


def test_pausing_needs_the_permission(client):
    user_with(client, "view_queue")
    assert "images" in listed(client)
    page = client.get(reverse(QUEUES)).content.decode()
    assert 'name="action"' not in page  # no actions to choose from
    assert "bgtasks-pause-form" not in page
    response = act(client, "pause_queues", "images")
    assert messages_of(response) == []  # no action to run: the list again
    assert Queue.objects.paused_names() == set()
    assert client.post(reverse(PAUSE), {"name": "images"}).status_code == 403
    assert Queue.objects.paused_names() == set()


def test_a_user_with_the_permission_pauses(client):
    user_with(client, "view_queue", "pause_queue")
    page = client.get(reverse(QUEUES)).content.decode()
    assert 'value="pause_queues"' in page and 'value="resume_queues"' in page
    assert 'value="delete_selected"' not in page
    act(client, "pause_queues", "default")
    assert Queue.objects.get(name="default").paused_by == "operator (admin)"


def test_no_add_change_or_delete_by_hand(admin_client):
    listed(admin_client)
    assert (
        admin_client.get(reverse("admin:django_bgtasks_queue_add")).status_code == 403
    )
    page = admin_client.get(reverse(QUEUES)).content.decode()
    assert 'value="delete_selected"' not in page
    delete = reverse("admin:django_bgtasks_queue_delete", args=["images"])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Queue.objects.filter(name="images").exists()


def test_the_form_pauses_a_queue_not_listed(admin_client):
    assert "bgtasks-pause-form" in admin_client.get(reverse(QUEUES)).content.decode()
    response = admin_client.post(reverse(PAUSE), {"name": "later"}, follow=True)
    assert messages_of(response) == ["Queue later paused."]
    assert Queue.objects.get(name="later").paused_by == "admin (admin)"
    response = admin_client.post(reverse(PAUSE), {"name": "later"}, follow=True)
    assert messages_of(response) == ["Queue later was paused already."]
    response = admin_client.post(reverse(PAUSE), {"name": "x" * 65}, follow=True)
    assert "at most 64 characters" in messages_of(response)[0]
    assert not Queue.objects.filter(name="x" * 65).exists()
    assert admin_client.get(reverse(PAUSE)).status_code == 405


def test_a_long_username_fits_paused_by(client):
    user = User.objects.create_user("u" * 150, is_staff=True, is_superuser=True)
    client.force_login(user)
    listed(client)
    act(client, "pause_queues", "default")
    assert Queue.objects.get(name="default").paused_by == "u" * 142 + " (admin)"


def test_ready_counts_are_capped_per_queue():
    for _ in range(3):
        make_job(queue_name="big")
    make_job(queue_name="small")
    make_job(JobStatus.RUNNING, queue_name="small")
    counts = stats.ready_counts(["big", "small", "empty"], cap=2)
    assert counts["small"] == stats.Tally(1)
    assert counts["empty"] == stats.Tally(0)
    if connection.vendor == "sqlite":  # no estimate: counted
        assert counts["big"] == stats.Tally(3)
    else:
        assert not counts["big"].exact and counts["big"].value >= 3


def test_the_page_costs_the_same_queries_for_3_or_30_queues(admin_client):
    counts = []
    for extra in (0, 27):
        Queue.objects.all().delete()
        for index in range(extra):
            make_job(queue_name=f"q{index:02d}")
        listed(admin_client)  # adds the rows; the next view is measured
        with CaptureQueriesContext(connection) as queries:
            assert len(listed(admin_client)) == 3 + extra
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_the_dashboard_marks_a_paused_queue(admin_client):
    make_job(queue_name="images")
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "bgtasks-paused-badge" not in page and 'id="bgtasks-paused"' not in page
    assert reverse(QUEUES) in page  # the link to pause or resume

    Queue.objects.pause("images", by="alice")
    Queue.objects.pause("nightly")  # no jobs, not configured
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert page.count('class="bgtasks-badge bgtasks-paused-badge"') == 2
    assert 'title="by alice"' in page
    assert "Paused queues, no job starts in them:" in page
    assert "<strong>images</strong>" in page and "<strong>nightly</strong>" in page
    assert f"{reverse(QUEUES)}?paused=yes" in page
    states = {state.name: state for state in stats.queue_states()}
    assert states["images"].paused.paused_by == "alice"
    assert states["default"].paused is None


def test_the_dashboard_links_the_queues_only_for_who_may_see_them(client):
    user_with(client, "view_job")
    Queue.objects.pause("images")
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert "bgtasks-paused-badge" in page
    assert reverse(QUEUES) not in page
    assert client.get(reverse(QUEUES)).status_code == 403
