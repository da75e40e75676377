"""``manage.py runworker``: run jobs from the database."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from django_bgtasks import __version__, metrics
from django_bgtasks.backend import DatabaseBackend
from django_bgtasks.compat import FRAMEWORK_LOGGER, loadable_backends
from django_bgtasks.conf import bgtasks_settings
from django_bgtasks.databases import served_databases
from django_bgtasks.db import CONNECTION_ERRORS
from django_bgtasks.exceptions import WorkerIdInUse
from django_bgtasks.maintenance.schedule_sync import InvalidSchedule
from django_bgtasks.worker import ForcedExit, Worker, WorkerExit, WorkerOptions
from django_bgtasks.worker.process import settle_garbage_collector
from django_bgtasks.worker.stall import StallGuard
from django_bgtasks.worker.supervisor import Supervisor

LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def banner(worker: Worker) -> dict[str, str]:
    """What the worker's startup banner shows."""
    options = worker.options
    connection = connections[worker.using]
    wakeups = f"polling every {worker.poll_interval:g} s"
    if worker.uses_notify:
        heard = "through the supervisor" if options.supervised else "LISTEN/NOTIFY"
        wakeups = f"{heard}, {wakeups}"
    prefetch = "adapts" if options.prefetch is None else str(options.prefetch)
    lines = {
        "worker": worker.worker_id,
        "database": f"{connection.display_name} ({worker.using})",
        "queues": ", ".join(worker.queues) if worker.queues else "* (all)",
        "concurrency": f"{options.concurrency} thread(s), prefetch {prefetch}",
        "wake-ups": wakeups,
    }
    if options.supervised:
        return {
            **lines,
            "scheduler": "the supervisor's",
            "maintenance": "the supervisor's",
        }
    return {**lines, **duties(options)}


def duties(options: WorkerOptions) -> dict[str, str]:
    """The banner's lines of the scheduler and the maintenance."""
    return {
        "scheduler": (
            f"every {bgtasks_settings.SCHEDULER_INTERVAL:g} s"
            if options.scheduler
            else "off"
        ),
        "maintenance": (
            f"rescue every {bgtasks_settings.HEARTBEAT_INTERVAL:g} s "
            f"(workers silent {bgtasks_settings.WORKER_TIMEOUT:g} s are dead), "
            f"prune every {bgtasks_settings.PRUNE_INTERVAL:g} s"
            if options.maintenance
            else "off"
        ),
    }


class Command(BaseCommand):
    help = "Run background jobs from the database until stopped."

    def add_arguments(self, parser):
        WorkerOptions.add_arguments(parser)

    def check(self, *args, **kwargs):
        """The system checks, with those of the jobs' database (its isolation
        level, SKIP LOCKED), which Django runs only when asked: a worker
        that would break a guarantee does not start. Not while the database
        is down: the worker waits for it."""
        try:
            served = served_databases(getattr(self, "_databases_option", None))
        except ValueError:
            served = []  # handle() says so
        reachable = []
        for using in served:
            try:
                connections[using].ensure_connection()
            except CONNECTION_ERRORS:
                continue
            reachable.append(using)
        kwargs.setdefault("databases", reachable)
        try:
            return super().check(*args, **kwargs)
        finally:
            # A supervisor's processes open their own; it needs none.
            for using in reachable:
                connections[using].close()

    def execute(self, *args, **options):
        # check() runs before handle() and must know the databases served.
        self._databases_option = options.get("databases")
        return super().execute(*args, **options)

    def handle(self, *args, **options):
        self._configure_logging(options["verbosity"])
        try:
            worker_options = WorkerOptions.from_command(options)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self._check_queues(worker_options.queue_list)
        try:
            databases = served_databases(worker_options.databases)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if len(databases) > 1 and not worker_options.supervises:
            # A process serves one database: one for each, supervised.
            if worker_options.max_jobs:
                raise CommandError(
                    "--max-jobs counts the jobs of one process, and a process "
                    f"serves one database (these jobs are in {len(databases)}): "
                    "use --max-jobs-per-child, or --databases to name one."
                )
            worker_options = replace(worker_options, processes=1)
        if worker_options.metrics_port or worker_options.count_metrics:
            self._metrics_installed()
        if worker_options.supervises:
            self._supervise(
                worker_options, options["verbosity"], options.get("pythonpath")
            )
            return
        if worker_options.metrics_port or worker_options.count_metrics:
            metrics.count_jobs()
        if worker_options.metrics_port:
            self._serve_metrics(worker_options)
        worker = Worker(worker_options)
        if options["verbosity"]:
            self._print_banner(f"django-bgtasks {__version__} worker", banner(worker))
        restore = worker.install_signal_handlers()
        try:
            if worker_options.supervised:
                # Stop requests come from the supervisor; the terminal's
                # Ctrl-C reaches the supervisor, which passes it on.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                worker.hear_supervisor(sys.stdin.fileno())
            settle_garbage_collector()  # this process is the worker's
            with StallGuard():  # this process is the worker's
                ended = worker.run()
        except ForcedExit:  # asked twice before the worker ran
            ended = WorkerExit.FORCED
        except (WorkerIdInUse, InvalidSchedule) as exc:
            raise CommandError(str(exc)) from None
        finally:
            restore()
        self._end(
            ended,
            supervised=worker_options.supervised,
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

    def _supervise(
        self, options: WorkerOptions, verbosity: int, pythonpath: str | None
    ) -> None:
        # The system checks ran here; in each child they would only load the
        # URLconf and its views (3 MB a process).
        program = [sys.executable, sys.argv[0], "runworker", "--skip-checks"]
        program += ["--verbosity", str(verbosity)]
        # --settings reaches the children through DJANGO_SETTINGS_MODULE,
        # which Django sets from it; --pythonpath only changes this
        # process's sys.path.
        if pythonpath:
            program += ["--pythonpath", pythonpath]
        folder = None
        if options.metrics_port:
            # The children's counts: each writes them to files here, which
            # the supervisor sums when Prometheus scrapes it (given to the
            # children, and read by prometheus_client, through this name).
            folder = tempfile.mkdtemp(prefix="bgtasks-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
            metrics.count_jobs_in_folder()  # the scheduler's, here
        supervisor = Supervisor(options, program=program, metrics_folder=folder)
        if verbosity:
            recycling = [
                f"after {options.max_jobs_per_child} jobs"
                if options.max_jobs_per_child
                else "",
                f"over {options.max_memory_per_child} MB"
                if options.max_memory_per_child
                else "",
            ]
            self._print_banner(
                f"django-bgtasks {__version__} supervisor (pid {os.getpid()})",
                {
                    "processes": f"{len(supervisor.slots)} x "
                    f"{options.concurrency} thread(s)",
                    # Named, not asked (MySQL's display name connects): a
                    # database that is down must not stop the others.
                    "databases": ", ".join(
                        f"{using} ({connections[using].settings_dict['NAME']})"
                        for using in supervisor.databases
                    )
                    + (
                        f", {options.processes or 1} process(es) each"
                        if len(supervisor.databases) > 1
                        else ""
                    ),
                    "recycling": ", ".join(filter(None, recycling)) or "off",
                    "wake-ups": (
                        "LISTEN/NOTIFY, passed on to the processes"
                        if supervisor.uses_notify
                        else "none (the processes poll)"
                    ),
                    **duties(options),
                },
            )
        try:
            if folder is not None:
                self._serve_metrics(options, multiprocess_folder=folder)
            code = supervisor.run()
        except InvalidSchedule as exc:
            raise CommandError(str(exc)) from None
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        if code:
            sys.exit(code)

    def _metrics_installed(self) -> None:
        try:
            metrics.require()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None

    def _serve_metrics(self, options: WorkerOptions, **kwargs) -> None:
        try:
            # The gauges of the databases it serves (checked in handle()).
            metrics.serve(
                options.metrics_port,
                options.metrics_host,
                databases=served_databases(options.databases),
                **kwargs,
            )
        except OSError as exc:  # the port is taken, or the address unknown
            raise CommandError(
                f"Cannot serve metrics on {options.metrics_host}:"
                f"{options.metrics_port}: {exc}."
            ) from None

    def _check_queues(self, queues: list[str] | None) -> None:
        """Refuse to start without a DatabaseBackend, or with queues none of
        them accepts (a typo would leave the worker idle forever)."""
        backends = [b for b in loadable_backends() if isinstance(b, DatabaseBackend)]
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
