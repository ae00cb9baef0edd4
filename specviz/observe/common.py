"""Pieces every reader shares: number patterns that keep bad values visible, timestamps, and safe conversions.

A reader turns what an engine wrote into an `AcceptanceRecord` with the engine's values as written; `complete`
(engine/acceptance.py) then derives what they imply and refuses impossible values with a message."""

from __future__ import annotations

import math
import re
from typing import Any

from specviz.engine.acceptance import AcceptanceRecord, BadRecord

# A number as a log prints it, negative and nan/inf included, so that a bad value is refused with a message
# instead of being skipped as "not a record".
NUM = r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)"
# The time a log line starts with: "06-10 12:00:00" (vLLM), "2025-06-10 12:00:00,123", "[2025-06-10 12:00:00]".
TIME = re.compile(r"(\d{2,4}-\d{2}(?:-\d{2})?[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)")


def number(text: str) -> float:
    return float(text)


def count(value: Any, name: str) -> int:
    """A count read from text or JSON: a whole number (2.0 is 2); anything else is refused by name."""
    if isinstance(value, bool):
        raise BadRecord(f"{name} is {value!r}: a count must be a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRecord(f"{name} is {value!r}: a count must be a number") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord(f"{name} is {value}: a count must be a finite number")
        if value != int(value):
            raise BadRecord(f"{name} is {value}: a count must be a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise BadRecord(f"{name} is {value!r}: a count must be a number")
    return value


def optional_count(obj: dict, key: str) -> int | None:
    return None if obj.get(key) is None else count(obj[key], key)


def rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRecord(f"{name} is {value!r}: a rate must be a number")
    try:
        return float(value)
    except ValueError:
        raise BadRecord(f"{name} is {value!r}: a rate must be a number") from None


def log_time(line: str, end: int) -> str | None:
    """The first timestamp before position `end` of a log line."""
    match = TIME.search(line, 0, end)
    return match.group(1) if match else None


def histogram(value: Any, name: str) -> dict[int, int]:
    """A histogram as engines send it: a dense list (index = accepted count) or a map with string keys."""
    if isinstance(value, list):
        return {j: count(n, f"{name}[{j}]") for j, n in enumerate(value) if count(n, f"{name}[{j}]") != 0}
    if isinstance(value, dict):
        out = {}
        for key, n in value.items():
            j = count(key, f"{name} key")
            if count(n, f"{name}[{key}]"):
                out[j] = count(n, f"{name}[{key}]")
        return out
    raise BadRecord(f"{name} is {type(value).__name__}: expected a list or a map of counts")


def counts_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list):
        raise BadRecord(f"{name} is {type(value).__name__}: expected a list of counts")
    return [count(v, f"{name}[{i}]") for i, v in enumerate(value)]


def new(engine: str, scope: str, **values: Any) -> AcceptanceRecord:
    return AcceptanceRecord(engine=engine, scope=scope, **values)
