"""Properties of cron expressions: ``normalize_cron`` returns normal text or
raises ValueError, whatever it is given (see ``tests/properties.py``)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_bgtasks.cron import normalize_cron
from tests.properties import PROPERTIES, plausible_cron


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
