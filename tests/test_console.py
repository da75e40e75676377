"""``manage.py bgtasks``: the operator's command line. Each subcommand is run
as a shell runs it (``call_command``), and judged by the rows it leaves and
what it prints (``--json`` parsed)."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_bgtasks import console
from django_bgtasks.models import Job, JobStatus, Queue
from tests import tasks
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command("bgtasks", *args, stdout=out)
    return out.getvalue()


def run_json(*args):
    return json.loads(run(*args, "--json"))


def status_of(job) -> str:
    return Job.objects.get(pk=job.pk).status


def test_status_shows_queues_workers_and_jobs_by_status():
    make_job(queue_name="images")
    make_job(queue_name="images", run_after=timezone.now() + timedelta(hours=1))
    worker = make_worker("w1", hostname="box", pid=42, concurrency=4)
    make_job(JobStatus.RUNNING, queue_name="images", worker=worker)
    make_job(JobStatus.FAILED)
    Queue.objects.pause("images", by="ops")
    make_worker("gone", silent_for=timedelta(hours=1))

    data = run_json("status")

    images = next(q for q in data["queues"] if q["name"] == "images")
    assert (images["ready"], images["due"], images["running"]) == (2, 1, 1)
    assert images["paused"] is True and images["paused_by"] == "ops"
    assert images["lag_seconds"] >= 0
    workers = {w["id"]: w for w in data["workers"]}
    assert (workers["w1"]["host"], workers["w1"]["pid"]) == ("box", 42)
    assert (workers["w1"]["busy"], workers["w1"]["slots"]) == (1, 4)
    assert workers["w1"]["alive"] is True and workers["gone"]["alive"] is False
    assert data["jobs"]["READY"] == 2 and data["jobs"]["FAILED"] == 1
    text = run("status")
    assert "PAUSED by ops" in text and "NOT ALIVE" in text


def test_jobs_lists_what_the_filters_pick_newest_first():
    old = make_job(JobStatus.FAILED, enqueued_at=timezone.now() - timedelta(days=2))
    failed = make_job(JobStatus.FAILED, task_path="tests.tasks.echo")
    make_job(JobStatus.FAILED, task_path="other.tasks.echo")
    make_job(JobStatus.READY)

    listed = run_json("jobs", "--status", "failed", "--task", "tests.tasks.*")
    assert [j["id"] for j in listed] == [failed.pk, old.pk]
    recent = run_json("jobs", "--status", "FAILED", "--since", "1d")
    assert {j["task"] for j in recent} == {"tests.tasks.echo", "other.tasks.echo"}
    assert len(run_json("jobs", "--limit", "1")) == 1
    assert [j["id"] for j in run_json("jobs", "--until", "1d")] == [old.pk]
    assert "No job matches." in run("jobs", "--queue", "nowhere")


@pytest.mark.parametrize(
    "args, message",
    [
        (["jobs", "--status", "DONE"], "No such status: DONE"),
        (["jobs", "--since", "yesterday"], "is not a time"),
        (["jobs", "--task", "a*b"], "prefix of paths ending in '*'"),
        (["show", "999999"], "No job 999999"),
        (["retry"], "give a filter"),
    ],
)
def test_bad_input_is_refused_with_a_reason(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_show_gives_the_whole_job_and_why_it_waits():
    job = make_job(
        args=[1, 2],
        kwargs={"x": 1},
        run_after=timezone.now() + timedelta(hours=1),
    )
    data = run_json("show", str(job.pk))
    assert (data["id"], data["args"], data["kwargs"]) == (job.pk, [1, 2], {"x": 1})
    assert "not_due" in [reason["code"] for reason in data["waits_because"]]
    assert f"id: {job.pk}" in run("show", str(job.pk))


def test_retry_cancel_and_run_now_change_only_the_jobs_they_apply_to():
    failed = make_job(JobStatus.FAILED, max_attempts=1, attempts=1)
    cancelled = make_job(JobStatus.CANCELLED)
    done = make_job(JobStatus.SUCCESSFUL)
    assert run_json("retry", "--all") == {
        "database": "default",
        "matching": 3,
        "retried": 2,
    }
    assert [status_of(j) for j in (failed, cancelled, done)] == [
        "READY",
        "READY",
        "SUCCESSFUL",
    ]
    assert Job.objects.get(pk=failed.pk).max_attempts == 2

    later = make_job(run_after=timezone.now() + timedelta(hours=1))
    made_due = run_json("run-now", "--id", str(later.pk))
    assert made_due == {"database": "default", "matching": 1, "made_due": 1}
    assert Job.objects.get(pk=later.pk).run_after <= timezone.now()

    running = make_job(JobStatus.RUNNING, worker=make_worker("w1"))
    done = run_json("cancel", "--status", "READY", "--status", "RUNNING")
    assert done == {
        "database": "default",
        "matching": 4,
        "cancelled": 3,
        "asked_to_stop": 1,
    }
    assert status_of(later) == "CANCELLED"
    running = Job.objects.get(pk=running.pk)
    assert running.status == "RUNNING"  # until its worker stops it
    assert running.cancel_requested_by.endswith("(manage.py bgtasks)")


def test_a_dry_run_counts_and_changes_nothing():
    failed = [make_job(JobStatus.FAILED) for _ in range(3)]
    make_job(JobStatus.SUCCESSFUL)
    data = run_json("retry", "--all", "--dry-run")
    assert data == {
        "database": "default",
        "matching": 4,
        "would_change": 3,
        "dry_run": True,
    }
    assert {status_of(job) for job in failed} == {"FAILED"}
    assert run_json("delete", "--all", "--dry-run")["would_change"] == 4
    assert Job.objects.count() == 4


def test_delete_spares_running_jobs_and_those_workflow_steps_wait_for():
    running = make_job(JobStatus.RUNNING, worker=make_worker("w1"))
    awaited = make_job(JobStatus.READY, has_dependents=True)
    gone = [make_job(JobStatus.FAILED), make_job(JobStatus.READY)]
    assert run_json("delete", "--all") == {
        "database": "default",
        "matching": 4,
        "deleted": 2,
    }
    assert set(Job.objects.values_list("pk", flat=True)) == {running.pk, awaited.pk}
    assert not Job.objects.filter(pk__in=[j.pk for j in gone]).exists()


def test_delete_takes_the_edges_of_a_workflows_steps_with_them():
    from django_bgtasks import chain
    from django_bgtasks.models import JobDependency

    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    ids = [int(member.id) for member in workflow.members]
    assert JobDependency.objects.filter(job_id__in=ids).exists()
    # Not while the second step waits for the first: cancel them first.
    assert run_json("delete", "--id", str(ids[0]))["deleted"] == 0
    run("cancel", "--id", str(ids[0]))
    assert [status_of(Job(pk=pk)) for pk in ids] == ["CANCELLED", "CANCELLED"]
    assert run_json("delete", "--id", str(ids[0]), "--id", str(ids[1]))["deleted"] == 2
    assert not Job.objects.filter(pk__in=ids).exists()
    assert not JobDependency.objects.filter(job_id__in=ids).exists()


def test_purge_cancels_a_queues_jobs_not_started_and_nothing_else():
    waiting = [make_job(queue_name="images") for _ in range(3)]
    running = make_job(JobStatus.RUNNING, queue_name="images", worker=make_worker())
    other = make_job(queue_name="default")
    assert run_json("purge", "images", "--dry-run")["would_cancel"] == 3
    assert {status_of(job) for job in waiting} == {"READY"}
    purged = run_json("purge", "images")
    assert purged == {"database": "default", "queue": "images", "cancelled": 3}
    assert {status_of(job) for job in waiting} == {"CANCELLED"}
    assert (status_of(running), status_of(other)) == ("RUNNING", "READY")


def test_enqueue_runs_only_a_registered_task_with_json_arguments():
    data = run_json(
        "enqueue",
        "tests.tasks.add",
        "--args",
        "[1, 2]",
        "--queue",
        "other",
        "--priority",
        "7",
        "--run-after",
        "1h",
    )
    job = Job.objects.get(pk=data["id"])
    assert (job.task_path, job.args, job.queue_name, job.priority) == (
        "tests.tasks.add",
        [1, 2],
        "other",
        7,
    )
    assert job.run_after > timezone.now() + timedelta(minutes=59)
    keyword = run_json("enqueue", "tests.tasks.echo", "--kwargs", '{"a": [1]}')
    assert Job.objects.get(pk=keyword["id"]).kwargs == {"a": [1]}
    count = Job.objects.count()
    # A path no task registered is refused, even one Python could import.
    for path in ["os.system", "tests.tasks.nothing_here"]:
        with pytest.raises(CommandError, match="not a registered task"):
            run("enqueue", path, "--args", '["echo hi"]')
    with pytest.raises(CommandError, match="JSON"):
        run("enqueue", "tests.tasks.add", "--args", "[1,")
    with pytest.raises(CommandError, match="JSON list"):
        run("enqueue", "tests.tasks.add", "--args", '{"a": 1}')
    with pytest.raises(CommandError):
        run("enqueue", "tests.tasks.add", "--queue", "no-such-queue")
    assert Job.objects.count() == count


def test_top_reports_what_each_queue_ended_per_second():
    now = timezone.now()
    for _ in range(4):
        make_job(JobStatus.SUCCESSFUL, queue_name="images", finished_at=now)
    make_job(JobStatus.FAILED, queue_name="images", finished_at=now)
    make_job(JobStatus.SUCCESSFUL, finished_at=now - timedelta(hours=1))
    make_job(queue_name="images")
    figures = {
        f.queue: f for f in console.throughput_since(now - timedelta(seconds=10), now)
    }
    images = figures["images"]
    assert images.ended == {"SUCCESSFUL": 4, "FAILED": 1}
    assert images.per_second == pytest.approx(0.5)
    assert (images.ready, images.running) == (1, 0)
    assert figures["default"].ended == {}
    out = run("top", "--interval", "0.01", "--iterations", "2", "--json")
    ticks = [json.loads(part) for part in out.strip().split("\n\n")]
    assert len(ticks) == 2
    assert {row["queue"] for row in ticks[0]} >= {"images", "default"}


def test_enqueue_of_a_unique_task_says_when_the_job_was_there_already():
    first = run_json("enqueue", "tests.tasks.unique_while_active", "--args", "[1]")
    again = run_json("enqueue", "tests.tasks.unique_while_active", "--args", "[1]")
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert again["id"] == first["id"] and Job.objects.count() == 1
    text = run("enqueue", "tests.tasks.unique_while_active", "--args", "[1]")
    assert f"Not enqueued: job {first['id']}" in text
