"""Planned times: cron expressions across time zones and DST, intervals."""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from django_bgtasks.cron import (
    CronTimes,
    IntervalTimes,
    PlannedTimes,
    describe_cron,
    normalize_cron,
    zone,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def local(tz, *parts, fold=0):
    return datetime(*parts, tzinfo=tz, fold=fold)


def following(times, start, count):
    out, moment = [], start
    for _ in range(count):
        moment = times.next_after(moment)
        out.append(moment)
    return out


def test_daily_in_a_zone_is_computed_on_its_wall_clock():
    times = CronTimes("30 2 * * *", PARIS)
    got = following(times, local(PARIS, 2025, 1, 10, 12, 0), 2)
    assert got == [local(PARIS, 2025, 1, 11, 2, 30), local(PARIS, 2025, 1, 12, 2, 30)]
    assert all(moment.tzinfo is UTC for moment in got)
    assert got[0] == datetime(2025, 1, 11, 1, 30, tzinfo=UTC)


def test_half_hour_zone():
    times = CronTimes("0 9 * * *", KOLKATA)
    assert times.next_after(datetime(2025, 6, 1, tzinfo=UTC)) == datetime(
        2025, 6, 1, 3, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("tz", "expression", "day_before", "expected"),
    [
        # Europe/Paris skips 02:00-03:00 on 2025-03-30: 02:30 runs at 03:00.
        (
            PARIS,
            "30 2 * * *",
            (2025, 3, 29, 12),
            [(2025, 3, 30, 3, 0), (2025, 3, 31, 2, 30)],
        ),
        # America/New_York skips 02:00-03:00 on 2025-03-09.
        (
            NEW_YORK,
            "30 2 * * *",
            (2025, 3, 8, 12),
            [(2025, 3, 9, 3, 0), (2025, 3, 10, 2, 30)],
        ),
    ],
)
def test_a_skipped_wall_time_runs_once(tz, expression, day_before, expected):
    got = following(CronTimes(expression, tz), local(tz, *day_before), 2)
    assert got == [local(tz, *parts) for parts in expected]


@pytest.mark.parametrize(
    ("tz", "expression", "day_before", "day", "repeated"),
    [
        # Europe/Paris passes 02:00-03:00 twice on 2025-10-26.
        (PARIS, "30 2 * * *", (2025, 10, 25, 12), (2025, 10, 26), (2, 30)),
        # America/New_York passes 01:00-02:00 twice on 2025-11-02.
        (NEW_YORK, "30 1 * * *", (2025, 11, 1, 12), (2025, 11, 2), (1, 30)),
    ],
)
def test_a_repeated_wall_time_runs_once(tz, expression, day_before, day, repeated):
    times = CronTimes(expression, tz)
    got = following(times, local(tz, *day_before), 3)
    # (Compared in UTC: Python never finds an ambiguous local time equal to
    # a time in another zone.)
    first = local(tz, *day, *repeated, fold=0).astimezone(UTC)
    assert got[0] == first
    assert got[1] == first + timedelta(days=1, hours=1)  # next day, not the repeat
    # Backwards too: the repeat is not a planned time.
    second_pass = local(tz, *day, *repeated, fold=1).astimezone(UTC)
    assert times.latest_at_or_before(second_pass + timedelta(minutes=5)) == first


def test_hourly_wildcards_keep_real_time_through_the_repeated_hour():
    times = CronTimes("*/30 * * * *", PARIS)
    got = following(times, local(PARIS, 2025, 10, 26, 1, 50), 5)
    gaps = {later - earlier for earlier, later in itertools.pairwise(got)}
    assert gaps == {timedelta(minutes=30)}


def test_seconds_field_is_sixth():
    times = CronTimes("* * * * * */10", ZoneInfo("UTC"))
    start = datetime(2025, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert [t.second for t in following(times, start, 3)] == [10, 20, 30]


def test_latest_at_or_before_includes_the_moment():
    times = CronTimes("0 10 * * *", ZoneInfo("UTC"))
    ten = datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert times.latest_at_or_before(ten) == ten
    assert times.latest_at_or_before(
        ten - timedelta(microseconds=1)
    ) == ten - timedelta(days=1)
    assert times.next_after(ten) == ten + timedelta(days=1)


def test_interval_times():
    anchor = datetime(2025, 1, 1, tzinfo=UTC)
    times = IntervalTimes(timedelta(minutes=5), anchor)
    assert times.next_after(anchor - timedelta(days=1)) == anchor
    assert times.next_after(anchor) == anchor + timedelta(minutes=5)
    assert times.next_after(anchor + timedelta(minutes=7)) == anchor + timedelta(
        minutes=10
    )
    assert times.latest_at_or_before(
        anchor + timedelta(minutes=7)
    ) == anchor + timedelta(minutes=5)
    assert times.latest_at_or_before(anchor - timedelta(seconds=1)) is None


def test_start_and_end_bound_the_times():
    start = datetime(2025, 1, 10, tzinfo=UTC)
    end = datetime(2025, 1, 12, 12, tzinfo=UTC)
    times = PlannedTimes(CronTimes("0 0 * * *", ZoneInfo("UTC")), start, end)
    assert times.upcoming(datetime(2025, 1, 1, tzinfo=UTC), 5) == [
        start,
        start + timedelta(days=1),
        start + timedelta(days=2),
    ]
    assert times.next_after(end) is None
    assert times.latest_at_or_before(
        datetime(2025, 2, 1, tzinfo=UTC)
    ) == start + timedelta(days=2)
    assert times.latest_at_or_before(datetime(2025, 1, 5, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("expression", "normalized"),
    [
        ("  30  2 * *   * ", "30 2 * * *"),
        ("@Daily", "@daily"),
        ("0 9 * * mon-fri", "0 9 * * mon-fri"),
        ("* * * * * */5", "* * * * * */5"),
    ],
)
def test_normalize_cron(expression, normalized):
    assert normalize_cron(expression) == normalized


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "The cron expression is empty."),
        ("* * *", "has 5 fields"),
        ("61 * * * *", "'61 \\* \\* \\* \\*' is not a valid cron expression."),
        ("@reboot", "Unknown cron alias '@reboot'"),
        ("0 0 30 2 *", "matches no date from now on"),
        ("0 0 1 1 * 0 2001", "matches no date from now on"),
        (None, "must be text"),
    ],
)
def test_invalid_cron_expressions(expression, message):
    with pytest.raises(ValueError, match=message):
        normalize_cron(expression)


def test_zone():
    assert zone("Europe/Paris") == PARIS
    for bad in ["Mars/Olympus", "../etc/passwd", "", None]:
        with pytest.raises(ValueError):
            zone(bad)


@pytest.mark.parametrize(
    ("expression", "description"),
    [
        ("30 2 * * *", "At 02:30"),
        ("0 9 * * 1-5", "At 09:00, Monday through Friday"),
        ("* * * * * */5", "Every 5 seconds"),
        ("@hourly", "Every hour"),
    ],
)
def test_describe_cron(expression, description):
    assert describe_cron(expression) == description
