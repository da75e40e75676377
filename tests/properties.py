"""The shared part of the property-based tests (``test_properties_*.py``):
the reference model, helpers, strategies and the hypothesis settings profile.

The tests throw bad input broadly at the public API: whatever is given to
``enqueue``, ``using()``, ``Schedule`` and ``normalize_cron``, it is either
accepted and comes back exactly as the framework normalises it (tuples become
lists, bytes UTF-8 text), or refused with a clear error (an ``InvalidTask``,
``ValueError``, ``TypeError`` or ``ValidationError`` with a message) and no row
left behind. Rows corrupted behind the ORM's back fail their job with a clear
error and never stop a worker.

Each example of a ``django_db`` test runs in a savepoint that is rolled back
at its end (see ``rolled_back``), so "no row left behind" is checked per
example; tests that run a worker use real transactions and delete their rows
per example instead (``clear_jobs``).

Comparisons are exact: ``1`` is not ``1.0`` nor ``True``, and ``-0.0`` is not
``0.0``. A difference in value, in type and in the sign of zero fail on
different lines, so hypothesis reports each as a bug of its own.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from datetime import timezone as fixed_offset
from decimal import Decimal
from fractions import Fraction
from functools import cache

from django.conf import settings as django_settings
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from django_bgtasks import Backoff, registry
from django_bgtasks.compat import InvalidTask
from django_bgtasks.models import Job
from tests.conftest import run_in_process

# The settings profile of the property tests: few examples where a worker
# runs. The @example()s pin bugs found so far; a failing explicit example
# stops a test before hypothesis generates any. BGTASKS_PROPERTIES_EXPLORE=1
# skips them, to search for other bugs.
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
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
MAX_DEPTH = 31  # levels of lists and objects, the outermost counted
MAX_FLOAT = 1e16  # PostgreSQL's jsonb gives larger floats back as integers
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_BACKOFF = 30 * 24 * 3600  # seconds (README)
BACKOFF_FIELDS = ("initial", "factor", "maximum", "jitter")
DEFAULT_BACKOFF = {"initial": 10.0, "factor": 2.0, "maximum": 3600.0, "jitter": 0.1}
ACCEPTABLE_ERRORS = (InvalidTask, ValueError, TypeError)


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
        if not MIN_INT <= value <= MAX_INT:
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
    st.integers(MIN_INT, MAX_INT),
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
    scalars = st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT) | SAFE_TEXT
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
# Running a worker


def clear_jobs() -> None:
    Job.objects.all().delete()


def run_worker() -> None:
    """Run a worker in this process until nothing is due."""
    try:
        run_in_process()
    except Exception as exc:
        exc.add_note("BUG: the worker stopped on this job instead of failing it.")
        raise


# ---------------------------------------------------------------------------
# Task paths: registered ones and names a row may hold instead


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
