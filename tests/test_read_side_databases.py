"""The read and steer side with jobs in two databases ("default" and "other",
the ``elsewhere`` backend's): the figures, ``manage.py bgtasks``, ``queues``
and ``prune_jobs``, the metrics' gauges and the testing helpers, each on the
database asked for, and never on the other."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_bgtasks import metrics, stats
from django_bgtasks.models import Job, JobStatus, Queue
from django_bgtasks.testing import assert_enqueued, enqueued, run_jobs
from tests import tasks
from tests.conftest import BOTH_DATABASES
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db(databases=BOTH_DATABASES)

# An id both databases give a job of their own.
SHARED_ID = 424242


def run(command, *args) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def run_json(*args):
    return json.loads(run("bgtasks", *args, "--json"))


def status_in(using: str, pk: int) -> str:
    return Job.objects.using(using).get(pk=pk).status


def test_the_figures_are_of_the_database_asked_for(elsewhere):
    make_job(queue_name="images")
    for _ in range(2):
        make_job(using="other", queue_name="heavy")
    make_job(JobStatus.FAILED, using="other")
    make_worker("there", using="other")
    Queue.objects.using("other").pause("default")

    assert stats.status_counts()["READY"].value == 1
    assert stats.status_counts("other")["READY"].value == 2
    states = {state.name: state for state in stats.queue_states(using="other")}
    assert set(states) == {"default", "heavy"}  # elsewhere's QUEUES
    assert states["heavy"].ready.value == 2 and states["default"].paused
    assert "images" in {state.name for state in stats.queue_states()}
    assert [s.worker.pk for s in stats.worker_states(using="other")] == ["there"]
    assert stats.worker_states() == []
    assert stats.ready_counts(["heavy"], using="other")["heavy"].value == 2
    failing = stats.failing_tasks(timezone.now(), using="other")
    assert [(f.task_path, f.runs) for f in failing] == [("tests.tasks.add", 1)]


def test_bgtasks_status_and_jobs_read_the_database_asked_for(elsewhere):
    here = make_job(queue_name="images")
    there = make_job(using="other", queue_name="heavy")

    status = run_json("status", "--database", "other")
    assert status["database"] == "other"
    assert {q["name"] for q in status["queues"]} == {"default", "heavy"}
    assert status["jobs"]["READY"] == 1
    assert run_json("status")["database"] == "default"
    text = run("bgtasks", "status")
    assert text.startswith("Database: default")
    assert "Jobs are kept in other too (--database)." in text

    listed = run_json("jobs", "--database", "other")
    assert [(j["id"], j["database"]) for j in listed] == [(there.pk, "other")]
    assert [j["id"] for j in run_json("jobs")] == [here.pk]
    shown = run_json("show", str(there.pk), "--database", "other")
    assert (shown["queue"], shown["database"]) == ("heavy", "other")


def test_bgtasks_verbs_change_the_database_asked_for_only(elsewhere):
    make_job(JobStatus.FAILED, id=SHARED_ID)
    make_job(JobStatus.FAILED, id=SHARED_ID, using="other")
    done = run_json("retry", "--id", str(SHARED_ID), "--database", "other")
    assert done == {"database": "other", "matching": 1, "retried": 1}
    assert status_in("other", SHARED_ID) == JobStatus.READY
    assert status_in("default", SHARED_ID) == JobStatus.FAILED

    done = run_json("cancel", "--all", "--database", "other")
    assert done["database"] == "other" and done["cancelled"] == 1
    assert status_in("other", SHARED_ID) == JobStatus.CANCELLED
    assert status_in("default", SHARED_ID) == JobStatus.FAILED


def test_an_unknown_database_is_an_error_naming_those_that_hold_jobs(elsewhere):
    for command, args in [
        ("bgtasks", ["status", "--database", "nope"]),
        ("queues", ["--database", "nope", "list"]),
        ("prune_jobs", ["--database", "nope"]),
    ]:
        with pytest.raises(CommandError, match="default, other"):
            run(command, *args)


def test_queues_pause_and_resume_in_the_database_asked_for(elsewhere):
    assert "Paused 1" in run("queues", "--database", "other", "pause", "heavy")
    assert Queue.objects.using("other").get(name="heavy").is_paused
    assert not Queue.objects.using("default").filter(name="heavy").exists()
    assert "heavy: paused" in run("queues", "--database", "other", "list")
    assert run("queues", "list").strip() == "No queue is paused."
    assert "Resumed 1" in run("queues", "--database", "other", "resume", "heavy")
    assert not Queue.objects.using("other").get(name="heavy").is_paused


def test_prune_jobs_prunes_every_job_database_or_the_one_asked_for(elsewhere, settings):
    settings.BGTASKS = {**settings.BGTASKS, "PRUNE_AFTER": {"SUCCESSFUL": 1}}
    old = timezone.now() - timedelta(days=3)
    for using in BOTH_DATABASES:
        make_job(JobStatus.SUCCESSFUL, using=using, finished_at=old)
        make_job(JobStatus.SUCCESSFUL, using=using)

    out = run("prune_jobs", "--database", "other")
    assert "SUCCESSFUL: 1 job(s) deleted" in out and "default" not in out
    assert Job.objects.using("other").count() == 1
    assert Job.objects.using("default").count() == 2

    make_job(JobStatus.SUCCESSFUL, using="other", finished_at=old)
    out = run("prune_jobs")
    assert "default: SUCCESSFUL: 1 job(s) deleted" in out
    assert "other: SUCCESSFUL: 1 job(s) deleted" in out
    assert Job.objects.using("default").count() == Job.objects.using("other").count()


def test_the_metrics_gauges_are_labelled_by_database(elsewhere):
    make_job(queue_name="images")
    for _ in range(3):
        make_job(using="other", queue_name="heavy")
    make_worker("there", using="other", concurrency=4)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.DatabaseCollector().collect()
        for s in family.samples
    }

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("bgtasks_queue_ready", database="other", queue="heavy") == 3
    assert value("bgtasks_queue_ready", database="default", queue="images") == 1
    assert value("bgtasks_queue_ready", database="default", queue="heavy") is None
    assert value("bgtasks_worker_slots", database="other") == 4
    assert value("bgtasks_worker_slots", database="default") == 0
    assert value("bgtasks_database_up", database="other") == 1
    assert value("bgtasks_database_up", database="default") == 1


def test_the_testing_helpers_look_where_the_tasks_backend_keeps_its_jobs(
    elsewhere,
):
    tasks.add.using(backend="elsewhere").enqueue(1, 2)
    tasks.add.enqueue(3, 4)
    # A Task of the elsewhere backend: its database.
    [there] = assert_enqueued(tasks.add.using(backend="elsewhere"))
    assert (there.args, there._state.db) == ([1, 2], "other")
    # A path, or nothing: the default backend's.
    assert [job.args for job in enqueued("tests.tasks.add")] == [[3, 4]]
    assert [result.args for result in run_jobs()] == [[3, 4]]
    assert [result.args for result in run_jobs(using="other")] == [[1, 2]]
