"""Unique jobs: at most one job per key in the span the option covers,
enforced by a unique index on every database, race-free across processes."""

import subprocess
import sys
from datetime import timedelta

import pytest

from django_bgtasks import task
from django_bgtasks.compat import InvalidTask
from django_bgtasks.db import database_now
from django_bgtasks.exceptions import DuplicateJob
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.unique import Unique
from tests import tasks
from tests.conftest import ROOT, database_url, run_in_process

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_duplicate_gets_the_waiting_jobs_result():
    first = tasks.unique_while_active.enqueue(1)
    again = tasks.unique_while_active.enqueue(1)
    other = tasks.unique_while_active.enqueue(2)
    assert again == first  # the existing job's result, as get_result gives it
    assert other.id != first.id
    assert Job.objects.count() == 2


def test_a_duplicate_can_be_an_error_naming_the_job():
    first = tasks.unique_while_active.enqueue(1)
    strict = tasks.unique_while_active.using(unique=Unique(on_duplicate="error"))
    with pytest.raises(DuplicateJob) as raised:
        strict.enqueue(1)
    assert raised.value.result.id == first.id
    assert Job.objects.count() == 1


def test_a_running_job_holds_its_key_until_it_finishes():
    first = tasks.unique_enqueues_itself.enqueue("x")
    run_in_process()
    job = Job.objects.get(pk=first.id)
    # While it ran, enqueueing its duplicate gave back the job itself.
    assert (job.status, job.return_value) == (JobStatus.SUCCESSFUL, first.id)
    assert Job.objects.count() == 1
    # Now a new one may be enqueued: the finished job gives up its key.
    assert tasks.unique_enqueues_itself.enqueue("x").id != first.id
    assert Job.objects.get(pk=first.id).unique_key is None


def test_a_claimed_job_no_longer_holds_a_key_until_started():
    first = tasks.unique_until_started.enqueue("y")
    assert tasks.unique_until_started.enqueue("y").id == first.id  # waiting
    run_in_process()
    job = Job.objects.get(pk=first.id)
    assert job.status == JobStatus.SUCCESSFUL
    second = Job.objects.exclude(pk=first.id).get()
    assert job.return_value == str(second.pk)  # enqueued anew while the first ran


def test_a_failed_or_cancelled_job_releases_its_key():
    failing = task(unique=True, max_attempts=1)(tasks.always_fails.func)
    # (the same function, as a unique task of its own path)
    first = failing.enqueue("x")
    run_in_process()
    assert Job.objects.get(pk=first.id).status == JobStatus.FAILED
    assert failing.enqueue("x").id != first.id
    waiting = tasks.unique_while_active.enqueue(5)
    assert Job.objects.filter(pk=waiting.id).cancel() == 1
    assert tasks.unique_while_active.enqueue(5).id != waiting.id


def test_a_period_allows_one_job_per_period_even_after_it_finished():
    first = tasks.once_per_period.enqueue(1)
    run_in_process()
    assert Job.objects.get(pk=first.id).status == JobStatus.SUCCESSFUL
    again = tasks.once_per_period.enqueue(1)
    assert again.id == first.id
    assert Job.objects.get(pk=first.id).unique_key.startswith("p:")


def test_a_key_left_on_a_finished_job_is_released_by_the_next_enqueue():
    """However a job ended (here a row written around the API), a job out
    of its key's span does not hold it."""
    first = tasks.unique_while_active.enqueue(9)
    Job.objects.filter(pk=first.id).update(status=JobStatus.FAILED)
    second = tasks.unique_while_active.enqueue(9)
    assert second.id != first.id
    assert Job.objects.get(pk=first.id).unique_key is None
    assert tasks.unique_while_active.enqueue(9).id == second.id


def test_an_expired_job_not_yet_judged_holds_no_key():
    """It will never run: a new job takes its key at once."""
    soon = tasks.unique_while_active.using(expires=timedelta(seconds=30))
    first = soon.enqueue(11)
    Job.objects.filter(pk=first.id).update(
        expires_at=database_now("default") - timedelta(seconds=1)
    )
    second = tasks.unique_while_active.enqueue(11)
    assert second.id != first.id
    assert Job.objects.get(pk=first.id).status == JobStatus.READY  # unjudged


def test_the_test_helpers_release_a_started_key_as_a_worker_does():
    from django_bgtasks.testing import run_jobs

    first = tasks.unique_until_started.enqueue("z")
    run_jobs()
    job = Job.objects.get(pk=first.id)
    assert job.return_value not in (None, first.id)  # a new job, while it ran


def test_a_period_and_delete_on_success_are_refused_together():
    with pytest.raises(InvalidTask, match="cannot go together"):
        task(unique=Unique(period=timedelta(hours=1)), delete_on_success=True)(
            tasks.plain_function
        )


def test_a_callers_key_replaces_the_arguments():
    keyed = tasks.unique_while_active.using(unique=Unique(key="user-42"))
    first = keyed.enqueue(1)
    assert keyed.enqueue(2).id == first.id
    assert tasks.unique_while_active.enqueue(2).id != first.id


def test_enqueue_many_honours_it():
    results = tasks.unique_while_active.enqueue_many(
        [((1,), {}), ((1,), {}), ((2,), {})]
    )
    assert results[0].id == results[1].id != results[2].id
    assert Job.objects.count() == 2


def test_a_unique_task_still_equals_itself_as_enqueued():
    result = tasks.unique_while_active.using(unique=Unique(key="k")).enqueue(3)
    assert tasks.unique_while_active.get_backend().get_result(result.id) == result


@pytest.mark.parametrize(
    "options",
    [
        {"until": "soon"},
        {"period": 5},
        {"period": timedelta(0)},
        {"key": ""},
        {"on_duplicate": "ignore"},
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(InvalidTask, match="Unique"):
        Unique(**options)


def test_unique_takes_a_unique_or_true():
    with pytest.raises(InvalidTask, match="unique must be"):
        task(unique="yes")(tasks.plain_function)


ENQUEUE = """
import sys
import django
django.setup()
from django.db import connection
from tests import tasks
connection.ensure_connection()
print("ready", flush=True)
sys.stdin.readline()  # the go: every process is ready by then
print(tasks.unique_while_active.enqueue(7).id)
"""


def test_processes_enqueueing_one_key_at_once_make_one_job():
    environment = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "PATH": "/usr/bin:/bin",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", ENQUEUE],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=60) for process in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1
    assert list(Job.objects.values_list("pk", flat=True)) == [int(ids.pop())]
