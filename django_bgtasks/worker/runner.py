"""The worker: claim due jobs for free slots, run them, stop cleanly.

``docs/architecture.rst`` draws the whole of it; in short, a worker process
has these threads, and every one of them reports to the ledger
(``ledger.py``), the one owner of what the worker holds:

- the **main loop** (this module): claims jobs when the ledger says slots are
  free (``claims.py``), ends the process when a job runs past its timeout,
  and decides when the worker is done;
- the **job threads** (``pool.py``): run the best waiting job, one at a time;
- the **completer** (``completer.py``): writes outcomes in batches;
- the **listener** (``listener.py``, PostgreSQL): wakes the main loop on
  NOTIFY, and claims a job that outranks the held ones itself;
- the **heartbeat** (``heartbeat.py``) and the **maintenance** duties
  (``maintenance/``), each on a thread of its own.

Stopping: the first SIGTERM/SIGINT (or ``stop()``) ends claiming; running
jobs get ``shutdown_timeout`` seconds to finish; those still running are put
back to READY. A second signal skips the wait. Either way the worker's row
is removed and ``run()`` returns.

Ending the process: a job running past its timeout cannot be stopped inside
the process (a thread cannot be killed), and neither can a job rescued from
this worker while it was too slow to beat. Then the worker records the
timeout, puts its other jobs back, and ``run()`` returns RECYCLE: the command
ends the process and a fresh one takes its place.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import replace

from django.db import connections, router

from .. import __version__, notify, registry
from ..conf import bgtasks_settings
from ..db import CONNECTION_ERRORS, discard_connection, retry_until_done
from ..exceptions import JobInterrupted, JobTimeout
from ..maintenance.duties import Maintenance
from ..maintenance.schedule_sync import sync_schedules
from ..models import Job, WorkerProcess
from ..models.transitions import TimedOut
from .claims import Claimer
from .completer import Completer
from .heartbeat import Heartbeat
from .hooks import Hooks
from .ledger import Attempt, Ledger
from .listener import Listener
from .options import WorkerOptions
from .pool import JobThreads
from .process import TRIM_AFTER_JOBS, default_worker_id, memory_mb, release_free_memory
from .slots import Slots
from .stopping import ForcedExit, StopRequests

logger = logging.getLogger("django_bgtasks.worker")


# The order in which the worker's threads are told to stop.
SHUTDOWN_ORDER = ("listener", "maintenance", "job threads", "completer", "heartbeat")


class WorkerExit(enum.IntEnum):
    """How ``Worker.run()`` ended; the value is the process's exit status."""

    STOPPED = 0  # asked to stop (or drained, or done its max_jobs)
    FORCED = 1  # asked twice: did not wait for running jobs
    RECYCLE = 75  # must be replaced by a fresh process (EX_TEMPFAIL)


class Worker:
    """Run jobs from the database until stopped (or drained, with ``burst``).

    ``options``: how it runs (``WorkerOptions``); keyword arguments replace
    its fields, so ``Worker(concurrency=4, burst=True)`` works too.
    ``hooks``: moments tests wait for (``hooks.py``).
    """

    def __init__(
        self,
        options: WorkerOptions | None = None,
        *,
        hooks: Hooks | None = None,
        **option_values,
    ):
        options = replace(options or WorkerOptions(), **option_values)
        self.options = options
        self.worker_id = options.worker_id or default_worker_id()
        self.queues = options.queue_list
        self.poll_interval = options.idle_poll_interval
        self.using = router.db_for_write(Job)
        self.hooks = hooks or Hooks()
        self.exit = WorkerExit.STOPPED
        self.process: WorkerProcess | None = None
        self.ledger = Ledger(
            Slots(
                threads=options.concurrency,
                prefetch=options.prefetch,
                max_jobs=options.max_jobs,
                # Claims wait while a batch of outcomes waits to be written.
                max_outcomes=Completer.MAX_BATCH,
            )
        )
        self.claimer = Claimer(
            ledger=self.ledger,
            using=self.using,
            worker_id=self.worker_id,
            queues=self.queues,
            hooks=self.hooks,
        )
        # Set from any thread: a stop was asked for (claim nothing more); the
        # worker gives its jobs back and must not wait for anything any more.
        self._stopping = threading.Event()
        self._forced = threading.Event()
        # The main thread's own (the signal handler runs there too).
        self._shutting_down = False
        self._trimmed_at = 0  # jobs claimed when memory was last given back
        self._parts: dict[str, object] = {}  # the threads started, by name
        self.stop_requests = StopRequests(
            self._on_stop_request, may_interrupt=lambda: not self._shutting_down
        )

    @property
    def jobs_claimed(self) -> int:
        return self.ledger.claimed_count

    # Control -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; let running jobs finish (within shutdown_timeout)."""
        self._stopping.set()
        self.ledger.wake()

    def force_stop(self) -> None:
        """Stop at once: running jobs are put back, not waited for."""
        self.exit = max(self.exit, WorkerExit.FORCED)
        self._forced.set()
        self.stop()

    def _recycle(self) -> None:
        """End this process as soon as its jobs are safe; see the module."""
        self.exit = WorkerExit.RECYCLE
        self._forced.set()
        self.stop()

    @property
    def uses_notify(self) -> bool:
        return notify.notify_enabled(connections[self.using])

    def install_signal_handlers(self):
        """Make SIGTERM/SIGINT stop the worker (a second one: at once).
        Returns a function that restores the previous handlers."""
        return self.stop_requests.install_signal_handlers()

    def _on_stop_request(self, source: str, count: int) -> None:
        if count == 1:
            counts = self.ledger.counts()
            logger.warning(
                "%s received: finishing %d running job(s) within %.0f s, then "
                "exiting (send it again to exit at once)",
                source,
                counts["waiting"] + counts["running"],
                self.options.shutdown_timeout,
            )
            self.stop()
        else:
            logger.warning("%s received again: exiting at once", source)
            self.force_stop()

    # Running -----------------------------------------------------------------

    def run(self) -> WorkerExit:
        """Work until stopped; return how it ended."""
        try:
            self._run()
        except ForcedExit:
            self.exit = max(self.exit, WorkerExit.FORCED)
        return self.exit

    def _run(self) -> None:
        registry.autodiscover()
        self._prepare_database()
        self.process = retry_until_done(
            self._register,
            using=self.using,
            what="registering the worker",
            give_up=self._stopping,
        )
        if self.process is None:
            return
        self._sync_schedules()
        self._start_parts()
        try:
            self._loop()
            # No more claims; one under way lands first (for up to 10 s), so
            # its jobs are waited for or given back with the others.
            if not self.ledger.close(wait=10):
                logger.warning("A claim did not return within 10 s")
            self._wait_for_held_jobs()
        finally:
            self._shut_down()

    def _start_parts(self) -> None:
        completer = Completer(
            worker_id=self.worker_id,
            using=self.using,
            ledger=self.ledger,
            hooks=self.hooks,
            give_up=self._forced,
        )
        parts = {
            "completer": completer,
            "job threads": JobThreads(
                count=self.options.concurrency,
                ledger=self.ledger,
                completer=completer,
                started_receivers=lambda: self.claimer.started_receivers,
                give_up=self._forced,
            ),
            "heartbeat": Heartbeat(
                process=self.process,
                interval=bgtasks_settings.HEARTBEAT_INTERVAL,
                using=self.using,
                on_lost=self._on_row_lost,
            ),
            "maintenance": Maintenance(
                using=self.using,
                scheduler=self.options.scheduler,
                housekeeping=self.options.maintenance,
            ),
        }
        if self.uses_notify:
            parts["listener"] = Listener(self.using, self.queues, self.claimer.notified)
        for part in parts.values():
            part.start()
        self._parts = parts

    def _register(self) -> WorkerProcess:
        return WorkerProcess.objects.db_manager(self.using).register(
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.options.concurrency,
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

    def _sync_schedules(self) -> None:
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

    def _loop(self) -> None:
        db_pause = 0.2
        was_idle = False
        while not self._stopping.is_set():
            self.ledger.clear_wake()
            claimed = self.claimer.claim_for_loop()
            if claimed is None:
                # A lost connection, or a row the database will not update:
                # either way, the worker keeps going.
                self._stopping.wait(db_pause)
                db_pause = min(db_pause * 2, 10.0)
                continue
            db_pause = 0.2
            idle = self.ledger.idle
            if idle and self.ledger.limit_reached:
                return
            if idle and self.options.burst and not claimed and not self._due_left():
                return
            if claimed and self.ledger.backlog:
                continue  # a full batch: there may be more, claim again
            if idle and not claimed:
                if not was_idle:
                    self._went_idle()
                self.hooks.idle_poll()
            was_idle = idle and not claimed
            self._check_memory()
            wait = self._check_deadlines()
            self.hooks.waiting()
            self.ledger.wait(wait)

    def _due_left(self) -> bool:
        """Whether due jobs remain (a claim may come back empty while other
        workers hold them locked, about to claim them)."""
        try:
            return Job.objects.using(self.using).due().in_queues(self.queues).exists()
        except CONNECTION_ERRORS:
            discard_connection(self.using)
            return True

    def _went_idle(self) -> None:
        logger.debug("No job is due: waiting for one")
        if self.jobs_claimed - self._trimmed_at >= TRIM_AFTER_JOBS:
            # Done with a burst of work: what it freed goes back.
            release_free_memory()
            self._trimmed_at = self.jobs_claimed

    def _check_memory(self) -> None:
        limit = self.options.max_memory
        if limit and not self._stopping.is_set() and memory_mb() > limit:
            logger.warning(
                "The process uses %.0f MB, over --max-memory-per-child %d MB: "
                "stopping after the running jobs",
                memory_mb(),
                limit,
            )
            self.stop()

    # Timeouts and lost jobs ------------------------------------------------

    def _check_deadlines(self) -> float:
        """End the process if a job ran past its timeout. Returns how long
        the loop may wait before it must look again."""
        overdue, wait = self.ledger.overdue(time.monotonic(), self.poll_interval)
        if overdue is not None:
            self._time_out(overdue)
        return wait

    def _time_out(self, attempt: Attempt) -> None:
        job = attempt.job
        logger.error(
            "Job %s ran past its timeout of %g s: ending this process, the "
            "job's other neighbours go back to READY",
            job.pk,
            job.timeout,
        )
        frame = sys._current_frames().get(attempt.thread_id)
        where = "".join(traceback.format_stack(frame)) if frame else ""
        error = JobTimeout(
            f"The job ran past its timeout of {job.timeout:g} s and its process "
            f"was ended.\nWhere the task was:\n{where}"
        )
        self._recycle()  # first: no job thread may record anything now
        retry_until_done(
            lambda: job.record(TimedOut(error)),
            using=self.using,
            what=f"recording the timeout of job {job.pk}",
            give_up=threading.Event(),
        )

    def _on_row_lost(self) -> WorkerProcess | None:
        """The heartbeat found this worker's row gone (judged dead). If its
        jobs were rescued, end the process so they do not run twice;
        otherwise (the row was deleted by hand) register again."""
        held = self.ledger.held_ids()
        still_held = (
            Job.objects.using(self.using)
            .running()
            .filter(pk__in=held, worker_id=self.worker_id)
        )
        if still_held.count() == len(held):
            return self._register()
        logger.error(
            "Worker %s was judged dead and its jobs were rescued: ending this "
            "process so they do not run twice",
            self.worker_id,
        )
        self._recycle()
        return None

    # Stopping ------------------------------------------------------------------

    def _wait_for_held_jobs(self) -> None:
        deadline = time.monotonic() + self.options.shutdown_timeout
        while not self._forced.is_set() and not self.ledger.idle:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.ledger.clear_wake()
            if not self.ledger.idle:
                self.ledger.wait(min(left, 1.0))

    def _shut_down(self) -> None:
        self._shutting_down = True
        for name in (
            "listener",
            "maintenance",
            "job threads",
            "completer",
            "heartbeat",
        ):
            part = self._parts.get(name)
            if part is not None:
                part.stop()
        # From here on no job thread starts a job or records an outcome: what
        # is unfinished is given back, perhaps to another worker.
        self._forced.set()
        self.ledger.close(wait=10)  # what a claim under way takes goes back too
        heartbeat = self._parts.get("heartbeat")
        if heartbeat is not None:
            # Before the row goes, or a last beat might register it again.
            heartbeat.join(timeout=5)
        give_up = threading.Event()
        # Bounded: a database that stays down must not keep the worker alive.
        timer = threading.Timer(10.0, give_up.set)
        timer.daemon = True
        timer.start()
        # Always asked of the database, not of the ledger: a stop can land
        # between a claim's commit and its return.
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
        prefetch = self.options.prefetch
        return {
            "worker": self.worker_id,
            "database": f"{connection.display_name} ({self.using})",
            "queues": ", ".join(self.queues) if self.queues else "* (all)",
            "concurrency": f"{self.options.concurrency} thread(s), prefetch "
            + ("adapts" if prefetch is None else str(prefetch)),
            "wake-ups": wakeups,
            "scheduler": (
                f"every {bgtasks_settings.SCHEDULER_INTERVAL:g} s"
                if self.options.scheduler
                else "off"
            ),
            "maintenance": (
                f"rescue every {bgtasks_settings.HEARTBEAT_INTERVAL:g} s "
                f"(workers silent {bgtasks_settings.WORKER_TIMEOUT:g} s are dead), "
                f"prune every {bgtasks_settings.PRUNE_INTERVAL:g} s"
                if self.options.maintenance
                else "off"
            ),
        }
