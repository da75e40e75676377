"""Schedules with several real worker processes: one job per planned time."""

import json
import signal
import subprocess
import sys
from datetime import timedelta
from itertools import pairwise

import pytest

from django_bgtasks.models import Job, JobStatus, Schedule
from tests.conftest import EVERY_SECOND, ROOT, wait_until
from tests.models import Execution


@pytest.mark.slow
def test_three_schedulers_fire_each_second_exactly_once(workers):
    env = {"BGTASKS_TEST_SCHEDULES": json.dumps(EVERY_SECOND)}
    processes = [
        workers.start("--concurrency", "2", "--poll-interval", "0.1", env=env)
        for _ in range(3)
    ]
    wait_until(
        lambda: Schedule.objects.filter(name="tick").exists(),
        timeout=60,
        message="the declared schedule synced",
    )
    # A bounded run: until the schedule has fired eight times.
    wait_until(
        lambda: Job.objects.filter(schedule__name="tick").count() >= 8,
        timeout=60,
        message="eight scheduled jobs",
    )
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert workers.wait(process) == 0, workers.output(process)

    schedule = Schedule.objects.get(name="tick")
    planned = list(
        schedule.jobs.order_by("scheduled_for").values_list("scheduled_for", flat=True)
    )
    # One job per planned second: no second missing, none twice.
    assert all(
        later - earlier == timedelta(seconds=1) for earlier, later in pairwise(planned)
    )
    assert schedule.total_run_count == len(planned)
    # And the jobs ran, each once.
    ran = Execution.objects.filter(label="tick").values_list("job_id", flat=True)
    assert len(ran) == len(set(ran))
    succeeded = schedule.jobs.filter(status=JobStatus.SUCCESSFUL).count()
    assert succeeded == len(ran) >= 1


@pytest.mark.slow
def test_concurrent_syncs_make_one_row_per_schedule(workers):
    declared = {
        f"schedule-{number}": {"task": "tests.tasks.add", "interval": 60 + number}
        for number in range(20)
    }
    env = {**workers.env, "BGTASKS_TEST_SCHEDULES": json.dumps(declared)}
    command = [sys.executable, str(ROOT / "manage.py"), "sync_schedules"]
    syncs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(6)
    ]
    for sync in syncs:
        output, _ = sync.communicate(timeout=120)
        assert sync.returncode == 0, output
    assert Schedule.objects.count() == 20
    assert set(Schedule.objects.values_list("name", flat=True)) == set(declared)
    assert all(s.next_run_at is not None for s in Schedule.objects.all())
