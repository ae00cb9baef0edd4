"""How an error message names a value a caller passed: its type and a short excerpt, never a full repr
(a model passed where a method name goes once put 8,192 vocabulary ids into one message)."""

from __future__ import annotations

from typing import Any

EXCERPT = 32  # characters of the value's repr kept in a message (whitespace runs collapsed)


def shown(value: Any) -> str:
    """`'medusa'` for short strings, `ModelPair ModelPair(target=LlamaFor...` (type and excerpt) otherwise."""
    text = " ".join(repr(value).split())
    if isinstance(value, (str, int, float, bool)) and len(text) <= EXCERPT:
        return text
    return f"{type(value).__name__} {text[:EXCERPT]}{'...' if len(text) > EXCERPT else ''}"
