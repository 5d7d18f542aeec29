"""Array parameters written as PostgreSQL array input text.

psycopg adapts a Python list parameter in Python code, element by element, choosing a
dumper for it each time; for the many small arrays of an entity write (history rows,
index rows) that cost more interpreter time than the rest of the write's statement
(about 120 us of the committer per update under load). Written here as one ``str`` in
PostgreSQL's array input syntax and cast in SQL (every such parameter is written
``%(name)s::type[]``), the same values cost a few microseconds.

The syntax (PostgreSQL manual, "Array Value Input"): elements separated by commas in
braces; ``NULL`` unquoted; any other element double-quoted, with ``"`` and ``\\``
escaped by a backslash. Quoted, every string is taken literally (braces, commas,
spaces, the word NULL). ``bytea`` elements use the hex format (``\\x...``), floats
Python's ``repr`` (the shortest text that reads back to the same double).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def array_literal(values: Sequence[object]) -> str:
    """The array input text of a flat list of ``None``, ``bool``, ``int``, ``float``,
    ``str`` or ``bytes`` values."""
    return "{" + ",".join(map(_element, values)) + "}"


def with_array_literals(params: Mapping[str, object]) -> dict[str, object]:
    """``params`` with every list value written as :func:`array_literal` text."""
    return {
        name: array_literal(value) if isinstance(value, list) else value
        for name, value in params.items()
    }


def _element(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):  # before int: bool is an int
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, bytes):
        return '"\\\\x' + value.hex() + '"'
    raise TypeError(f"No array literal for a {type(value).__name__}")
