"""Several real worker processes share one queue: every job runs exactly once."""

import signal
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import wait_until
from tests.models import Execution

JOBS = 2000
PROCESSES = 4


@pytest.mark.slow
def test_four_workers_drain_the_queue_running_each_job_once(workers):
    # The jobs become due only once every worker is up, so all four compete.
    later = timezone.now() + timedelta(hours=1)
    with transaction.atomic():
        for number in range(JOBS):
            tasks.record.using(run_after=later).enqueue(label=str(number))
    processes = [
        workers.start(
            "--concurrency", "4", "--poll-interval", "0.05", "--worker-id", f"w{n}"
        )
        for n in range(PROCESSES)
    ]
    wait_until(
        lambda: WorkerProcess.objects.count() == PROCESSES,
        timeout=60,
        message="all workers registered",
    )
    Job.objects.update(run_after=timezone.now())

    wait_until(
        lambda: (
            not Job.objects.filter(
                status__in=[JobStatus.READY, JobStatus.RUNNING]
            ).exists()
        ),
        timeout=240,
        message="the queue drained",
    )
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert workers.wait(process) == 0, workers.output(process)

    # Every job ran once: one execution each (the unique constraint on
    # (job, attempt) refuses a second run), in its first attempt.
    assert Execution.objects.count() == JOBS
    assert Execution.objects.values("job_id").distinct().count() == JOBS
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == JOBS
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}
    assert not Job.objects.exclude(errors=[]).exists()
    # The work was shared. With row locks (SKIP LOCKED) every process gets
    # some; SQLite's single write lock is not fair, so there at least two.
    per_worker = dict(Execution.objects.values_list("worker_id").annotate(Count("id")))
    sharing = PROCESSES if connection.vendor != "sqlite" else 2
    assert len(per_worker) >= sharing, per_worker
