"""A job's statuses: the framework's four, plus CANCELLED."""

from django.db import models
from django.utils.translation import pgettext_lazy

from ..compat import TaskResultStatus


class JobStatus(models.TextChoices):
    """The framework's four statuses, plus CANCELLED (read as FAILED by it)."""

    READY = TaskResultStatus.READY.value, TaskResultStatus.READY.label
    RUNNING = TaskResultStatus.RUNNING.value, TaskResultStatus.RUNNING.label
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.SUCCESSFUL.label
    FAILED = TaskResultStatus.FAILED.value, TaskResultStatus.FAILED.label
    CANCELLED = "CANCELLED", pgettext_lazy("Task", "Cancelled")


FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)
