"""The admin pages the benchmarks time (``time_admin``, ``bgtasks_bench
--scenarios scale``), and a client that renders them in this process."""

from __future__ import annotations

import statistics
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from django_bgtasks.models import Job, JobStatus


def admin_pages() -> list[tuple[str, str]]:
    """(label, URL) of the job list, its filters and searches, page 50, the
    dashboard and its refresh, and the newest FAILED job's page (if any)."""
    jobs = reverse("admin:django_bgtasks_job_changelist")
    failed = Job.objects.filter(status=JobStatus.FAILED).order_by("-id").first()
    latest = Job.objects.order_by("-id").first()
    # Aware midnights, as the admin's date filters send them (a bare date
    # would be a naive time under USE_TZ).
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week_ago = urlencode({"enqueued_at__gte": today - timezone.timedelta(days=7)})
    finished_today = urlencode({"finished_at__gte": today, "status": "FAILED"})
    pages = [
        ("job list", jobs),
        ("filter: status FAILED", f"{jobs}?status=FAILED"),
        ("filter: queue + status", f"{jobs}?queue_name=images&status=SUCCESSFUL"),
        ("filter: task", f"{jobs}?task_path=shop.tasks.charge_card"),
        ("filter: enqueued, past 7 days", f"{jobs}?{week_ago}"),
        ("filter: finished today + FAILED", f"{jobs}?{finished_today}"),
        ("search: id", f"{jobs}?q={latest.pk if latest else 1}"),
        ("search: task text", f"{jobs}?q=charge"),
        ("search: text matching no job", f"{jobs}?q=no-such-task"),
        ("page 50 of the list", f"{jobs}?p=50"),
        ("dashboard", reverse("admin:django_bgtasks_jobdashboard_changelist")),
        ("dashboard refresh", reverse("admin:django_bgtasks_jobdashboard_live")),
    ]
    if failed:
        url = reverse("admin:django_bgtasks_job_change", args=[failed.pk])
        pages.append(("failed job page", url))
    return pages


class AdminTimer:
    """Renders admin pages with Django's test client, logged in as the
    superuser ``time-admin`` (made if needed)."""

    def __init__(self):
        user, _ = get_user_model().objects.get_or_create(
            username="time-admin", defaults={"is_staff": True, "is_superuser": True}
        )
        self.client = Client()
        self.client.force_login(user)

    def time(self, url: str, repeat: int) -> tuple[list[float], int]:
        """The render times of ``url`` (ms), after one untimed render that
        warms the caches as a second visit finds them, and the queries of
        the last one. Stops on any response but HTTP 200."""
        hosts = [*settings.ALLOWED_HOSTS, "testserver"]
        with override_settings(ALLOWED_HOSTS=hosts):
            self.client.get(url)
            timings = []
            for _ in range(repeat):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    response = self.client.get(url)
                    timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{url}: HTTP {response.status_code}")
        return timings, len(captured.captured_queries)

    def median(self, url: str, repeat: int) -> float:
        return statistics.median(self.time(url, repeat)[0])
