"""``manage.py runworker``: run jobs from the database."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks import __version__
from django_bgtasks.backend import DatabaseBackend
from django_bgtasks.compat import task_backends
from django_bgtasks.exceptions import WorkerIdInUse
from django_bgtasks.schedule_sync import InvalidSchedule
from django_bgtasks.worker import Worker

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not 1 or more")
    return number


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not 0 or more seconds")
    return number


def queue_list(value: str) -> list[str] | None:
    """``a,b`` -> ["a", "b"]; ``*`` -> None (every queue)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one queue, or '*'")
    if "*" in names:
        if len(names) > 1:
            raise argparse.ArgumentTypeError("'*' means every queue; name no others")
        return None
    return names


class Command(BaseCommand):
    help = "Run background jobs from the database until stopped."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues",
            type=queue_list,
            default=None,
            help="Comma-separated queues to take jobs from; '*' for all (the default).",
        )
        parser.add_argument(
            "--concurrency",
            type=positive_int,
            default=os.cpu_count() or 1,
            help="Jobs to run at once, each on its own thread "
            "(default: the number of CPUs).",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit once no job is due and none is running.",
        )
        parser.add_argument(
            "--max-jobs",
            type=positive_int,
            default=None,
            help="Exit after running this many jobs.",
        )
        parser.add_argument(
            "--poll-interval",
            type=seconds,
            default=None,
            help="Seconds between looks for due jobs when idle "
            "(default: BGTASKS['POLL_INTERVAL'], 1).",
        )
        parser.add_argument(
            "--worker-id",
            default=None,
            help="This worker's id (default: host.pid.random). Must be unique "
            "among live workers.",
        )
        parser.add_argument(
            "--no-scheduler",
            action="store_false",
            dest="scheduler",
            help="Do not fire due schedules from this worker.",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=seconds,
            default=30.0,
            help="Seconds running jobs get to finish after SIGTERM/SIGINT "
            "before they are put back to READY (default: 30).",
        )

    def handle(self, *args, **options):
        self._configure_logging(options["verbosity"])
        queues = options["queues"]
        self._check_queues(queues)
        worker_id = options["worker_id"]
        if worker_id is not None and not 0 < len(worker_id) <= 100:
            raise CommandError("--worker-id must be 1 to 100 characters.")
        worker = Worker(
            queues=queues,
            concurrency=options["concurrency"],
            burst=options["burst"],
            max_jobs=options["max_jobs"],
            poll_interval=options["poll_interval"],
            worker_id=worker_id,
            shutdown_timeout=options["shutdown_timeout"],
            scheduler=options["scheduler"],
        )
        if options["verbosity"]:
            self._print_banner(worker)
        restore_signal_handlers = worker.install_signal_handlers()
        try:
            finished_cleanly = worker.run()
        except (WorkerIdInUse, InvalidSchedule) as exc:
            raise CommandError(str(exc)) from None
        finally:
            restore_signal_handlers()
        if not finished_cleanly:
            sys.exit(1)

    def _check_queues(self, queues: list[str] | None) -> None:
        """Refuse to start without a DatabaseBackend, or with queues none of
        them accepts (a typo would leave the worker idle forever)."""
        backends = [b for b in task_backends.all() if isinstance(b, DatabaseBackend)]
        if not backends:
            raise CommandError(
                "No backend in the TASKS setting uses "
                "django_bgtasks.backend.DatabaseBackend."
            )
        if queues is None or any(not backend.queues for backend in backends):
            return  # every queue, or a backend that accepts any queue name
        known = set().union(*(backend.queues for backend in backends))
        unknown = sorted(set(queues) - known)
        if unknown:
            raise CommandError(
                f"Unknown queue(s): {', '.join(unknown)}. The QUEUES of TASKS "
                f"are: {', '.join(sorted(known))}."
            )

    def _configure_logging(self, verbosity: int) -> None:
        logger = logging.getLogger("django_bgtasks")
        logger.setLevel(LOG_LEVELS.get(verbosity, logging.DEBUG))
        if not logger.handlers:  # the project's LOGGING did not configure us
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")
            )
            logger.addHandler(handler)
            logger.propagate = False

    def _print_banner(self, worker: Worker) -> None:
        self.stdout.write(self.style.SUCCESS(f"django-bgtasks {__version__} worker"))
        for name, value in worker.describe().items():
            self.stdout.write(f"  {name + ':':<13}{value}")
        self.stdout.flush()
