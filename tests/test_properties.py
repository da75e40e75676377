"""Bad input, checked broadly: property-based tests of the public API.

Whatever is thrown at ``enqueue``, ``using()``, ``Schedule`` and
``normalize_cron``, it is either accepted and comes back exactly as the
framework normalises it (tuples become lists, bytes UTF-8 text), or refused
with a clear error (an ``InvalidTask``, ``ValueError``, ``TypeError`` or
``ValidationError`` with a message) and no row left behind. Rows corrupted
behind the ORM's back fail their job with a clear error and never stop a
worker.

Each example of a ``django_db`` test runs in a savepoint that is rolled back
at its end (see ``rolled_back``), so "no row left behind" is checked per
example; tests that run a worker use real transactions and delete their rows
per example instead.

Comparisons are exact: ``1`` is not ``1.0`` nor ``True``, and ``-0.0`` is not
``0.0``. A difference in value, in type and in the sign of zero fail on
different lines, so hypothesis reports each as a bug of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import zoneinfo
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from datetime import timezone as fixed_offset
from decimal import Decimal
from fractions import Fraction
from functools import cache

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from django_bgtasks import Backoff, registry
from django_bgtasks.compat import InvalidTask, TaskResultStatus
from django_bgtasks.cron import normalize_cron
from django_bgtasks.maintenance.scheduler import fire_due_schedules
from django_bgtasks.models import Job, JobStatus, Schedule, WorkerProcess
from tests import tasks
from tests.conftest import run_in_process

# The settings profile of this module: few examples where a worker runs.
# The @example()s pin bugs found so far; a failing explicit example stops a
# test before hypothesis generates any. BGTASKS_PROPERTIES_EXPLORE=1 skips
# them, to search for other bugs.
EXPLORE = os.environ.get("BGTASKS_PROPERTIES_EXPLORE") == "1"
PROPERTIES = settings(
    max_examples=100,
    phases=[phase for phase in Phase if not (EXPLORE and phase is Phase.explicit)],
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    # No example database in the work tree (.hypothesis/ is not ignored);
    # a failure prints its example.
    database=None,
)
WORKER_RUNS = settings(PROPERTIES, max_examples=25)

QUEUES = ("default", "images", "other")  # tests.settings
MAX_INT = 2**63 - 1
MAX_DEPTH = 31  # levels of lists and objects, the outermost counted
MAX_FLOAT = 1e16  # PostgreSQL's jsonb gives larger floats back as integers
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_BACKOFF = 30 * 24 * 3600  # seconds (README)
BACKOFF_FIELDS = ("initial", "factor", "maximum", "jitter")
DEFAULT_BACKOFF = {"initial": 10.0, "factor": 2.0, "maximum": 3600.0, "jitter": 0.1}
ACCEPTABLE_ERRORS = (InvalidTask, ValueError, TypeError)

pytestmark = pytest.mark.django_db


# ---------------------------------------------------------------------------
# The reference: what the framework makes of a value, and whether the README
# says it is stored ("What bad input gets"). Written out here rather than
# taken from django_bgtasks, so the tests do not grade the code by itself.


class Refused(Exception):
    """The reference refuses the value."""


def normalised(value):
    """``django.tasks``' normalisation: mappings become dicts (keys
    normalised too), bytes UTF-8 text, other sequences lists."""
    if isinstance(value, Mapping):
        try:
            return {normalised(key): normalised(item) for key, item in value.items()}
        except TypeError as exc:  # a key that became a list
            raise Refused(str(exc)) from None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("bytes that are not UTF-8") from None
    if isinstance(value, float) and value == 0.0:
        return 0.0  # -0.0: PostgreSQL keeps no sign on zero (README)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [normalised(item) for item in value]
    raise Refused(f"unsupported type {type(value).__name__}")


def check_storable(value, depth: int = 0) -> None:
    """Raise Refused unless ``value`` (normalised) is JSON that comes back
    unchanged from every supported database."""
    if isinstance(value, list | dict) and depth >= MAX_DEPTH:
        raise Refused("nested too deep")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise Refused("integer beyond 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Refused("not a JSON number")
        if abs(value) >= MAX_FLOAT:
            raise Refused("a float PostgreSQL would give back as an integer")
    elif isinstance(value, list):
        for item in value:
            check_storable(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise Refused("dictionary key that is not text")
            check_text(key)
            check_storable(item, depth + 1)
    else:
        raise Refused(f"unsupported type {type(value).__name__}")


def check_text(text: str) -> None:
    if "\x00" in text:
        raise Refused("NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("not valid Unicode") from None


def expected_arguments(args, kwargs, limit: int = MAX_PAYLOAD_BYTES):
    """(args, kwargs) as they must be stored, or None if they must be
    refused (``limit``: BGTASKS["MAX_PAYLOAD_BYTES"])."""
    try:
        args, kwargs = normalised(list(args)), normalised(kwargs)
        check_storable(args)
        check_storable(kwargs)
    except (Refused, RecursionError):
        return None
    size = len(json.dumps([args, kwargs], separators=(",", ":")).encode())
    return None if size > limit else (args, kwargs)


def difference(expected, actual, path: str = ""):
    """The first difference between two JSON values, exactly: (kind, path,
    expected, actual) with kind "type", "value" or "sign"; None if equal."""
    if type(expected) is not type(actual):
        return "type", path, expected, actual
    if isinstance(expected, dict):
        if set(expected) != set(actual):
            return "value", path, expected, actual
        for key in expected:
            found = difference(expected[key], actual[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return "value", path, expected, actual
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found = difference(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    if expected != actual:
        return "value", path, expected, actual
    if isinstance(expected, float) and math.copysign(1, expected) != math.copysign(
        1, actual
    ):
        return "sign", path, expected, actual
    return None


def assert_same(expected, actual, what: str) -> None:
    """Assert that ``actual`` (read back) is exactly ``expected``."""
    found = difference(expected, actual)
    if found is None:
        return
    kind, path, left, right = found
    detail = (
        f"{what}{path} on {connection.vendor}: stored {left!r} "
        f"({type(left).__name__}), read back {right!r} ({type(right).__name__})"
    )
    if kind == "type":
        raise AssertionError(f"A value changed type: {detail}")
    if kind == "sign":
        raise AssertionError(f"The sign of a zero was lost: {detail}")
    raise AssertionError(f"A value changed: {detail}")


# ---------------------------------------------------------------------------
# Helpers


@contextmanager
def rolled_back():
    """One example's own savepoint, rolled back at its end (or on error)."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def attempt(call):
    """Run ``call``; return (its result, None) or (None, what it raised)."""
    try:
        return call(), None
    except Exception as exc:
        return None, exc


def assert_refused_cleanly(error: Exception, model=Job) -> None:
    """A refusal must be a clear error, raised before anything was written.

    A wrong refusal re-raises the original exception (with a note), so that
    hypothesis tells bugs apart by where they were raised.
    """
    if isinstance(error, DatabaseError):
        error.add_note("BUG: the database refused what validation let through.")
        raise error
    if not isinstance(error, ACCEPTABLE_ERRORS):
        error.add_note(
            "BUG: refused with an unexpected exception type; expected "
            "InvalidTask, ValueError or TypeError."
        )
        raise error
    assert str(error).strip(), f"Refused with an empty message: {error!r}"
    if connection.needs_rollback:
        error.add_note(
            "BUG: refused only by the database write, not by validation (the "
            "caller's transaction is now broken)."
        )
        raise error
    assert not model.objects.exists(), f"A refused call left a row behind: {error}"


def settings_backoff() -> dict:
    return django_settings.BGTASKS["BACKOFF"]


@contextmanager
def payload_limit(limit: int):
    """A small BGTASKS["MAX_PAYLOAD_BYTES"], so that examples cross it."""
    with override_settings(
        BGTASKS={**django_settings.BGTASKS, "MAX_PAYLOAD_BYTES": limit}
    ):
        yield


def same_instant(left: datetime, right: datetime) -> bool:
    # Compare in UTC: aware datetimes in a fold or gap never compare equal
    # across zones (PEP 495).
    return left.astimezone(UTC) == right.astimezone(UTC)


# ---------------------------------------------------------------------------
# Strategies

SAFE_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_INT, MAX_INT),
    st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda f: abs(f) < MAX_FLOAT
    ),
    SAFE_TEXT,
)
# JSON that every database must store unchanged.
SAFE_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=16,
)
# What the framework normalises into such JSON: tuples, UTF-8 bytes.
NORMALISABLE = st.recursive(
    JSON_SCALARS | SAFE_TEXT.map(str.encode),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=16,
)

ODD_VALUES = [
    float("nan"),
    float("inf"),
    -float("inf"),
    -0.0,
    1e16,
    1e23,
    5e-324,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    10**400,
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\U0001f600",
    "\u2028",
    b"\xff",
    b"\x00",
    b"caf\xc3\xa9",
    bytearray(b"ab"),
    object(),
    Decimal("1.5"),
    Fraction(1, 3),
    complex(1, 2),
    date(2025, 1, 6),
    datetime(2025, 1, 6, tzinfo=UTC),
    timedelta(seconds=1),
    range(3),
    frozenset({1, 2}),
    {1, 2},
    Ellipsis,
    len,
    type,
]
WILD_SCALARS = st.one_of(
    JSON_SCALARS,
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(ODD_VALUES),
)
WILD_KEYS = st.one_of(
    st.text(max_size=6),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=4),
    st.tuples(st.integers()),
    st.frozensets(st.integers(), max_size=2),
)
WILD = st.recursive(
    WILD_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(WILD_KEYS, children, max_size=4)
        | st.sets(st.integers() | st.text(max_size=3), max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def deeply_nested(draw):
    """A scalar or empty container inside up to 140 lists, dicts and tuples
    (no floats: their trouble on PostgreSQL is another test's)."""
    scalars = st.none() | st.booleans() | st.integers(-MAX_INT, MAX_INT) | SAFE_TEXT
    value = draw(scalars | st.sampled_from([[], {}, ()]))
    for _ in range(draw(st.integers(0, 140))):
        kind = draw(st.sampled_from(["list", "dict", "tuple"]))
        value = {"k": value} if kind == "dict" else [value]
        if kind == "tuple":
            value = tuple(value)
    return value


def fixed_offsets():
    return st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59),
        max_value=timedelta(hours=23, minutes=59),
    ).map(fixed_offset)


AWARE_DATETIMES = st.datetimes(timezones=st.timezones() | fixed_offsets())
PLAUSIBLE_AWARE_DATETIMES = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.timezones() | fixed_offsets(),
)
PLAUSIBLE_DELTAS = st.timedeltas(
    min_value=timedelta(days=-36500), max_value=timedelta(days=36500)
)
PRIORITIES = st.one_of(
    st.integers(-100, 100),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.decimals(),
    st.fractions(),
    st.text(max_size=3),
)
QUEUE_NAMES = st.one_of(
    st.sampled_from(QUEUES),
    st.text(),
    st.text(string.ascii_letters, min_size=60, max_size=70),
    st.sampled_from(
        ["priority", "Default", "default ", " default", "", "\x00", "\ud800"]
    ),
    st.integers(),
)
MAX_ATTEMPTS = st.one_of(
    st.integers(1, 1000),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.decimals(),
    st.text(max_size=3),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(0, 100),
    st.floats(),
    st.floats(0, 100),
    st.booleans(),
    st.decimals(),
    st.text(max_size=3),
    st.none(),
)
BACKOFF_DICTS = st.dictionaries(
    st.sampled_from(BACKOFF_FIELDS) | st.text(max_size=6) | st.integers(),
    NUMBERS,
    max_size=5,
)


@st.composite
def valid_backoffs(draw):
    """Backoff field values its own checks accept (as a dict)."""
    initial = draw(st.integers(0, 10**6) | st.floats(0, 1e6))
    return {
        "initial": initial,
        "factor": draw(st.integers(1, 10) | st.floats(1, 10)),
        "maximum": initial + draw(st.integers(0, 10**6) | st.floats(0, 1e6)),
        "jitter": draw(st.integers(0, 1) | st.floats(0, 1)),
    }


BACKOFFS = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.decimals(),
    st.text(max_size=3),
    BACKOFF_DICTS,
    valid_backoffs(),
    valid_backoffs().map(lambda fields: Backoff(**fields)),
    # Large delays: a retry must still be scheduled without a crash.
    st.floats(1e8, 1e300),
    st.integers(10**8, 10**30),
)


def expected_backoff(value) -> dict | None:
    """The backoff a job must store for ``using(backoff=value)``, or None if
    it is refused."""
    if isinstance(value, Backoff):
        return asdict(value)
    if isinstance(value, dict):
        if any(key not in BACKOFF_FIELDS for key in value):
            return None
        fields = {**DEFAULT_BACKOFF, **value}
    elif isinstance(value, int | float) and not isinstance(value, bool):
        fields = {"initial": value, "factor": 1, "maximum": value, "jitter": 0}
    else:
        return None
    numbers = fields.values()
    if any(
        isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        for v in numbers
    ):
        return None
    if not (
        fields["initial"] >= 0
        and fields["factor"] >= 1
        and fields["initial"] <= fields["maximum"] <= MAX_BACKOFF
        and 0 <= fields["jitter"] <= 1
    ):
        return None
    return fields


# ---------------------------------------------------------------------------
# Enqueue: arguments


def nested(levels: int) -> list:
    """An empty list inside ``levels`` lists."""
    value = []
    for _ in range(levels):
        value = [value]
    return value


def check_enqueue_arguments(args, kwargs, limit: int = MAX_PAYLOAD_BYTES) -> None:
    """Enqueue ``echo(*args, **kwargs)``: stored exactly, or refused cleanly."""
    expected = expected_arguments(args, kwargs, limit)
    result, error = attempt(lambda: tasks.echo.enqueue(*args, **kwargs))
    if error is not None:
        assert_refused_cleanly(error)
        assert expected is None, f"Refused arguments that round-trip: {error}"
        return
    assert expected is not None, (
        f"Accepted arguments the README says are refused: {args!r}, {kwargs!r}"
    )
    expected_args, expected_kwargs = expected
    job = Job.objects.get(pk=result.id)
    assert_same(expected_args, job.args, "args")
    assert_same(expected_kwargs, job.kwargs, "kwargs")
    fetched = tasks.echo.get_result(result.id)
    assert_same(expected_args, fetched.args, "get_result().args")
    assert_same(expected_kwargs, fetched.kwargs, "get_result().kwargs")
    assert_same(expected_args, result.args, "enqueue().args")
    assert_same(expected_kwargs, result.kwargs, "enqueue().kwargs")


@settings(PROPERTIES, max_examples=300)
@given(
    args=st.lists(WILD, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=6), WILD, max_size=3),
)
@example(args=[1e16], kwargs={})  # PostgreSQL: comes back as an int
@example(args=[nested(31)], kwargs={})  # MariaDB: 32 levels fail its CHECK
def test_arbitrary_arguments_round_trip_or_are_refused(args, kwargs):
    with payload_limit(300), rolled_back():
        check_enqueue_arguments(args, kwargs, limit=300)


@settings(PROPERTIES, max_examples=150)
@given(
    args=st.lists(NORMALISABLE, max_size=4),
    kwargs=st.dictionaries(SAFE_TEXT, NORMALISABLE, max_size=3),
)
@example(args=[-0.0], kwargs={})
@example(args=[9.99e15], kwargs={})
def test_json_arguments_are_accepted_and_round_trip(args, kwargs):
    assert expected_arguments(args, kwargs) is not None  # the strategy's promise
    with rolled_back():
        check_enqueue_arguments(args, kwargs)


@PROPERTIES
@given(value=deeply_nested(), where=st.sampled_from(["args", "kwargs"]))
@example(value=nested(31), where="args")  # 32 levels as stored
@example(value=nested(99), where="args")
def test_deep_nesting_round_trips_or_is_refused(value, where):
    args, kwargs = ([value], {}) if where == "args" else ([], {"deep": value})
    with rolled_back():
        check_enqueue_arguments(args, kwargs)


def test_a_self_referencing_argument_is_refused():
    loop = []
    loop.append(loop)
    with rolled_back():
        check_enqueue_arguments([loop], {})


# ---------------------------------------------------------------------------
# Enqueue: options


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
    (``task_for_job``): the job's, with the defaults filled in at enqueue."""
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
        lost = [
            name for name, value in stored.items() if getattr(fetched, name) != value
        ]
        if result.task.run_after and not (
            fetched.run_after and same_instant(fetched.run_after, result.task.run_after)
        ):
            lost.append("run_after")
        assert not lost, f"get_result().task lost the job's {', '.join(lost)}"


# ---------------------------------------------------------------------------
# A worker runs what was accepted


def clear_jobs() -> None:
    Job.objects.all().delete()


def run_worker() -> None:
    """Run a worker in this process until nothing is due."""
    try:
        run_in_process()
    except Exception as exc:
        exc.add_note("BUG: the worker stopped on this job instead of failing it.")
        raise


@pytest.mark.django_db(transaction=True)
@WORKER_RUNS
@given(
    args=st.lists(NORMALISABLE, max_size=4),
    kwargs=st.dictionaries(SAFE_TEXT, NORMALISABLE, max_size=3),
)
@example(args=[9.99e15, -0.0], kwargs={})  # the largest floats kept as floats
def test_a_worker_gets_the_arguments_exactly(args, kwargs):
    clear_jobs()
    expected_args, expected_kwargs = expected_arguments(args, kwargs)
    result = tasks.echo.enqueue(*args, **kwargs)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    assert_same(
        {"args": expected_args, "kwargs": expected_kwargs},
        result.return_value,
        "return value",
    )
    fetched = tasks.echo.get_result(result.id)
    assert_same(result.return_value, fetched.return_value, "get_result().return_value")


RETRY_BACKOFFS = st.one_of(
    valid_backoffs(),
    valid_backoffs().map(lambda fields: Backoff(**fields)),
    st.integers(0, 10**30),
    st.floats(0, 1e300),
)


@pytest.mark.django_db(transaction=True)
@settings(WORKER_RUNS, max_examples=20)
@given(backoff=RETRY_BACKOFFS)
@example(backoff=1e12)
def test_an_accepted_backoff_schedules_the_retry(backoff):
    """A failing job with an accepted backoff is put back for its retry (or
    fails for good): its own error recorded, never stuck RUNNING or given
    back as interrupted because its retry time could not be computed."""
    clear_jobs()
    result, error = attempt(
        lambda: tasks.always_fails.using(max_attempts=2, backoff=backoff).enqueue()
    )
    assume(error is None)  # refusals: test_backoffs_round_trip_or_are_refused
    run_worker()
    job = Job.objects.get(pk=result.id)
    assert job.status in (JobStatus.READY, JobStatus.FAILED), job.status
    paths = [entry["exception_class_path"] for entry in job.errors]
    assert paths and set(paths) == {"builtins.ValueError"}, (
        f"backoff={backoff!r}: errors {paths}: "
        f"{job.errors[-1]['traceback'] if job.errors else ''}"
    )
    if job.status == JobStatus.READY:  # due again after its backoff
        assert job.run_after >= datetime.fromisoformat(job.errors[-1]["at"])
    assert not WorkerProcess.objects.exists()


# ---------------------------------------------------------------------------
# Rows corrupted behind the ORM's back


def write_behind_orm(job_id: int, column: str, text: str, *, valid_json=True):
    """Set ``column`` of job ``job_id`` to ``text`` with raw SQL; JSON columns
    get it as JSON text (malformed too, where the database can hold it)."""
    table = connection.ops.quote_name(Job._meta.db_table)
    quoted = connection.ops.quote_name(column)
    json_column = column != "task_path"
    cast = "::jsonb" if json_column and connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        if not valid_json:
            # Django's JSON columns have CHECK (JSON_VALID(...)) on SQLite and
            # MariaDB; a row older than the constraint, or restored from a
            # dump, can still hold malformed text.
            cursor.execute(CHECKS_OFF[connection.vendor])
        try:
            cursor.execute(
                f"UPDATE {table} SET {quoted} = %s{cast} WHERE id = %s",
                [text, job_id],
            )
        finally:
            if not valid_json:
                cursor.execute(CHECKS_ON[connection.vendor])


CHECKS_OFF = {
    "sqlite": "PRAGMA ignore_check_constraints = ON",
    "mysql": "SET SESSION check_constraint_checks = OFF",
}
CHECKS_ON = {
    "sqlite": "PRAGMA ignore_check_constraints = OFF",
    "mysql": "SET SESSION check_constraint_checks = ON",
}


def malformed_json_possible() -> bool:
    return connection.vendor == "sqlite" or (
        connection.vendor == "mysql" and connection.mysql_is_mariadb
    )


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@cache
def registered_paths() -> frozenset[str]:
    registry.autodiscover()
    return frozenset(registry.registered_tasks())


TASK_PATHS = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "os.system",
            "builtins.print",
            "tests",
            "tests.tasks",
            "tests.tasks.",
            "tests.tasks.plain_function",
            "tests.tasks.Execution",
            "tests.tasks.BACKPORT",
            "tests.tasks.echo.func",
            "tests.tasks.echo ",
            "Tests.Tasks.Echo",
            "tests.nosuchmodule.task",
            "nosuchpackage.tasks.task",
            "django_bgtasks.backend.DatabaseBackend",
            "tests.tasks." + "x" * 243,
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=20).map("tests.tasks.".__add__),
)
NOT_A_LIST = st.one_of(
    JSON_SCALARS, st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=3)
).map(json.dumps)
NOT_AN_OBJECT = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)).map(
    json.dumps
)
MALFORMED = st.one_of(
    st.sampled_from(["[1,", "{", "{'a': 1}", "[1] [2]", "nul", "", " ", "[", "}{"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
).filter(not_json)


@pytest.mark.django_db(transaction=True)
@settings(WORKER_RUNS, max_examples=40)
@given(
    corruption=st.one_of(
        st.tuples(st.just("args"), NOT_A_LIST),
        st.tuples(st.just("kwargs"), NOT_AN_OBJECT),
        st.tuples(st.just("task_path"), TASK_PATHS),
        st.tuples(st.sampled_from(["malformed args", "malformed kwargs"]), MALFORMED),
    )
)
@example(corruption=("task_path", "os.system"))
@example(corruption=("args", '{"a": 1}'))
@example(corruption=("kwargs", "[1, 2]"))
@example(corruption=("malformed args", "[1,"))
def test_a_corrupt_job_fails_clearly_and_the_worker_goes_on(corruption):
    column, text = corruption
    valid_json = not column.startswith("malformed")
    column = column.removeprefix("malformed ")
    if column == "task_path":
        assume(text not in registered_paths())
        if connection.vendor == "postgresql":
            assume("\x00" not in text)
    if not valid_json and not malformed_json_possible():
        return  # PostgreSQL's jsonb and MySQL's JSON hold valid JSON only
    clear_jobs()
    victim = tasks.echo.enqueue("victim")
    write_behind_orm(int(victim.id), column, text, valid_json=valid_json)
    normal = tasks.echo.enqueue("normal")

    run_worker()

    job = Job.objects.get(pk=victim.id)
    assert job.status == JobStatus.FAILED, (job.status, job.errors)
    assert job.attempts == 1, "a corrupt job is not retried"
    (error,) = job.errors
    if column == "task_path":
        assert error["exception_class_path"] == (
            "django_bgtasks.exceptions.TaskNotRegistered"
        )
        assert "is not a registered task" in error["traceback"]
    else:
        assert error["exception_class_path"] == (
            "django_bgtasks.exceptions.InvalidTaskArguments"
        )
        assert "stored arguments are corrupt" in error["traceback"]
    normal.refresh()
    assert normal.status == TaskResultStatus.SUCCESSFUL, normal.errors
    assert normal.return_value == {"args": ["normal"], "kwargs": {}}
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert not WorkerProcess.objects.exists()


@pytest.mark.django_db(transaction=True)
@settings(WORKER_RUNS, max_examples=20)
@given(
    column=st.sampled_from(["backoff", "errors"]),
    value=SAFE_JSON.map(json.dumps),
)
@example(column="backoff", value='"fast"')
@example(column="errors", value="5")
def test_a_failing_job_with_corrupt_bookkeeping_is_still_recorded(column, value):
    """The worker records the outcome of a failing job whose backoff or error
    list was corrupted: the job is not left RUNNING nor given back as
    interrupted, and the worker goes on."""
    clear_jobs()
    victim = tasks.always_fails.using(max_attempts=2).enqueue()
    write_behind_orm(int(victim.id), column, value)
    normal = tasks.echo.enqueue("normal")

    run_worker()

    job = Job.objects.get(pk=victim.id)
    assert job.status in (JobStatus.READY, JobStatus.FAILED), job.status
    paths = [entry.get("exception_class_path") for entry in job.errors[-1:]]
    assert paths != ["django_bgtasks.exceptions.JobInterrupted"], (
        f"{column}={value}: the outcome was not recorded; the job was given "
        f"back at shutdown ({job.errors[-1]['traceback'].strip()})"
    )
    normal.refresh()
    assert normal.status == TaskResultStatus.SUCCESSFUL, normal.errors


# ---------------------------------------------------------------------------
# Cron expressions

MINUTE, HOUR, DAY, MONTH, WEEKDAY, SECOND, YEAR = (
    (0, 59),
    (0, 23),
    (1, 31),
    (1, 12),
    (0, 7),
    (0, 59),
    (1970, 2099),
)
NAMES = ["mon", "tue", "sun", "SAT", "jan", "feb", "DEC", "foo", "L", "W", "H", "?"]
CRON_ALIASES = [
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@reboot",
    "@every",
    "@",
    "@DAILY",
    " @hourly ",
]
ODD_TOKENS = [
    "*/0",
    "0/0",
    "1-",
    "-1",
    "5-1",
    "5L",
    "L-3",
    "15W",
    "LW",
    "5#3",
    "5#6",
    "H(0-5)",
    "H/5",
    "%",
    "**",
    "1,,2",
    "99999999999999999999",
    "0-99999999999999999999",
    "1-2/99999999999999999999",
]


def cron_field(low: int, high: int):
    number = st.integers(low, high).map(str)
    wide = st.integers(-2, high + 5).map(str)
    item = st.one_of(
        st.just("*"),
        number,
        st.tuples(number, number).map("-".join),
        st.tuples(st.sampled_from(["*", str(low)]), st.integers(1, high + 2)).map(
            lambda pair: f"{pair[0]}/{pair[1]}"
        ),
        wide,
        st.sampled_from(NAMES + ODD_TOKENS),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


@st.composite
def plausible_cron(draw):
    """5 to 7 fields of cron-like tokens (sometimes 4 or 8), or an alias."""
    if draw(st.integers(0, 9)) == 0:
        alias = draw(st.sampled_from(CRON_ALIASES))
        return alias
    ranges = [MINUTE, HOUR, DAY, MONTH, WEEKDAY, SECOND, YEAR, MINUTE]
    count = draw(st.sampled_from([5, 5, 5, 6, 6, 7, 7, 4, 8]))
    fields = [draw(cron_field(*ranges[index])) for index in range(count)]
    separator = draw(st.sampled_from([" ", " ", "  ", "\t", " \n "]))
    return separator.join(fields)


@settings(PROPERTIES, max_examples=500, deadline=timedelta(seconds=2))
@given(expression=st.text() | plausible_cron())
@example(expression="0 0 1 1 * 0 2001")
def test_normalize_cron_returns_text_or_raises_value_error(expression):
    try:
        normalized = normalize_cron(expression)
    except ValueError as exc:
        assert str(exc).strip()
        return
    assert isinstance(normalized, str)
    assert normalized == " ".join(normalized.split())
    assert normalize_cron(normalized) == normalized


# ---------------------------------------------------------------------------
# Schedules

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
