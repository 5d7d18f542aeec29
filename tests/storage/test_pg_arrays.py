"""Array parameters as PostgreSQL array input text read back as the same values."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from cityos.storage.pg_arrays import array_literal, with_array_literals

TEXTS = [
    "plain",
    "",
    "NULL",
    "with space",
    'quote " inside',
    "back\\slash",
    "trailing\\",
    "{braces},commas",
    "富山市",
    "tab\tnewline\n",
    None,
    "urn:ngsi-ld:Sensor:1",
]


@pytest.fixture(scope="module")
def conn(
    new_postgres_database: Callable[[], str],
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(new_postgres_database(), autocommit=True) as connection:
        yield connection


@pytest.mark.parametrize(
    ("values", "cast"),
    [
        (TEXTS, "text[]"),
        ([], "text[]"),
        ([0, -1, 2**31 - 1], "integer[]"),
        ([1_795_514_400_000, -5], "bigint[]"),
        ([True, False, None], "boolean[]"),
        ([0.1, -0.0, 3.602879701896397e16, 1e-300, 12.0, None], "double precision[]"),
        ([b'{"type":"Property","value":"\\u0000"}', b"", b"\x00\xff\\", None], "bytea[]"),
    ],
)
def test_values_read_back_unchanged(
    conn: psycopg.Connection[tuple[object, ...]], values: list[object], cast: str
) -> None:
    row = conn.execute(f"SELECT %s::{cast}", (array_literal(values),)).fetchone()
    assert row is not None
    assert row[0] == values


def test_special_floats_read_back() -> None:
    assert array_literal([float("nan"), float("inf"), float("-inf")]) == (
        "{NaN,Infinity,-Infinity}"
    )


def test_only_lists_are_rewritten() -> None:
    params = with_array_literals({"a": [1, 2], "b": "x", "c": 3, "d": None, "e": b"z"})
    assert params == {"a": "{1,2}", "b": "x", "c": 3, "d": None, "e": b"z"}


def test_an_unknown_element_type_is_refused() -> None:
    with pytest.raises(TypeError):
        array_literal([object()])
