"""Rescue of dead workers' jobs, timeouts, pruning: in this process."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_bgtasks.compat import TaskResultStatus
from django_bgtasks.maintenance import duties as maintenance
from django_bgtasks.maintenance.prune import prune_finished_jobs, retention
from django_bgtasks.maintenance.rescue import rescue_dead_workers
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from django_bgtasks.worker import Worker, WorkerExit
from tests import tasks
from tests.conftest import run_in_process, wait_until
from tests.factories import make_job, make_worker

pytestmark = pytest.mark.django_db(transaction=True)


def held_by(worker_id, **fields) -> Job:
    started = timezone.now() - timedelta(minutes=10)
    return make_job(
        JobStatus.RUNNING, worker_id=worker_id, worker_ids=[worker_id],
        started_at=started, last_attempted_at=started, **{"attempts": 1, **fields},
    )  # fmt: skip


# Rescue -------------------------------------------------------------------


def test_dead_workers_jobs_are_put_back_or_failed():
    """A job that ran beside others gets its attempt back and runs alone
    from now on (any of them may have crashed the process); one that ran
    alone crashed it itself: the attempt counts."""
    make_worker("dead", silent_for=timedelta(minutes=5), concurrency=4)
    make_worker("alive")
    beside = held_by("dead", attempts=3, max_attempts=3)
    retry = held_by("dead", max_attempts=3, runs_alone=True)
    spent = held_by("dead", attempts=3, max_attempts=3, runs_alone=True)
    safe = held_by("alive")

    rescue = rescue_dead_workers()

    assert rescue.workers == ["dead"] and rescue.jobs == 3
    for job in (beside, retry, spent, safe):
        job.refresh_from_db()
    assert (beside.status, beside.attempts, beside.runs_alone) == (
        JobStatus.READY, 2, True,
    )  # fmt: skip
    assert (retry.status, retry.attempts) == (JobStatus.READY, 1)
    for job in (beside, retry):
        assert job.worker_id is None and job.run_after <= timezone.now()
    assert spent.status == JobStatus.FAILED and spent.finished_at is not None
    for job in (beside, retry, spent):
        assert job.errors[-1]["exception_class_path"] == (
            "django_bgtasks.exceptions.WorkerLost"
        )
        assert "stopped heartbeating" in job.errors[-1]["traceback"]
    assert safe.status == JobStatus.RUNNING
    assert list(WorkerProcess.objects.values_list("pk", flat=True)) == ["alive"]


def test_a_one_thread_workers_job_ran_alone_and_its_attempt_counts():
    make_worker("dead", silent_for=timedelta(minutes=5), concurrency=1)
    job = held_by("dead", attempts=1, max_attempts=3)

    assert rescue_dead_workers().jobs == 1

    job.refresh_from_db()
    assert (job.status, job.attempts, job.runs_alone) == (JobStatus.READY, 1, False)


def test_orphaned_running_jobs_are_rescued():
    orphan = held_by("deleted-by-hand")
    assert rescue_dead_workers().jobs == 1
    orphan.refresh_from_db()
    assert orphan.status == JobStatus.READY


def test_rescuers_at_the_same_time_rescue_each_job_once():
    for number in range(6):
        make_worker(f"dead-{number}", silent_for=timedelta(minutes=5))
        for _ in range(5):
            held_by(f"dead-{number}")
    barrier = threading.Barrier(3)
    results = []

    def rescuer():
        barrier.wait()
        results.append(rescue_dead_workers())
        connection.close()

    threads = [threading.Thread(target=rescuer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(result.jobs for result in results) == 30
    assert sorted(w for result in results for w in result.workers) == sorted(
        f"dead-{n}" for n in range(6)
    )
    assert {len(job.errors) for job in Job.objects.all()} == {1}
    assert not Job.objects.running().exists()


def test_a_slow_worker_judged_dead_ends_its_process(tmp_path):
    gate = tmp_path / "gate"
    result = tasks.wait_for_file.enqueue(str(gate))
    worker = Worker(concurrency=1, worker_id="slow", maintenance=False)
    ended = []
    thread = threading.Thread(target=lambda: ended.append(worker.run()))
    thread.start()
    try:
        wait_until(lambda: Job.objects.running().exists(), message="a running job")
        # Another worker, five minutes on, finds this one silent.
        rescue_dead_workers(now=timezone.now() + timedelta(minutes=5))
        thread.join(timeout=20)  # the heartbeat (1 s) notices
    finally:
        gate.touch()
    assert ended == [WorkerExit.RECYCLE]
    result.refresh()
    # The job is another worker's to run; this one recorded nothing.
    assert result.status == TaskResultStatus.READY
    assert [e.exception_class_path for e in result.errors] == [
        "django_bgtasks.exceptions.WorkerLost"
    ]


# Timeouts -----------------------------------------------------------------


def test_a_job_past_its_timeout_ends_the_process_and_its_neighbour_goes_back(
    tmp_path,
):
    overrun = tasks.overruns.enqueue(3.0)
    neighbour = tasks.wait_for_file.using(max_attempts=1).enqueue(
        str(tmp_path / "never"), timeout=5
    )
    worker = Worker(concurrency=2, maintenance=False, scheduler=False)
    assert worker.run() == WorkerExit.RECYCLE

    overrun.refresh()
    assert overrun.status == TaskResultStatus.READY  # attempts remain: retried
    error = overrun.errors[0]
    assert error.exception_class_path == "django_bgtasks.exceptions.JobTimeout"
    assert "ran past its timeout of 0.5 s" in error.traceback
    assert "time.sleep(seconds)" in error.traceback  # where it was stuck
    neighbour.refresh()
    assert neighbour.status == TaskResultStatus.READY
    assert neighbour.errors[0].exception_class_path.endswith("JobInterrupted")
    # Not its doing: its one attempt is given back, to run as attempt 1 of 1.
    assert Job.objects.get(pk=neighbour.id).attempts == 0
    assert not WorkerProcess.objects.exists()


def test_a_timeout_without_attempts_left_fails_the_job():
    result = tasks.overruns.using(max_attempts=1).enqueue(3.0)
    Worker(concurrency=1, maintenance=False, scheduler=False).run()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class_path.endswith("JobTimeout")


@pytest.mark.parametrize("timeout", [0, -1, "5", True, 10**9])
def test_invalid_timeouts_are_refused(timeout):
    from django_bgtasks.compat import InvalidTask

    with pytest.raises(InvalidTask, match="timeout must be a number of seconds"):
        tasks.add.using(timeout=timeout).enqueue(1, 1)
    assert not Job.objects.exists()


@override_settings(BGTASKS={"TIMEOUT": 42})
def test_the_default_timeout_comes_from_settings():
    tasks.add.enqueue(1, 1)
    tasks.overruns.enqueue()
    assert sorted(Job.objects.values_list("timeout", flat=True)) == [0.5, 42]


# Pruning ------------------------------------------------------------------

PRUNE = {"SUCCESSFUL": 7, "FAILED": timedelta(days=30), "CANCELLED": None}


@override_settings(BGTASKS={"PRUNE_AFTER": PRUNE})
def test_prune_deletes_old_finished_jobs_only():
    now = timezone.now()
    old = now - timedelta(days=8)
    ancient = now - timedelta(days=31)
    gone = [make_job(JobStatus.SUCCESSFUL, finished_at=old) for _ in range(5)]
    gone.append(make_job(JobStatus.FAILED, finished_at=ancient))
    kept = [
        make_job(JobStatus.SUCCESSFUL, finished_at=now - timedelta(days=6)),
        make_job(JobStatus.FAILED, finished_at=old),  # failed: kept 30 days
        make_job(JobStatus.CANCELLED, finished_at=ancient),  # kept forever
        make_job(JobStatus.READY, enqueued_at=ancient),
        held_by("w", finished_at=ancient),
    ]

    deleted = prune_finished_jobs(batch_size=2)

    assert deleted == {"SUCCESSFUL": 5, "FAILED": 1, "CANCELLED": 0}
    assert sorted(Job.objects.values_list("pk", flat=True)) == [j.pk for j in kept]
    assert not Job.objects.filter(pk__in=[j.pk for j in gone]).exists()


@override_settings(BGTASKS={"PRUNE_AFTER": PRUNE})
def test_pruning_hides_no_due_job_from_the_claims():
    """While a pruning batch is locked, a due job can still be claimed: no
    claim (SKIP LOCKED) passes over it, and a burst worker that found it
    nowhere would end with it unrun. MariaDB's locking read of the status
    index locked the READY job that follows the FAILED ones in it."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite's claims and pruning take turns on its one write lock")
    make_job(JobStatus.FAILED, finished_at=timezone.now() - timedelta(days=31))
    due = make_job(JobStatus.READY)
    delete_jobs = f"DELETE FROM {connection.ops.quote_name(Job._meta.db_table)} "
    claimable = []

    def claim_meanwhile():
        try:
            with transaction.atomic():
                locking = Job.objects.claimable().select_for_update(skip_locked=True)
                claimable.extend(locking.values_list("pk", flat=True))
        finally:
            connection.close()

    def after_the_batch_is_deleted(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith(delete_jobs):
            # Still in the batch's transaction, every statement of it made.
            thread = threading.Thread(target=claim_meanwhile)
            thread.start()
            thread.join(10)
        return result

    with connection.execute_wrapper(after_the_batch_is_deleted):
        deleted = prune_finished_jobs()

    assert deleted["FAILED"] == 1
    assert claimable == [due.pk]


@override_settings(BGTASKS={"PRUNE_AFTER": {"SUCCESSFUL": 1}})
def test_a_status_left_out_of_prune_after_keeps_its_default():
    assert retention() == {
        "SUCCESSFUL": timedelta(days=1),
        "FAILED": timedelta(days=30),
        "CANCELLED": timedelta(days=7),
    }


@override_settings(BGTASKS={"PRUNE_AFTER": PRUNE, "PRUNE_INTERVAL": 3600})
def test_maintenance_prunes_again_soon_while_a_pass_finds_a_full_load(monkeypatch):
    """However fast jobs finish, pruning keeps up: a pass that deleted all it
    may is followed by another within a second, not after PRUNE_INTERVAL."""
    monkeypatch.setattr(maintenance, "PRUNE_BATCH_SIZE", 5)
    monkeypatch.setattr(maintenance, "PRUNE_BATCHES_PER_PASS", 2)
    old = timezone.now() - timedelta(days=8)
    for _ in range(52):  # six passes: five full ones, then the rest
        make_job(JobStatus.SUCCESSFUL, finished_at=old)
    kept = make_job(JobStatus.SUCCESSFUL, finished_at=timezone.now())
    thread = maintenance.Maintenance(
        using="default", scheduler=False, housekeeping=True
    )
    thread.start()
    try:
        wait_until(lambda: Job.objects.count() == 1, timeout=15)
    finally:
        thread.stop()
        thread.join(10)
    assert list(Job.objects.values_list("pk", flat=True)) == [kept.pk]


@override_settings(BGTASKS={"PRUNE_AFTER": PRUNE})
def test_prune_jobs_command(capsys):
    make_job(JobStatus.SUCCESSFUL, finished_at=timezone.now() - timedelta(days=9))
    call_command("prune_jobs", "--dry-run")
    out = capsys.readouterr().out
    assert "SUCCESSFUL: 1 job(s) finished more than 7 days, 0:00:00 ago" in out
    assert "CANCELLED: kept forever" in out
    assert Job.objects.count() == 1
    call_command("prune_jobs")
    assert "SUCCESSFUL: 1 job(s) deleted" in capsys.readouterr().out
    assert not Job.objects.exists()


@override_settings(BGTASKS={"HEARTBEAT_INTERVAL": 10, "WORKER_TIMEOUT": 15})
def test_worker_timeout_must_leave_room_for_heartbeats():
    from django.core import checks

    errors = [m for m in checks.run_checks() if m.id == "bgtasks.E007"]
    assert errors and "less than twice" in errors[0].msg


def test_the_jobs_claimed_with_a_job_that_runs_alone_are_put_back_unstarted():
    suspect = int(tasks.add.enqueue(1, 1).id)
    Job.objects.filter(pk=suspect).update(runs_alone=True, priority=5)
    others = [tasks.add.enqueue(number, 1) for number in range(3)]

    run_in_process(concurrency=2, prefetch=8)  # one claim takes all four

    assert Job.objects.get(pk=suspect).return_value == 2
    for result in others:
        job = Job.objects.get(pk=result.id)
        assert job.status == JobStatus.SUCCESSFUL and job.attempts == 1
        # Claimed with the suspect, put back as it started, claimed again.
        assert len(job.worker_ids) == 2 and job.errors == []
