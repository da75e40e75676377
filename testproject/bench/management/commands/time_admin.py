"""``manage.py time_admin``: how long the admin's job pages take to render.

Renders each page in-process with Django's test client, as a superuser, and
prints the median and slowest of several runs, with the number of queries.
Seed a large table first with ``manage.py seed_jobs``.
"""

import statistics

from django.core.management.base import BaseCommand
from django.db import connection

from django_bgtasks.models import Job
from testproject.bench.admin_pages import AdminTimer, admin_pages


class Command(BaseCommand):
    help = (
        "Time the admin's job list, filtered lists, dashboard (and its "
        "refresh) and job page."
    )

    def add_arguments(self, parser):
        parser.add_argument("--repeat", type=int, default=5)

    def handle(self, *args, repeat, **options):
        timer = AdminTimer()
        self.stdout.write(
            f"{Job.objects.order_by().count():,} jobs on "
            f"{connection.display_name}; {repeat} runs per page\n"
        )
        self.stdout.write(f"{'page':<34}{'median':>10}{'slowest':>10}{'queries':>9}")
        for label, url in admin_pages():
            timings, queries = timer.time(url, repeat)
            self.stdout.write(
                f"{label:<34}{statistics.median(timings):>8.0f}ms"
                f"{max(timings):>8.0f}ms{queries:>9}"
            )
