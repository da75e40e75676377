"""Backoff: the delay before each retry."""

from dataclasses import fields
from datetime import timedelta

import pytest

from django_bgtasks import Backoff
from django_bgtasks.compat import InvalidTask


def test_exponential_delays_capped_at_the_maximum():
    backoff = Backoff(initial=10, factor=3, maximum=100, jitter=0)
    delays = [backoff.delay(attempt).total_seconds() for attempt in range(1, 6)]
    assert delays == [10, 30, 90, 100, 100]


def test_huge_attempt_numbers_stay_at_the_maximum():
    assert Backoff(factor=10, maximum=60, jitter=0).delay(10_000) == timedelta(
        seconds=60
    )


def test_jitter_spreads_delays_within_bounds():
    backoff = Backoff(initial=100, factor=1, maximum=100, jitter=0.2)
    delays = {backoff.delay(1).total_seconds() for _ in range(200)}
    assert all(80 <= delay <= 120 for delay in delays)
    assert len(delays) > 100  # actually random


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Backoff(initial=1), Backoff(initial=1)),
        ({"initial": 2, "factor": 3}, Backoff(initial=2, factor=3)),
        (45, Backoff(initial=45, factor=1, maximum=45, jitter=0)),
        (0.5, Backoff(initial=0.5, factor=1, maximum=0.5, jitter=0)),
    ],
)
def test_coerce(value, expected):
    assert Backoff.coerce(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"initial": -1}, "initial must be 0 or more"),
        ({"factor": 0.5}, "factor must be 1 or more"),
        ({"initial": 10, "maximum": 5}, "maximum must be at least its initial"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
        ({"initial": "10"}, "initial must be a finite number"),
        ({"speed": 1}, "Invalid backoff"),
        (True, "backoff must be a Backoff"),
        ("10s", "backoff must be a Backoff"),
    ],
)
def test_invalid_backoff(value, message):
    with pytest.raises(InvalidTask, match=message):
        Backoff.coerce(value)


def test_as_dict_holds_every_field_and_round_trips():
    backoff = Backoff(initial=2, factor=3, maximum=60, jitter=0.5)
    assert set(backoff.as_dict()) == {field.name for field in fields(Backoff)}
    assert Backoff.coerce(backoff.as_dict()) == backoff
