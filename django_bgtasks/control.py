"""What a task can tell the worker about its job, by raising one of these.

``RetryJob``
    Try again later, at a time or after a delay of the task's choosing (or
    after the job's backoff): the attempt counts, and past ``max_attempts``
    the job ends FAILED.
``SnoozeJob``
    Not yet: run again later, and this run does not count as an attempt.
``FailJob``
    This will never work: the job ends FAILED now, attempts left or not.
``CancelJob``
    Not wanted any more: the job ends CANCELLED now.

Each is recorded as the attempt's error, with its cause when raised
``from`` another exception (``SnoozeJob`` records nothing: it is not a
failure). Under the framework's other backends they are ordinary
exceptions.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone


class JobControl(Exception):
    """The base of the exceptions a task raises to steer its job."""


class _Later(JobControl):
    """A request to run the job again: after ``delay`` (seconds or a
    timedelta) or at ``at`` (a datetime); not both."""

    def __init__(
        self,
        reason: str = "",
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
    ):
        if delay is not None and at is not None:
            raise TypeError("Give delay or at, not both.")
        self.delay = _delay(delay)
        self.at = _moment(at)
        self.reason = reason
        super().__init__(reason or self._describe())

    def _describe(self) -> str:
        if self.at is not None:
            return f"until {self.at.isoformat()}"
        if self.delay is not None:
            return f"for {self.delay.total_seconds():g} s"
        return ""


class RetryJob(_Later):
    """Retry the job: after ``delay`` or at ``at`` if given, else after the
    job's backoff. The attempt counts: with none left, the job ends FAILED
    with this error."""


class SnoozeJob(_Later):
    """Run the job again after ``delay`` or at ``at`` (one is required),
    without counting this run as an attempt. Nothing is recorded in its
    errors; its worker id is added to ``worker_ids`` as for every run."""

    def __init__(
        self,
        reason: str = "",
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
    ):
        if delay is None and at is None:
            raise TypeError("SnoozeJob needs delay or at.")
        super().__init__(reason, delay=delay, at=at)


class FailJob(JobControl):
    """End the job FAILED now, whatever attempts are left, with this error
    (``reason`` says why)."""


class CancelJob(JobControl):
    """End the job CANCELLED now (``reason`` says why); it reads as FAILED
    with a ``JobCancelled`` error, as a job cancelled before it ran."""


def _delay(value: float | timedelta | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"delay must be seconds or a timedelta, not {value!r}.")
    if not (math.isfinite(seconds) and 0 <= seconds <= 10 * 365 * 24 * 3600):
        raise ValueError(f"delay must be 0 to ten years, not {value!r}.")
    return timedelta(seconds=seconds)


def _moment(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"at must be a datetime, not {value!r}.")
    if settings.USE_TZ and timezone.is_naive(value):
        raise ValueError(f"at must be an aware datetime under USE_TZ, not {value!r}.")
    return value
