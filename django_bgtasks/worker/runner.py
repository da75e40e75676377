"""The worker: claim due jobs for free slots, run them, stop cleanly.

One loop in the main thread claims as many due jobs as there are free slots
and hands them to the executor's threads; it sleeps until a job finishes, a
NOTIFY arrives (PostgreSQL), the poll interval passes or a stop is asked for.

Stopping: the first SIGTERM/SIGINT (or ``stop()``) ends claiming; running
jobs get ``shutdown_timeout`` seconds to finish; those still running are put
back to READY. A second signal skips the wait. Either way the worker's row
is removed and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from django.db import connections, router
from django.utils.crypto import get_random_string

from .. import __version__, notify, registry
from ..conf import bgtasks_settings
from ..exceptions import JobInterrupted
from ..models import Job, WorkerProcess
from ..schedule_sync import sync_schedules
from ..scheduler import SchedulerThread
from .db import CONNECTION_ERRORS, discard_connection, retry_until_done
from .executor import Executor
from .heartbeat import Heartbeat

logger = logging.getLogger("django_bgtasks.worker")


class ForcedExit(Exception):
    """A second stop signal: leave without waiting for running jobs."""


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0][:60]
    return f"{host}.{os.getpid()}.{get_random_string(6).lower()}"


class Worker:
    """Run jobs from the database until stopped (or drained, with ``burst``).

    ``queues``: the queues to take jobs from; None for all. ``concurrency``:
    jobs run at once, each on its own thread. ``burst``: exit once no job is
    due and none is running. ``max_jobs``: exit after claiming this many.
    """

    def __init__(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int = 1,
        burst: bool = False,
        max_jobs: int | None = None,
        poll_interval: float | None = None,
        worker_id: str | None = None,
        shutdown_timeout: float = 30.0,
        scheduler: bool = True,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queues = sorted(set(queues)) if queues is not None else None
        self.concurrency = concurrency
        self.burst = burst
        self.max_jobs = max_jobs
        self.poll_interval = (
            bgtasks_settings.POLL_INTERVAL if poll_interval is None else poll_interval
        )
        self.worker_id = worker_id or default_worker_id()
        self.shutdown_timeout = shutdown_timeout
        self.runs_scheduler = scheduler
        self.using = router.db_for_write(Job)

        self.jobs_claimed = 0
        self.process: WorkerProcess | None = None
        self._running: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Set when the worker must not wait for anything any more.
        self._forced = threading.Event()
        self._signals_seen = 0
        self._shutting_down = False
        self._executor: Executor | None = None
        self._heartbeat: Heartbeat | None = None
        self._listener: notify.Listener | None = None
        self._scheduler: SchedulerThread | None = None

    # Control -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; let running jobs finish (within shutdown_timeout)."""
        self._stopping.set()
        self._wake.set()

    @property
    def uses_notify(self) -> bool:
        return notify.notify_enabled(connections[self.using])

    def install_signal_handlers(self):
        """Make SIGTERM/SIGINT stop the worker (a second one: at once).

        Returns a function that puts the previous handlers back. Must be
        called from the main thread.
        """
        # A Python signal handler runs between two bytecodes of the main
        # thread, which may be holding a lock at that moment (an Event's, a
        # stream's): ours only counts and, for a second signal, raises.
        # Logging and stopping happen on a thread woken through the
        # interpreter's wake-up fd.
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        watcher = threading.Thread(
            target=self._watch_signals,
            args=(read_end,),
            name="bgtasks-signals",
            daemon=True,
        )
        watcher.start()

        def restore():
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_end)  # ends the watcher

        return restore

    def _on_signal(self, signum, frame) -> None:
        self._signals_seen += 1
        if self._signals_seen == 2 and not self._shutting_down:
            raise ForcedExit(signal.Signals(signum).name)
        if self._signals_seen > 2:
            os._exit(1)

    def _watch_signals(self, read_end: int) -> None:
        seen = 0
        try:
            while data := os.read(read_end, 64):
                for signum in data:
                    if signum not in (signal.SIGTERM, signal.SIGINT):
                        continue
                    seen += 1
                    self._after_signal(signal.Signals(signum).name, seen)
        finally:
            os.close(read_end)

    def _after_signal(self, name: str, seen: int) -> None:
        if seen == 1:
            with self._lock:
                running = len(self._running)
            logger.warning(
                "%s received: finishing %d running job(s) within %.0f s, then "
                "exiting (send it again to exit at once)",
                name,
                running,
                self.shutdown_timeout,
            )
        else:
            logger.warning("%s received again: exiting at once", name)
            self._forced.set()
        self.stop()

    # Running -----------------------------------------------------------------

    def run(self) -> bool:
        """Work until stopped. Returns False if a second signal cut it short."""
        try:
            return self._run()
        except ForcedExit:
            return False

    def _run(self) -> bool:
        registry.autodiscover()
        self._prepare_database()
        self.process = retry_until_done(
            self._register,
            using=self.using,
            what="registering the worker",
            give_up=self._stopping,
        )
        if self.process is None:
            return True
        synced = retry_until_done(
            sync_schedules,
            using=self.using,
            what="syncing declared schedules",
            give_up=self._stopping,
        )
        if synced is not None and (synced.created or synced.updated or synced.disabled):
            logger.info(
                "Declared schedules synced: %d created, %d updated, %d disabled",
                len(synced.created),
                len(synced.updated),
                len(synced.disabled),
            )
        self._executor = Executor(
            concurrency=self.concurrency,
            worker_id=self.worker_id,
            using=self.using,
            on_done=self._job_done,
            give_up=self._forced,
        )
        self._executor.start()
        self._heartbeat = Heartbeat(
            process=self.process,
            interval=bgtasks_settings.HEARTBEAT_INTERVAL,
            using=self.using,
            on_lost=self._register,
        )
        self._heartbeat.start()
        if self.uses_notify:
            self._listener = notify.Listener(self.using, self.queues, self._wake.set)
            self._listener.start()
        if self.runs_scheduler:
            self._scheduler = SchedulerThread(
                using=self.using, interval=bgtasks_settings.SCHEDULER_INTERVAL
            )
            self._scheduler.start()
        try:
            self._loop()
            self._wait_for_running_jobs()
        finally:
            self._shut_down()
        return self._signals_seen < 2

    def _register(self) -> WorkerProcess:
        return WorkerProcess.objects.db_manager(self.using).register(
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            version=__version__,
        )

    def _prepare_database(self) -> None:
        connection = connections[self.using]
        if connection.vendor != "sqlite" or connection.is_in_memory_db():
            return
        # WAL lets the web process read while a worker writes; it is a
        # property of the database file, kept once set.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
                logger.info("Switched the SQLite database to WAL journal mode")

    def _loop(self) -> None:
        db_pause = 0.2
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._free_slots()
            claimed = []
            if free:
                try:
                    claimed = Job.objects.db_manager(self.using).claim(
                        worker_id=self.worker_id, queues=self.queues, limit=free
                    )
                    db_pause = 0.2
                except CONNECTION_ERRORS as exc:
                    logger.warning(
                        "Database error while claiming jobs (%s); retrying in %.1f s",
                        exc,
                        db_pause,
                    )
                    discard_connection(self.using)
                    self._stopping.wait(db_pause)
                    db_pause = min(db_pause * 2, 10.0)
                    continue
                self._dispatch(claimed)
            with self._lock:
                idle = not self._running
            if idle and self._limit_reached():
                return
            if idle and self.burst and not claimed and not self._due_jobs_left():
                return
            if claimed and len(claimed) == free:
                continue  # a full batch: there may be more, claim again
            self._wake.wait(self.poll_interval)

    def _due_jobs_left(self) -> bool:
        """Whether due jobs remain (a claim may come back empty while other
        workers hold them locked, about to claim them)."""
        try:
            return Job.objects.using(self.using).due().in_queues(self.queues).exists()
        except CONNECTION_ERRORS:
            discard_connection(self.using)
            return True

    def _free_slots(self) -> int:
        with self._lock:
            free = self.concurrency - len(self._running)
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.jobs_claimed)
        return max(free, 0)

    def _limit_reached(self) -> bool:
        return self.max_jobs is not None and self.jobs_claimed >= self.max_jobs

    def _dispatch(self, jobs: list[Job]) -> None:
        for job in jobs:
            with self._lock:
                self._running[job.pk] = job
            self.jobs_claimed += 1
            self._executor.submit(job)

    def _job_done(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.pk, None)
        self._wake.set()

    def _wait_for_running_jobs(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while True:
            with self._lock:
                if not self._running:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            self._wake.wait(min(left, 1.0))

    def _shut_down(self) -> None:
        self._shutting_down = True
        if self._listener is not None:
            self._listener.stop()
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._executor is not None:
            self._executor.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        # From here on no job thread starts a job or records an outcome: what
        # is unfinished is given back, perhaps to another worker.
        self._forced.set()
        if self._heartbeat is not None:
            # Before the row goes, or a last beat might register it again.
            self._heartbeat.join(timeout=5)
        give_up = threading.Event()
        # Bounded: a database that stays down must not keep the worker alive.
        timer = threading.Timer(10.0, give_up.set)
        timer.daemon = True
        timer.start()
        # Always asked of the database, not of self._running: a stop can land
        # between a claim and its dispatch.
        steps = [
            ("putting unfinished jobs back", self._release_unfinished),
            ("unregistering the worker", self._unregister),
        ]
        for what, step in steps:
            try:
                retry_until_done(step, using=self.using, what=what, give_up=give_up)
            except Exception:
                logger.exception("Failed %s", what)
        timer.cancel()
        connections.close_all()

    def _release_unfinished(self) -> None:
        released = self.process.release_jobs(
            JobInterrupted("The worker stopped before the job finished.")
        )
        if released:
            logger.warning("Put %d unfinished job(s) back to READY", released)

    def _unregister(self) -> None:
        WorkerProcess.objects.db_manager(self.using).filter(pk=self.worker_id).delete()

    def describe(self) -> dict[str, str]:
        """What the startup banner shows."""
        connection = connections[self.using]
        wakeups = f"polling every {self.poll_interval:g} s"
        if self.uses_notify:
            wakeups = f"LISTEN/NOTIFY, {wakeups}"
        return {
            "worker": self.worker_id,
            "database": f"{connection.display_name} ({self.using})",
            "queues": ", ".join(self.queues) if self.queues else "* (all)",
            "concurrency": f"{self.concurrency} thread(s)",
            "wake-ups": wakeups,
            "scheduler": (
                f"every {bgtasks_settings.SCHEDULER_INTERVAL:g} s"
                if self.runs_scheduler
                else "off"
            ),
        }
