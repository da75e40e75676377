"""Atomic tasks: a task's writes to the job's database and its job's success
commit in one transaction, or neither does; run by a real worker on each
database, and through SIGKILLs of several worker processes."""

import os
import random
import signal

import pytest
from django.db.models import Count

from django_bgtasks import task
from django_bgtasks.compat import InvalidTask
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.conftest import requires_server_database, run_in_process, wait_until
from tests.models import Effect


def effects(result) -> list[str]:
    return list(Effect.objects.filter(job_id=result.id).values_list("label", flat=True))


@pytest.mark.django_db(transaction=True)
def test_an_atomic_tasks_writes_commit_with_its_success():
    result = tasks.counts_once.enqueue("kept")
    run_in_process()
    job = Job.objects.get(pk=result.id)
    assert job.status == JobStatus.SUCCESSFUL
    assert job.return_value == "kept"
    assert effects(result) == ["kept"]


@pytest.mark.django_db(transaction=True)
def test_an_atomic_tasks_writes_roll_back_when_it_fails():
    result = tasks.counts_once.using(max_attempts=2).enqueue("lost", fail=True)
    run_in_process()
    job = Job.objects.get(pk=result.id)
    assert job.status == JobStatus.FAILED
    assert job.attempts == 2  # retried, and each run's writes rolled back
    assert effects(result) == []


@pytest.mark.django_db(transaction=True)
def test_a_return_value_that_cannot_be_stored_rolls_the_writes_back():
    result = tasks.counts_once.enqueue("lost", unstorable=True)
    run_in_process()
    job = Job.objects.get(pk=result.id)
    assert job.status == JobStatus.FAILED
    assert job.errors[-1]["exception_class_path"].endswith("InvalidReturnValue")
    assert effects(result) == []


@pytest.mark.django_db(transaction=True)
def test_an_atomic_task_whose_job_was_taken_away_rolls_its_writes_back():
    result = tasks.taken_away_while_it_runs.enqueue()
    run_in_process()
    job = Job.objects.get(pk=result.id)
    # The job is the other worker's: this run recorded nothing and kept
    # nothing; the other's run will do the work.
    assert job.status == JobStatus.RUNNING
    assert job.worker_id == "another-worker"
    assert effects(result) == []


@pytest.mark.django_db
def test_run_jobs_honours_atomic_tasks():
    kept = tasks.counts_once.enqueue("kept")
    lost = tasks.counts_once.using(max_attempts=1).enqueue("lost", fail=True)
    run_jobs()
    assert effects(kept) == ["kept"]
    assert effects(lost) == []
    assert Job.objects.get(pk=lost.id).status == JobStatus.FAILED


def test_an_async_task_cannot_be_atomic():
    async def coroutine():
        return None

    with pytest.raises(InvalidTask, match="synchronous"):
        task(atomic=True)(coroutine)
    with pytest.raises(InvalidTask, match="True or False"):
        task(atomic="yes")(lambda: None)


@pytest.mark.slow
@requires_server_database
def test_each_atomic_jobs_effect_is_counted_once_through_sigkills(workers):
    count = 60
    results = tasks.counts_once.enqueue_many(
        ((), {"label": str(n), "pause": 0.15}) for n in range(count)
    )
    ids = [int(result.id) for result in results]
    args = ("--concurrency", "3", "--prefetch", "0")
    env = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "2"}
    alive = [workers.start(*args, env=env) for _ in range(3)]
    jobs = Job.objects.filter(pk__in=ids)
    rng = random.Random(17)
    kills = 0
    # Kill a worker while it runs jobs (inside their transactions), then
    # start another, until most jobs are done.
    while kills < 8 and jobs.filter(status=JobStatus.SUCCESSFUL).count() < count - 5:
        running = wait_until(
            lambda: (
                list(
                    WorkerProcess.objects.filter(
                        pid__in=[p.pid for p in alive],
                        jobs__status=JobStatus.RUNNING,
                    )
                    .values_list("pid", flat=True)
                    .distinct()
                )
                or jobs.exclude(status=JobStatus.SUCCESSFUL).count() < 5
            ),
            timeout=30,
            message="a worker running a job",
        )
        if running is True:
            break
        chosen = rng.choice(running)
        victim = next(process for process in alive if process.pid == chosen)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        alive.remove(victim)
        kills += 1
        alive.append(workers.start(*args, env=env))
    wait_until(
        lambda: jobs.filter(status=JobStatus.SUCCESSFUL).count() == count,
        timeout=120,
        message="every job done",
    )
    for process in alive:
        process.send_signal(signal.SIGTERM)
        workers.wait(process)

    runs = dict(
        Effect.objects.filter(job_id__in=ids)
        .values_list("job_id")
        .annotate(n=Count("id"))
        .values_list("job_id", "n")
    )
    cut_short = sum(len(job.worker_ids) > 1 for job in jobs)
    print(f"{kills} kills; {cut_short} job(s) claimed again after a kill")
    assert kills >= 3
    assert cut_short >= 1  # some kills landed inside a job's transaction
    assert runs == dict.fromkeys(ids, 1)  # each job's effect counted once
