"""Running claimed jobs on a pool of threads, and recording each outcome."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import (
    DatabaseError,
    close_old_connections,
    connections,
    reset_queries,
)
from django.utils import timezone

from ..backend import DatabaseBackend, task_for_job
from ..backoff import Backoff
from ..compat import TaskContext, task_finished, task_started
from ..conf import bgtasks_settings
from ..exceptions import (
    InvalidReturnValue,
    InvalidTaskArguments,
    OutcomeNotStored,
    TaskExited,
)
from ..models import Job, error_entry
from ..progress import current_job
from ..serialization import NotJSON, check_size, to_json
from .db import retry_until_done

logger = logging.getLogger("django_bgtasks.worker")


@dataclass(slots=True)
class Outcome:
    """How one attempt ended."""

    return_value: Any = None
    error: BaseException | None = None
    # False for errors a retry cannot cure (unknown task, corrupt row,
    # unstorable return value).
    retryable: bool = True


def run_attempt(job: Job) -> tuple[Outcome, Any]:
    """Run the task of a claimed job once. Returns the outcome and the task
    (None if the job's task could not be found)."""
    try:
        task = task_for_job(job)
    except Exception as exc:
        return Outcome(error=exc, retryable=False), None
    if not isinstance(job.args, list) or not isinstance(job.kwargs, dict):
        error = InvalidTaskArguments(
            f"The job's stored arguments are corrupt: args must be a JSON list "
            f"and kwargs a JSON object, not {type(job.args).__name__} and "
            f"{type(job.kwargs).__name__}."
        )
        return Outcome(error=error, retryable=False), task

    task_result = job.to_task_result(task)
    progress_token = current_job.set(job)
    try:
        # A receiver that raises fails the attempt like the task would.
        task_started.send(sender=DatabaseBackend, task_result=task_result)
        if task.takes_context:
            value = task.call(
                TaskContext(task_result=task_result), *job.args, **job.kwargs
            )
        else:
            value = task.call(*job.args, **job.kwargs)
    except SystemExit as exc:
        return Outcome(
            error=_chained(
                TaskExited(
                    f"The task called sys.exit({exc.code!r}); a task cannot stop the "
                    f"worker."
                ),
                exc,
            )
        ), task
    except BaseException as exc:
        return Outcome(error=exc), task
    finally:
        current_job.reset(progress_token)
    try:
        value = to_json(value, "return value")
        check_size(value, "Return values", bgtasks_settings.MAX_PAYLOAD_BYTES)
    except NotJSON as exc:
        error = InvalidReturnValue(f"The task's {exc} It must be JSON.")
        return Outcome(error=error, retryable=False), task
    return Outcome(return_value=value), task


def _chained(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` with a traceback, raised from ``cause``."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def record_outcome(
    job: Job, outcome: Outcome, *, worker_id: str, now: datetime | None = None
) -> str:
    """Store the outcome through the job's verbs.

    Returns what became of the job: "succeeded", "retrying" (READY again,
    due after its backoff), "failed", or "taken" if the job was taken from
    this worker meanwhile (put back at shutdown, rescued) and the outcome
    was discarded.
    """
    now = now or timezone.now()
    if outcome.error is None:
        verdict = "succeeded"
        held = job.mark_succeeded(outcome.return_value, now=now)
    else:
        error = error_entry(
            outcome.error, attempt=job.attempts, worker_id=worker_id, at=now
        )
        if outcome.retryable and job.attempts < job.max_attempts:
            verdict = "retrying"
            backoff = Backoff.coerce(job.backoff or bgtasks_settings.BACKOFF)
            held = job.mark_for_retry(
                error, run_after=now + backoff.delay(job.attempts)
            )
        else:
            verdict = "failed"
            held = job.mark_failed(error, now=now)
    return verdict if held else "taken"


class Executor:
    """``concurrency`` daemon threads running jobs handed to ``submit``.

    Daemon threads, so a worker that has given its unfinished jobs back can
    exit without waiting for them. ``on_done(job)`` is called after each job.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        using: str,
        on_start,
        on_done,
        give_up: threading.Event,
    ):
        self.worker_id = worker_id
        self.using = using
        self.on_start = on_start
        self.on_done = on_done
        self.give_up = give_up
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._work, name=f"bgtasks-job-{number}", daemon=True
            )
            for number in range(1, concurrency + 1)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """Let each thread exit once it is idle."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    if self.give_up.is_set():
                        continue  # the worker is exiting and gave the job back
                    self.on_start(job)
                    self.execute(job)
                except Exception:
                    logger.exception("Job %s: unexpected error in the worker", job.pk)
                finally:
                    self.on_done(job)
        finally:
            connections.close_all()

    def _record(self, job: Job, outcome: Outcome) -> str | None:
        return retry_until_done(
            lambda: record_outcome(job, outcome, worker_id=self.worker_id),
            using=self.using,
            what=f"recording the outcome of job {job.pk}",
            give_up=self.give_up,
        )

    def execute(self, job: Job) -> None:
        """Run one claimed job and record its outcome."""
        label = (
            f"{job.task_path} (queue {job.queue_name}, attempt "
            f"{job.attempts}/{job.max_attempts})"
        )
        logger.info("Job %s started: %s", job.pk, label)
        close_old_connections()
        started = time.monotonic()
        outcome, task = run_attempt(job)
        elapsed_ms = (time.monotonic() - started) * 1000
        close_old_connections()
        reset_queries()
        if self.give_up.is_set():
            # The worker is exiting and has given its jobs back (or is about
            # to): this outcome belongs to no one now.
            logger.warning(
                "Job %s ended after its worker gave it back; outcome discarded",
                job.pk,
            )
            return

        try:
            verdict = self._record(job, outcome)
        except DatabaseError as exc:
            # The database is up but refuses the outcome: fail the job with
            # an error it will take, rather than leave it RUNNING.
            logger.exception("Job %s: its outcome could not be stored", job.pk)
            outcome = Outcome(
                error=_chained(
                    OutcomeNotStored(
                        f"The job's outcome could not be stored: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                    exc,
                ),
                retryable=False,
            )
            verdict = self._record(job, outcome)
        error = outcome.error
        if verdict == "succeeded":
            logger.info("Job %s succeeded in %.1f ms: %s", job.pk, elapsed_ms, label)
        elif verdict == "retrying":
            logger.warning(
                "Job %s failed in %.1f ms, retrying at %s: %s: %s: %s",
                job.pk,
                elapsed_ms,
                job.run_after.isoformat(timespec="seconds"),
                label,
                type(error).__name__,
                error,
            )
        elif verdict == "failed":
            logger.error(
                "Job %s failed in %.1f ms: %s: %s: %s",
                job.pk,
                elapsed_ms,
                label,
                type(error).__name__,
                error,
            )
        elif verdict == "taken":
            logger.warning(
                "Job %s was taken from this worker before it finished (%s); its "
                "outcome is discarded",
                job.pk,
                label,
            )
        if task is not None and job.is_finished:
            _send_finished(job.to_task_result(task), error)


def _send_finished(task_result, error: BaseException | None) -> None:
    """Send ``task_finished``; for a failure, from inside an exception
    handler, as the framework does, so receivers (its own logger, error
    monitoring) see the task's exception."""
    if error is None:
        task_finished.send(sender=DatabaseBackend, task_result=task_result)
        return
    try:
        raise error
    except BaseException:
        task_finished.send(sender=DatabaseBackend, task_result=task_result)
