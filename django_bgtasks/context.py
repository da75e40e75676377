"""The running job as its task sees it: the job of the current attempt, and
whether an operator has asked it to stop."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from .compat import TaskContext
from .exceptions import JobCancelled
from .models import Job

# The job the current task runs for; set by the worker around each attempt.
current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "django_bgtasks_current_job", default=None
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext(TaskContext):
    """The context a task with ``takes_context=True`` is called with: the
    framework's, and whether its job was asked to stop."""

    job: Job = field(repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """Whether an operator has asked the job to stop (see
        ``cancel_requested()``)."""
        return self.job.cancel_requested_at is not None


def cancel_requested() -> bool:
    """Whether an operator has asked the running job to stop (cancelled it
    while it runs): the task should return soon. False outside a worker.

    The worker hears of a request within a second on PostgreSQL, else
    within its heartbeat (``HEARTBEAT_INTERVAL``); reading this costs no
    query. Once the worker has heard, the job ends CANCELLED however the
    task ends (returning included); a task that returns before it is heard
    ends SUCCESSFUL.
    """
    job = current_job.get()
    return job is not None and job.cancel_requested_at is not None


def stop_error(job: Job) -> JobCancelled:
    """The error a task is stopped with once its job was asked to stop."""
    by = f" by {job.cancel_requested_by}" if job.cancel_requested_by else ""
    return JobCancelled(
        f"The job was cancelled{by} while it ran (asked at "
        f"{job.cancel_requested_at.isoformat()}): the task is stopped."
    )
