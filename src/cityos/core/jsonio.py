"""Fast JSON encoding and decoding (orjson) with one error type for bad input."""

from __future__ import annotations

from typing import Any

import orjson

from cityos.core.errors import InvalidRequest


def loads(data: bytes | str) -> Any:  # Any: JSON is untyped by nature
    """Parse JSON text; raise ``InvalidRequest`` naming the position of a syntax error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON: {exc}") from None


def dumps(value: object) -> bytes:
    """Serialise to compact UTF-8 JSON bytes."""
    return orjson.dumps(value)
