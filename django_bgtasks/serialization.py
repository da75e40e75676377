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
from typing import Any

from .compat import normalize_json

MAX_DEPTH = 31  # levels of lists and objects, counting the outermost
MAX_INT = 2**63 - 1
MAX_FLOAT = 1e16  # from here on, PostgreSQL's jsonb gives back an integer


class NotJSON(ValueError):
    """A value that would not come back unchanged from the database."""


def to_json(value: Any, where: str) -> Any:
    """Return ``value`` normalised for storage, or raise NotJSON saying where
    (``where`` names the value in messages, e.g. ``"args"``)."""
    try:
        value = normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"{where}: {exc}") from None
    except RecursionError:
        raise NotJSON(f"{where}: nested deeper than {MAX_DEPTH} levels.") from None
    return _clean(value, where, 0)


def check_size(value: Any, where: str, limit: int) -> None:
    """Raise NotJSON if ``value`` takes more than ``limit`` bytes as JSON."""
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise NotJSON(
            f"{where} take {size} bytes as JSON, more than the {limit} bytes of "
            f"BGTASKS['MAX_PAYLOAD_BYTES']. Store large data elsewhere and pass "
            f"its key."
        )


def _clean(value: Any, where: str, depth: int) -> Any:
    """``value`` checked, with -0.0 made 0.0."""
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise NotJSON(f"{where}: the integer {value} does not fit in 64 bits.")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(f"{where}: {value} is not a JSON number.")
        if abs(value) >= MAX_FLOAT:
            raise NotJSON(
                f"{where}: the float {value!r} is too large to come back as a "
                f"float (PostgreSQL returns an integer); pass an int or a string."
            )
        if value == 0.0:
            return 0.0
    elif isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise NotJSON(f"{where}: nested deeper than {MAX_DEPTH} levels.")
        if isinstance(value, list):
            return [
                _clean(item, f"{where}[{index}]", depth + 1)
                for index, item in enumerate(value)
            ]
        cleaned = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(
                    f"{where}: the dictionary key {key!r} is not a string "
                    f"(JSON would turn it into one)."
                )
            _check_string(key, where)
            cleaned[key] = _clean(item, f"{where}[{key!r}]", depth + 1)
        return cleaned
    else:  # normalize_json lets nothing else through; say so if it ever does.
        raise NotJSON(f"{where}: {type(value).__name__} is not a JSON type.")
    return value


def _check_string(value: str, where: str) -> None:
    if "\x00" in value:
        raise NotJSON(
            f"{where}: text cannot hold NUL characters (PostgreSQL refuses them "
            f"in JSON)."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise NotJSON(f"{where}: {value!r} is not valid Unicode.") from None
