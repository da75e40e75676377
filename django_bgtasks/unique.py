"""Unique jobs: at most one job with the same key in a span of its life.

A job enqueued with ``unique`` stores a key in ``Job.unique_key``, and a
unique index on that column refuses a second row with the same key. The
job holds its key while it is in the span the key covers, by its status:

``until="started"``
    while it waits (READY; prefix ``w:``);
``until="finished"`` (the default)
    while it waits or runs (READY or RUNNING; prefix ``a:``);
``period=timedelta``
    one job per period, the periods counted from the Unix epoch: the key
    holds the period's number, and its job holds it whatever its status
    (prefix ``p:``).

A key is released lazily: an enqueue refused by the index looks at the
holder, and clears its key if it has left its span (in the same statement
that checks it), then inserts again. No path that moves a job (a claim, an
outcome, an operator's action, a row written around the API) has to
remember to release a key, and none costs the hot path anything.

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
# The statuses in which a job holds a key of each kind (a period's: any).
HELD_WHILE = {"w": ("READY",), "a": ("READY", "RUNNING")}
ON_DUPLICATE = ("existing", "error")
# Keys that are never cleared: their period is their span.
PERIOD_PREFIX = "p:"


def held_while(key: str) -> tuple[str, ...] | None:
    """The statuses in which a job holds ``key`` (None: whatever its
    status, a period's key)."""
    return HELD_WHILE.get(key.partition(":")[0])


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
