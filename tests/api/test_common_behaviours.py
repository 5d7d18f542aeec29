"""Behaviours every NGSI-LD operation shares (ETSI CommonBehaviours), on a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LINK_REL = 'rel="http://www.w3.org/ns/json-ld#context"'


def unavailable_context_url() -> str:
    """A context URL nothing answers on (connection refused, so the test is fast)."""
    return f"http://127.0.0.1:{free_port()}/missing-context.jsonld"


def building(entity_id: str, context: object) -> dict[str, object]:
    return {
        "id": entity_id,
        "type": "Building",
        "name": {"type": "Property", "value": "Eiffel"},
        "@context": context,
    }


def assert_problem(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == ERRORS + error
    assert body["title"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/types"),
        ("GET", "/types/Building"),
        ("GET", "/attributes"),
        ("GET", "/attributes/name"),
        ("DELETE", "/entities"),
        ("GET", "/jsonldContexts"),
        ("GET", "/jsonldContexts/ngsi-ld-core-context"),
        ("DELETE", "/jsonldContexts/no-such-context"),
        ("POST", "/jsonldContexts"),
    ],
)
def test_unknown_query_parameters_are_invalid_requests(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(
        method,
        path,
        params={"invalidParams": "invalidValue"},
        json={"@context": {"a": "http://example.org/a"}} if method == "POST" else None,
    )
    assert_problem(response, 400, "InvalidRequest")


def test_a_405_names_every_allowed_method(client: httpx.Client) -> None:
    response = client.put("/jsonldContexts")
    assert_problem(response, 405, "MethodNotAllowed")
    allowed = set(response.headers["allow"].split(", "))
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed


def test_unknown_paths_are_resource_not_found(client: httpx.Client) -> None:
    assert_problem(client.get("/no-such-resource"), 404, "ResourceNotFound")


def test_create_with_an_unavailable_context_is_503(client: httpx.Client, uid: str) -> None:
    response = client.post(
        "/entities",
        json=building(f"urn:ngsi-ld:Building:{uid}", unavailable_context_url()),
        headers={"Content-Type": "application/ld+json"},
    )
    assert_problem(response, 503, "LdContextNotAvailable")
    assert response.json()["detail"]


@pytest.mark.parametrize("operation", ["create", "upsert"])
def test_batch_entities_with_unavailable_contexts_fail_alone(
    client: httpx.Client, uid: str, operation: str
) -> None:
    good, bad = f"urn:ngsi-ld:Building:{uid}-good", f"urn:ngsi-ld:Building:{uid}-bad"
    response = client.post(
        f"/entityOperations/{operation}",
        json=[building(bad, [unavailable_context_url(), CORE]), building(good, CORE)],
        headers={"Content-Type": "application/ld+json"},
    )
    assert response.status_code == 207, response.text
    result = response.json()
    assert result["success"] == [good]
    [error] = result["errors"]
    assert error["entityId"] == bad
    assert error["error"]["type"] == ERRORS + "LdContextNotAvailable"
    assert client.get(f"/entities/{bad}").status_code == 404


def test_any_media_type_gets_plain_json_and_a_link(client: httpx.Client, uid: str) -> None:
    entity_id = f"urn:ngsi-ld:Building:{uid}"
    created = client.post("/entities", json={"id": entity_id, "type": "Building"})
    assert created.status_code == 201
    response = client.get(f"/entities/{entity_id}", headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert LINK_REL in response.headers["link"]
    assert "@context" not in response.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/entities"),
        ("PATCH", "/entities/urn:ngsi-ld:Building:nowhere/attrs"),
        ("POST", "/entityOperations/create"),
        ("POST", "/jsonldContexts"),
    ],
)
def test_xml_bodies_are_unsupported_before_anything_else(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(
        method, path, content=b"<a/>", headers={"Content-Type": "application/xml"}
    )
    assert_problem(response, 415, "UnsupportedMediaType")


@pytest.mark.parametrize(
    "path",
    [
        "/entities/urn:ngsi-ld:Building:nowhere",
        "/jsonldContexts/ngsi-ld-core-context",
        "/jsonldContexts/no-such-context",
    ],
)
def test_xml_is_not_acceptable_even_for_unknown_ids(client: httpx.Client, path: str) -> None:
    response = client.get(path, headers={"Accept": "application/xml"})
    assert_problem(response, 406, "NotAcceptable")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("*/*", "application/json"),
        ("application/ld+json", "application/ld+json"),
        ("application/json;q=0.5, application/ld+json", "application/ld+json"),
    ],
)
def test_contexts_are_served_in_the_negotiated_media_type(
    client: httpx.Client, accept: str, media_type: str
) -> None:
    response = client.get("/jsonldContexts/ngsi-ld-core-context", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert "@context" in response.json()


def test_batch_entity_with_an_invalid_context_fails_alone(client: httpx.Client, uid: str) -> None:
    good, bad = f"urn:ngsi-ld:Building:{uid}-good", f"urn:ngsi-ld:Building:{uid}-bad"
    response = client.post(
        "/entityOperations/create",
        json=[building(bad, {"name": 5}), building(good, CORE)],
        headers={"Content-Type": "application/ld+json"},
    )
    assert response.status_code == 207, response.text
    assert response.json()["success"] == [good]
    assert response.json()["errors"][0]["error"]["type"] == ERRORS + "InvalidRequest"
