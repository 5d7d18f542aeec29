"""Linked entity retrieval: join=inline|flat over Relationships, with levels and projections."""

from __future__ import annotations

from typing import Any

import pytest

from cityos.broker.join import JoinRequest, render_joined
from cityos.broker.projection import parse_projection
from cityos.broker.representation import RenderOptions

PREFIX = "urn:x:"


def compact(iri: str) -> str:
    return iri.removeprefix(PREFIX)


def expand(name: str) -> str:
    return PREFIX + name


def stored(entity_id: str, kind: str, **attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": [PREFIX + kind],
        "createdAt": "2024-01-01T00:00:00.000Z",
        "attrs": {PREFIX + name: [instance] for name, instance in attrs.items()},
    }


def rel(target: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target}


def prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


COUNTRY = stored("urn:ngsi-ld:Country:F", "Country", name=prop("France"))
CITY = stored("urn:ngsi-ld:City:P", "City", name=prop("Paris"), isIn=rel(COUNTRY["id"]))
BUILDING = stored("urn:ngsi-ld:Building:1", "Building", locatedAt=rel(CITY["id"]))
ORPHAN = stored("urn:ngsi-ld:Building:2", "Building", locatedAt=rel("urn:ngsi-ld:City:none"))
STORE = {e["id"]: e for e in (COUNTRY, CITY, BUILDING)}


class Fetcher:
    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def __call__(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        self.calls.append(set(ids))
        return {i: STORE[i] for i in ids if i in STORE}


def run(
    entities: list[dict[str, Any]], mode: str, level: int = 1, **options: Any
) -> list[dict[str, Any]]:
    join = JoinRequest(mode="inline" if mode == "inline" else "flat", level=level)
    return render_joined(entities, compact, RenderOptions(**options), join, Fetcher())


def test_inline_normalized_puts_the_linked_entity_in_the_relationship() -> None:
    [building] = run([BUILDING], "inline")
    assert building["locatedAt"] == {
        "type": "Relationship",
        "object": CITY["id"],
        "entity": {
            "id": CITY["id"],
            "type": "City",
            "name": prop("Paris"),
            "isIn": rel(COUNTRY["id"]),
        },
    }


def test_inline_key_values_replaces_the_object_id() -> None:
    [building] = run([BUILDING], "inline", format="keyValues")
    assert building["locatedAt"] == {
        "id": CITY["id"],
        "type": "City",
        "name": "Paris",
        "isIn": COUNTRY["id"],
    }


def test_flat_appends_each_linked_entity_once() -> None:
    second = stored("urn:ngsi-ld:Building:3", "Building", locatedAt=rel(CITY["id"]))
    result = run([BUILDING, second], "flat", level=2)
    assert [e["id"] for e in result] == [BUILDING["id"], second["id"], CITY["id"], COUNTRY["id"]]
    assert result[0]["locatedAt"] == rel(CITY["id"])


def test_two_levels_inline() -> None:
    [building] = run([BUILDING], "inline", level=2)
    city = building["locatedAt"]["entity"]
    assert city["isIn"]["entity"] == {
        "id": COUNTRY["id"],
        "type": "Country",
        "name": prop("France"),
    }


def test_missing_target_leaves_the_relationship_alone() -> None:
    assert run([ORPHAN], "inline") == [
        {"id": ORPHAN["id"], "type": "Building", "locatedAt": rel("urn:ngsi-ld:City:none")}
    ]
    assert len(run([ORPHAN], "flat")) == 1


def test_nested_pick_projects_linked_entities() -> None:
    pick = parse_projection("id,locatedAt{id,isIn{name}}").expand(expand)
    [building] = run([BUILDING], "inline", level=2, pick=pick)
    assert building == {
        "id": BUILDING["id"],
        "locatedAt": {
            "type": "Relationship",
            "object": CITY["id"],
            "entity": {
                "id": CITY["id"],
                "isIn": {
                    "type": "Relationship",
                    "object": COUNTRY["id"],
                    "entity": {"name": prop("France")},
                },
            },
        },
    }


def test_nested_omit_projects_linked_entities() -> None:
    omit = parse_projection("type,locatedAt{name,isIn}").expand(expand)
    result = run([BUILDING], "flat", level=2, omit=omit)
    # isIn is omitted from the city, so the country is never reached.
    assert result == [
        {"id": BUILDING["id"], "locatedAt": rel(CITY["id"])},
        {"id": CITY["id"], "type": "City"},
    ]


@pytest.mark.parametrize("level", [1, 2, 3])
def test_one_lookup_per_level(level: int) -> None:
    fetcher = Fetcher()
    render_joined([BUILDING], compact, RenderOptions(), JoinRequest("inline", level), fetcher)
    assert fetcher.calls == [{CITY["id"]}, {COUNTRY["id"]}][:level]
