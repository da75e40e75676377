"""The worker: claim due jobs for free slots, run them, stop cleanly.

The main loop lives here; the other threads (job threads, completer,
listener, heartbeat, maintenance) each have a module, and all report to the
ledger, the one owner of what the worker holds (``docs/internals/architecture.rst``).

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
import threading
import time
from dataclasses import replace
from typing import Protocol

from django.db import DatabaseError, connections

from .. import notify, registry
from ..conf import bgtasks_settings
from ..databases import served_databases
from ..db import (
    retry_until_done,
    use_wal_journal,
)
from ..maintenance.duties import Maintenance
from ..maintenance.schedule_sync import sync_at_start
from ..models import Job, WorkerProcess
from ..models.transitions import TimedOut
from .attempt import grace_error, retries, timeout_error
from .claims import Claimer
from .clock import DatabaseClock
from .completer import Completer
from .heartbeat import Heartbeat
from .hooks import Hooks
from .lease import STRAY_CHECK_SECONDS, Lease
from .ledger import Attempt, Ledger
from .listener import Listener
from .options import WorkerOptions
from .pipe import SupervisorMessages
from .pool import JobThreads
from .process import TRIM_AFTER_JOBS, default_worker_id, memory_mb, release_free_memory
from .slots import Slots
from .stopping import ForcedExit, StopRequests

logger = logging.getLogger("django_bgtasks.worker")


# The order in which the worker's threads are told to stop.
SHUTDOWN_ORDER = ("listener", "maintenance", "job threads", "completer", "heartbeat")


class Part(Protocol):
    """A thread of the worker: started once, told to stop once."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class WorkerExit(enum.IntEnum):
    """How ``Worker.run()`` ended; the value is the process's exit status."""

    STOPPED = 0  # asked to stop (or drained, or done its max_jobs)
    FORCED = 1  # asked twice: did not wait for running jobs
    FAILED = 70  # an unexpected error in the worker itself (EX_SOFTWARE)
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
        # Set here, then only read: options, ids, the parts below (each
        # thread-safe, or owned as its docstring says).
        self.options = options
        self.worker_id = options.worker_id or default_worker_id()
        self.queues = options.queue_list
        self.poll_interval = options.idle_poll_interval
        # One database a process (a supervisor runs one set of processes
        # per database).
        self.using = _one_database(options.databases)
        self.hooks = hooks or Hooks()
        # How run() ends: raised (never lowered) by the main thread and by
        # the thread that takes stop requests.
        self.exit = WorkerExit.STOPPED
        self.ledger = Ledger(
            Slots(
                threads=options.concurrency,
                prefetch=options.prefetch,
                max_jobs=options.max_jobs,
                # Claims wait while a batch of outcomes waits to be written.
                max_outcomes=Completer.MAX_BATCH,
            )
        )
        self.lease = Lease(
            worker_id=self.worker_id,
            using=self.using,
            queues=self.queues,
            concurrency=options.concurrency,
            ledger=self.ledger,
        )
        self.clock = DatabaseClock()
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
        # When the heartbeat's thread last looked for jobs held nowhere.
        self._strays_looked_at = time.monotonic()
        self._parts: dict[str, Part] = {}  # the threads started, by name
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
        self.ledger.close()  # and wakes the main loop

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
        """Make SIGTERM/SIGINT stop the worker (a second one: at once); a
        supervisor's child also takes its supervisor's stop requests as
        SIGUSR1/SIGUSR2. Returns a function that restores the previous
        handlers."""
        return self.stop_requests.install_signal_handlers(
            supervised=self.options.supervised
        )

    def _on_stop_request(self, source: str, count: int) -> None:
        if count == 1:
            counts = self.ledger.counts()
            logger.info(  # a normal stop: nothing is wrong
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
        finally:
            self._shutting_down = True  # nothing is interrupted after this
        return self.exit

    def _run(self) -> None:
        registry.autodiscover()
        use_wal_journal(self.using)
        registered = retry_until_done(
            self.lease.register,
            using=self.using,
            what="registering the worker",
            give_up=self._stopping,
        )
        if registered is None:
            return
        try:  # registered: whatever happens, the row goes
            retry_until_done(
                lambda: self.clock.sync(self.using),
                using=self.using,
                what="reading the database's clock",
                give_up=self._stopping,
            )
            sync_at_start(using=self.using, give_up=self._stopping)
            self._start_parts()
            try:
                self._loop()
            except ForcedExit:
                raise  # a second signal: leave at once (``run``)
            except Exception:
                self._loop_failed()
            # No more claims; one under way lands first (for up to 10 s), so
            # its jobs are waited for or given back with the others.
            self._close_claims(wait=10)
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
        heartbeat = Heartbeat(
            process=self.lease.row,
            interval=bgtasks_settings.HEARTBEAT_INTERVAL,
            using=self.using,
            on_lost=self._on_row_lost,
            clock=self.clock,
            after_beat=self._after_beat,
        )
        parts = {
            "completer": completer,
            "job threads": JobThreads(
                count=self.options.concurrency,
                ledger=self.ledger,
                completer=completer,
                claimer=self.claimer,
                clock=self.clock,
                give_up=self._forced,
            ),
            "heartbeat": heartbeat,
            "maintenance": Maintenance(
                using=self.using,
                scheduler=self.options.scheduler,
                housekeeping=self.options.maintenance,
                steadiness=heartbeat.steadiness,
            ),
        }
        if self.uses_notify and not self.options.supervised:
            # A supervisor's children hear through it (``hear_supervisor``).
            parts["listener"] = Listener(
                self.using,
                self.queues,
                self.claimer.notified,
                worker_id=self.worker_id,
                on_stop_request=lambda worker_id: self._hear_stop_requests(),
                on_warm=self.claimer.warm_listeners_connection,
            )
            self.claimer.ask_listener_to_warm = parts["listener"].ask_to_warm
        for name, part in parts.items():
            part.start()
            # Each as it starts: a second stop request may cut this short,
            # and _shut_down stops what is here.
            self._parts[name] = part

    def _loop(self) -> None:
        db_pause = 0.2
        was_idle = False
        while not self._stopping.is_set():
            self.ledger.clear_wake()
            self._check_memory()
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
            if (
                idle
                and self.options.burst
                and not claimed
                and not self.claimer.due_left()
            ):
                return
            if claimed and self.ledger.backlog:
                continue  # a full batch: there may be more, claim again
            if idle and not claimed:
                if not was_idle:
                    self._went_idle()
                self.hooks.idle_poll()
            was_idle = idle and not claimed
            wait = self._check_deadlines()
            self.hooks.waiting()
            self.ledger.wait(wait)

    def _loop_failed(self) -> None:
        """The main loop raised what no part of it expects (a bug, not the
        database: its errors are retried where they happen). What the
        worker holds in memory may no longer match the database, so it
        claims nothing more, lets its running jobs finish as in a stop, and
        ends with FAILED: the jobs the database says it still holds are put
        back to READY (``Lease.give_back``), and a supervisor starts a fresh
        process after its crash pause."""
        logger.exception(
            "The worker's main loop failed: claiming stops, running jobs get "
            "%g s to finish, then this process exits",
            self.options.shutdown_timeout,
        )
        self._failed()

    def _failed(self) -> None:
        """Stop as after a stop request, and end with FAILED (an unexpected
        error, logged by the caller)."""
        self.exit = max(self.exit, WorkerExit.FAILED)
        self.stop()

    def _went_idle(self) -> None:
        logger.debug("No job is due: waiting for one")
        if self.jobs_claimed - self._trimmed_at >= TRIM_AFTER_JOBS:
            # Done with a burst of work: what it freed goes back.
            release_free_memory()
            self._trimmed_at = self.jobs_claimed

    def _check_memory(self) -> None:
        limit = self.options.max_memory
        if not limit or self._stopping.is_set():
            return
        used = memory_mb()
        if used > limit:
            logger.warning(
                "The process uses %.0f MB, over --max-memory-per-child %d MB: "
                "stopping after the running jobs",
                used,
                limit,
            )
            self.stop()

    # Stop requests, timeouts and lost jobs ------------------------------------

    def hear_supervisor(self, fd: int) -> None:
        """Take stop requests, wake-ups and jobs' stop requests from the
        supervisor's messages on ``fd`` (``pipe.py``), on a thread."""
        messages = SupervisorMessages(
            fd,
            worker_id=self.worker_id,
            on_stop=self.stop_requests.from_supervisor,
            on_wake=self.claimer.notified,
            on_jobs_stop=self._hear_stop_requests,
            on_failure=self._failed,
            on_warm=self.claimer.warm_listeners_connection,
        )
        if self.uses_notify:
            self.claimer.ask_listener_to_warm = messages.ask_to_warm
        messages.start()

    def _after_beat(self) -> None:
        """On the heartbeat's thread, after each beat: the stop requests of
        the jobs held, and now and then the jobs held nowhere."""
        self._hear_stop_requests()
        now = time.monotonic()
        if now < self._strays_looked_at + STRAY_CHECK_SECONDS:
            return
        self._strays_looked_at = now
        try:
            self.lease.put_back_strays(self.clock.now())
        except DatabaseError as exc:
            logger.warning("Looking for jobs held nowhere failed (%s)", exc)

    def _hear_stop_requests(self) -> None:
        """Read which jobs this worker holds were asked to stop (an indexed
        read, skipped when it holds none) and tell the ledger; for the
        listener, on a NOTIFY, and for the heartbeat, after each beat."""
        if not self.ledger.unfinished_ids():
            return
        try:
            requests = Job.objects.using(self.using).cancel_requests(self.worker_id)
        except DatabaseError as exc:
            logger.warning("Reading stop requests failed (%s); retrying later", exc)
            return
        if not requests:
            return
        grace = bgtasks_settings.CANCEL_GRACE_PERIOD
        for attempt in self.ledger.stop_requested(requests, grace):
            job = attempt.job
            logger.warning(
                "Job %s was asked to stop%s: it has %g s to stop by itself",
                job.pk,
                f" by {job.cancel_requested_by}" if job.cancel_requested_by else "",
                grace,
            )

    def _check_deadlines(self) -> float:
        """End the process if a job ran past its timeout. Returns how long
        the loop may wait before it must look again."""
        overdue, wait = self.ledger.overdue(time.monotonic(), self.poll_interval)
        if overdue is not None:
            self._time_out(overdue)
        return wait

    def _time_out(self, attempt: Attempt) -> None:
        job = attempt.job
        if job.cancel_requested_at is not None:
            # Asked to stop, it did not within its grace period (or ran past
            # its timeout meanwhile): stopped the same way, it ends CANCELLED.
            logger.error(
                "Job %s did not stop within %g s of its cancel: ending this "
                "process, the job's neighbours go back to READY",
                job.pk,
                bgtasks_settings.CANCEL_GRACE_PERIOD,
            )
            error = grace_error(attempt)
        else:
            logger.error(
                "Job %s ran past its timeout of %g s: ending this process, the "
                "job's other neighbours go back to READY",
                job.pk,
                job.timeout,
            )
            error = timeout_error(attempt)
        self._recycle()  # first: no job thread may record anything now
        outcome = TimedOut(error, retryable=retries(job, error))
        retry_until_done(
            lambda: job.record(outcome, now=self.clock.now()),
            using=self.using,
            what=f"recording the timeout of job {job.pk}",
            give_up=threading.Event(),
        )

    def _on_row_lost(self) -> WorkerProcess | None:
        """For the heartbeat: the row registered again, or None once the
        worker ends its process (see ``Lease.row_lost``)."""
        row = self.lease.row_lost()
        if row is None:
            self._recycle()
        return row

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

    def _close_claims(self, wait: float) -> None:
        """Claim nothing more, and let a claim under way land within
        ``wait`` seconds, or until the worker must exit at once (``_forced``:
        a second stop request, a recycle, or the shutdown itself), and for
        one slice of 0.1 s at least; one that has not landed by then (the
        listener's, blocked in the database: the main loop's own is over)
        is cancelled in the server (PostgreSQL; best effort) and given 2 s
        more to land, as failed. Waited for in slices, so that ``_forced``
        ends the wait whether or not this thread is interrupted (a recycle
        sets it from another thread; and a run was seen where a second stop
        request did not interrupt this wait)."""
        deadline = time.monotonic() + wait
        while not self.ledger.close(wait=0.1, loop_done=True):
            if self._forced.is_set() or time.monotonic() >= deadline:
                break
        else:
            return
        logger.warning("A claim did not return: cancelling it")
        self.claimer.cancel_listeners_claim()
        if not self.ledger.close(wait=2.0, loop_done=True):
            logger.warning(
                "The claim did not stop: should it claim jobs, they are put "
                "back once this worker's row is seen to be stale"
            )

    def _shut_down(self) -> None:
        self._shutting_down = True
        # From here on no job thread starts a job or records an outcome: what
        # is unfinished is given back, perhaps to another worker.
        self._forced.set()
        for name in SHUTDOWN_ORDER:
            part = self._parts.get(name)
            if part is not None:
                part.stop()
        # What a claim under way takes is given back too (by now only the
        # listener's can be, blocked in the database: it is cancelled). No
        # wait of its own: ``_forced`` is set, so one slice at most.
        self._close_claims(wait=0)
        heartbeat = self._parts.get("heartbeat")
        if isinstance(heartbeat, threading.Thread):
            # Before the row goes, or a last beat might register it again.
            heartbeat.join(timeout=5)
        self.lease.give_back(within=10.0)
        connections.close_all()


def _one_database(databases) -> str:
    """The one database of a worker process given ``--databases``."""
    served = served_databases(databases)
    if len(served) > 1:
        raise ValueError(
            f"A worker process serves one database, not {len(served)} "
            f"({', '.join(served)}): run it under a supervisor (--processes), "
            f"which runs processes for each, or name one with --databases."
        )
    return served[0]
