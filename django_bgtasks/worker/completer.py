"""Recording finished attempts: the outcome's verdict, and writing outcomes
to the database in batches."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connections
from django.utils import timezone

from ..backend import DatabaseBackend
from ..backoff import Backoff
from ..compat import InvalidTask, task_finished
from ..conf import bgtasks_settings
from ..dispatch import Receivers
from ..exceptions import OutcomeNotStored
from ..models import Job, JobStatus, error_entry
from ..sql.complete import Completion, complete_jobs
from .db import retry_until_done
from .executor import Outcome, _chained, describe

logger = logging.getLogger("django_bgtasks.worker")


@dataclass(slots=True)
class Finished:
    """An attempt that has ended, on its way to the database."""

    job: Job
    task: Any
    outcome: Outcome
    completion: Completion
    verdict: str  # "succeeded", "retrying" or "failed"
    elapsed_ms: float


def decide(
    job: Job, outcome: Outcome, *, worker_id: str, now: datetime | None = None
) -> tuple[Completion, str]:
    """What the outcome writes to the job, and the verdict: "succeeded",
    "retrying" (READY again, due after its backoff) or "failed"."""
    now = now or timezone.now()
    if outcome.error is None:
        completion = Completion(
            job.pk, job.attempts, JobStatus.SUCCESSFUL,
            return_value=outcome.return_value, finished_at=now,
        )  # fmt: skip
        return completion, "succeeded"
    errors = [
        *job.error_list,
        error_entry(outcome.error, attempt=job.attempts, worker_id=worker_id, at=now),
    ]
    if outcome.retryable and job.attempts < job.max_attempts:
        try:
            backoff = Backoff.coerce(job.backoff or bgtasks_settings.BACKOFF)
        except InvalidTask:  # a corrupt stored backoff: the default
            backoff = Backoff.coerce(bgtasks_settings.BACKOFF)
        completion = Completion(
            job.pk, job.attempts, JobStatus.READY, errors=errors,
            run_after=now + backoff.delay(job.attempts),
        )  # fmt: skip
        return completion, "retrying"
    completion = Completion(
        job.pk, job.attempts, JobStatus.FAILED, errors=errors, finished_at=now
    )
    return completion, "failed"


def record_outcome(
    job: Job, outcome: Outcome, *, worker_id: str, now: datetime | None = None
) -> str:
    """Store one outcome at once (no batch). Returns the verdict, or "taken"
    if the job was taken from this worker meanwhile (put back at shutdown,
    rescued) and the outcome was discarded."""
    completion, verdict = decide(job, outcome, worker_id=worker_id, now=now)
    return verdict if job._update_if_held(**completion.changes()) else "taken"


class Completer(threading.Thread):
    """Writes finished attempts to the database in batches.

    Whatever has finished while the last batch was being written goes in the
    next one: one statement and one commit for many jobs. An attempt counts
    as done (logged, ``task_finished`` sent, ``on_completed`` called with
    its batch's jobs) only once its outcome is committed.
    """

    MAX_BATCH = 256

    def __init__(self, *, worker_id: str, using: str, on_completed, give_up):
        super().__init__(name="bgtasks-completer", daemon=True)
        self.worker_id = worker_id
        self.using = using
        self.on_completed = on_completed
        self.give_up = give_up
        self._finished: queue.SimpleQueue[Finished | None] = queue.SimpleQueue()

    def submit(self, finished: Finished) -> None:
        self._finished.put(finished)

    def stop(self) -> None:
        self._finished.put(None)

    def run(self) -> None:
        try:
            while (first := self._finished.get()) is not None:
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
                    self.on_completed([finished.job for finished in batch])
        finally:
            connections.close_all()

    def _complete(self, batch: list[Finished]) -> None:
        if self.give_up.is_set():
            logger.warning(
                "%d job(s) ended while their worker was exiting; outcomes "
                "discarded", len(batch),
            )  # fmt: skip
            return
        try:
            applied = retry_until_done(
                lambda: complete_jobs(
                    self.using, self.worker_id, [f.completion for f in batch]
                ),
                using=self.using,
                what=f"recording the outcomes of {len(batch)} job(s)",
                give_up=self.give_up,
            )
        except DatabaseError:
            # The database is up but refuses something in the batch: record
            # the jobs one by one, so one bad outcome harms only its job.
            for finished in batch:
                self._complete_one(finished)
            return
        if applied is None:  # gave up: the worker is exiting
            return
        receivers = Receivers(task_finished, DatabaseBackend)
        for finished in batch:
            verdict = finished.verdict if finished.job.pk in applied else "taken"
            if verdict != "taken":
                for name, value in finished.completion.changes().items():
                    setattr(finished.job, name, value)
            report(finished, verdict, receivers)

    def _complete_one(self, finished: Finished) -> None:
        job, outcome = finished.job, finished.outcome
        try:
            verdict = self._record(job, outcome)
        except DatabaseError as exc:
            # Refused again: fail the job with an error it will take, rather
            # than leave it RUNNING.
            logger.exception("Job %s: its outcome could not be stored", job.pk)
            outcome = finished.outcome = Outcome(
                error=_chained(
                    OutcomeNotStored(
                        f"The job's outcome could not be stored: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                    exc,
                ),
                retryable=False,
                task_result=outcome.task_result,
            )
            verdict = self._record(job, outcome)
        report(finished, verdict, Receivers(task_finished, DatabaseBackend))

    def _record(self, job: Job, outcome: Outcome) -> str | None:
        return retry_until_done(
            lambda: record_outcome(job, outcome, worker_id=self.worker_id),
            using=self.using,
            what=f"recording the outcome of job {job.pk}",
            give_up=self.give_up,
        )


def report(finished: Finished, verdict: str | None, receivers: Receivers) -> None:
    """Log a recorded outcome; send ``task_finished`` to ``receivers`` for a
    finished job."""
    job, error = finished.job, finished.outcome.error
    elapsed_ms = finished.elapsed_ms
    if verdict == "succeeded":
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Job %s succeeded in %.1f ms: %s", job.pk, elapsed_ms, describe(job)
            )
    elif verdict == "retrying":
        logger.warning(
            "Job %s failed in %.1f ms, retrying at %s: %s: %s: %s",
            job.pk, elapsed_ms, job.run_after.isoformat(timespec="seconds"),
            describe(job), type(error).__name__, error,
        )  # fmt: skip
    elif verdict == "failed":
        logger.error(
            "Job %s failed in %.1f ms: %s: %s: %s",
            job.pk, elapsed_ms, describe(job), type(error).__name__, error,
        )  # fmt: skip
    elif verdict == "taken":
        logger.warning(
            "Job %s was taken from this worker before it finished (%s); its "
            "outcome is discarded", job.pk, describe(job),
        )  # fmt: skip
    if finished.task is not None and job.is_finished:
        task_result = finished.outcome.task_result
        if task_result is None:
            task_result = job.to_task_result(finished.task)
        else:
            job.update_task_result(task_result)
        _send_finished(receivers, task_result, error)


def _send_finished(receivers: Receivers, task_result, error) -> None:
    """Send ``task_finished``; for a failure, from inside an exception
    handler, as the framework does, so receivers (its own logger, error
    monitoring) see the task's exception."""
    if error is None:
        receivers.send(task_result=task_result)
        return
    try:
        raise error
    except BaseException:
        receivers.send(task_result=task_result)
