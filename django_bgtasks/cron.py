"""The planned times of a schedule: a cron expression in a time zone
(evaluated with croniter), or a fixed interval.

Cron expressions have five fields (minute hour day month weekday), or a sixth
for seconds *at the end* (croniter's convention: ``* * * * * */10`` is every
ten seconds), or a seventh for the year; the aliases ``@yearly``
(``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly`` work too.

Daylight saving time: times are computed on the zone's wall clock. A time the
clock skips (02:30 when it jumps from 02:00 to 03:00) runs once, when the
clock jumps (at 03:00). A wall time the clock passes twice (01:30 when it goes
back from 02:00 to 01:00) runs once, at its first occurrence, for expressions
with fixed hours; an expression running every hour (hour field ``*``) keeps
running on real time through the repeated hour, like cron.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MICROSECOND = timedelta(microseconds=1)


def normalize_cron(expression: str, *, future: bool = True) -> str:
    """Return ``expression`` with single spaces, or raise ValueError saying
    what is wrong with it; with ``future``, also if no time matches it from
    now on (a year field in the past, 30 February)."""
    if not isinstance(expression, str):
        raise ValueError(f"A cron expression must be text, not {expression!r}.")
    normalized = " ".join(expression.split())
    if not normalized:
        raise ValueError("The cron expression is empty.")
    if normalized.startswith("@"):
        if normalized.lower() not in ALIASES:
            raise ValueError(
                f"Unknown cron alias {normalized!r}; use one of "
                f"{', '.join(sorted(ALIASES))}."
            )
        return normalized.lower()
    fields = normalized.split(" ")
    if not 5 <= len(fields) <= 7:
        raise ValueError(
            f"A cron expression has 5 fields (minute hour day month weekday), "
            f"6 with seconds last, or 7 with the year; {normalized!r} has "
            f"{len(fields)}."
        )
    if not croniter.is_valid(normalized):
        raise ValueError(f"{normalized!r} is not a valid cron expression.")
    if not future:
        return normalized
    try:
        croniter(normalized, datetime.now(UTC)).get_next(datetime)
    except (CroniterError, ValueError) as exc:
        raise ValueError(f"{normalized!r} matches no date from now on: {exc}") from None
    return normalized


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (an IANA name), or ValueError."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        raise ValueError(f"{name!r} is not a time zone name.")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"Unknown time zone {name!r}; use an IANA name such as "
            f"'Europe/Paris' or 'UTC'."
        ) from None


def describe_cron(expression: str) -> str:
    """A sentence saying when ``expression`` runs, e.g. "At 02:30 AM"."""
    from cron_descriptor import Options, get_description

    fields = ALIASES.get(expression, expression).split(" ")
    if len(fields) >= 6:
        # cron-descriptor puts seconds first; croniter puts them sixth.
        fields = [fields[5], *fields[:5], *fields[6:]]
    options = Options()
    options.use_24hour_time_format = True
    try:
        return get_description(" ".join(fields), options)
    except Exception:  # a description is a nicety; never fail over one
        return expression


class CronTimes:
    """The times matching a cron expression on a time zone's wall clock."""

    def __init__(self, expression: str, tz: ZoneInfo):
        # An expression whose times are over still reads: it has no next.
        self.expression = normalize_cron(expression, future=False)
        self.tz = tz
        hours = croniter(ALIASES.get(self.expression, self.expression)).expanded[1]
        # Every hour ("*", "*/1", "0-23"): real time through a repeated hour.
        self._fixed_hours = hours != ["*"] and len(hours) < 24

    def next_after(self, moment: datetime) -> datetime | None:
        """The first planned time strictly after ``moment`` (None: no more,
        as for an expression with a year that has passed)."""
        try:
            iterator = croniter(self.expression, moment.astimezone(self.tz))
            planned = iterator.get_next(datetime)
            while self._is_repeat(planned):
                planned = iterator.get_next(datetime)
        except CroniterBadDateError:
            return None
        return planned.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last planned time at or before ``moment`` (None: none)."""
        try:
            iterator = croniter(
                self.expression, (moment + MICROSECOND).astimezone(self.tz)
            )
            planned = iterator.get_prev(datetime)
            while self._is_repeat(planned):
                planned = iterator.get_prev(datetime)
        except CroniterBadDateError:
            return None
        return planned.astimezone(UTC)

    def _is_repeat(self, planned: datetime) -> bool:
        """Whether ``planned`` is the second pass of a wall time the clock
        repeats, for an expression with fixed hours."""
        if not self._fixed_hours:
            return False
        first = planned.replace(tzinfo=None).replace(tzinfo=self.tz, fold=0)
        return first.utcoffset() != planned.utcoffset()


@dataclass(frozen=True)
class IntervalTimes:
    """``anchor``, ``anchor + interval``, ``anchor + 2 * interval`` ..."""

    interval: timedelta
    anchor: datetime

    def next_after(self, moment: datetime) -> datetime:
        if moment < self.anchor:
            return self.anchor
        steps = (moment - self.anchor) // self.interval + 1
        return self.anchor + steps * self.interval

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        if moment < self.anchor:
            return None
        return self.anchor + ((moment - self.anchor) // self.interval) * self.interval


@dataclass(frozen=True)
class PlannedTimes:
    """Planned times limited to ``[start_at, end_at]``; None past the end."""

    times: CronTimes | IntervalTimes
    start_at: datetime | None = None
    end_at: datetime | None = None

    def next_after(self, moment: datetime) -> datetime | None:
        if self.start_at is not None and moment < self.start_at:
            moment = self.start_at - MICROSECOND
        planned = self.times.next_after(moment)
        if planned is None or (self.end_at is not None and planned > self.end_at):
            return None
        return planned

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        if self.end_at is not None and moment > self.end_at:
            moment = self.end_at
        planned = self.times.latest_at_or_before(moment)
        if planned is None or (self.start_at is not None and planned < self.start_at):
            return None
        return planned

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` planned times after ``after`` (fewer at the end)."""
        times = []
        moment = after
        while len(times) < count and (moment := self.next_after(moment)) is not None:
            times.append(moment)
        return times
