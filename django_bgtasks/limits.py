"""Limits: at most N jobs running at once, or N starts per period, across
every worker.

A task declares its limit (``@task(limit=Limit(...))``), and
``BGTASKS["QUEUE_LIMITS"]`` a queue's. A job of a limited task stores its
limit's key in ``Job.limit_key`` when it is enqueued: the limit's name (the
task's path, unless several tasks share a named limit), and with ``key``
the value of one of its arguments (``export:{"account_id": 42}``-like: one
limit per value). The claim (``sql/limited.py``) counts the RUNNING jobs of
each key in play and takes only as many as the limits leave room for, so
the database, not a worker, holds the count.

Pure, but for ``declared_limits``, which reads the registered tasks and the
settings: what every worker and the admin take as the limits in force.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import registry
from .compat import InvalidTask
from .conf import bgtasks_settings, settings_generation

# The row of a queue's limit is named so; a task's limit's name cannot
# hold a ":" (it separates the name from the argument's value in a key).
QUEUE_PREFIX = "queue:"
# A key's value part longer than this is stored as its hash.
VALUE_CHARS = 100
RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``per`` seconds: a token bucket that holds up to
    ``count`` tokens and refills at ``count / per`` a second. Written as
    ``"100/m"`` (also ``/s``, ``/h``, ``/d``, and ``"10/5m"``)."""

    count: int
    per: float

    def __post_init__(self):
        if not isinstance(self.count, int) or isinstance(self.count, bool):
            raise InvalidTask(f"A rate's count must be an integer, not {self.count!r}.")
        if self.count < 1 or not 0 < self.per <= 366 * 86400:
            raise InvalidTask(
                f"A rate must allow at least 1 start per period of up to a year, "
                f"not {self.count} per {self.per} s."
            )

    @classmethod
    def coerce(cls, value: Rate | str | tuple) -> Rate:
        if isinstance(value, Rate):
            return value
        if isinstance(value, str):
            match = _RATE.match(value)
            if match is None:
                raise InvalidTask(
                    f"A rate is written like '100/m' (or /s, /h, /d; '10/5m'), "
                    f"not {value!r}."
                )
            count, times, unit = match.groups()
            return cls(int(count), int(times or 1) * RATE_UNITS[unit])
        if isinstance(value, tuple) and len(value) == 2:
            count, per = value
            if isinstance(per, timedelta):
                per = per.total_seconds()
            return cls(count, float(per))
        raise InvalidTask(
            f"A rate is '100/m', (count, timedelta) or a Rate, not {value!r}."
        )

    def refilled(self, tokens: float | None, seconds: float) -> float:
        """The tokens in the bucket ``seconds`` after it held ``tokens``
        (None: a bucket never used, full)."""
        if tokens is None:
            return float(self.count)
        return min(
            float(self.count), tokens + max(seconds, 0.0) * self.count / self.per
        )

    def seconds_to_token(self, tokens: float) -> float:
        """How long until a bucket holding ``tokens`` holds one."""
        return max(1.0 - tokens, 0.0) * self.per / self.count

    def __str__(self) -> str:
        for unit, seconds in RATE_UNITS.items():
            if self.per == seconds:
                return f"{self.count}/{unit}"
        return f"{self.count} per {self.per:g} s"


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``concurrency`` jobs RUNNING at once and/or at most ``rate``
    starts per period (``"100/m"``), across every worker.

    ``key``: one limit per value of the job's argument of that name (or of
    what a callable returns from the job's arguments), e.g. at most one
    running export per ``account_id``; not with ``rate``. ``name``: a limit
    shared by the tasks that give the same name (default: one per task).
    """

    concurrency: int | None = None
    rate: Rate | str | tuple | None = None
    key: str | Callable[..., Any] | None = None
    name: str | None = None

    def __post_init__(self):
        if self.concurrency is not None and (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or self.concurrency < 1
        ):
            raise InvalidTask(
                f"A limit's concurrency is an integer of at least 1, not "
                f"{self.concurrency!r}."
            )
        if self.rate is not None:
            object.__setattr__(self, "rate", Rate.coerce(self.rate))
        if self.concurrency is None and self.rate is None:
            raise InvalidTask("A limit needs a concurrency, a rate or both.")
        if self.key is not None:
            if not (callable(self.key) or (isinstance(self.key, str) and self.key)):
                raise InvalidTask(
                    f"A limit's key is an argument's name or a callable, not "
                    f"{self.key!r}."
                )
            if self.rate is not None:
                raise InvalidTask(
                    "A limit with a key has a concurrency only: a rate is per "
                    "task, per shared name or per queue."
                )
        if self.name is not None and not (
            isinstance(self.name, str) and 0 < len(self.name) <= 100
        ):
            raise InvalidTask("A limit's name is text of 1 to 100 characters.")
        if self.name is not None and ":" in self.name:
            raise InvalidTask(f"A limit's name cannot hold ':' ({self.name!r}).")

    @classmethod
    def coerce(cls, value: Limit | dict | None) -> Limit | None:
        if value is None or isinstance(value, Limit):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise InvalidTask(f"Not a limit: {value!r} ({exc}).") from None
        raise InvalidTask(f"A limit is a Limit or a dict, not {value!r}.")

    def key_for(self, name: str, func, args: list, kwargs: dict) -> str:
        """The key a job with these (JSON) arguments counts against, its
        limit's name being ``name``."""
        if self.key is None:
            return name
        if callable(self.key):
            value = self.key(*args, **kwargs)
        else:
            value = _argument(func, self.key, args, kwargs)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        if len(text) > VALUE_CHARS:
            text = "#" + hashlib.sha256(text.encode()).hexdigest()[:40]
        return f"{name}:{text}"


def _argument(func, name: str, args: list, kwargs: dict) -> Any:
    if name in kwargs:
        return kwargs[name]
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs)
    except TypeError:
        bound = None
    if bound is None or name not in bound.arguments:
        raise InvalidTask(
            f"The limit's key names the argument {name!r}, which this call "
            f"does not pass."
        )
    return bound.arguments[name]


def limit_name(key: str) -> str:
    """The name of the limit a job's ``limit_key`` counts against."""
    return key.partition(":")[0]


def task_limit_name(task) -> str | None:
    limit = getattr(task, "limit", None)
    if limit is None:
        return None
    return limit.name or task.module_path


@dataclass(frozen=True)
class DeclaredLimits:
    """The limits in force: a task's by its name, a queue's by the queue."""

    by_name: dict[str, Limit]
    by_queue: dict[str, Limit]

    def __bool__(self) -> bool:
        return bool(self.by_name or self.by_queue)

    def for_key(self, key: str | None) -> Limit | None:
        return None if key is None else self.by_name.get(limit_name(key))

    def rated_names(self) -> list[str]:
        """The rows' names of the limits with a rate."""
        names = [name for name, limit in self.by_name.items() if limit.rate]
        names += [QUEUE_PREFIX + q for q, limit in self.by_queue.items() if limit.rate]
        return names

    def rate_of(self, row_name: str) -> Rate | None:
        if row_name.startswith(QUEUE_PREFIX):
            limit = self.by_queue.get(row_name.removeprefix(QUEUE_PREFIX))
        else:
            limit = self.by_name.get(row_name)
        return None if limit is None else limit.rate


def queue_limits(declared: dict | None = None) -> dict[str, Limit]:
    """``BGTASKS["QUEUE_LIMITS"]`` (or ``declared``), as Limits; InvalidTask
    for one that is not a limit of a queue (``checks.py`` says so)."""
    limits = {}
    if declared is None:
        declared = bgtasks_settings.QUEUE_LIMITS or {}
    for queue, value in declared.items():
        limit = Limit.coerce(value)
        if limit.key is not None or limit.name is not None:
            raise InvalidTask(
                f"Queue {queue!r}'s limit takes a concurrency and a rate only."
            )
        limits[queue] = limit
    return limits


_declared: tuple[tuple, DeclaredLimits] | None = None


def declared_limits() -> DeclaredLimits:
    """The limits of the registered tasks and of the settings. Tasks that
    share a name must declare the same limit (a system check says so);
    here the first one registered wins."""
    global _declared
    stamp = (registry.registered_count(), settings_generation.value)
    if _declared is not None and _declared[0] == stamp:
        return _declared[1]
    tasks = registry.registered_tasks()
    by_name: dict[str, Limit] = {}
    for task in tasks.values():
        name = task_limit_name(task)
        if name is not None:
            by_name.setdefault(name, task.limit)
    declared = DeclaredLimits(by_name, queue_limits())
    _declared = (stamp, declared)
    return declared


def conflicting_limits() -> list[str]:
    """Names that registered tasks declare with different limits."""
    seen: dict[str, tuple] = {}
    clashes = []
    for task in registry.registered_tasks().values():
        name = task_limit_name(task)
        if name is None:
            continue
        limit = task.limit
        shape = (limit.concurrency, limit.rate, limit.key is not None)
        if seen.setdefault(name, shape) != shape and name not in clashes:
            clashes.append(name)
    return clashes


class Admission:
    """What the limits in play leave room for in one claim: the jobs
    RUNNING per key and per queue, and the tokens of the rated limits.
    ``admit`` takes a job if every limit it counts against has room, and
    counts it."""

    def __init__(
        self,
        declared: DeclaredLimits,
        running: dict[tuple[str, str | None], int],
        tokens: dict[str, float],
    ):
        self.declared = declared
        self.by_key: dict[str, int] = {}
        self.by_queue: dict[str, int] = {}
        for (queue, key), count in running.items():
            if key is not None:
                self.by_key[key] = self.by_key.get(key, 0) + count
            self.by_queue[queue] = self.by_queue.get(queue, 0) + count
        self.tokens = dict(tokens)
        self.taken: dict[str, int] = {}

    def full_keys(self) -> set[str]:
        """The keys that have no room now."""
        full = set()
        for key, count in self.by_key.items():
            if _no_room(self.declared.for_key(key), count):
                full.add(key)
        for name, tokens in self.tokens.items():
            if tokens < 1 and not name.startswith(QUEUE_PREFIX):
                full.add(name)
        return full

    def full_queues(self) -> set[str]:
        full = set()
        for queue, limit in self.declared.by_queue.items():
            if _no_room(limit, self.by_queue.get(queue, 0)):
                full.add(queue)
            if self.tokens.get(QUEUE_PREFIX + queue, math.inf) < 1:
                full.add(queue)
        return full

    def admit(self, queue: str, key: str | None) -> bool:
        checks = []
        queue_limit = self.declared.by_queue.get(queue)
        if queue_limit is not None:
            checks.append((queue_limit, self.by_queue, queue, QUEUE_PREFIX + queue))
        limit = self.declared.for_key(key)
        if limit is not None:
            checks.append((limit, self.by_key, key, limit_name(key)))
        for limit, counts, counted, row in checks:
            if (
                limit.concurrency is not None
                and counts.get(counted, 0) >= limit.concurrency
            ):
                return False
            if limit.rate is not None and self.tokens.get(row, 0.0) < 1:
                return False
        for limit, counts, counted, row in checks:
            counts[counted] = counts.get(counted, 0) + 1
            if limit.rate is not None:
                self.tokens[row] -= 1
                self.taken[row] = self.taken.get(row, 0) + 1
        return True


def _no_room(limit: Limit | None, running: int) -> bool:
    """Whether ``limit``'s concurrency has no room beside ``running`` jobs."""
    return (
        limit is not None
        and limit.concurrency is not None
        and (running >= limit.concurrency)
    )
