"""Properties of enqueue's options (``using()``): priority, queue, run_after,
max_attempts, timeout and backoff are stored and read back exactly, or
refused cleanly (see ``tests/properties.py``)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from datetime import timezone as fixed_offset
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_bgtasks import Backoff
from django_bgtasks.compat import TaskResultStatus
from django_bgtasks.conf import bgtasks_settings
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.properties import (
    AWARE_DATETIMES,
    BACKOFFS,
    MAX_ATTEMPTS,
    NORMALISABLE,
    PLAUSIBLE_AWARE_DATETIMES,
    PLAUSIBLE_DELTAS,
    PRIORITIES,
    PROPERTIES,
    QUEUE_NAMES,
    QUEUES,
    SAFE_TEXT,
    assert_refused_cleanly,
    assert_same,
    attempt,
    expected_arguments,
    expected_backoff,
    rolled_back,
    same_instant,
    settings_backoff,
    valid_backoffs,
)

pytestmark = pytest.mark.django_db


def enqueue_with(**options):
    """``echo.using(**options).enqueue(1)``, timed: (result, error, before,
    after)."""
    before = timezone.now()
    result, error = attempt(lambda: tasks.echo.using(**options).enqueue(1))
    return result, error, before, timezone.now()


@settings(PROPERTIES, max_examples=150)
@given(priority=PRIORITIES)
@example(priority=Decimal("NaN"))
def test_priorities_round_trip_or_are_refused(priority):
    with rolled_back():
        result, error, *_ = enqueue_with(priority=priority)
        if error is not None:
            assert_refused_cleanly(error)
            assert not (type(priority) is int and -100 <= priority <= 100), error
            return
        job = Job.objects.get(pk=result.id)
        assert -100 <= job.priority <= 100
        assert job.priority == priority
        assert tasks.echo.get_result(result.id).task.priority == priority


@settings(PROPERTIES, max_examples=150)
@given(queue_name=QUEUE_NAMES)
def test_queue_names_outside_the_backends_queues_are_refused(queue_name):
    with rolled_back():
        result, error, *_ = enqueue_with(queue_name=queue_name)
        if error is not None:
            assert_refused_cleanly(error)
            assert queue_name not in QUEUES, error
            return
        assert queue_name in QUEUES
        assert Job.objects.get(pk=result.id).queue_name == queue_name


@settings(PROPERTIES, max_examples=150)
@given(queue_name=QUEUE_NAMES)
@example(queue_name="\x00")  # PostgreSQL refuses NUL in text
@example(queue_name="\ud800")  # no database takes a lone surrogate
def test_any_queue_name_round_trips_or_is_refused_when_queues_are_open(queue_name):
    open_queues = {
        "default": {"BACKEND": "django_bgtasks.backend.DatabaseBackend", "QUEUES": []}
    }
    with override_settings(TASKS=open_queues), rolled_back():
        result, error, *_ = enqueue_with(queue_name=queue_name)
        if error is not None:
            assert_refused_cleanly(error)
            return
        job = Job.objects.get(pk=result.id)
        assert_same(queue_name, job.queue_name, "queue_name")
        fetched = tasks.echo.get_result(result.id)
        assert_same(queue_name, fetched.task.queue_name, "get_result().queue_name")


@settings(PROPERTIES, max_examples=200)
@given(
    run_after=st.one_of(
        AWARE_DATETIMES,
        PLAUSIBLE_AWARE_DATETIMES,
        st.datetimes(),  # naive
        st.timedeltas(),
        PLAUSIBLE_DELTAS,
        st.dates(),
        st.text(max_size=3),
        st.integers(),
    )
)
@example(run_after="")
@example(run_after=date(2025, 1, 6))
@example(run_after=timedelta.max)
@example(run_after=datetime(9999, 12, 31, 23, tzinfo=fixed_offset(-timedelta(hours=5))))
@example(run_after=datetime(2025, 1, 6, tzinfo=fixed_offset(timedelta(microseconds=1))))
@example(run_after=datetime(2025, 1, 6, tzinfo=fixed_offset(timedelta(hours=-23))))
def test_run_after_round_trips_or_is_refused(run_after):
    with rolled_back():
        result, error, before, after = enqueue_with(run_after=run_after)
        plausible = (
            isinstance(run_after, datetime)
            and timezone.is_aware(run_after)
            and 1900 <= run_after.year <= 2200
        ) or (isinstance(run_after, timedelta) and abs(run_after.days) <= 36500)
        if error is not None:
            assert_refused_cleanly(error)
            assert not plausible, f"Refused run_after={run_after!r}: {error}"
            return
        job = Job.objects.get(pk=result.id)
        if isinstance(run_after, timedelta):
            assert before + run_after <= job.run_after <= after + run_after
        else:
            assert isinstance(run_after, datetime) and timezone.is_aware(run_after)
            assert same_instant(job.run_after, run_after)
        assert same_instant(job.run_after, result.task.run_after)
        fetched = tasks.echo.get_result(result.id).task
        assert fetched.run_after is not None, "get_result().task lost run_after"
        assert same_instant(fetched.run_after, job.run_after)


@settings(PROPERTIES, max_examples=100)
@given(max_attempts=MAX_ATTEMPTS)
def test_max_attempts_round_trip_or_are_refused(max_attempts):
    with rolled_back():
        result, error, *_ = enqueue_with(max_attempts=max_attempts)
        valid = type(max_attempts) is int and 1 <= max_attempts <= 1000
        if error is not None:
            assert_refused_cleanly(error)
            assert not valid, error
            return
        assert valid, f"Accepted max_attempts={max_attempts!r}"
        assert Job.objects.get(pk=result.id).max_attempts == max_attempts


@settings(PROPERTIES, max_examples=100)
@given(
    timeout=st.one_of(
        st.floats(0.001, 3600),
        st.integers(1, 3600),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.decimals(),
        st.text(max_size=3),
    )
)
def test_timeouts_round_trip_or_are_refused(timeout):
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    with rolled_back():
        result, error, *_ = enqueue_with(timeout=timeout)
        if error is not None:
            assert_refused_cleanly(error)
            assert not (number and 0 < timeout <= 3600), error
            return
        assert number and 0 < timeout < math.inf, f"Accepted timeout={timeout!r}"
        assert Job.objects.get(pk=result.id).timeout == timeout


@settings(PROPERTIES, max_examples=200)
@given(backoff=BACKOFFS)
@example(backoff=float("nan"))
@example(backoff={"initial": float("inf"), "maximum": float("inf")})
def test_backoffs_round_trip_or_are_refused(backoff):
    expected = expected_backoff(backoff)
    with rolled_back():
        result, error, *_ = enqueue_with(backoff=backoff)
        if error is not None:
            assert_refused_cleanly(error)
            assert expected is None, f"Refused backoff={backoff!r}: {error}"
            return
        assert expected is not None, f"Accepted backoff={backoff!r}"
        assert_same(expected, Job.objects.get(pk=result.id).backoff, "backoff")


@settings(PROPERTIES, max_examples=100)
@given(
    priority=st.integers(-100, 100),
    queue_name=st.sampled_from(QUEUES),
    run_after=st.none() | PLAUSIBLE_AWARE_DATETIMES | PLAUSIBLE_DELTAS,
    max_attempts=st.none() | st.integers(1, 1000),
    backoff=st.none() | valid_backoffs(),
    args=st.lists(NORMALISABLE, max_size=3),
    kwargs=st.dictionaries(SAFE_TEXT, NORMALISABLE, max_size=2),
)
@example(  # the largest float kept as a float everywhere
    priority=0,
    queue_name="default",
    run_after=None,
    max_attempts=None,
    backoff=None,
    args=[],
    kwargs={"": 9.99e15},
)
@example(  # PostgreSQL refuses a UTC offset of a microsecond
    priority=0,
    queue_name="default",
    run_after=datetime(2025, 1, 6, tzinfo=fixed_offset(timedelta(microseconds=1))),
    max_attempts=None,
    backoff=None,
    args=[],
    kwargs={},
)
def test_valid_options_are_stored_and_read_back_exactly(
    priority, queue_name, run_after, max_attempts, backoff, args, kwargs
):
    options = {
        "priority": priority,
        "queue_name": queue_name,
        "run_after": run_after,
        "max_attempts": max_attempts,
        "backoff": backoff,
    }
    with rolled_back():
        before = timezone.now()
        result = tasks.echo.using(**options).enqueue(*args, **kwargs)
        after = timezone.now()
        job = Job.objects.get(pk=result.id)
        expected_args, expected_kwargs = expected_arguments(args, kwargs)
        assert_same(expected_args, job.args, "args")
        assert_same(expected_kwargs, job.kwargs, "kwargs")
        assert (job.priority, job.queue_name) == (priority, queue_name)
        if isinstance(run_after, datetime):
            assert same_instant(job.run_after, run_after)
        elif isinstance(run_after, timedelta):
            assert before + run_after <= job.run_after <= after + run_after
        else:
            assert job.run_after == job.enqueued_at
        assert job.max_attempts == (max_attempts or 3)
        assert_same(
            expected_backoff(backoff) if backoff else settings_backoff(),
            job.backoff,
            "backoff",
        )
        assert job.status == JobStatus.READY and job.attempts == 0

        # get_result() describes the job as enqueue() did.
        fetched = tasks.echo.get_result(result.id)
        assert fetched.status == TaskResultStatus.READY
        assert (fetched.task.priority, fetched.task.queue_name) == (
            priority,
            queue_name,
        )
        if run_after is not None:
            assert fetched.task.run_after, "get_result().task lost run_after"
        if fetched.task.run_after is not None:
            assert same_instant(fetched.task.run_after, job.run_after)


@settings(PROPERTIES, max_examples=20)
@given(
    priority=st.integers(-100, 100),
    run_after=st.none() | PLAUSIBLE_DELTAS,
    max_attempts=st.none() | st.integers(1, 1000),
    backoff=st.none() | valid_backoffs().map(lambda fields: Backoff(**fields)),
    timeout=st.none() | st.floats(0.001, 3600),
)
@example(priority=0, run_after=None, max_attempts=5, backoff=None, timeout=None)
def test_get_result_gives_the_task_with_the_jobs_options(
    priority, run_after, max_attempts, backoff, timeout
):
    """``get_result(id).task`` is the task with the options its job was given
    (``task_for_job``): an option left to the settings stays None, and with
    the settings' default it is what the job has."""
    with rolled_back():
        task = tasks.echo.using(
            priority=priority,
            run_after=run_after,
            max_attempts=max_attempts,
            backoff=backoff,
            timeout=timeout,
        )
        result = task.enqueue()
        fetched = tasks.echo.get_result(result.id).task
        job = Job.objects.get(pk=result.id)
        stored = {
            "priority": job.priority,
            "queue_name": job.queue_name,
            "max_attempts": job.max_attempts,
            "backoff": Backoff(**job.backoff),
            "timeout": job.timeout,
        }
        defaults = {
            "max_attempts": bgtasks_settings.MAX_ATTEMPTS,
            "backoff": Backoff.coerce(bgtasks_settings.BACKOFF),
            "timeout": bgtasks_settings.TIMEOUT,
        }
        lost = [
            name
            for name, value in stored.items()
            if _or_default(getattr(fetched, name), defaults.get(name)) != value
        ]
        if result.task.run_after and not (
            fetched.run_after and same_instant(fetched.run_after, result.task.run_after)
        ):
            lost.append("run_after")
        assert not lost, f"get_result().task lost the job's {', '.join(lost)}"


def _or_default(value, default):
    return default if value is None else value
