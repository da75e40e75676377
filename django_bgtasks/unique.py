"""Unique jobs: at most one job with the same key in a span of its life.

A job enqueued with ``unique`` stores a key in ``Job.unique_key``, and a
unique index on that column refuses a second row with the same key. The
key is cleared when the job leaves the span it covers, so the index holds
only the jobs that are in it:

``until="started"``
    while the job waits: the claim clears the key (prefix ``w:``);
``until="finished"`` (the default)
    while it waits or runs: the outcome that ends it clears the key
    (prefix ``a:``);
``period=timedelta``
    one job per period, the periods counted from the Unix epoch: the key
    holds the period's number and is never cleared (prefix ``p:``).

The key is a hash of the task's path and either the caller's ``key`` or the
job's arguments (as stored: JSON).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .compat import InvalidTask

UNTIL = {"started": "w", "finished": "a"}
ON_DUPLICATE = ("existing", "error")
# Keys that are never cleared: their period is their span.
PERIOD_PREFIX = "p:"
WAITING_PREFIX = "w:"


@dataclass(frozen=True, slots=True)
class Unique:
    """Ask for at most one job with the same key: while it waits
    (``until="started"``), while it waits or runs (``until="finished"``,
    the default), or once per ``period`` (a timedelta). The key is the
    task's path with ``key`` if given, else with the job's arguments. A
    duplicate enqueue gets the existing job's result
    (``on_duplicate="existing"``) or raises ``DuplicateJob``
    (``"error"``)."""

    until: str | None = "finished"
    period: timedelta | None = None
    key: str | None = None
    on_duplicate: str = "existing"

    def __post_init__(self):
        if self.period is not None:
            if not isinstance(self.period, timedelta) or not (
                timedelta(seconds=1) <= self.period <= timedelta(days=3653)
            ):
                raise InvalidTask(
                    f"Unique period must be a timedelta of 1 second to ten years, "
                    f"not {self.period!r}."
                )
            object.__setattr__(self, "until", None)
        elif self.until not in UNTIL:
            raise InvalidTask(
                f"Unique until must be 'started' or 'finished' (or give a "
                f"period), not {self.until!r}."
            )
        if self.key is not None and not (isinstance(self.key, str) and self.key):
            raise InvalidTask(
                f"Unique key must be a non-empty string, not {self.key!r}."
            )
        if self.on_duplicate not in ON_DUPLICATE:
            raise InvalidTask(
                f"Unique on_duplicate must be 'existing' or 'error', not "
                f"{self.on_duplicate!r}."
            )

    @classmethod
    def coerce(cls, value: Any) -> Unique | None:
        """``value`` as a Unique: a Unique, True (the defaults), or None or
        False (not unique)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise InvalidTask(f"unique must be a Unique, True or False, not {value!r}.")

    def key_for(self, task_path: str, args: list, kwargs: dict, now: datetime) -> str:
        """The stored key of a job of ``task_path`` with these (stored)
        arguments, enqueued ``now``."""
        what = (
            ["key", self.key] if self.key is not None else ["arguments", args, kwargs]
        )
        text = json.dumps([task_path, *what], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        if self.period is not None:
            number = int(now.timestamp() // self.period.total_seconds())
            return f"{PERIOD_PREFIX}{digest}:{number}"
        return f"{UNTIL[self.until]}:{digest}"
