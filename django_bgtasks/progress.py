"""Progress reports from running tasks, shown in the admin."""

from __future__ import annotations

import contextvars
import math
import numbers

from .models import Job

# The job the current task runs for; set by the worker around each attempt.
current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "django_bgtasks_current_job", default=None
)

MESSAGE_MAX_LENGTH = 200


def report_progress(
    current: float, total: float | None = None, message: str = ""
) -> bool:
    """Record how far the running task has got, e.g. ``report_progress(3, 10,
    "Resizing")``. The admin shows a progress bar.

    Each call writes to the database: report every few seconds, not on every
    item. Outside a worker (say, a test calling the function directly) it
    does nothing and returns False; it also returns False if the job was
    taken from this worker.
    """
    if not _number(current) or current < 0:
        raise ValueError(f"current must be a number, 0 or more, not {current!r}.")
    if total is not None and (not _number(total) or total <= 0):
        raise ValueError(f"total must be a number above 0, or None, not {total!r}.")
    if not isinstance(message, str):
        raise ValueError(f"message must be text, not {message!r}.")
    job = current_job.get()
    if job is None:
        return False
    return job.set_progress(current, total, message[:MESSAGE_MAX_LENGTH])


def _number(value) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
