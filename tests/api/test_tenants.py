"""Tenants (NGSILD-Tenant): separate namespaces, created on first write, 404 before that."""

from __future__ import annotations

import httpx

TENANT = "NGSILD-Tenant"


def entity(entity_id: str, level: float) -> dict[str, object]:
    return {
        "id": entity_id,
        "type": "WaterObserved",
        "height": {"type": "Property", "value": level},
    }


def test_same_id_in_two_tenants_is_two_entities(client: httpx.Client, uid: str) -> None:
    entity_id = f"urn:ngsi-ld:WaterObserved:{uid}"
    assert client.post("/entities", json=entity(entity_id, 1.0)).status_code == 201
    created = client.post(
        "/entities", json=entity(entity_id, 2.0), headers={TENANT: f"toyama-{uid}"}
    )
    assert created.status_code == 201
    default = client.get(f"/entities/{entity_id}", params={"options": "keyValues"})
    tenant = client.get(
        f"/entities/{entity_id}", params={"options": "keyValues"}, headers={TENANT: f"toyama-{uid}"}
    )
    assert default.json()["height"] == 1.0
    assert tenant.json()["height"] == 2.0


def test_reading_an_unknown_tenant_is_404(client: httpx.Client, uid: str) -> None:
    response = client.get(
        "/entities", params={"type": "WaterObserved"}, headers={TENANT: f"never-written-{uid}"}
    )
    assert response.status_code == 404
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant"


def test_query_sees_only_its_tenant(client: httpx.Client, uid: str) -> None:
    tenant = {TENANT: f"kurobe-{uid}"}
    client.post("/entities", json=entity(f"urn:ngsi-ld:WaterObserved:k-{uid}", 3.0), headers=tenant)
    ids = [
        e["id"]
        for e in client.get("/entities", params={"type": "WaterObserved"}, headers=tenant).json()
    ]
    assert ids == [f"urn:ngsi-ld:WaterObserved:k-{uid}"]


def test_invalid_tenant_name_is_400(client: httpx.Client) -> None:
    response = client.get("/entities", params={"type": "X"}, headers={TENANT: "bad tenant!"})
    assert response.status_code == 400
