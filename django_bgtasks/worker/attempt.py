"""One attempt of a claimed job: find its task, send ``task_started``, call
the task, check what it returned. Whatever happens becomes an outcome
(``models/transitions.py``); nothing here raises."""

from __future__ import annotations

import sys
import traceback
from typing import Any

from ..compat import TaskContext
from ..conf import bgtasks_settings
from ..exceptions import (
    InvalidReturnValue,
    InvalidTaskArguments,
    JobTimeout,
    TaskExited,
)
from ..models import Job
from ..models.transitions import Failed, Succeeded
from ..private_api import Receivers
from ..progress import current_job
from ..rows import job_result, task_for_job
from ..serialization import NotJSON, check_size, to_json_sized


def run_attempt(job: Job, started: Receivers) -> tuple[Succeeded | Failed, Any, Any]:
    """Run the task of a claimed job once, sending ``task_started`` to
    ``started``. Returns the outcome, the task (None if the job's task
    could not be found) and the TaskResult ``task_started`` was sent with
    (None if the task did not get that far)."""
    try:
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
        # A receiver that raises fails the attempt like the task would.
        started.send(task_result=task_result)
        if task.takes_context:
            value = task.call(
                TaskContext(task_result=task_result), *job.args, **job.kwargs
            )
        else:
            value = task.call(*job.args, **job.kwargs)
    except SystemExit as exc:
        error = chained(
            TaskExited(
                f"The task called sys.exit({exc.code!r}); a task cannot stop the "
                f"worker."
            ),
            exc,
        )
        return Failed(error), task, task_result
    except BaseException as exc:
        return Failed(exc), task, task_result
    finally:
        current_job.reset(progress_token)
    try:
        value, bound = to_json_sized(value, "return value")
        check_size(value, "Return values", bgtasks_settings.MAX_PAYLOAD_BYTES, bound)
    except NotJSON as exc:
        error = InvalidReturnValue(f"The task's {exc} It must be JSON.")
        return Failed(error, retryable=False), task, task_result
    return Succeeded(value), task, task_result


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
