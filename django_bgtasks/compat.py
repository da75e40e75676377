"""One import point for Django's tasks framework.

Django 6.0+ ships it as ``django.tasks``; Django 5.2 gets it from the
``django-tasks`` backport, whose names differ in small ways (``InvalidTaskError``
for ``InvalidTask``). Everything in django_bgtasks imports the framework from
here and nowhere else.
"""

import logging

from django.core.exceptions import ImproperlyConfigured

try:
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import (
        DEFAULT_TASK_PRIORITY,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        TaskError,
    )
    from django.tasks.exceptions import (
        InvalidTask,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    BACKPORT = False
    # Where the framework logs each task's start and end.
    FRAMEWORK_LOGGER = "django.tasks"
except ImportError:
    try:
        from django_tasks import (
            DEFAULT_TASK_BACKEND_ALIAS,
            DEFAULT_TASK_QUEUE_NAME,
            TaskContext,
            TaskResult,
            TaskResultStatus,
            task_backends,
        )
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import (
            DEFAULT_TASK_PRIORITY,
            TASK_MAX_PRIORITY,
            TASK_MIN_PRIORITY,
            Task,
            TaskError,
        )
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import (
            TaskResultDoesNotExist,
            TaskResultMismatch,
        )
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:
        raise ImproperlyConfigured(
            "django_bgtasks needs Django's tasks framework: upgrade to Django 6.0 "
            "or later, or install the backport with "
            "'pip install django-bgtasks[backport]'."
        ) from exc

    BACKPORT = True
    FRAMEWORK_LOGGER = "django_tasks"

logger = logging.getLogger("django_bgtasks")
_unloadable_said: set[str] = set()


def loadable_backends() -> list:
    """The backends of ``TASKS`` that load, in order. One that cannot (a
    missing module, bad options) is left out with a warning, once per
    process, instead of taking down everything that lists the backends:
    ``task_backends.all()`` raises on the first."""
    backends = []
    for alias in task_backends:
        try:
            backends.append(task_backends[alias])
        except Exception as exc:
            if alias not in _unloadable_said:
                _unloadable_said.add(alias)
                logger.warning(
                    "Task backend %r cannot be loaded and is left out: %s: %s",
                    alias,
                    type(exc).__name__,
                    exc,
                )
    return backends


__all__ = [
    "BACKPORT",
    "DEFAULT_TASK_BACKEND_ALIAS",
    "DEFAULT_TASK_PRIORITY",
    "DEFAULT_TASK_QUEUE_NAME",
    "FRAMEWORK_LOGGER",
    "TASK_MAX_PRIORITY",
    "TASK_MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "loadable_backends",
    "normalize_json",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
