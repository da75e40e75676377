"""``manage.py queues``: list the paused queues, pause or resume queues, in
one database (``--database``; by default the default task backend's): a
queue's pause holds for the jobs kept there."""

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks.console import shell_user
from django_bgtasks.databases import job_database
from django_bgtasks.models import Queue


class Command(BaseCommand):
    help = (
        "Pause queues (nothing new starts in them, on every worker, until they "
        "are resumed), resume them, or list the paused ones."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database",
            default=None,
            metavar="ALIAS",
            help="The database whose queues these are (default: the default "
            "task backend's).",
        )
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="List the paused queues.")
        for action, help_text in [
            ("pause", "Pause these queues: running jobs finish, none start."),
            ("resume", "Resume these queues, and wake their workers."),
        ]:
            sub = actions.add_parser(action, help=help_text)
            sub.add_argument("names", nargs="+", metavar="QUEUE")
            if action == "pause":
                sub.add_argument(
                    "--by",
                    default=None,
                    help="Who pauses them, for the record (default: this "
                    "shell's user).",
                )

    def handle(self, *args, action, database=None, **options):
        try:
            queues = Queue.objects.using(job_database(database))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if action == "list":
            paused = queues.paused().order_by("name")
            if not paused:
                self.stdout.write("No queue is paused.")
            for queue in paused:
                by = f" by {queue.paused_by}" if queue.paused_by else ""
                self.stdout.write(
                    f"{queue.name}: paused at {queue.paused_at.isoformat()}{by}"
                )
            return
        names = options["names"]
        try:
            if action == "pause":
                by = options["by"]
                if by is None:
                    by = shell_user("queues")
                changed = queues.pause(*names, by=by)
                self.stdout.write(
                    f"Paused {changed} queue(s); {len(names) - changed} were "
                    f"paused already."
                )
            else:
                changed = queues.resume(*names)
                self.stdout.write(
                    f"Resumed {changed} queue(s); {len(names) - changed} were "
                    f"not paused."
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
