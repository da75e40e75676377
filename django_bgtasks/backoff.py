"""The delay before a failed job's next attempt."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .compat import InvalidTask

MAX_DELAY = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter.

    The delay after attempt ``n`` is ``initial * factor ** (n - 1)`` seconds,
    capped at ``maximum``, then spread by up to ``jitter`` (a fraction) either
    way so that jobs failing together do not all come back together.
    ``Backoff(initial=30, factor=1)`` is a constant 30 seconds.
    """

    initial: float = 10.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self):
        for name in ("initial", "factor", "maximum", "jitter"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidTask(
                    f"Backoff {name} must be a finite number, not {value!r}."
                )
        if self.initial < 0:
            raise InvalidTask("Backoff initial must be 0 or more seconds.")
        if self.factor < 1:
            raise InvalidTask("Backoff factor must be 1 or more.")
        if self.maximum < self.initial:
            raise InvalidTask("Backoff maximum must be at least its initial delay.")
        if self.maximum > MAX_DELAY:
            raise InvalidTask(
                f"Backoff maximum must be at most {MAX_DELAY:g} seconds (30 days)."
            )
        if not 0 <= self.jitter <= 1:
            raise InvalidTask("Backoff jitter must be between 0 and 1.")

    @classmethod
    def coerce(cls, value: Any) -> Backoff:
        """Return ``value`` as a Backoff: a Backoff, a dict of its fields, or a
        number of seconds (a constant delay)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise InvalidTask(f"Invalid backoff {value!r}: {exc}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(initial=value, factor=1, maximum=value, jitter=0)
        raise InvalidTask(
            f"backoff must be a Backoff, a dict of its fields or a number of "
            f"seconds, not {value!r}."
        )

    def delay(self, attempt: int) -> timedelta:
        """The delay before the attempt after ``attempt`` (1 for the first)."""
        try:
            seconds = min(self.maximum, self.initial * self.factor ** (attempt - 1))
        except OverflowError:
            seconds = self.maximum
        if self.jitter:
            seconds *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return timedelta(seconds=seconds)

    def as_dict(self) -> dict[str, float]:
        # Not dataclasses.asdict: it deep-copies, and this runs per enqueue.
        return {
            "initial": self.initial,
            "factor": self.factor,
            "maximum": self.maximum,
            "jitter": self.jitter,
        }
