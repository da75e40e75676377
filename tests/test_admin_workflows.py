"""The admin and workflows: a step's page lists its workflow, the list
filters by workflow, WAITING is listed, counted and cancelled like the
other statuses."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_bgtasks import chain, chord, group, stats
from django_bgtasks.models import Job, JobDependency, JobStatus
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.factories import make_job

pytestmark = pytest.mark.django_db

JOBS = "admin:django_bgtasks_job_changelist"
DASHBOARD = "admin:django_bgtasks_jobdashboard_changelist"

# A row of the Workflow section: the member's link, its task, status badge,
# and the links to the jobs it waits for.
ROW = re.compile(
    r'<tr class="(?P<marked>[^"]*)"><td><a href="(?P<url>[^"]+)"(?P<aria>[^>]*)>'
    r"#(?P<pk>\d+)</a>(?P<note>.*?)</td><td>(?P<task>.*?)</td>"
    r"<td>(?P<status>.*?)</td><td>(?P<waits>.*?)</td></tr>"
)


def change_url(pk) -> str:
    return reverse("admin:django_bgtasks_job_change", args=[pk])


def members_of(workflow) -> list[int]:
    return [int(member.id) for member in workflow.members]


def page_of(client, pk) -> str:
    response = client.get(change_url(pk))
    assert response.status_code == 200
    return response.content.decode()


def section(page: str) -> list[dict]:
    """The Workflow section's rows, as the page shows them."""
    rows = []
    for row in ROW.finditer(page):
        rows.append(
            {
                "pk": int(row["pk"]),
                "url": row["url"],
                "current": row["marked"] == "bgtasks-current"
                and 'aria-current="page"' in row["aria"],
                "task": re.search(r">([^<]*)</span>", row["task"])[1],
                "status": re.search(r">([^<]*)</span>", row["status"])[1],
                "waits_for": [int(pk) for pk in re.findall(r">#(\d+)<", row["waits"])],
                "waits_for_urls": re.findall(r'href="([^"]+)"', row["waits"]),
            }
        )
    return rows


def listed(client, **params) -> list[int]:
    response = client.get(reverse(JOBS), params)
    assert response.status_code == 200
    return [job.pk for job in response.context["cl"].result_list]


def test_a_step_lists_its_workflow_linked_with_statuses(admin_client):
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.step(10), tasks.total.step()
    ).enqueue()
    first, second, third = members_of(workflow)
    page = page_of(admin_client, second)

    assert 'class="fieldset-heading">Workflow</h2>' in page
    assert f"<code>{workflow.id}</code>" in page
    assert section(page) == [
        {
            "pk": first,
            "url": change_url(first),
            "current": False,
            "task": "add",
            "status": "Ready",
            "waits_for": [],
            "waits_for_urls": [],
        },
        {
            "pk": second,
            "url": change_url(second),
            "current": True,
            "task": "add",
            "status": "Waiting",
            "waits_for": [first],
            "waits_for_urls": [change_url(first)],
        },
        {
            "pk": third,
            "url": change_url(third),
            "current": False,
            "task": "total",
            "status": "Waiting",
            "waits_for": [second],
            "waits_for_urls": [change_url(second)],
        },
    ]
    assert "(this job)" in page
    # The status badge is the list's.
    assert 'class="bgtasks-badge" style="background:#7e6aa8">Waiting<' in page


def test_the_section_follows_the_workflow_as_it_runs(admin_client):
    workflow = chain(
        group(tasks.add.step(1, 1), tasks.fails_at_once.step()),
        tasks.total.step(),
        tasks.add.step(5),
    ).enqueue()
    one, two, callback, last = members_of(workflow)
    run_jobs()
    rows = section(page_of(admin_client, one))
    assert [(row["pk"], row["status"]) for row in rows] == [
        (one, "Successful"),
        (two, "Failed"),
        (callback, "Cancelled"),
        (last, "Cancelled"),
    ]
    assert [row["waits_for"] for row in rows] == [[], [], [one, two], [callback]]
    assert [row["current"] for row in rows] == [True, False, False, False]


def test_a_waiting_step_says_what_it_still_waits_for(admin_client):
    workflow = chord(
        [tasks.add.step(1, 1), tasks.add.step(2, 2), tasks.add.step(3, 3)],
        tasks.total.step(),
    ).enqueue()
    *header, callback = members_of(workflow)
    page = page_of(admin_client, callback)
    assert "Waiting for:" in page and "3 jobs: " in page

    run_jobs(limit=1)  # the first member ends
    page = page_of(admin_client, callback)
    waiting = re.search(r"<div class=\"readonly\">(2 jobs: .*?)</div>", page)[1]
    assert re.findall(r">#(\d+)<", waiting) == [str(pk) for pk in header[1:]]
    # A READY member has no such line.
    assert "Waiting for:" not in page_of(admin_client, header[1])


def test_a_job_outside_a_workflow_has_no_section(admin_client):
    chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    page = page_of(admin_client, make_job().pk)
    assert 'class="fieldset-heading">Workflow<' not in page
    assert "bgtasks-workflow" not in page and "Waiting for:" not in page


def test_the_list_filters_by_workflow(admin_client):
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    other = group(tasks.add.step(1, 1), tasks.add.step(2, 2)).enqueue()
    make_job()
    mine = members_of(workflow)
    assert listed(admin_client, workflow_id=workflow.id) == mine[::-1]
    assert listed(admin_client, workflow_id=other.id) == members_of(other)[::-1]
    # With the other filters, and shown (with its clear link) while in use.
    assert listed(admin_client, workflow_id=workflow.id, status="WAITING") == mine[1:]
    page = admin_client.get(reverse(JOBS), {"workflow_id": workflow.id})
    assert "By workflow" in page.content.decode()
    assert "By workflow" not in admin_client.get(reverse(JOBS)).content.decode()

    # The step's page links to that list.
    link = f'{reverse(JOBS)}?workflow_id={workflow.id}"'
    assert link in page_of(admin_client, mine[0])
    # Not a workflow id: the admin's error page, not a server error.
    response = admin_client.get(reverse(JOBS), {"workflow_id": "not-a-uuid"})
    assert response.status_code == 302 and response.url.endswith("?e=1")


def test_the_section_costs_the_same_queries_whatever_the_workflow_size(
    admin_client,
):
    small = chain(*[tasks.add.step(n, n) for n in range(3)]).enqueue()
    large = chord([tasks.add.step(n, n) for n in range(29)], tasks.total.step())
    large = large.enqueue()
    plain = make_job()

    def queries(pk) -> int:
        page_of(admin_client, pk)  # the session and user, read once
        with CaptureQueriesContext(connection) as captured:
            page_of(admin_client, pk)
        return len(captured)

    first_small, first_large = members_of(small)[0], members_of(large)[0]
    assert queries(first_small) == queries(first_large) <= queries(plain.pk) + 2
    # The callback waiting for 29 jobs: the same, with its waiting line.
    callback = members_of(large)[-1]
    assert queries(callback) == queries(members_of(small)[-1])
    assert len(section(page_of(admin_client, callback))) == 30


def test_a_large_workflow_lists_its_first_members_and_links_the_rest(
    admin_client, monkeypatch
):
    from django_bgtasks.admin import workflows

    monkeypatch.setattr(workflows, "WORKFLOW_ROWS", 4)
    monkeypatch.setattr(workflows, "WAITS_FOR_SHOWN", 3)
    workflow = chord([tasks.add.step(n, n) for n in range(5)], tasks.total.step())
    workflow = workflow.enqueue()
    *header, callback = members_of(workflow)
    page = page_of(admin_client, callback)
    assert [row["pk"] for row in section(page)] == header[:4]
    assert "Only its first 4 jobs are listed here" in page
    # The callback's own line lists the jobs it waits for, three of them.
    waiting = re.search(r"<div class=\"readonly\">(5 jobs: .*?)</div>", page)[1]
    assert re.findall(r">#(\d+)<", waiting) == [str(pk) for pk in header[:3]]
    assert "and 2 more" in waiting


def test_waiting_is_filtered_and_counted_like_the_other_statuses(admin_client):
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.using(queue_name="other").step(10)
    ).enqueue()
    second = members_of(workflow)[1]
    make_job(JobStatus.SUCCESSFUL)

    assert listed(admin_client, status="WAITING") == [second]
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert "?status=WAITING" in page

    counts = stats.status_counts()
    assert list(counts) == list(stats.STATUSES)
    assert set(counts) == set(JobStatus)
    assert counts[JobStatus.WAITING] == stats.Tally(1)
    assert counts[JobStatus.READY] == stats.Tally(1)
    # "other" holds only a waiting step: listed, neither ready nor due.
    queues = {queue.name: queue for queue in stats.queue_states()}
    other = queues["other"]
    assert (other.ready.value, other.due.value, other.waiting.value) == (0, 0, 1)
    assert other.lag is None and other.running == 0
    assert queues["default"].waiting.value == 0

    dashboard = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "waiting for other jobs" in dashboard
    assert ">Waiting</span>" in dashboard
    assert f"{reverse(JOBS)}?status=WAITING&amp;queue_name=other" in dashboard


def test_cancel_takes_waiting_steps_and_the_steps_after_them(admin_client):
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.step(3), tasks.add.step(4)
    ).enqueue()
    first, second, third = members_of(workflow)
    done = make_job(JobStatus.SUCCESSFUL)
    page = admin_client.get(reverse(JOBS)).content.decode()
    assert "Cancel selected jobs (running ones are asked to stop)" in page

    response = admin_client.post(
        reverse(JOBS),
        {"action": "cancel_jobs", "_selected_action": [second, done.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "1 job cancelled." in page
    assert "1 skipped: only READY, WAITING and RUNNING jobs can be cancelled" in page
    assert "The workflow steps waiting for them were cancelled too." in page
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert [statuses[pk] for pk in (first, second, third)] == [
        "READY",
        "CANCELLED",
        "CANCELLED",
    ]


def test_delete_spares_the_jobs_steps_wait_for(admin_client):
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    first, second = members_of(workflow)
    response = admin_client.post(
        reverse(JOBS),
        {"action": "delete_jobs", "_selected_action": [first, second], "post": "yes"},
        follow=True,
    )
    assert "1 job that workflow steps wait for is left alone" in (
        response.content.decode()
    )
    assert list(Job.objects.values_list("pk", flat=True)) == [first]
    assert not JobDependency.objects.exists()  # the deleted step's edge went too
    delete = reverse("admin:django_bgtasks_job_delete", args=[first])
    assert admin_client.get(delete).status_code == 403
    # Once it has ended, it may go.
    run_jobs()
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not Job.objects.exists()


def test_deleting_a_step_from_its_page_takes_its_edges(admin_client):
    workflow = chord([tasks.add.step(1, 1), tasks.add.step(2, 2)], tasks.total.step())
    *header, callback = members_of(workflow.enqueue())
    delete = reverse("admin:django_bgtasks_job_delete", args=[callback])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert sorted(Job.objects.values_list("pk", flat=True)) == header
    assert not JobDependency.objects.exists()
