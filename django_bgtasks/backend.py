"""The ``django.tasks`` backend: jobs are rows in the project's database.

::

    TASKS = {
        "default": {
            "BACKEND": "django_bgtasks.backend.DatabaseBackend",
            "QUEUES": ["default", "emails"],
        }
    }

``enqueue`` writes the job with the ORM on the current connection, so inside
``transaction.atomic()`` (or ``ATOMIC_REQUESTS``) the job exists only if the
transaction commits. Everything that can be wrong with a job is refused here,
before any row is written.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from django.apps import apps
from django.core import checks
from django.db import connections, router, transaction
from django.utils import timezone

from . import notify, registry
from .backoff import Backoff
from .base import DatabaseTask, DatabaseTaskResult
from .compat import (
    BaseTaskBackend,
    InvalidTask,
    TaskResultDoesNotExist,
    task_enqueued,
)
from .conf import bgtasks_settings
from .exceptions import InvalidTaskArguments
from .models import Job
from .serialization import NotJSON, check_size, to_json

MAX_ATTEMPTS_LIMIT = 1000
MAX_TIMEOUT = 7 * 24 * 3600  # a week
QUEUE_NAME_MAX_LENGTH = Job._meta.get_field("queue_name").max_length


class DatabaseBackend(BaseTaskBackend):
    """Store jobs in the database; ``manage.py runworker`` runs them."""

    task_class = DatabaseTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def validate_task(self, task) -> None:
        """Refuse a task this backend cannot run; register the ones it can."""
        super().validate_task(task)
        if len(task.queue_name) > QUEUE_NAME_MAX_LENGTH:
            raise InvalidTask(
                f"Queue name {task.queue_name!r} is longer than "
                f"{QUEUE_NAME_MAX_LENGTH} characters."
            )
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None:
            _check_max_attempts(max_attempts)
        backoff = getattr(task, "backoff", None)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise InvalidTask(f"backoff must be a Backoff, not {backoff!r}.")
        _check_timeout(getattr(task, "timeout", None))
        registry.register(task)

    def enqueue(self, task, args, kwargs) -> DatabaseTaskResult:
        """Write a READY job for ``task`` and return its result handle.

        Raises InvalidTask (or its subclass InvalidTaskArguments) before
        writing anything if the task, its options or its arguments are
        invalid.
        """
        self.validate_task(task)
        return self.enqueue_job(task, args, kwargs)

    def enqueue_job(self, task, args, kwargs, **job_fields) -> DatabaseTaskResult:
        """Enqueue a validated ``task``; ``job_fields`` set other Job fields
        (the scheduler's ``schedule`` and ``scheduled_for``)."""
        args, kwargs = _json_arguments(args, kwargs)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is None:
            max_attempts = bgtasks_settings.MAX_ATTEMPTS
        backoff = getattr(task, "backoff", None) or Backoff.coerce(
            bgtasks_settings.BACKOFF
        )
        timeout = getattr(task, "timeout", None) or bgtasks_settings.TIMEOUT
        now = timezone.now()
        job = Job(
            task_path=task.module_path,
            backend=self.alias,
            queue_name=task.queue_name,
            priority=task.priority,
            args=args,
            kwargs=kwargs,
            run_after=task.run_after or now,
            enqueued_at=now,
            max_attempts=max_attempts,
            backoff=backoff.as_dict(),
            timeout=timeout,
            **job_fields,
        )
        using = router.db_for_write(Job)
        connection = connections[using]
        if notify.notify_enabled(connection):
            # A savepoint keeps the row and its NOTIFY together.
            with transaction.atomic(using=using):
                job.save(using=using, force_insert=True)
                notify.send(connection, job.queue_name)
        else:
            job.save(using=using, force_insert=True)
        result = job.to_task_result(task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> DatabaseTaskResult:
        """The result of job ``result_id``; TaskResultDoesNotExist if none."""
        try:
            job = Job.objects.get(pk=int(result_id))
        except (TypeError, ValueError, OverflowError, Job.DoesNotExist):
            raise TaskResultDoesNotExist(result_id) from None
        return job.to_task_result(task_for_job(job))

    def check(self, **kwargs):
        if not apps.is_installed("django_bgtasks"):
            yield checks.Error(
                f"Task backend {self.alias!r} needs 'django_bgtasks' in "
                f"INSTALLED_APPS.",
                id="bgtasks.E010",
            )
        for queue in self.queues:
            if not isinstance(queue, str) or not 0 < len(queue) <= (
                QUEUE_NAME_MAX_LENGTH
            ):
                yield checks.Error(
                    f"Task backend {self.alias!r} has an invalid queue name {queue!r}.",
                    hint=f"Queue names are strings of 1 to "
                    f"{QUEUE_NAME_MAX_LENGTH} characters.",
                    id="bgtasks.E011",
                )


def task_for_job(job: Job):
    """The registered task of ``job``, with the options the job was given."""
    return _task_with_options(job.task_path, job.priority, job.queue_name, job.backend)


@functools.lru_cache(maxsize=1024)
def _task_with_options(task_path: str, priority: int, queue_name: str, backend: str):
    # Cached: building a Task validates it, too slow to do for every job.
    task = registry.resolve(task_path)
    try:
        return replace(task, priority=priority, queue_name=queue_name, backend=backend)
    except InvalidTask:
        # The settings changed since (say, a queue was removed): keep the
        # task as declared rather than fail to read the result.
        return task


def _check_max_attempts(value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_ATTEMPTS_LIMIT
    ):
        raise InvalidTask(
            f"max_attempts must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}, "
            f"not {value!r}."
        )


def _check_timeout(value: Any) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise InvalidTask(
            f"timeout must be a number of seconds above 0 (at most {MAX_TIMEOUT}), "
            f"not {value!r}."
        )


def _json_arguments(args, kwargs) -> tuple[list, dict]:
    """Arguments as stored; refused unless JSON brings them back unchanged and
    they fit in ``BGTASKS["MAX_PAYLOAD_BYTES"]``."""
    try:
        args = to_json(args, "args")
        kwargs = to_json(kwargs, "kwargs")
    except NotJSON as exc:
        raise InvalidTaskArguments(f"Task arguments must be JSON: {exc}") from None
    try:
        check_size([args, kwargs], "Task arguments", bgtasks_settings.MAX_PAYLOAD_BYTES)
    except NotJSON as exc:
        raise InvalidTaskArguments(str(exc)) from None
    return args, kwargs
