"""``manage.py runworker``: run jobs from the database."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from argparse import SUPPRESS

from django.core.management.base import BaseCommand, CommandError

from django_bgtasks import __version__
from django_bgtasks.backend import DatabaseBackend
from django_bgtasks.compat import FRAMEWORK_LOGGER, task_backends
from django_bgtasks.exceptions import WorkerIdInUse
from django_bgtasks.schedule_sync import InvalidSchedule
from django_bgtasks.worker import Worker, WorkerExit
from django_bgtasks.worker.runner import settle_garbage_collector
from django_bgtasks.worker.supervisor import Supervisor

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not 1 or more")
    return number


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not 0 or more")
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
            "--prefetch",
            type=non_negative_int,
            default=0,
            help="Claim up to this many jobs beyond the free threads, to run as "
            "threads free up: fewer, larger claims for short jobs (default 0: "
            "claim only for free threads).",
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
            "--no-maintenance",
            action="store_false",
            dest="maintenance",
            help="Do not rescue the jobs of dead workers or prune old jobs from "
            "this worker.",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=seconds,
            default=30.0,
            help="Seconds running jobs get to finish after SIGTERM/SIGINT "
            "before they are put back to READY (default: 30).",
        )
        parser.add_argument(
            "--processes",
            type=positive_int,
            default=None,
            help="Run this many worker processes, each with --concurrency "
            "threads, under a supervisor that restarts them.",
        )
        parser.add_argument(
            "--max-jobs-per-child",
            type=positive_int,
            default=None,
            help="Replace a worker process after it has run this many jobs "
            "(implies --processes).",
        )
        parser.add_argument(
            "--max-memory-per-child",
            type=positive_int,
            default=None,
            metavar="MB",
            help="Replace a worker process, after its running jobs, once it "
            "uses more than this many MB (implies --processes).",
        )
        # How a supervisor starts its children; not for people.
        parser.add_argument("--supervised", action="store_true", help=SUPPRESS)
        parser.add_argument("--max-memory", type=positive_int, help=SUPPRESS)

    def handle(self, *args, **options):
        self._configure_logging(options["verbosity"])
        self._check_queues(options["queues"])
        worker_id = options["worker_id"]
        if worker_id is not None and not 0 < len(worker_id) <= 95:
            raise CommandError("--worker-id must be 1 to 95 characters.")
        per_child = options["max_jobs_per_child"] or options["max_memory_per_child"]
        if options["processes"] or per_child:
            if options["max_jobs"]:
                raise CommandError(
                    "--max-jobs counts the jobs of one process: with --processes, "
                    "use --max-jobs-per-child."
                )
            self._supervise(options)
            return
        worker = Worker(
            queues=options["queues"],
            concurrency=options["concurrency"],
            burst=options["burst"],
            max_jobs=options["max_jobs"],
            poll_interval=options["poll_interval"],
            worker_id=worker_id,
            shutdown_timeout=options["shutdown_timeout"],
            scheduler=options["scheduler"],
            maintenance=options["maintenance"],
            max_memory_mb=options["max_memory"],
            prefetch=options["prefetch"],
        )
        if options["verbosity"]:
            self._print_banner(
                f"django-bgtasks {__version__} worker", worker.describe()
            )
        if options["supervised"]:
            # Stop requests come from the supervisor; the terminal's Ctrl-C
            # reaches the supervisor, which passes it on.
            restore = worker.install_signal_handlers()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            worker.stop_requests.watch_supervisor(sys.stdin)
        else:
            restore = worker.install_signal_handlers()
        settle_garbage_collector()  # this process is the worker's
        try:
            ended = worker.run()
        except (WorkerIdInUse, InvalidSchedule) as exc:
            raise CommandError(str(exc)) from None
        finally:
            restore()
        self._end(
            ended,
            supervised=options["supervised"],
            stop_requested=worker.stop_requests.count > 0,
        )

    def _end(self, ended: WorkerExit, *, supervised: bool, stop_requested: bool):
        if ended == WorkerExit.RECYCLE:
            sys.stdout.flush()
            sys.stderr.flush()
            # At once: a job past its timeout may still be running on a
            # thread that would keep a normal exit waiting.
            if supervised:
                os._exit(int(ended))
            if stop_requested:  # asked to stop meanwhile: no fresh process
                os._exit(int(WorkerExit.STOPPED))
            logging.getLogger("django_bgtasks.worker").warning(
                "Starting a fresh worker process in place of this one"
            )
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        if ended != WorkerExit.STOPPED:
            sys.exit(int(ended))

    def _supervise(self, options) -> None:
        processes = options["processes"] or 1
        command = [sys.executable, sys.argv[0], "runworker", "--supervised"]
        # The system checks ran here; in each child they would only load the
        # URLconf and its views (3 MB a process).
        command.append("--skip-checks")
        command += ["--concurrency", str(options["concurrency"])]
        command += ["--prefetch", str(options["prefetch"])]
        command += ["--verbosity", str(options["verbosity"])]
        command += ["--shutdown-timeout", str(options["shutdown_timeout"])]
        if options["queues"]:
            command += ["--queues", ",".join(options["queues"])]
        if options["poll_interval"] is not None:
            command += ["--poll-interval", str(options["poll_interval"])]
        if options["burst"]:
            command.append("--burst")
        if options["max_jobs_per_child"]:
            command += ["--max-jobs", str(options["max_jobs_per_child"])]
        if options["max_memory_per_child"]:
            command += ["--max-memory", str(options["max_memory_per_child"])]

        def child(number: int) -> list[str]:
            line = list(command)
            if options["worker_id"]:
                line += ["--worker-id", f"{options['worker_id']}-{number}"]
            # One scheduler and one housekeeper per supervisor is plenty.
            if number > 1 or not options["scheduler"]:
                line.append("--no-scheduler")
            if number > 1 or not options["maintenance"]:
                line.append("--no-maintenance")
            return line

        if options["verbosity"]:
            self._print_banner(
                f"django-bgtasks {__version__} supervisor (pid {os.getpid()})",
                {
                    "processes": f"{processes} x {options['concurrency']} thread(s)",
                    "recycling": ", ".join(
                        text
                        for text in (
                            options["max_jobs_per_child"]
                            and f"after {options['max_jobs_per_child']} jobs",
                            options["max_memory_per_child"]
                            and f"over {options['max_memory_per_child']} MB",
                        )
                        if text
                    )
                    or "off",
                },
            )
        supervisor = Supervisor(
            processes=processes, command=child, restart=not options["burst"]
        )
        code = supervisor.run()
        if code:
            sys.exit(code)

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
        # The framework logs each task's start and end at INFO, as this
        # worker's own lines do. Under Django's default logging those records
        # are made, then dropped by every handler: tens of microseconds a
        # job, for nothing. Unless the project's LOGGING sets that logger,
        # the worker keeps its warnings and errors (a failure's traceback)
        # and leaves the rest to its own lines.
        framework = logging.getLogger(FRAMEWORK_LOGGER)
        if framework.level == logging.NOTSET and not framework.handlers:
            framework.setLevel(logging.WARNING)

    def _print_banner(self, title: str, lines: dict[str, str]) -> None:
        self.stdout.write(self.style.SUCCESS(title))
        for name, value in lines.items():
            self.stdout.write(f"  {name + ':':<13}{value}")
        self.stdout.flush()
