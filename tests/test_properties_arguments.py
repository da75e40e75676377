"""Properties of enqueue's arguments: whatever is passed is stored exactly as
the framework normalises it, or refused cleanly (see ``tests/properties.py``)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_bgtasks.models import Job
from tests import tasks
from tests.properties import (
    MAX_PAYLOAD_BYTES,
    NORMALISABLE,
    PROPERTIES,
    SAFE_TEXT,
    WILD,
    assert_refused_cleanly,
    assert_same,
    attempt,
    deeply_nested,
    expected_arguments,
    payload_limit,
    rolled_back,
)

pytestmark = pytest.mark.django_db


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
