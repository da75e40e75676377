"""From job rows to the framework's objects: the task a row names, with the
options the job was given, and the job as a ``TaskResult``.

Nothing named in a row is imported or called unless it is a registered task
(``registry.resolve``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace

from . import registry
from .backoff import Backoff
from .base import DatabaseTask, DatabaseTaskResult
from .compat import InvalidTask, TaskError, TaskResultStatus
from .conf import bgtasks_settings, cleared_when_settings_change
from .exceptions import DependencyFailed, JobCancelled, JobExpired, TaskNotRegistered
from .models import Job, JobStatus
from .models.transitions import class_path
from .private_api import set_field


def task_for_job(job: Job):
    """The registered task of ``job``, with the options the job was given
    (but ``run_after``, which ``get_result`` adds)."""
    backoff = job.backoff if isinstance(job.backoff, dict) else {}
    return _task_with_options(
        job.task_path,
        job.priority,
        job.queue_name,
        job.backend,
        job.max_attempts,
        job.timeout,
        tuple(sorted(backoff.items())),
    )


@cleared_when_settings_change
@functools.lru_cache(maxsize=1024)
def _task_with_options(
    task_path, priority, queue_name, backend, max_attempts, timeout, backoff
):
    # Cached: building a Task validates it, too slow to do for every job.
    task = registry.resolve(task_path)
    options = {
        "priority": priority,
        "queue_name": queue_name,
        "backend": backend,
    }
    if isinstance(task, DatabaseTask):
        # An option the job has as the task (or, where the task leaves it
        # None, the settings) would give it is left as the task has it: the
        # result's task is then the task as enqueued.
        if max_attempts != (task.max_attempts or bgtasks_settings.MAX_ATTEMPTS):
            options["max_attempts"] = max_attempts
        if timeout != (task.timeout or bgtasks_settings.TIMEOUT):
            options["timeout"] = timeout
        # A corrupt stored backoff leaves the task's own.
        with contextlib.suppress(InvalidTask):
            stored = Backoff.coerce(dict(backoff)) if backoff else None
            default = task.backoff or Backoff.coerce(bgtasks_settings.BACKOFF)
            if stored is not None and stored != default:
                options["backoff"] = stored
    try:
        return replace(task, **options)
    except InvalidTask:
        # The settings changed since (say, a queue was removed): keep the
        # task as declared rather than fail to read the result.
        return task


def unregistered_task(job: Job) -> DatabaseTask:
    """A stand-in for the task of ``job`` when that is not registered
    (removed in a deploy, say), so that the job's result can still be read:
    its ``module_path`` is the job's ``task_path``, and calling it raises
    TaskNotRegistered. Raises TaskNotRegistered if the job's options no
    longer make a valid task either."""
    module, _, name = job.task_path.rpartition(".")
    message = f"{job.task_path!r} is not a registered task."

    def not_registered(*args, **kwargs):
        raise TaskNotRegistered(message)

    setattr(not_registered, registry.STAND_IN, True)
    not_registered.__module__ = module
    not_registered.__name__ = not_registered.__qualname__ = name
    try:
        return DatabaseTask(
            func=not_registered,
            priority=job.priority,
            queue_name=job.queue_name,
            backend=job.backend,
            run_after=job.task_run_after,
        )
    except InvalidTask:
        raise TaskNotRegistered(message) from None


def job_result(job: Job, task) -> DatabaseTaskResult:
    """``job`` as a ``django.tasks`` TaskResult of ``task``.

    CANCELLED reads as FAILED, with a JobCancelled error, since the
    framework has four statuses.
    """
    status, errors = _status_and_errors(job)
    return DatabaseTaskResult.from_stored(
        task=task,
        id=str(job.pk),
        status=status,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.last_attempted_at,
        args=job.args,
        kwargs=job.kwargs,
        backend=job.backend,
        errors=errors,
        worker_ids=list(job.worker_ids),
        return_value=job.return_value,
    )


def update_result(task_result, job: Job) -> None:
    """Bring ``task_result``, made by ``job_result`` when the attempt
    started, up to date with how it ended (status, errors, finish, return
    value), in place: the worker sends ``task_finished`` with the result
    ``task_started`` was sent with, as the framework's own backends do, and
    is spared building it twice."""
    status, errors = _status_and_errors(job)
    set_field(task_result, "status", status)
    set_field(task_result, "errors", errors)
    set_field(task_result, "finished_at", job.finished_at)
    set_field(task_result, "_return_value", job.return_value)


# The errors that say why a job ended CANCELLED (its task cancelled it, or
# it expired); one cancelled from outside has none, and is given one.
CANCELLED_ERRORS = frozenset(
    {class_path(JobCancelled), class_path(JobExpired), class_path(DependencyFailed)}
)


# The framework's statuses by value: a lookup, where calling the Enum costs
# half a microsecond (twice per job: as it starts and as it ends). A value
# it does not know still goes to the Enum, which refuses it.
RESULT_STATUSES = {status.value: status for status in TaskResultStatus}


def _status_and_errors(job: Job) -> tuple[TaskResultStatus, list[TaskError]]:
    errors = (
        [
            TaskError(
                exception_class_path=error["exception_class_path"],
                traceback=error["traceback"],
            )
            for error in job.error_list
        ]
        if job.errors  # most jobs have none: spare the worker the rest
        else []
    )
    status = job.status
    if status == JobStatus.WAITING:
        status = JobStatus.READY  # not due yet: its workflow's steps first
    elif status == JobStatus.CANCELLED:
        status = JobStatus.FAILED
        # Unless the task, or expiry, said why: cancelled from outside.
        if not (errors and errors[-1].exception_class_path in CANCELLED_ERRORS):
            errors.append(
                TaskError(
                    exception_class_path=class_path(JobCancelled),
                    traceback="The job was cancelled before it ran.",
                )
            )
    return RESULT_STATUSES.get(status) or TaskResultStatus(status), errors
