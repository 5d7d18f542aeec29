"""Application-level behaviour: health, docs, errors as ProblemDetails, body limits."""

from __future__ import annotations

import httpx

from tests.conftest import RunningServer


def test_health_reports_ok(server: RunningServer) -> None:
    response = httpx.get(server.base_url + "/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok"})


def test_openapi_docs_are_served(server: RunningServer) -> None:
    assert httpx.get(server.base_url + "/docs").status_code == 200
    paths = httpx.get(server.base_url + "/openapi.json").json()["paths"]
    assert "/ngsi-ld/v1/entities" in paths


def test_unknown_path_is_a_problem_details_404(client: httpx.Client) -> None:
    response = client.get("/no-such-resource")
    assert response.status_code == 404
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"


def test_body_over_the_limit_is_413(client: httpx.Client, uid: str) -> None:
    entity = {
        "id": f"urn:ngsi-ld:Big:{uid}",
        "type": "Big",
        "blob": {"type": "Property", "value": "x" * 250_000},
    }
    response = client.post("/entities", json=entity)
    assert response.status_code == 413
    assert response.json()["status"] == 413
    assert client.get(f"/entities/urn:ngsi-ld:Big:{uid}").status_code == 404


def test_invalid_json_is_400_invalid_request(client: httpx.Client) -> None:
    response = client.post(
        "/entities", content=b'{"id": "urn:x", ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"
