"""``manage.py prune_jobs``: delete finished jobs past their retention."""

from django.core.management.base import BaseCommand
from django.db import router

from django_bgtasks.db import database_now
from django_bgtasks.maintenance.prune import prunable, prune_finished_jobs, retention
from django_bgtasks.models import FINISHED_STATUSES, Job


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

    def handle(self, *args, dry_run, **options):
        using = router.db_for_write(Job)
        # The database's clock, as the workers' pruning: not this host's.
        now = database_now(using)
        kept = retention()
        if dry_run:
            for status in FINISHED_STATUSES:
                age = kept[status.value]
                if age is None:
                    self.stdout.write(f"{status.value}: kept forever")
                    continue
                count = prunable(status.value, now, using).count()
                self.stdout.write(
                    f"{status.value}: {count} job(s) finished more than {age} ago "
                    f"would be deleted"
                )
            return
        deleted = prune_finished_jobs(using=using, now=now)
        for status, count in deleted.items():
            self.stdout.write(f"{status}: {count} job(s) deleted")
