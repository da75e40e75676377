"""The database's clock is the only clock: a worker whose host clock runs
two minutes ahead (Debian's faketime) beside a normal one judges no live
worker dead, starts no delayed job early and fires no schedule early or
twice."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from django_bgtasks.db import database_now
from django_bgtasks.models import Job, JobStatus, Schedule, WorkerProcess
from tests import tasks
from tests.conftest import (
    ROOT,
    database_url,
    requires_server_database,
    skewed_clock,
    wait_until,
)

pytestmark = [pytest.mark.slow, requires_server_database]

SKEW = 120  # seconds the skewed worker's clock runs ahead
FAST = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "3"}


def skewed() -> dict[str, str]:
    return skewed_clock(SKEW)


def test_a_worker_with_a_clock_ahead_starts_nothing_early_and_rescues_no_one(
    workers, tmp_path
):
    skew = skewed()
    gate = tmp_path / "gate"
    held = tasks.wait_for_file.enqueue(str(gate))
    normal = workers.start(
        "--concurrency", "1", "--no-scheduler", "--no-maintenance", env=FAST
    )
    wait_until(
        lambda: Job.objects.filter(pk=held.id, status=JobStatus.RUNNING).exists(),
        timeout=30,
        message="the normal worker's job running",
    )
    now = database_now(connection.alias)
    delayed = tasks.add.using(run_after=now + timedelta(seconds=6)).enqueue(1, 2)
    planned = now + timedelta(seconds=6)
    schedule = Schedule(
        name="soon",
        task_path="tests.tasks.add",
        args=[2, 2],
        interval=timedelta(hours=1),
        start_at=planned,
        timezone="UTC",
    )
    schedule.full_clean()
    schedule.reschedule(now=now)
    schedule.save()
    assert schedule.next_run_at == planned
    ahead = workers.start(
        "--concurrency", "2", "--poll-interval", "0.1",
        env={**FAST, **skew},
    )  # fmt: skip
    wait_until(
        lambda: WorkerProcess.objects.count() == 2, timeout=30, message="two workers"
    )

    # Until the planned time: nothing early, the normal worker alive.
    while database_now(connection.alias) < planned - timedelta(seconds=0.5):
        assert Job.objects.get(pk=delayed.id).status == JobStatus.READY
        assert not Job.objects.filter(schedule=schedule).exists()
        assert Job.objects.get(pk=held.id).worker_id == normal_id(normal)
    done = wait_until(
        lambda: Job.objects.filter(pk=delayed.id, status=JobStatus.SUCCESSFUL).first(),
        timeout=30,
        message="the delayed job run",
    )
    fired = wait_until(
        lambda: list(Job.objects.filter(schedule=schedule)),
        timeout=30,
        message="the schedule fired",
    )
    # Several passes of the skewed scheduler and rescuer go by.
    wait_until(
        lambda: database_now(connection.alias) > planned + timedelta(seconds=4),
        timeout=30,
        message="a few seconds more",
    )
    gate.touch()
    held_job = wait_until(
        lambda: Job.objects.filter(pk=held.id, status=JobStatus.SUCCESSFUL).first(),
        timeout=30,
        message="the held job done",
    )
    for process in (normal, ahead):
        process.terminate()
        workers.wait(process)

    assert done.started_at >= done.run_after  # in the database's time
    assert len(fired) == 1 and fired[0].scheduled_for == planned
    assert Job.objects.filter(schedule=schedule).count() == 1  # never twice
    # The normal worker was never judged dead: its job ran once, untouched.
    assert held_job.attempts == 1 and held_job.errors == []
    assert "Rescued" not in workers.output(ahead), workers.output(ahead)
    # And its clock was ahead: its log's times are.
    stamp = re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", workers.output(ahead), re.M)
    logged = datetime.strptime(stamp.group(), "%Y-%m-%d %H:%M:%S")
    assert logged.replace(tzinfo=UTC) > now + timedelta(seconds=SKEW - 30)


def normal_id(process) -> str:
    return WorkerProcess.objects.get(pid=process.pid).pk


def test_prune_jobs_on_a_host_days_ahead_keeps_what_is_not_due_to_go(transactional_db):
    """``manage.py prune_jobs`` counts a job's age by the database's clock:
    a host two days ahead does not delete a SUCCESSFUL job finished six
    days ago (kept seven)."""
    now = database_now(connection.alias)
    kept, old = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
    Job.objects.filter(pk=kept.id).update(
        status=JobStatus.SUCCESSFUL, finished_at=now - timedelta(days=6)
    )
    Job.objects.filter(pk=old.id).update(
        status=JobStatus.SUCCESSFUL, finished_at=now - timedelta(days=8)
    )
    environment = {
        **os.environ,
        **skewed(),
        "FAKETIME": "+2d",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "prune_jobs"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "SUCCESSFUL: 1 job(s) deleted" in done.stdout
    assert list(Job.objects.values_list("pk", flat=True)) == [int(kept.id)]
