"""``manage.py seed_jobs``: fill the job table with realistic history, to
check how the admin copes with a large table."""

import random
from datetime import timedelta

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from django_bgtasks.models import Job, JobStatus
from testproject.bench.history import QUEUES, TASKS, TRACEBACK

# Share of each status among the seeded jobs (the rest are SUCCESSFUL).
SHARES = [
    (JobStatus.FAILED, 0.05),
    (JobStatus.CANCELLED, 0.01),
    (JobStatus.READY, 0.03),
]


class Command(BaseCommand):
    help = "Add N jobs with a realistic mix of statuses over the last DAYS days."

    def add_arguments(self, parser):
        parser.add_argument("--jobs", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=7)
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--seed", type=int, default=42)

    def handle(self, *args, jobs, days, batch_size, seed, **options):
        rng = random.Random(seed)
        now = timezone.now()
        span = timedelta(days=days).total_seconds()
        made = 0
        while made < jobs:
            batch = [
                self._job(rng, now, span) for _ in range(min(batch_size, jobs - made))
            ]
            with transaction.atomic():
                Job.objects.bulk_create(batch, batch_size=batch_size)
            made += len(batch)
            if made % (batch_size * 20) == 0 or made == jobs:
                self.stdout.write(f"{made} jobs")
        self.stdout.write(self.style.SUCCESS(f"Seeded {made} jobs."))

    def _job(self, rng, now, span):
        enqueued = now - timedelta(seconds=rng.random() * span)
        draw = rng.random()
        status = JobStatus.SUCCESSFUL
        for candidate, share in SHARES:
            if draw < share:
                status = candidate
                break
            draw -= share
        job = Job(
            task_path=rng.choice(TASKS),
            queue_name=rng.choice(QUEUES),
            priority=rng.choice([0, 0, 0, 10, -10]),
            status=status,
            args=[rng.randrange(10**6)],
            kwargs={},
            enqueued_at=enqueued,
            run_after=enqueued,
            max_attempts=3,
            backoff={"initial": 10, "factor": 2, "maximum": 3600, "jitter": 0.1},
        )
        if status == JobStatus.READY:
            job.run_after = now + timedelta(seconds=rng.random() * 3600)
            return job
        if status == JobStatus.CANCELLED:
            job.finished_at = enqueued + timedelta(seconds=1)
            return job
        started = enqueued + timedelta(milliseconds=rng.expovariate(1 / 200))
        finished = started + timedelta(milliseconds=rng.expovariate(1 / 500))
        worker = f"host{rng.randrange(4)}.{rng.randrange(1000, 9999)}.seed"
        job.started_at = job.last_attempted_at = started
        job.finished_at = finished
        job.attempts = 1 if status == JobStatus.SUCCESSFUL else 3
        job.worker_ids = [worker] * job.attempts
        if status == JobStatus.SUCCESSFUL:
            job.return_value = {"ok": True}
        else:
            job.errors = [
                {
                    "exception_class_path": "builtins.ConnectionError",
                    "traceback": TRACEBACK,
                    "attempt": attempt,
                    "worker_id": worker,
                    "at": finished.isoformat(),
                }
                for attempt in (1, 2, 3)
            ]
        return job
