"""The worker: claim due jobs for free slots, run them, stop cleanly.

One loop in the main thread claims as many due jobs as there are free slots
and hands them to the executor's threads; it sleeps until there are enough
free slots for its next claim, a NOTIFY arrives (PostgreSQL), the poll
interval passes or a stop is asked for. A job that a NOTIFY says outranks
the ones the worker holds is claimed at once on the listener's thread.

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

import ctypes
import enum
import functools
import gc
import logging
import os
import socket
import sys
import threading
import time
import traceback

from django.db import DatabaseError, connections, router
from django.utils.crypto import get_random_string

from .. import __version__, notify, registry
from ..conf import bgtasks_settings
from ..exceptions import JobInterrupted, JobTimeout
from ..models import Job, WorkerProcess
from ..schedule_sync import sync_schedules
from .completer import Completer, Finished, decide, record_outcome
from .db import (
    CONNECTION_ERRORS,
    close_if_obsolete,
    discard_connection,
    retry_until_done,
)
from .executor import Executor, Outcome
from .heartbeat import Heartbeat
from .maintenance import Maintenance
from .stopping import ForcedExit, StopRequests

logger = logging.getLogger("django_bgtasks.worker")


class WorkerExit(enum.IntEnum):
    """How ``Worker.run()`` ended; the value is the process's exit status."""

    STOPPED = 0  # asked to stop (or drained, or done its max_jobs)
    FORCED = 1  # asked twice: did not wait for running jobs
    RECYCLE = 75  # must be replaced by a fresh process (EX_TEMPFAIL)


def default_worker_id() -> str:
    host = socket.gethostname().split(".")[0][:60]
    return f"{host}.{os.getpid()}.{get_random_string(6).lower()}"


class Worker:
    """Run jobs from the database until stopped (or drained, with ``burst``).

    ``queues``: the queues to take jobs from; None for all. ``concurrency``:
    jobs run at once, each on its own thread. ``burst``: exit once no job is
    due and none is running. ``max_jobs``: exit after claiming this many.
    ``scheduler``: fire due schedules; ``maintenance``: rescue dead workers'
    jobs and prune old ones. ``max_memory_mb``: once the process uses more,
    stop after the running jobs (a supervisor starts a fresh one).
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
        maintenance: bool = True,
        max_memory_mb: int | None = None,
        prefetch: int = 0,
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
        self.runs_maintenance = maintenance
        self.max_memory_mb = max_memory_mb
        # Jobs claimed beyond the threads, waiting for one to free up.
        self.prefetch = prefetch
        self.using = router.db_for_write(Job)
        self.exit = WorkerExit.STOPPED

        self.jobs_claimed = 0
        self._claimed_at_last_trim = 0  # see release_free_memory()
        self.process: WorkerProcess | None = None
        self._running: dict[int, Job] = {}  # on a job thread
        self._pending: dict[int, Job] = {}  # ended, outcome not yet committed
        # When each running job started, and on which thread (for timeouts).
        self._started: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Set by NOTIFY: a job that outranks the claimed ones waiting for a
        # thread was enqueued since the last claim.
        self._urgent = threading.Event()
        self._last_claimed_priority: int | None = None  # the lowest, last claim
        # Held by the listener's thread while it claims an urgent job.
        self._urgent_claim = threading.Lock()
        self._urgent_claims_closed = False  # the worker is on its way out
        self._loop_claiming = False  # the main loop is in a claim of its own
        # Slots held for claims under way (the main loop's and the
        # listener's may overlap): not free, not yet running.
        self._reserved = 0
        # When the main loop will look at the running jobs' timeouts next.
        self._wake_at = 0.0
        # Free slots at which the main loop claims again: 1, or during a
        # backlog half the capacity (see _loop). A job leaving wakes the loop
        # only once there are that many (or none is left): a wake-up per job
        # would cost a GIL hand-off per job.
        self._claim_at = 1
        self._stopping = threading.Event()
        # Set when the worker must not wait for anything any more.
        self._forced = threading.Event()
        self._shutting_down = False
        self.stop_requests = StopRequests(
            self._on_stop_request, may_interrupt=lambda: not self._shutting_down
        )
        self._executor: Executor | None = None
        self._completer: Completer | None = None
        self._heartbeat: Heartbeat | None = None
        self._listener: notify.Listener | None = None
        self._maintenance: Maintenance | None = None

    # Control -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; let running jobs finish (within shutdown_timeout)."""
        self._stopping.set()
        self._wake.set()

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
            with self._lock:
                running = len(self._running)
            logger.warning(
                "%s received: finishing %d running job(s) within %.0f s, then "
                "exiting (send it again to exit at once)",
                source,
                running,
                self.shutdown_timeout,
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
        self._completer = Completer(
            worker_id=self.worker_id,
            using=self.using,
            on_completed=self._jobs_completed,
            give_up=self._forced,
        )
        self._completer.start()
        self._executor = Executor(
            concurrency=self.concurrency,
            worker_id=self.worker_id,
            using=self.using,
            on_start=self._job_started,
            on_done=self._job_done,
            on_finished=self._job_finished,
            give_up=self._forced,
        )
        self._executor.start()
        self._heartbeat = Heartbeat(
            process=self.process,
            interval=bgtasks_settings.HEARTBEAT_INTERVAL,
            using=self.using,
            on_lost=self._on_row_lost,
        )
        self._heartbeat.start()
        if self.uses_notify:
            self._listener = notify.Listener(self.using, self.queues, self._notified)
            self._listener.start()
        self._maintenance = Maintenance(
            using=self.using,
            scheduler=self.runs_scheduler,
            housekeeping=self.runs_maintenance,
        )
        self._maintenance.start()
        try:
            self._loop()
            self._close_urgent_claims()  # then wait for what they claimed too
            self._wait_for_running_jobs()
        finally:
            self._shut_down()

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
        was_idle = False
        while not self._stopping.is_set():
            self._wake.clear()
            with self._lock:
                free = self._free_slots_locked()
                busy = bool(self._running)
            if busy and free < self._claim_at:
                # Wait for more threads to free; but if a new job outranks
                # the prefetched ones, claim it now, alone (a small claim
                # returns soonest): it joins them and starts first.
                free = min(free, 1) if self._urgent.is_set() else 0
            claimed = []
            free = self._reserve(free) if free else 0
            if free:
                self._loop_claiming = True
                try:
                    claimed = self._claim(free)
                finally:
                    self._loop_claiming = False
                    self._release(free)
            if claimed is None:
                # A lost connection, or a row the database will not update:
                # either way, the worker keeps going.
                self._stopping.wait(db_pause)
                db_pause = min(db_pause * 2, 10.0)
                continue
            db_pause = 0.2
            if free:
                # While the queue has more than the worker takes (the claim
                # came back full), claim for half the threads at once rather
                # than for each thread as it frees: fewer, larger claims.
                # Otherwise claim at once.
                full = len(claimed) == free
                claim_at = max(1, self._capacity() // 2) if full else 1
                if claim_at < self._claim_at:
                    # Jobs that ended during the claim were held to the old
                    # mark and woke no one: look again before waiting.
                    self._wake.set()
                self._claim_at = claim_at
            with self._lock:
                idle = not self._running and not self._pending
            if idle and self._limit_reached():
                return
            if idle and self.burst and not claimed and not self._due_jobs_left():
                return
            if claimed and len(claimed) == free:
                continue  # a full batch: there may be more, claim again
            if idle and not claimed and not was_idle:
                logger.debug("No job is due: waiting for one")
                if self.jobs_claimed - self._claimed_at_last_trim >= TRIM_AFTER_JOBS:
                    # Done with a burst of work: what it freed goes back.
                    release_free_memory()
                    self._claimed_at_last_trim = self.jobs_claimed
            was_idle = idle and not claimed
            wait = self._check_timeouts()
            self._wake_at = time.monotonic() + wait
            self._wake.wait(wait)

    def _claim(self, limit: int, *, by_listener: bool = False) -> list[Job] | None:
        """Claim up to ``limit`` due jobs (in slots reserved for them) and
        hand them to the threads; None if the database failed (logged)."""
        urgent = self._urgent.is_set()
        self._urgent.clear()
        try:
            claimed = Job.objects.db_manager(self.using).claim(
                worker_id=self.worker_id, queues=self.queues, limit=limit
            )
        except DatabaseError as exc:
            logger.warning("Database error while claiming jobs (%s); retrying", exc)
            discard_connection(self.using)
            if urgent:
                self._urgent.set()  # still to claim
            return None
        if claimed and not by_listener:  # the urgent job is not the backlog's head
            self._last_claimed_priority = min(job.priority for job in claimed)
        self._dispatch(claimed)
        return claimed

    def _due_jobs_left(self) -> bool:
        """Whether due jobs remain (a claim may come back empty while other
        workers hold them locked, about to claim them)."""
        try:
            return Job.objects.using(self.using).due().in_queues(self.queues).exists()
        except CONNECTION_ERRORS:
            discard_connection(self.using)
            return True

    def _capacity(self) -> int:
        """The most jobs one claim may take: one per thread and prefetch
        slot, and no more than a batch of outcomes (claims wait while that
        many wait to be written: when the database writes slower than the
        threads run, finished jobs must not pile up in memory)."""
        return min(self.concurrency + self.prefetch, Completer.MAX_BATCH)

    def _free_slots_locked(self, beyond: int = 0) -> int:
        """Free slots; ``beyond``: how many more the threads and outcomes
        may take this time (never past ``max_jobs``)."""
        free = (
            min(
                self.concurrency + self.prefetch - len(self._running),
                Completer.MAX_BATCH - len(self._pending),
            )
            - self._reserved
            + beyond
        )
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.jobs_claimed - self._reserved)
        return max(free, 0)

    def _reserve(self, wanted: int, beyond: int = 0) -> int:
        """Hold up to ``wanted`` free slots for a claim; returns how many."""
        with self._lock:
            held = min(wanted, self._free_slots_locked(beyond))
            self._reserved += held
        return held

    def _release(self, held: int) -> None:
        """Give back slots held for a claim (its jobs, dispatched, hold
        their own)."""
        with self._lock:
            self._reserved -= held

    def _loop_has_work_locked(self) -> bool:
        """After a job left the running or pending ones: whether the main
        loop has something to do (claim, or notice it is idle)."""
        if not self._running and not self._pending:
            return True
        free = self._free_slots_locked()
        return free >= self._claim_at or (free > 0 and self._urgent.is_set())

    def _limit_reached(self) -> bool:
        return self.max_jobs is not None and self.jobs_claimed >= self.max_jobs

    def _dispatch(self, jobs: list[Job]) -> None:
        with self._lock:
            for job in jobs:
                self._running[job.pk] = job
            self.jobs_claimed += len(jobs)
        self._executor.submit(jobs)

    def _job_started(self, job: Job) -> None:
        now = time.monotonic()
        with self._lock:
            self._started[job.pk] = (now, threading.get_ident())
        if job.timeout and now + job.timeout < self._wake_at:
            self._wake.set()  # its deadline comes before the loop would look

    def _job_finished(self, job: Job, task, outcome: Outcome, elapsed_ms: float):
        """A job thread ended an attempt: on to the completer."""
        completion, verdict = decide(job, outcome, worker_id=self.worker_id)
        with self._lock:
            self._pending[job.pk] = job
        self._completer.submit(
            Finished(job, task, outcome, completion, verdict, elapsed_ms)
        )

    def _notified(self, priority: int | None) -> None:
        """NOTIFY (on the listener's thread): wake the main loop; mark the
        new jobs urgent if they outrank what the worker holds for its next
        free threads (or, with none held, what it claimed last: the head of
        the backlog). While jobs run, claim an urgent one here and now."""
        with self._lock:
            busy = bool(self._running)
            waiting = [
                job.priority
                for pk, job in self._running.items()
                if pk not in self._started
            ]
        floor = min(waiting) if waiting else self._last_claimed_priority
        if priority is None or floor is None or priority > floor:
            self._urgent.set()
            if priority is not None and (busy or self._loop_claiming):
                self._claim_urgent()
        self._wake.set()

    def _claim_urgent(self) -> None:
        """Claim the best due job alone, on this (the listener's) thread.

        Under load the main loop is often inside a large claim of its own,
        which takes milliseconds to tens of them; the urgent job would wait
        for it. Meanwhile the job threads start no jobs: a thread hands the
        GIL on only when it blocks or every 5 ms, to whichever thread waits,
        so behind a dozen threads busy with short jobs this thread would
        wait for the GIL for tens of milliseconds more, before the claim and
        again when its reply is in.
        """
        with self._urgent_claim:
            if self._urgent_claims_closed or self._stopping.is_set():
                return
            # One slot beyond the worker's capacity: the main loop's claim
            # under way holds all the free ones.
            if not self._reserve(1, beyond=1):
                return  # the main loop claims it once a slot frees
            self._executor.pause()
            try:
                # This thread's connection waits unused between claims: not
                # one past its age, or left unusable by an error, for this
                # one. No health check: its round trip would delay the urgent
                # job (by a millisecond or more under load); a connection
                # broken meanwhile fails the claim, and the main loop makes
                # it instead.
                close_if_obsolete(self.using)
                self._claim(1, by_listener=True)
            except Exception:
                logger.exception("Claiming an urgent job failed")
                self._urgent.set()  # for the main loop to claim
            finally:
                self._executor.resume()
                self._release(1)

    def _close_urgent_claims(self) -> None:
        """No more claims on the listener's thread; one under way lands first
        (for up to 10 s), so its job is waited for or given back with the
        others."""
        landed = self._urgent_claim.acquire(timeout=10)
        self._urgent_claims_closed = True
        if landed:
            self._urgent_claim.release()
        else:
            logger.warning("An urgent claim did not return within 10 s")

    def _jobs_completed(self, jobs: list[Job]) -> None:
        """A batch of outcomes is written (on the completer's thread)."""
        with self._lock:
            for job in jobs:
                self._pending.pop(job.pk, None)
            wake = self._loop_has_work_locked()
        if wake:
            self._wake.set()

    def _job_done(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.pk, None)
            self._started.pop(job.pk, None)
            wake = self._loop_has_work_locked()
        if wake:
            self._wake.set()
        if self.max_memory_mb and memory_mb() > self.max_memory_mb:
            logger.warning(
                "The process uses %.0f MB, over --max-memory-per-child %d MB: "
                "stopping after the running jobs",
                memory_mb(),
                self.max_memory_mb,
            )
            self.stop()

    # Timeouts and lost jobs ------------------------------------------------

    def _check_timeouts(self) -> float:
        """End the process if a job ran past its timeout. Returns how long
        the loop may wait before it must look again."""
        wait = self.poll_interval
        now = time.monotonic()
        with self._lock:
            started = [
                (job, *self._started[pk])
                for pk, job in self._running.items()
                if job.timeout and pk in self._started
            ]
        for job, began, thread_id in started:
            left = began + job.timeout - now
            if left <= 0:
                self._time_out(job, thread_id)
                return 0
            wait = min(wait, left)
        return wait

    def _time_out(self, job: Job, thread_id: int) -> None:
        logger.error(
            "Job %s ran past its timeout of %g s: ending this process, the "
            "job's other neighbours go back to READY",
            job.pk,
            job.timeout,
        )
        frame = sys._current_frames().get(thread_id)
        where = "".join(traceback.format_stack(frame)) if frame else ""
        error = JobTimeout(
            f"The job ran past its timeout of {job.timeout:g} s and its process "
            f"was ended.\nWhere the task was:\n{where}"
        )
        self._recycle()  # first: no job thread may record anything now
        retry_until_done(
            lambda: record_outcome(job, Outcome(error=error), worker_id=self.worker_id),
            using=self.using,
            what=f"recording the timeout of job {job.pk}",
            give_up=threading.Event(),
        )

    def _on_row_lost(self) -> WorkerProcess | None:
        """The heartbeat found this worker's row gone (judged dead). If its
        jobs were rescued, end the process so they do not run twice;
        otherwise (the row was deleted by hand) register again."""
        with self._lock:
            running = [*self._running, *self._pending]
        held = (
            Job.objects.using(self.using)
            .running()
            .filter(pk__in=running, worker_id=self.worker_id)
        )
        if held.count() == len(running):
            return self._register()
        logger.error(
            "Worker %s was judged dead and its jobs were rescued: ending this "
            "process so they do not run twice",
            self.worker_id,
        )
        self._recycle()
        return None

    def _wait_for_running_jobs(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while not self._forced.is_set():
            with self._lock:
                if not self._running and not self._pending:
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
        if self._maintenance is not None:
            self._maintenance.stop()
        if self._executor is not None:
            self._executor.stop()
        if self._completer is not None:
            self._completer.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        # From here on no job thread starts a job or records an outcome: what
        # is unfinished is given back, perhaps to another worker.
        self._forced.set()
        self._close_urgent_claims()  # what it claimed is given back too
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
            "maintenance": (
                f"rescue every {bgtasks_settings.HEARTBEAT_INTERVAL:g} s "
                f"(workers silent {bgtasks_settings.WORKER_TIMEOUT:g} s are dead), "
                f"prune every {bgtasks_settings.PRUNE_INTERVAL:g} s"
                if self.runs_maintenance
                else "off"
            ),
        }


# Jobs claimed since memory was last given back for the worker to give it
# back again when it goes idle: a trim walks every malloc arena, which is
# not worth doing after every lone job.
TRIM_AFTER_JOBS = 100


def release_free_memory() -> None:
    """Give memory that jobs allocated and freed back to the system, where
    the C library can (glibc's ``malloc_trim``): otherwise a worker keeps the
    high-water mark of its busiest moment for good."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


# Allocations (less deallocations) of container objects between two runs of
# the youngest generation's cyclic garbage collection; Python's default is
# 700. A claimed batch and its outcomes hold a few thousand such objects for
# milliseconds, so at 700 the collector runs every few dozen jobs and
# traverses them all, only for them to be freed by their reference counts
# soon after.
GC_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Tune this process's garbage collector for running jobs: what exists
    now (Django, the apps, the tasks: here for the process's lifetime) is
    left out of collections from now on (``gc.freeze``), and the youngest
    generation is collected after ``GC_THRESHOLD`` allocations rather than
    700 (together, about a tenth less CPU per no-op job in the benchmark).
    A threshold the project has raised, or a collector it has disabled, is
    left alone. For the worker's own process only: not for a process that
    merely runs a Worker among other work."""
    gc.freeze()
    youngest, *older = gc.get_threshold()
    if gc.isenabled() and 0 < youngest < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)


def memory_mb() -> float:
    """The resident memory of this process, in MB (Linux: current; else the
    peak)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
