"""django-bgtasks: background jobs for Django with the database as the broker.

A complete backend for Django's tasks framework (``django.tasks``, or the
``django-tasks`` backport on Django 5.2): jobs are rows, ``runworker`` runs
them, results and every attempt's error are stored, failed attempts are
retried with backoff.
"""

__version__ = "0.1.0.dev0"

__all__ = [
    "Backoff",
    "CancelJob",
    "DatabaseTask",
    "DatabaseTaskResult",
    "FailJob",
    "Limit",
    "Rate",
    "RetryJob",
    "SnoozeJob",
    "Step",
    "Unique",
    "WorkflowResult",
    "cancel_requested",
    "chain",
    "chord",
    "get_workflow",
    "group",
    "report_progress",
    "task",
]


def __getattr__(name):
    # Importing the public names lazily keeps ``import django_bgtasks`` free of
    # Django model imports, so it is safe in settings files and AppConfig.
    if name in {"DatabaseTask", "DatabaseTaskResult", "task"}:
        from . import base

        return getattr(base, name)
    if name == "report_progress":
        from .progress import report_progress

        return report_progress
    if name == "cancel_requested":
        from .context import cancel_requested

        return cancel_requested
    if name in {"CancelJob", "FailJob", "RetryJob", "SnoozeJob"}:
        from . import control

        return getattr(control, name)
    if name in {"Step", "chain", "chord", "group"}:
        from . import steps

        return getattr(steps, name)
    if name in {"WorkflowResult", "get_workflow"}:
        from . import workflows

        return getattr(workflows, name)
    if name in {"Limit", "Rate"}:
        from . import limits

        return getattr(limits, name)
    if name == "Unique":
        from .unique import Unique

        return Unique
    if name == "Backoff":
        from .backoff import Backoff

        return Backoff
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
