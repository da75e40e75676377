"""One attempt of a claimed job: find its task, send ``task_started``, call
the task, check what it returned. Whatever happens becomes an outcome
(``models/transitions.py``); nothing here raises."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from .. import metrics
from ..backend import MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT, DatabaseBackend
from ..compat import task_backends
from ..conf import bgtasks_settings, cleared_when_settings_change
from ..context import JobContext, current_job, stop_error
from ..control import CancelJob, JobControl, RetryJob, SnoozeJob
from ..exceptions import (
    InvalidJobRow,
    InvalidReturnValue,
    InvalidTaskArguments,
    JobCancelled,
    JobExpired,
    JobTimeout,
    TaskExited,
)
from ..models import Job
from ..models.transitions import (
    CancelledItself,
    Expired,
    Failed,
    RetryRequested,
    Snoozed,
    Succeeded,
    Transition,
    WorkerOutcome,
)
from ..private_api import Receivers
from ..rows import job_result, task_for_job
from ..serialization import NotJSON, check_size, to_json_sized


def run_attempt(
    job: Job, started: Receivers, now: Callable[[], datetime]
) -> tuple[WorkerOutcome | Recorded, Any, Any]:
    """Run the task of a claimed job once, sending ``task_started`` to
    ``started``, unless it has expired by ``now()`` (the database's clock).
    Returns the outcome (an atomic task's success: ``Recorded``, already
    written), the task (None if the job's task could not be found or it
    expired) and the TaskResult ``task_started`` was sent with
    (None if the task did not get that far)."""
    if job.cancel_requested_at is not None:
        # Asked to stop while it waited for a thread: it does not start.
        return CancelledItself(stop_error(job)), None, None
    if job.expires_at is not None and job.expires_at <= now():
        error = JobExpired(
            f"The job expired at {job.expires_at.isoformat()}; it was not started "
            f"(again)."
        )
        try:
            task = task_for_job(job)  # for its result; it is not called
        except Exception:
            task = None
        return Expired(error), task, None
    try:
        check_row(job)
        task = task_for_job(job)
    except Exception as exc:
        return Failed(exc, retryable=False), None, None
    if not isinstance(job.args, list) or not isinstance(job.kwargs, dict):
        error = InvalidTaskArguments(
            f"The job's stored arguments are corrupt: args must be a JSON list "
            f"and kwargs a JSON object, not {type(job.args).__name__} and "
            f"{type(job.kwargs).__name__}."
        )
        return Failed(error, retryable=False), task, None

    task_result = job_result(job, task)
    progress_token = current_job.set(job)
    try:
        metrics.attempt_started(job)
        # A receiver that raises fails the attempt like the task would.
        started.send(task_result=task_result)
        if getattr(task, "atomic", False):
            return _call_atomic(job, task, task_result, now), task, task_result
        value = _call(job, task, task_result)
    except SystemExit as exc:
        error = chained(
            TaskExited(
                f"The task called sys.exit({exc.code!r}); a task cannot stop the "
                f"worker."
            ),
            exc,
        )
        return Failed(error, retryable=_retries(task, error)), task, task_result
    except JobControl as exc:
        return controlled(exc), task, task_result
    except BaseException as exc:
        return Failed(exc, retryable=_retries(task, exc)), task, task_result
    finally:
        current_job.reset(progress_token)
    return succeeded(task, value), task, task_result


@dataclass(frozen=True, slots=True)
class Recorded:
    """An atomic task's outcome, already recorded in the transaction that
    ran it: ``change`` is what it made of the job (None: the job had been
    taken from this worker, and the task's writes were rolled back)."""

    outcome: WorkerOutcome
    change: Transition | None


class _RolledBack(Exception):
    """Leaves an atomic task's transaction, rolling back its writes."""

    def __init__(self, outcome):
        self.outcome = outcome


def _call(job: Job, task, task_result):
    if task.takes_context:
        context = JobContext(task_result=task_result, job=job)
        return task.call(context, *job.args, **job.kwargs)
    return task.call(*job.args, **job.kwargs)


def _call_atomic(job: Job, task, task_result, now) -> Recorded | Failed:
    """Call an atomic task inside a transaction on the job's database that
    also records its success, if this worker still holds the job. Anything
    else rolls its writes back: an error (raised, as any task's), a return
    value that cannot be stored, a job taken from this worker meanwhile."""
    try:
        with transaction.atomic(using=job._state.db):
            outcome = succeeded(task, _call(job, task, task_result))
            if isinstance(outcome, Failed) or job.cancel_requested_at is not None:
                # A task asked to stop ends CANCELLED, its writes undone.
                raise _RolledBack(outcome)
            change = job.record(outcome, now=now())
            if change is None:
                raise _RolledBack(Recorded(outcome, None))
            return Recorded(outcome, change)
    except _RolledBack as rolled_back:
        return rolled_back.outcome


def succeeded(task, value) -> Succeeded | Failed:
    """The outcome of a task that returned ``value``: it must be JSON, if
    it is stored."""
    delete = getattr(task, "delete_on_success", False)
    if delete or not getattr(task, "store_result", True):
        # Not stored: not checked either (it need not be JSON).
        return Succeeded(None, delete=delete)
    try:
        value, bound = to_json_sized(value, "return value")
        check_size(value, "Return values", bgtasks_settings.MAX_PAYLOAD_BYTES, bound)
    except NotJSON as exc:
        error = InvalidReturnValue(f"The task's {exc} It must be JSON.")
        return Failed(error, retryable=False)
    return Succeeded(value)


def controlled(request: JobControl):
    """The outcome a task asked for by raising ``request``."""
    match request:
        case RetryJob():
            return RetryRequested(request, request.delay, request.at)
        case SnoozeJob():
            return Snoozed(request, request.delay, request.at)
        case CancelJob():
            reason = f": {request}" if str(request) else ""
            return CancelledItself(
                chained(JobCancelled(f"The task cancelled its job{reason}"), request)
            )
    return Failed(request, retryable=False)  # FailJob


def retries(job: Job, error: BaseException) -> bool:
    """Whether ``error`` of ``job`` may be retried, by its task's
    ``retry_on`` and ``fail_on`` (a task that cannot be found: yes)."""
    try:
        task = task_for_job(job)
    except Exception:
        return True
    return _retries(task, error)


def _retries(task, error: BaseException) -> bool:
    """Whether ``error`` may be retried, by the task's ``retry_on`` and
    ``fail_on`` (a plain framework Task has neither: every error may)."""
    fail_on = getattr(task, "fail_on", ())
    if fail_on and isinstance(error, fail_on):
        return False
    retry_on = getattr(task, "retry_on", None)
    return retry_on is None or isinstance(error, retry_on)


def check_row(job: Job) -> None:
    """Raise InvalidJobRow if the job's row holds a value the worker cannot
    run it with: a row written around the API is trusted no more than an
    enqueue's arguments."""
    problem = _options_problem(
        job.backend, job.queue_name, job.max_attempts, job.timeout, job._state.db
    )
    if problem:
        raise InvalidJobRow(problem)
    if job.attempts > job.max_attempts:
        raise InvalidJobRow(
            f"attempts: this is attempt {job.attempts}, and max_attempts is "
            f"{job.max_attempts}: no attempt is left."
        )


@cleared_when_settings_change
@functools.lru_cache(maxsize=256)
def _options_problem(alias, queue_name, max_attempts, timeout, using) -> str | None:
    """What is wrong with these options of a job read from database
    ``using``, or None (cached: the same few combinations recur on every
    job; cleared when the settings change)."""
    if type(max_attempts) is not int or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        return (
            f"max_attempts: {max_attempts!r} is not a whole number from 1 to "
            f"{MAX_ATTEMPTS_LIMIT}."
        )
    if timeout is not None and not (
        isinstance(timeout, int | float) and 0 < timeout <= MAX_TIMEOUT
    ):
        return (
            f"timeout: {timeout!r} is not a number of seconds above 0 (at most "
            f"{MAX_TIMEOUT})."
        )
    try:
        backend = task_backends[alias]
    except Exception as exc:  # an unknown alias, or one that cannot load
        return f"backend: {alias!r} is not a usable task backend ({exc})."
    if not isinstance(backend, DatabaseBackend):
        return f"backend: {alias!r} is not a django_bgtasks DatabaseBackend."
    if backend.queues and queue_name not in backend.queues:
        return (
            f"queue_name: {queue_name!r} is not one of the QUEUES of backend {alias!r}."
        )
    if using is not None and backend.database != using:
        return (
            f"backend: {alias!r} keeps its jobs in database {backend.database!r}, "
            f"and this job is in {using!r}, where that backend would never read "
            f"its result."
        )
    return None


def timeout_error(attempt) -> JobTimeout:
    """The error of an attempt that ran past its job's timeout, saying where
    its thread was."""
    job = attempt.job
    frame = sys._current_frames().get(attempt.thread_id)
    where = "".join(traceback.format_stack(frame)) if frame else ""
    return JobTimeout(
        f"The job ran past its timeout of {job.timeout:g} s and its process "
        f"was ended.\nWhere the task was:\n{where}"
    )


def grace_error(attempt) -> JobCancelled:
    """The error of an attempt asked to stop that did not within the grace
    period, saying where its thread was."""
    frame = sys._current_frames().get(attempt.thread_id)
    where = "".join(traceback.format_stack(frame)) if frame else ""
    return JobCancelled(
        f"The task did not stop within {bgtasks_settings.CANCEL_GRACE_PERIOD:g} s "
        f"of its cancel, and its process was ended.\nWhere the task was:\n{where}"
    )


def chained(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` with a traceback, raised from ``cause``."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def describe(job: Job) -> str:
    """A job in a log line: its task, queue and attempt."""
    return (
        f"{job.task_path} (queue {job.queue_name}, attempt "
        f"{job.attempts}/{job.max_attempts})"
    )
