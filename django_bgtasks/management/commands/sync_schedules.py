"""``manage.py sync_schedules``: make Schedule rows match BGTASKS["SCHEDULES"]."""

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks.databases import job_database, job_databases
from django_bgtasks.maintenance.schedule_sync import InvalidSchedule, sync_schedules


class Command(BaseCommand):
    help = (
        "Create or update the schedules declared in BGTASKS['SCHEDULES'] and "
        "disable those no longer declared. Safe to run from many processes."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database",
            metavar="ALIAS",
            help="Sync the schedules kept in this database only (default: "
            "every database that keeps jobs). A schedule is kept in the "
            "database of its task's backend.",
        )

    def handle(self, *args, database=None, **options):
        try:
            databases = (
                job_databases() if database is None else [job_database(database)]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        named = len(job_databases()) > 1
        for using in databases:
            try:
                result = sync_schedules(using=using)
            except InvalidSchedule as exc:
                raise CommandError(str(exc)) from None
            where = f" in {using}" if named else ""
            for label, names in (
                ("Created", result.created),
                ("Updated", result.updated),
                ("Disabled (no longer declared)", result.disabled),
            ):
                if names:
                    self.stdout.write(f"{label}{where}: {', '.join(names)}")
            if not (result.created or result.updated or result.disabled):
                self.stdout.write(f"Schedules{where} are up to date.")
