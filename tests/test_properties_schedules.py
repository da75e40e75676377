"""Properties of schedules: ``full_clean()`` refuses a bad schedule naming
only its bad fields, and a valid one fires its jobs with its arguments
exactly (see ``tests/properties.py``)."""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_bgtasks.cron import normalize_cron
from django_bgtasks.maintenance.scheduler import fire_due_schedules
from django_bgtasks.models import Job, Schedule
from tests.properties import (
    MAX_PAYLOAD_BYTES,
    NORMALISABLE,
    PRIORITIES,
    PROPERTIES,
    QUEUE_NAMES,
    QUEUES,
    SAFE_TEXT,
    TASK_PATHS,
    WILD,
    assert_same,
    expected_arguments,
    payload_limit,
    plausible_cron,
    registered_paths,
    rolled_back,
)

pytestmark = pytest.mark.django_db


T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
ZONES = sorted(zoneinfo.available_timezones())
TIME_ZONES = st.one_of(
    st.sampled_from(ZONES),
    st.text(max_size=12),
    st.sampled_from(
        [
            *["", "UTC ", "utc", "America", "Etc", "posix", "Europe/Paris\x00"],
            *["../UTC", "/UTC", "Mars/Olympus", "a" * 300, "Europe/" + "x" * 70],
        ]
    ),
)
INTERVALS = st.one_of(
    st.timedeltas(),
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    st.sampled_from(
        [timedelta(0), -timedelta.resolution, timedelta.resolution, timedelta.max]
    ),
)
SCHEDULE_ARGS = st.one_of(
    st.lists(NORMALISABLE, max_size=3),
    st.lists(WILD, max_size=3),
    WILD,
    st.lists(st.text(max_size=80), max_size=5),  # at times over the limit
)
SCHEDULE_KWARGS = st.one_of(
    st.dictionaries(SAFE_TEXT, NORMALISABLE, max_size=3),
    st.dictionaries(st.text(max_size=6), WILD, max_size=3),
    WILD,
)
SCHEDULER_NOW = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2080, 1, 1),
    timezones=st.just(UTC),
)


def cron_is_valid(expression: str) -> bool:
    if len(expression) > 200:
        return False
    try:
        normalize_cron(expression)
    except Exception:
        return False
    return True


def zone_is_valid(name) -> bool:
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        return False
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except Exception:
        return False
    return True


def json_field_error(value) -> bool:
    """Whether Django's JSONField refuses ``value`` (json.dumps fails)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return True
    return False


def schedule_arguments_are_bad(value, kind, limit: int) -> bool:
    if not isinstance(value, kind) or json_field_error(value):
        return True
    args, kwargs = (value, {}) if kind is list else ([], value)
    return expected_arguments(args, kwargs, limit) is None


def check_schedule_fires(schedule: Schedule, now: datetime, later: timedelta):
    """After a valid schedule is saved: it fires one job at its next run, and
    its jobs carry its arguments exactly."""
    schedule.reschedule(now=now)
    schedule.save()
    first = schedule.next_run_at
    if first is None:  # its times are over by ``now`` (a year field, an end)
        assert schedule.planned_times(now=now).next_after(now) is None
        return
    assert first >= now - timedelta(seconds=1)
    expected_args, expected_kwargs = expected_arguments(
        schedule.args, schedule.kwargs, limit=MAX_PAYLOAD_BYTES
    )

    assert fire_due_schedules(now=first) == 1
    schedule.refresh_from_db()
    assert schedule.last_error == "", schedule.last_error
    assert schedule.next_run_at is None or schedule.next_run_at > first
    job = Job.objects.get(schedule=schedule)
    assert job.scheduled_for == first
    assert_same(expected_args, job.args, "a scheduled job's args")
    assert_same(expected_kwargs, job.kwargs, "a scheduled job's kwargs")

    if schedule.interval is not None and schedule.interval < timedelta(seconds=1):
        return  # up to 1000 jobs a pass: bounded, but slow to test
    fire_due_schedules(now=first + later)
    schedule.refresh_from_db()
    assert schedule.last_error == "", schedule.last_error
    for job in Job.objects.filter(schedule=schedule):
        assert_same(expected_args, job.args, "a scheduled job's args")
    schedule.upcoming(3, now=first + later)


def check_schedule(
    fields: dict,
    bad: set[str],
    now: datetime,
    later: timedelta,
    may_refuse: frozenset[str] = frozenset(),
):
    """``Schedule(**fields).full_clean()`` refuses a schedule with a field in
    ``bad``, naming only fields in ``bad`` (or in ``may_refuse``: values a
    sane limit may refuse); or it passes, and then the schedule fires."""
    schedule = Schedule(name="property", **fields)
    try:
        schedule.full_clean()
    except ValidationError as exc:
        # Database constraints (cron xor interval, priority range) add
        # non-field errors; the fields named must be bad ones.
        named = set(exc.message_dict) - {NON_FIELD_ERRORS}
        assert bad or may_refuse, f"Refused a valid schedule: {exc.message_dict}"
        assert named, f"The error names no field: {exc.message_dict}"
        assert named <= bad | may_refuse, (
            f"The error names {sorted(named - bad)} though only {sorted(bad)} "
            f"is wrong: {exc.message_dict}"
        )
        assert not Schedule.objects.exists()
        return
    assert not bad, f"full_clean() accepted a schedule with a bad {sorted(bad)}"
    check_schedule_fires(schedule, now, later)


@settings(PROPERTIES, max_examples=150)
@given(
    cron=plausible_cron() | st.text(max_size=20),
    interval=st.none() | INTERVALS,
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/St_Johns"]) | TIME_ZONES,
    now=SCHEDULER_NOW,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)),
)
@example(cron="0 0 1 1 * 0 2001", interval=None, tz="UTC", now=T0, later=timedelta(0))
@example(  # its last time has passed: reschedule() must not raise
    cron="0 0 1 1 * 0 2030",
    interval=None,
    tz="UTC",
    now=datetime(2031, 1, 1, tzinfo=UTC),
    later=timedelta(0),
)
@example(cron="0 0 1 1 * 0 2030", interval=None, tz="UTC", now=T0, later=timedelta(0))
@example(cron="", interval=timedelta.max, tz="UTC", now=T0, later=timedelta(0))
@example(cron="* * * * *", interval=None, tz="America", now=T0, later=timedelta(0))
def test_schedule_timing_is_validated_or_fires(cron, interval, tz, now, later):
    bad = set()
    if bool(cron) == (interval is not None) or (cron and not cron_is_valid(cron)):
        bad.add("cron")
    elif interval is not None and interval <= timedelta(0):
        bad.add("interval")
    if not zone_is_valid(tz):
        bad.add("timezone")
    # Any cap above a year is a fair limit on an interval.
    may_refuse = frozenset(
        ["interval"] if interval is not None and interval > timedelta(days=366) else []
    )
    fields = {
        "task_path": "tests.tasks.echo",
        "cron": cron,
        "interval": interval,
        "timezone": tz,
    }
    with rolled_back():
        check_schedule(fields, bad, now, later, may_refuse)


@settings(PROPERTIES, max_examples=100)
@given(args=SCHEDULE_ARGS, kwargs=SCHEDULE_KWARGS)
@example(args=["x" * 300], kwargs={})
@example(args=[], kwargs={"": 1e16})  # PostgreSQL: the job gets an int
def test_schedule_arguments_are_validated_or_round_trip(args, kwargs):
    """Arguments a schedule could never enqueue (not JSON, or over
    MAX_PAYLOAD_BYTES, here 200) are refused by full_clean(), naming them."""
    limit = 200
    bad = set()
    if schedule_arguments_are_bad(args, list, limit):
        bad.add("args")
    if schedule_arguments_are_bad(kwargs, dict, limit):
        bad.add("kwargs")
    if not bad and expected_arguments(args, kwargs, limit) is None:
        bad = {"args", "kwargs"}  # together over the limit: either may be named
    fields = {
        "task_path": "tests.tasks.echo",
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "args": args,
        "kwargs": kwargs,
    }
    with payload_limit(limit), rolled_back():
        check_schedule(fields, bad, T0, timedelta(minutes=7))


def field_value_error(name: str, value) -> bool:
    """Whether the model field itself (clean_fields) refuses ``value``."""
    try:
        Schedule._meta.get_field(name).clean(value, None)
    except ValidationError:
        return True
    return False


@settings(PROPERTIES, max_examples=150)
@given(
    task_path=st.sampled_from(["tests.tasks.echo", "tests.tasks.add"]) | TASK_PATHS,
    queue_name=QUEUE_NAMES,
    priority=PRIORITIES,
)
@example(task_path="tests.tasks.echo", queue_name="default", priority=math.inf)
@example(
    task_path="tests.tasks.echo", queue_name="default", priority=Decimal("-Infinity")
)
@example(task_path="tests.tasks.echo", queue_name="priority", priority=0)
@example(task_path="tests.tasks.echo", queue_name="default", priority="high")
def test_schedule_task_queue_and_priority_are_validated(
    task_path, queue_name, priority
):
    registered = task_path in registered_paths()
    bad = set()
    if not registered or field_value_error("task_path", task_path):
        bad.add("task_path")
    if field_value_error("queue_name", queue_name) or (
        registered and queue_name not in QUEUES
    ):
        bad.add("queue_name")
    priority_field = Schedule._meta.get_field("priority")
    if field_value_error("priority", priority) or not (
        -100 <= priority_field.clean(priority, None) <= 100
    ):
        bad.add("priority")
    fields = {
        "task_path": task_path,
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "queue_name": queue_name,
        "priority": priority,
    }
    with rolled_back():
        check_schedule(fields, bad, T0, timedelta(minutes=7))
