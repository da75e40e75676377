"""Helpers for a project's own tests.

``ImmediateBackend`` and ``DummyBackend`` are the framework's backends of the
same names whose tasks are ``DatabaseTask``: tasks declared with this
backend's options (``max_attempts``, ``backoff``, ``timeout``, through the
framework's ``@task`` or ours) work under them unchanged, the options kept
and ignored, and ``enqueue_many`` enqueues one by one. Put one in ``TASKS``
for tests that should run tasks at once, or only collect them::

    TASKS = {"default": {"BACKEND": "django_bgtasks.testing.ImmediateBackend"}}
"""

from __future__ import annotations

from .base import DatabaseTask
from .compat import BACKPORT

if BACKPORT:
    from django_tasks.backends.dummy import DummyBackend as _DummyBackend
    from django_tasks.backends.immediate import ImmediateBackend as _ImmediateBackend
else:
    from django.tasks.backends.dummy import DummyBackend as _DummyBackend
    from django.tasks.backends.immediate import ImmediateBackend as _ImmediateBackend

__all__ = ["DummyBackend", "ImmediateBackend"]


class _EnqueueMany:
    task_class = DatabaseTask

    def enqueue_many(self, task, calls):
        """``DatabaseTask.enqueue_many``: one ``enqueue`` per call."""
        return [self.enqueue(task, list(args), dict(kwargs)) for args, kwargs in calls]


class ImmediateBackend(_EnqueueMany, _ImmediateBackend):
    """The framework's ImmediateBackend (tasks run at enqueue, in the
    caller's thread), taking tasks with this backend's options."""


class DummyBackend(_EnqueueMany, _DummyBackend):
    """The framework's DummyBackend (tasks are collected in ``results``, never
    run), taking tasks with this backend's options."""
