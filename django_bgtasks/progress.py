"""Progress reports from running tasks, shown in the admin. A report hears of
the job's cancel and stops the task."""

from __future__ import annotations

import math
import numbers

from .context import current_job, stop_error

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

    If an operator has asked the job to stop (cancelled it while it runs),
    it raises ``JobCancelled`` instead: a task that reports its progress
    stops by itself, and its job ends CANCELLED.
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
    if job.cancel_requested_at is None:
        if job.set_progress(current, total, message[:MESSAGE_MAX_LENGTH]):
            return True
        if job.cancel_requested_at is None:
            return False  # taken from this worker
    raise stop_error(job)


def _number(value) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
