"""The job threads: each takes the best waiting attempt from the ledger, runs
it, and hands its outcome to the completer."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connections, reset_queries

from .. import notify, tracing
from ..db import close_idle_connections, retry_until_done, tidy_connections
from ..exceptions import WorkerError
from ..models import Job, JobStatus
from ..models.transitions import Failed, Interrupted, Succeeded, transition
from .attempt import Recorded, describe, run_attempt
from .claims import Claimer
from .clock import DatabaseClock
from .completer import Completer, Finished
from .ledger import Attempt, Ledger

logger = logging.getLogger("django_bgtasks.worker")


class JobThreads:
    """``count`` daemon threads running the attempts of ``ledger``.

    Daemon threads, so a worker that has given its unfinished jobs back can
    exit without waiting for them. Once ``give_up`` is set (the worker is
    exiting and gives its jobs back), a thread starts no job and discards
    the outcome of the one it was running.
    """

    def __init__(
        self,
        *,
        count: int,
        ledger: Ledger,
        completer: Completer,
        claimer: Claimer,
        clock: DatabaseClock,
        give_up: threading.Event,
    ):
        # Read-only; each thread's state is its own (the attempt it runs).
        self.ledger = ledger
        self.completer = completer
        self.claimer = claimer  # its started_receivers, per claim
        self.clock = clock
        self.give_up = give_up
        self._threads = [
            threading.Thread(
                target=self._work, name=f"bgtasks-job-{number}", daemon=True
            )
            for number in range(1, count + 1)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let each thread exit once the waiting attempts have run."""
        self.ledger.release_threads(len(self._threads))

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        try:
            # Connections a task opened are closed once the thread is idle.
            idle = close_idle_connections
            while (attempt := self.ledger.next_attempt(idle)) is not None:
                try:
                    finished = self._run(attempt)
                except Exception as exc:
                    logger.exception(
                        "Job %s: unexpected error in the worker", attempt.job.pk
                    )
                    finished = self._failed_around(attempt, exc)
                self._hand_on(attempt, finished)
        finally:
            connections.close_all()

    def _hand_on(self, attempt: Attempt, finished: Finished | None) -> None:
        """``finished`` to the completer, or the attempt dropped (None)."""
        try:
            if finished is None:
                self.ledger.dropped(attempt)
            else:
                self.ledger.finished(attempt, finished.elapsed_ms / 1000)
                self.completer.submit(finished)
        except Exception:
            logger.exception("Job %s: unexpected error in the worker", attempt.job.pk)
            self.ledger.dropped(attempt)

    def _run(self, attempt: Attempt) -> Finished | None:
        """Run ``attempt``: its outcome on its way to the database, or None
        if it is dropped (the worker gave the job back)."""
        job = attempt.job
        if self.give_up.is_set():
            return None
        if attempt.set_aside is not None:
            self._put_back(job, attempt.set_aside)
            if self.give_up.is_set():
                return None
        if logger.isEnabledFor(logging.INFO):
            logger.info("Job %s started: %s", job.pk, describe(job))
        started = time.monotonic()
        with tracing.running(job) as span:
            outcome, task, task_result = run_attempt(
                job, self.claimer.started_receivers, self.clock.now
            )
            tracing.ended(span, outcome)
        seconds = time.monotonic() - started
        # After each job: a connection the task left unusable is not handed
        # to the next job on this thread; the others stay open.
        try:
            tidy_connections(succeeded=isinstance(outcome, Succeeded))
        except Exception:
            # A backend's own error (not a DatabaseError): the outcome is
            # known, and stands; the thread's connections are closed.
            logger.exception("Job %s: tidying its thread's connections failed", job.pk)
            close_idle_connections()
        if settings.DEBUG:
            reset_queries()
        if self.give_up.is_set():
            # The worker is exiting and has given its jobs back (or is about
            # to): this outcome belongs to no one now.
            logger.warning(
                "Job %s ended after its worker gave it back; outcome discarded",
                job.pk,
            )
            return None
        if isinstance(outcome, Recorded):  # an atomic task's, written already
            return Finished(
                attempt, task, outcome.outcome, outcome.change, task_result,
                seconds * 1000, recorded=True,
            )  # fmt: skip
        change = transition(job, outcome, now=self.clock.now())
        return Finished(attempt, task, outcome, change, task_result, seconds * 1000)

    def _failed_around(self, attempt: Attempt, exc: Exception) -> Finished | None:
        """The outcome of an attempt around which the worker itself failed
        (``exc``: a bug, or a database backend's unexpected error) before
        it knew the attempt's own: failed with a ``WorkerError``, retried as
        the job allows. Dropped instead, the job would stay RUNNING, held by
        a worker that no longer runs it, until that worker stops. None if
        even that fails (dropped, then)."""
        if self.give_up.is_set():
            return None
        try:
            error = WorkerError(
                f"The worker failed around this attempt: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            outcome = Failed(error)
            change = transition(attempt.job, outcome, now=self.clock.now())
            elapsed = time.monotonic() - attempt.started
            return Finished(attempt, None, outcome, change, None, elapsed * 1000)
        except Exception:
            logger.exception("Job %s: its failure cannot be recorded", attempt.job.pk)
            return None

    def _put_back(self, alone: Job, jobs: list[Job]) -> None:
        """Before ``alone`` runs alone: put back the jobs it was held with,
        unstarted (the attempt does not count), for any worker to take."""
        logger.warning(
            "Job %s runs alone (its last process died while it ran beside "
            "other jobs)%s",
            alone.pk,
            f": putting back {len(jobs)} job(s) held with it" if jobs else "",
        )
        if not jobs:
            return
        using = alone._state.db

        def put_back() -> None:
            now = self.clock.now()
            woken = {
                job.queue_name
                for job in jobs
                if job.status == JobStatus.RUNNING
                and job.record(Interrupted(), now=now) is not None
            }
            notify.wake(using, woken)

        retry_until_done(
            put_back, using=using, what="putting back jobs", give_up=self.give_up
        )
