"""``manage.py time_admin``: how long the admin's job pages take to render.

Renders each page in-process with Django's test client, as a superuser, and
prints the median and slowest of several runs, with the number of queries.
Seed a large table first with ``manage.py seed_jobs``.
"""

import statistics
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_bgtasks.models import Job, JobStatus


class Command(BaseCommand):
    help = (
        "Time the admin's job list, filtered lists, dashboard (and its "
        "refresh) and job page."
    )

    def add_arguments(self, parser):
        parser.add_argument("--repeat", type=int, default=5)

    def handle(self, *args, repeat, **options):
        user, _ = get_user_model().objects.get_or_create(
            username="time-admin", defaults={"is_staff": True, "is_superuser": True}
        )
        client = Client()
        client.force_login(user)
        jobs = reverse("admin:django_bgtasks_job_changelist")
        failed = Job.objects.filter(status=JobStatus.FAILED).order_by("-id").first()
        latest = Job.objects.order_by("-id").first()
        week_ago = (timezone.now() - timezone.timedelta(days=7)).date().isoformat()
        pages = [
            ("job list", jobs),
            ("filter: status FAILED", f"{jobs}?status=FAILED"),
            ("filter: queue + status", f"{jobs}?queue_name=images&status=SUCCESSFUL"),
            ("filter: task", f"{jobs}?task_path=shop.tasks.charge_card"),
            ("filter: enqueued, past 7 days", f"{jobs}?enqueued_at__gte={week_ago}"),
            (
                "filter: finished today + FAILED",
                f"{jobs}?finished_at__gte={timezone.now().date()}&status=FAILED",
            ),
            ("search: id", f"{jobs}?q={latest.pk if latest else 1}"),
            ("search: task text", f"{jobs}?q=charge"),
            ("page 50 of the list", f"{jobs}?p=50"),
            ("dashboard", reverse("admin:django_bgtasks_jobdashboard_changelist")),
            ("dashboard refresh", reverse("admin:django_bgtasks_jobdashboard_live")),
        ]
        if failed:
            pages.append(
                (
                    "failed job page",
                    reverse("admin:django_bgtasks_job_change", args=[failed.pk]),
                )
            )
        self.stdout.write(
            f"{Job.objects.order_by().count():,} jobs on "
            f"{connection.display_name}; {repeat} runs per page\n"
        )
        self.stdout.write(f"{'page':<34}{'median':>10}{'slowest':>10}{'queries':>9}")
        with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"]):
            for label, url in pages:
                timings, queries = self._time(client, url, repeat)
                self.stdout.write(
                    f"{label:<34}{statistics.median(timings):>8.0f}ms"
                    f"{max(timings):>8.0f}ms{queries:>9}"
                )

    def _time(self, client, url, repeat):
        client.get(url)  # warm caches, as a second visit would find them
        timings = []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url)
                timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")
        return timings, len(captured.captured_queries)
