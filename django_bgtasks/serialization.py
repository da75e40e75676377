"""What may be stored as a job's arguments or return value: JSON that comes
back unchanged from every supported database.

Values are first normalised the way ``django.tasks`` does (tuples become
lists, bytes UTF-8 text) and -0.0 becomes 0.0 (PostgreSQL keeps no sign on
zero), then checked for what JSON or a database would silently change or
refuse: non-string dictionary keys, NaN and infinities, floats of 1e16 or
more (PostgreSQL returns them as integers), integers beyond 64 bits (MySQL
stores them as doubles), NUL characters (PostgreSQL refuses them), lone
surrogates, and nesting deeper than 31 levels (MariaDB's limit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

MAX_DEPTH = 31  # levels of lists and objects, counting the outermost
MIN_INT, MAX_INT = -(2**63), 2**63 - 1  # a signed 64-bit integer
MAX_FLOAT = 1e16  # from here on, PostgreSQL's jsonb gives back an integer


class NotJSON(ValueError):
    """A value that would not come back unchanged from the database."""


def to_json(value: Any, where: str) -> Any:
    """Return ``value`` normalised for storage, or raise NotJSON saying where
    (``where`` names the value in messages, e.g. ``"args"``)."""
    return to_json_sized(value, where)[0]


def check_size(value: Any, where: str, limit: int, bound: int | None = None) -> None:
    """Raise NotJSON if ``value`` takes more than ``limit`` bytes as JSON
    (``bound``: an upper bound of that size, from to_json_sized)."""
    if bound is not None and bound <= limit:
        return
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise NotJSON(
            f"{where} take {size} bytes as JSON, more than the {limit} bytes of "
            f"BGTASKS['MAX_PAYLOAD_BYTES']. Store large data elsewhere and pass "
            f"its key."
        )


class _Refused(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        self.path: list = []  # filled in from the inside out as it unwinds


def _path(path: list) -> str:
    return "".join(
        f"[{step!r}]" if isinstance(step, str) else f"[{step}]" for step in path
    )


def to_json_sized(value: Any, where: str) -> tuple[Any, int]:
    """``to_json``, and an upper bound of the value's size as JSON, in bytes
    (to skip encoding it just to measure it)."""
    size = [0]
    try:
        return _clean(value, 0, size), size[0]
    except _Refused as refused:
        raise NotJSON(f"{where}{_path(refused.path[::-1])}: {refused.reason}") from None


def _clean(value: Any, depth: int, size: list[int]) -> Any:
    """``value`` normalised (as ``django.tasks``' normalize_json does, in the
    same pass) and checked, with -0.0 made 0.0; adds an upper bound of its
    size as JSON to ``size[0]``. This runs for every argument of every job:
    the plain types come first, and where a refused value sits is only
    worked out on the way back out of the refusal."""
    kind = type(value)
    if kind is int and MIN_INT <= value <= MAX_INT:
        size[0] += 20
        return value
    if kind is str:
        size[0] += _check_text(value) + 2
        return value
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels.")
        size[0] += 2 + len(value)
        cleaned = []
        try:
            for item in value:
                cleaned.append(_clean(item, depth + 1, size))
        except _Refused as refused:
            refused.path.append(len(cleaned))
            raise
        return cleaned
    if kind is dict:
        return _clean_mapping(value, depth, size)
    return _clean_other(value, depth, size)


def _clean_mapping(value: Mapping, depth: int, size: list[int]) -> dict:
    if depth >= MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels.")
    size[0] += 2
    cleaned = {}
    for key, item in value.items():
        if isinstance(key, bytes):
            key = _clean(key, depth + 1, [0])
        if not isinstance(key, str):
            raise _Refused(
                f"the dictionary key {key!r} is not a string (JSON would "
                f"turn it into one)."
            )
        size[0] += _check_text(key) + 4
        try:
            cleaned[key] = _clean(item, depth + 1, size)
        except _Refused as refused:
            refused.path.append(key)
            raise
    return cleaned


def _clean_other(value: Any, depth: int, size: list[int]) -> Any:
    """``_clean`` for everything but the plain types' common cases."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(f"Unsupported value: {type(value)}") from None
    if isinstance(value, str):
        size[0] += _check_text(value) + 2
    elif isinstance(value, bool) or value is None:
        size[0] += 5
    elif isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise _Refused(f"the integer {value} does not fit in 64 bits.")
        size[0] += 20
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"{value} is not a JSON number.")
        if abs(value) >= MAX_FLOAT:
            raise _Refused(
                f"the float {value!r} is too large to come back as a float "
                f"(PostgreSQL returns an integer); pass an int or a string."
            )
        size[0] += 24
        if value == 0.0:
            return 0.0
    elif isinstance(value, Mapping):
        return _clean_mapping(value, depth, size)
    elif isinstance(value, Sequence):  # a list or tuple subclass, a range...
        return _clean(list(value), depth, size)
    else:
        raise _Refused(f"Unsupported type: {type(value)}")
    return value


def _check_text(value: str) -> int:
    """Check ``value``; return an upper bound of its size as JSON, quotes
    aside (an escape takes 6 bytes, a pair of them for characters outside
    the Basic Multilingual Plane)."""
    if "\x00" in value:
        raise _Refused(
            "text cannot hold NUL characters (PostgreSQL refuses them in JSON)."
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(f"{value!r} is not valid Unicode.") from None
        return 12 * len(value)
    return 6 * len(value)
