"""``manage.py prune_jobs``: delete finished jobs past their retention, in
every database that holds jobs (``--database``: in one)."""

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks.databases import job_database, job_databases
from django_bgtasks.db import database_now
from django_bgtasks.maintenance.prune import prunable, prune_finished_jobs, retention
from django_bgtasks.models import FINISHED_STATUSES


class Command(BaseCommand):
    help = (
        "Delete SUCCESSFUL, FAILED and CANCELLED jobs older than "
        "BGTASKS['PRUNE_AFTER'] says, in small batches."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say how many jobs would be deleted; delete nothing.",
        )
        parser.add_argument(
            "--database",
            default=None,
            metavar="ALIAS",
            help="Prune this database's jobs only (default: every database "
            "that holds jobs).",
        )

    def handle(self, *args, dry_run, database=None, **options):
        try:
            databases = (
                job_databases() if database is None else [job_database(database)]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        for using in databases:
            # Said only when there is more than one to tell apart.
            prefix = f"{using}: " if len(job_databases()) > 1 else ""
            self.prune(using, dry_run, prefix)

    def prune(self, using: str, dry_run: bool, prefix: str) -> None:
        # The database's clock, as the workers' pruning: not this host's.
        now = database_now(using)
        kept = retention()
        if dry_run:
            for status in FINISHED_STATUSES:
                age = kept[status.value]
                if age is None:
                    self.stdout.write(f"{prefix}{status.value}: kept forever")
                    continue
                count = prunable(status.value, now, using).count()
                self.stdout.write(
                    f"{prefix}{status.value}: {count} job(s) finished more than "
                    f"{age} ago would be deleted"
                )
            return
        deleted = prune_finished_jobs(using=using, now=now)
        for status, count in deleted.items():
            self.stdout.write(f"{prefix}{status}: {count} job(s) deleted")
