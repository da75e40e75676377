"""A job's statuses: the framework's four, plus CANCELLED and WAITING."""

from django.db import models
from django.utils.translation import pgettext_lazy

from ..compat import TaskResultStatus


class JobStatus(models.TextChoices):
    """The framework's four statuses, plus CANCELLED (read as FAILED by it)
    and WAITING (a workflow's step waiting for the jobs before it; read as
    READY by it). No claim takes a WAITING job: the transaction that records
    the last outcome it waits for makes it READY."""

    READY = TaskResultStatus.READY.value, TaskResultStatus.READY.label
    RUNNING = TaskResultStatus.RUNNING.value, TaskResultStatus.RUNNING.label
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.SUCCESSFUL.label
    FAILED = TaskResultStatus.FAILED.value, TaskResultStatus.FAILED.label
    CANCELLED = "CANCELLED", pgettext_lazy("Task", "Cancelled")
    WAITING = "WAITING", pgettext_lazy("Task", "Waiting")


FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)
# Not started yet: READY, or a workflow's step WAITING for others.
NOT_STARTED = (JobStatus.READY, JobStatus.WAITING)
# At rest: neither READY nor RUNNING, so no claim's index holds the job. The
# admin's indexes by task and by queue (``ListIndex``) hold only these.
AT_REST = (*FINISHED_STATUSES, JobStatus.WAITING)
