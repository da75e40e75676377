"""Writing outcomes to the database in batches, then logging them and sending
``task_finished``."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from django.db import connections

from .. import metrics
from ..backend import DatabaseBackend
from ..compat import task_finished
from ..db import IDLE_CONNECTION_SECONDS, close_idle_connections, retry_until_done
from ..exceptions import OutcomeNotStored
from ..models.transitions import Expired, Failed, Transition, Verdict, WorkerOutcome
from ..private_api import Receivers
from ..rows import job_result, update_result
from ..sql.complete import Completion, complete_jobs
from .attempt import chained, describe
from .hooks import Hooks
from .ledger import Attempt, Ledger
from .slots import MAX_OUTCOMES

logger = logging.getLogger("django_bgtasks.worker")


@dataclass(slots=True)
class Finished:
    """An attempt that has ended, on its way to the database."""

    attempt: Attempt
    task: Any  # None if the job's task could not be found
    outcome: WorkerOutcome
    # What the outcome writes to the job; if ``recorded``, what it wrote
    # (None: nothing, the job was taken from this worker).
    change: Transition | None
    task_result: Any  # the one task_started was sent with, if it was
    elapsed_ms: float
    # Written already, by an atomic task's own transaction: only reported.
    recorded: bool = False


class Completer(threading.Thread):
    """Writes finished attempts to the database in batches.

    Whatever has finished while the last batch was being written goes in the
    next one: one transaction for many jobs. An attempt counts as done
    (logged, ``task_finished`` sent, written in the ledger) only once its
    outcome is committed. Once ``give_up`` is set (the worker is exiting and
    gives its jobs back), outcomes are discarded.
    """

    MAX_BATCH = MAX_OUTCOMES

    def __init__(
        self,
        *,
        worker_id: str,
        using: str,
        ledger: Ledger,
        hooks: Hooks,
        give_up: threading.Event,
    ):
        super().__init__(name="bgtasks-completer", daemon=True)
        self.worker_id = worker_id
        self.using = using
        self.ledger = ledger
        self.hooks = hooks
        self.give_up = give_up
        # The job threads put, this thread takes; the rest is read-only.
        self._finished: queue.SimpleQueue[Finished | None] = queue.SimpleQueue()

    def submit(self, finished: Finished) -> None:
        self._finished.put(finished)

    def stop(self) -> None:
        self._finished.put(None)

    def run(self) -> None:
        try:
            while (first := self._next()) is not None:
                batch = [first]
                while len(batch) < self.MAX_BATCH:
                    try:
                        item = self._finished.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._finished.put(None)  # stop after this batch
                        break
                    batch.append(item)
                try:
                    self._complete(batch)
                except Exception:
                    logger.exception("Completing %d job(s) failed", len(batch))
                finally:
                    self.ledger.written([finished.attempt for finished in batch])
                    self.hooks.written(len(batch))
        finally:
            connections.close_all()

    def _next(self) -> Finished | None:
        """The next outcome; the connection is closed while none comes."""
        try:
            return self._finished.get(timeout=IDLE_CONNECTION_SECONDS)
        except queue.Empty:
            close_idle_connections()
            return self._finished.get()

    def _complete(self, batch: list[Finished]) -> None:
        receivers = Receivers(task_finished, DatabaseBackend)
        self._write(
            [finished for finished in batch if not finished.recorded], receivers
        )
        for finished in batch:
            if finished.recorded:  # an atomic task's: its transaction wrote it
                report(finished, finished.change, receivers)

    def _write(self, batch: list[Finished], receivers: Receivers) -> None:
        """Record the outcomes of ``batch`` in one transaction, then report
        each (one by one where the database refuses the batch)."""
        if not batch:
            return
        if self.give_up.is_set():
            logger.warning(
                "%d job(s) ended while their worker was exiting; outcomes "
                "discarded", len(batch),
            )  # fmt: skip
            return
        completions = [
            Completion(
                f.attempt.job.id,
                f.attempt.job.attempts,
                f.change.changes,
                f.change.deletes,
                f.attempt.job.has_dependents and f.change.finishes,
                f.change.void_if_asked_to_stop,
            )
            for f in batch
        ]
        try:
            applied = retry_until_done(
                lambda: complete_jobs(self.using, self.worker_id, completions),
                using=self.using,
                what=f"recording the outcomes of {len(batch)} job(s)",
                give_up=self.give_up,
            )
        except Exception as exc:
            # The database is up but refuses something in the batch (or a
            # value could not be sent): record the jobs one by one, so one
            # bad outcome harms only its job (its error logged there).
            logger.warning(
                "Recording %d outcome(s) at once failed (%s: %s); recording "
                "them one by one", len(batch), type(exc).__name__, exc,
            )  # fmt: skip
            for finished in batch:
                self._complete_one(finished)
            return
        if applied is None:  # gave up: the worker is exiting
            return
        for finished in batch:
            job = finished.attempt.job
            if job.id in applied:
                for name, value in finished.change.changes.items():
                    setattr(job, name, value)
                report(finished, finished.change, receivers)
            elif finished.change.void_if_asked_to_stop:
                # Taken away, or asked to stop meanwhile: decided again.
                self._complete_one(finished)
            else:
                report(finished, None, receivers)

    def _complete_one(self, finished: Finished) -> None:
        job = finished.attempt.job
        try:
            change = self._record(job, finished.outcome)
        except Exception as exc:
            # Refused again: fail the job with an error it will take, rather
            # than leave it RUNNING.
            finished.outcome = not_stored(job, exc)
            try:
                change = self._record(job, finished.outcome)
            except Exception:
                # Not even that: the job stays RUNNING, held by this worker,
                # until its process ends and puts it back to READY.
                logger.exception("Job %s: no outcome could be recorded", job.pk)
                return
        if change is None and self.give_up.is_set():
            return  # the worker is exiting: nothing was recorded
        report(finished, change, Receivers(task_finished, DatabaseBackend))

    def _record(self, job, outcome) -> Transition | None:
        return retry_until_done(
            lambda: job.record(outcome),
            using=self.using,
            what=f"recording the outcome of job {job.pk}",
            give_up=self.give_up,
        )


def not_stored(job, exc: Exception) -> Failed:
    """The outcome that replaces one the database refused to store for
    ``job`` (``exc``): the job fails for good, with an error it will take,
    rather than stay RUNNING."""
    logger.exception("Job %s: its outcome could not be stored", job.pk)
    error = chained(
        OutcomeNotStored(
            f"The job's outcome could not be stored: {type(exc).__name__}: {exc}"
        ),
        exc,
    )
    return Failed(error, retryable=False)


# An attempt's outcome, as the metrics name it (``metrics.py``); an outcome
# discarded (the job was taken from this worker) is "lost".
OUTCOME_NAMES = {
    Verdict.SUCCEEDED: "succeeded",
    Verdict.RETRYING: "retried",
    Verdict.FAILED: "failed",
    Verdict.SNOOZED: "snoozed",
    Verdict.CANCELLED: "cancelled",
    Verdict.PUT_BACK: "put_back",
}


def report(
    finished: Finished,
    change: Transition | None,
    receivers: Receivers,
    *,
    robust: bool = True,
) -> None:
    """Log a recorded outcome (``change`` None: the job was taken from this
    worker, its outcome discarded); send ``task_finished`` to ``receivers``
    for a finished job. ``robust``: each receiver is called whatever the
    others raise, and what one raises is logged (the worker's way); else
    the first error propagates, as from ``Signal.send`` (``run_jobs``,
    where it is a test's)."""
    job = finished.attempt.job
    error = getattr(finished.outcome, "error", None)
    elapsed_ms = finished.elapsed_ms
    verdict = change.verdict if change is not None else None
    if verdict is Verdict.SUCCEEDED:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Job %s succeeded in %.1f ms: %s", job.pk, elapsed_ms, describe(job)
            )
    elif verdict is Verdict.RETRYING:
        logger.warning(
            "Job %s failed in %.1f ms, retrying at %s: %s: %s: %s",
            job.pk, elapsed_ms, job.run_after.isoformat(timespec="seconds"),
            describe(job), type(error).__name__, error,
        )  # fmt: skip
    elif verdict is Verdict.FAILED:
        logger.error(
            "Job %s failed in %.1f ms: %s: %s: %s",
            job.pk, elapsed_ms, describe(job), type(error).__name__, error,
        )  # fmt: skip
    elif verdict is Verdict.SNOOZED:
        logger.info(
            "Job %s snoozed in %.1f ms until %s: %s",
            job.pk, elapsed_ms, job.run_after.isoformat(timespec="seconds"),
            describe(job),
        )  # fmt: skip
    elif verdict is Verdict.CANCELLED:
        logger.info(
            "Job %s ended CANCELLED in %.1f ms: %s: %s",
            job.pk, elapsed_ms, describe(job), error,
        )  # fmt: skip
    elif verdict is None:
        logger.warning(
            "Job %s was taken from this worker before it finished (%s); its "
            "outcome is discarded", job.pk, describe(job),
        )  # fmt: skip
    if finished.task_result is not None:  # started (metrics.attempt_started)
        metrics.attempt_ended(job, OUTCOME_NAMES.get(verdict, "lost"), elapsed_ms)
    if (
        finished.task is not None
        and change is not None
        and change.finishes
        # Never started: no task_started was sent, so no task_finished.
        and not isinstance(finished.outcome, Expired)
    ):
        task_result = finished.task_result
        if task_result is None:
            task_result = job_result(job, finished.task)
        else:
            update_result(task_result, job)
        _send_finished(receivers, task_result, error, job, robust)


def _send_finished(receivers: Receivers, task_result, error, job, robust) -> None:
    """Send ``task_finished``; for a failure, from inside an exception
    handler, as the framework does, so receivers (its own logger, error
    monitoring) see the task's exception. The outcome is recorded by now:
    sent ``robust``, a receiver that raises is logged, and changes nothing
    for the job, the other receivers or the other jobs."""
    send = receivers.send_robust if robust else receivers.send
    if error is None:
        raised = send(task_result=task_result)
    else:
        try:
            raise error
        except BaseException:
            raised = send(task_result=task_result)
    for receiver, exc in raised or ():
        logger.error(
            "Job %s: a task_finished receiver (%s) raised; the job's outcome "
            "is recorded",
            job.pk,
            getattr(receiver, "__qualname__", receiver),
            exc_info=exc,
        )
