"""orderBy: members, attribute values, meta-properties, sub-attributes and directions."""

from __future__ import annotations

from typing import Any

import pytest

from cityos.broker.ordering import parse_order_by
from cityos.core.errors import BadRequestData

NAME = "urn:x:name"
SUB = "urn:x:subProperty"


def entity(number: int, name: str | None, sub: Any, created: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if name is not None:
        attrs[NAME] = [
            {
                "type": "Property",
                "value": name,
                "createdAt": created,
                SUB: {"type": "Property", "value": sub},
            }
        ]
    return {
        "id": f"urn:ngsi-ld:Building:{number}",
        "type": ["urn:x:Building"],
        "createdAt": created,
        "attrs": attrs,
    }


ENTITIES = [
    entity(2, "B", 2, "2024-01-01T00:00:00.000Z"),
    entity(1, "A", 1, "2024-01-02T00:00:00.000Z"),
    entity(3, "C", 3, "2024-01-03T00:00:00.000Z"),
    entity(4, None, None, "2024-01-04T00:00:00.000Z"),
]


def ordered(text: str) -> list[int]:
    order_by = parse_order_by(text).expand(lambda n: "urn:x:" + n)
    entities = list(ENTITIES)
    order_by.sort(entities)
    return [int(e["id"].rsplit(":", 1)[1]) for e in entities]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name", [1, 2, 3, 4]),
        ("name;asc", [1, 2, 3, 4]),
        ("name;desc", [3, 2, 1, 4]),
        ("id", [1, 2, 3, 4]),
        ("id;desc", [4, 3, 2, 1]),
        ("createdAt", [2, 1, 3, 4]),
        ("name.createdAt", [2, 1, 3, 4]),
        ("name.subProperty", [1, 2, 3, 4]),
        ("type,name", [1, 2, 3, 4]),
        ("type;asc,name.subProperty;desc,name;asc", [3, 2, 1, 4]),
    ],
)
def test_order(text: str, expected: list[int]) -> None:
    assert ordered(text) == expected


@pytest.mark.parametrize("text", ["name;down", "", "name,,id", "name..sub", "na me"])
def test_bad_order_by_is_bad_request_data(text: str) -> None:
    with pytest.raises(BadRequestData):
        parse_order_by(text)


def test_mixed_value_kinds_order_booleans_numbers_strings() -> None:
    entities = [entity(1, "x", 0, ""), entity(2, "y", 0, ""), entity(3, "z", 0, "")]
    entities[0]["attrs"][NAME][0]["value"] = "text"
    entities[1]["attrs"][NAME][0]["value"] = 5
    entities[2]["attrs"][NAME][0]["value"] = True
    parse_order_by("name").expand(lambda n: "urn:x:" + n).sort(entities)
    assert [e["id"][-1] for e in entities] == ["3", "2", "1"]
