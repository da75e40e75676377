"""``manage.py sync_schedules``: make Schedule rows match BGTASKS["SCHEDULES"]."""

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks.maintenance.schedule_sync import InvalidSchedule, sync_schedules


class Command(BaseCommand):
    help = (
        "Create or update the schedules declared in BGTASKS['SCHEDULES'] and "
        "disable those no longer declared. Safe to run from many processes."
    )

    def handle(self, *args, **options):
        try:
            result = sync_schedules()
        except InvalidSchedule as exc:
            raise CommandError(str(exc)) from None
        for label, names in (
            ("Created", result.created),
            ("Updated", result.updated),
            ("Disabled (no longer declared)", result.disabled),
        ):
            if names:
                self.stdout.write(f"{label}: {', '.join(names)}")
        if not (result.created or result.updated or result.disabled):
            self.stdout.write("Schedules are up to date.")
