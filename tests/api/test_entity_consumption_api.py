"""GET /entities, GET /entities/{id}, POST /entityOperations/query and discovery over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

LD = "application/ld+json"
BAD_REQUEST = "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
INVALID_REQUEST = "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"
NOT_FOUND = "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"


def create(client: httpx.Client, entity: dict[str, Any]) -> None:
    response = client.post("/entities", json=entity)
    assert response.status_code == 201, response.text


@pytest.fixture
def linked(client: httpx.Client, uid: str) -> dict[str, str]:
    """A building in a city in a country; the types are unique to the test."""
    ids = {
        "building": f"urn:ngsi-ld:Building:{uid}",
        "city": f"urn:ngsi-ld:City:{uid}",
        "country": f"urn:ngsi-ld:Country:{uid}",
        "type": f"Building{uid}",
    }
    create(
        client,
        {
            "id": ids["building"],
            "type": ids["type"],
            "name": {"type": "Property", "value": "Tower"},
            "locatedAt": {"type": "Relationship", "object": ids["city"]},
        },
    )
    create(
        client,
        {
            "id": ids["city"],
            "type": "City",
            "name": {"type": "Property", "value": "Toyama"},
            "isIn": {"type": "Relationship", "object": ids["country"]},
        },
    )
    create(
        client,
        {"id": ids["country"], "type": "Country", "name": {"type": "Property", "value": "Japan"}},
    )
    return ids


def test_retrieve_inline_join(client: httpx.Client, linked: dict[str, str]) -> None:
    response = client.get(
        f"/entities/{linked['building']}", params={"join": "inline", "pick": "id,locatedAt{name}"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "id": linked["building"],
        "locatedAt": {
            "type": "Relationship",
            "object": linked["city"],
            "entity": {"name": {"type": "Property", "value": "Toyama"}},
        },
    }


def test_retrieve_flat_join_two_levels(client: httpx.Client, linked: dict[str, str]) -> None:
    response = client.get(
        f"/entities/{linked['building']}",
        params={"join": "flat", "joinLevel": "2", "options": "keyValues"},
    )
    assert response.status_code == 200
    assert [e["id"] for e in response.json()] == [
        linked["building"],
        linked["city"],
        linked["country"],
    ]


def test_query_inline_join_with_sys_attrs(client: httpx.Client, linked: dict[str, str]) -> None:
    response = client.get(
        "/entities", params={"type": linked["type"], "join": "inline", "options": "sysAttrs"}
    )
    assert response.status_code == 200
    [building] = response.json()
    assert "createdAt" in building["locatedAt"]["entity"]


def test_post_query_flat_join(client: httpx.Client, linked: dict[str, str]) -> None:
    body = {"type": "Query", "entities": [{"type": linked["type"]}], "join": "flat"}
    response = client.post("/entityOperations/query", json=body)
    assert response.status_code == 200
    assert {e["id"] for e in response.json()} == {linked["building"], linked["city"]}


def test_post_query_geojson(client: httpx.Client, linked: dict[str, str]) -> None:
    body = {"type": "Query", "entities": [{"type": linked["type"]}]}
    response = client.post(
        "/entityOperations/query", json=body, headers={"Accept": "application/geo+json"}
    )
    assert response.status_code == 200
    data = response.json()
    assert data["type"] == "FeatureCollection"
    assert data["features"][0]["id"] == linked["building"]
    assert data["features"][0]["geometry"] is None


def test_query_pick_leaves_out_entities_with_nothing_left(client: httpx.Client, uid: str) -> None:
    create(client, {"id": f"urn:ngsi-ld:T:{uid}:1", "type": f"T{uid}", "a": 1, "b": 2})
    create(client, {"id": f"urn:ngsi-ld:T:{uid}:2", "type": f"T{uid}", "b": 3})
    response = client.get("/entities", params={"type": f"T{uid}", "pick": "a"})
    assert response.json() == [{"a": {"type": "Property", "value": 1}}]


def test_query_order_by(client: httpx.Client, uid: str) -> None:
    for number, value in ((1, "b"), (2, "c"), (3, "a")):
        create(client, {"id": f"urn:ngsi-ld:T:{uid}:{number}", "type": f"T{uid}", "n": value})
    response = client.get("/entities", params={"type": f"T{uid}", "orderBy": "n;desc", "limit": 2})
    assert [e["id"][-1] for e in response.json()] == ["2", "1"]


@pytest.mark.parametrize(
    "params",
    [
        {"id": "urn:ngsi-ld:T:1"},
        {"type": "T", "id": "not-a-uri"},
        {"attrs": "id,type"},
        {"type": "T", "pick": "a", "omit": "a"},
        {"type": "T", "pick": "a", "attrs": "b"},
        {"type": "T", "pick": "a{b"},
        {"type": "T", "orderBy": "a;sideways"},
        {"type": "T", "join": "sideways"},
    ],
)
def test_bad_query_is_bad_request_data(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/entities", params=params)
    assert response.status_code == 400
    assert response.json()["type"] == BAD_REQUEST


def test_local_alone_is_a_valid_query(client: httpx.Client) -> None:
    assert client.get("/entities", params={"local": "true"}).status_code == 200


@pytest.mark.parametrize(
    "params", [{"format": "bad"}, {"options": "bad"}, {"options": "keyValues,bad"}]
)
def test_retrieve_with_bad_format_is_invalid_request_before_lookup(
    client: httpx.Client, uid: str, params: dict[str, str]
) -> None:
    response = client.get(f"/entities/urn:ngsi-ld:Nothing:{uid}", params=params)
    assert response.status_code == 400
    assert response.json()["type"] == INVALID_REQUEST


@pytest.mark.parametrize(
    "params", [{"attrs": "unknown"}, {"pick": "unknown"}, {"omit": "id,type,name,locatedAt"}]
)
def test_retrieve_with_nothing_left_is_not_found(
    client: httpx.Client, linked: dict[str, str], params: dict[str, str]
) -> None:
    response = client.get(f"/entities/{linked['building']}", params=params)
    assert response.status_code == 404
    assert response.json()["type"] == NOT_FOUND


def test_entity_type_information(client: httpx.Client, linked: dict[str, str]) -> None:
    response = client.get(f"/types/{linked['type']}")
    assert response.status_code == 200
    assert response.json()["type"] == "EntityTypeInfo"


def test_detailed_attribute_list_has_names_and_types_only(
    client: httpx.Client, linked: dict[str, str]
) -> None:
    response = client.get("/attributes", params={"details": "true"})
    assert response.status_code == 200
    located_at = next(a for a in response.json() if a["attributeName"] == "locatedAt")
    assert set(located_at) == {"id", "type", "attributeName", "typeNames"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/types"),
        ("GET", "/types/Building"),
        ("GET", "/attributes"),
        ("GET", "/attributes/name"),
        ("POST", "/entityOperations/query"),
    ],
)
def test_unknown_parameter_is_invalid_request(client: httpx.Client, method: str, path: str) -> None:
    body = {"type": "Query", "entities": [{"type": "T"}]} if method == "POST" else None
    response = client.request(method, path, params={"invalidParams": "x"}, json=body)
    assert response.status_code == 400
    assert response.json()["type"] == INVALID_REQUEST


def test_post_query_order_by(client: httpx.Client, uid: str) -> None:
    for number, value in ((1, 2), (2, 3), (3, 1)):
        create(client, {"id": f"urn:ngsi-ld:T:{uid}:{number}", "type": f"T{uid}", "n": value})
    body = {"type": "Query", "entities": [{"type": f"T{uid}"}]}
    response = client.post("/entityOperations/query", params={"orderBy": "n"}, json=body)
    assert [e["id"][-1] for e in response.json()] == ["3", "1", "2"]
