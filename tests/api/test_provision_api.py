"""NGSI-LD provision operations (create, merge, attributes, batches, purge) over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.settings import Settings
from tests.conftest import NGSI, start_server

NULL = "urn:ngsi-ld:null"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
JSON_LD = {"Content-Type": "application/ld+json"}
LINK = {"Link": f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'}


def building(uid: str, **attrs: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Building:{uid}", "type": "Building", **attrs}


def create(client: httpx.Client, entity: dict[str, Any]) -> str:
    response = client.post("/entities/", json=entity)
    assert response.status_code == 201, response.text
    return str(entity["id"])


def get(client: httpx.Client, entity_id: str) -> dict[str, Any]:
    response = client.get(f"/entities/{entity_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def error_type(response: httpx.Response) -> str:
    return str(response.json()["type"]).removeprefix(ERRORS)


STREET = {"type": "LanguageProperty", "languageMap": {"fr": "Grand Place", "nl": "Grote Markt"}}
NAME = {"type": "Property", "value": "Eiffel"}


# -- create ---------------------------------------------------------------------------


def test_create_with_an_array_body_is_an_invalid_request(client: httpx.Client) -> None:
    response = client.post("/entities/", content=b"[]", headers=JSON_LD)
    assert response.status_code == 400
    assert error_type(response) == "InvalidRequest"


def test_create_with_a_type_mapped_to_a_keyword_is_bad_request_data(
    client: httpx.Client, uid: str
) -> None:
    body = {"id": f"urn:ngsi-ld:Building:{uid}", "type": "type", "@context": [CORE]}
    response = client.post("/entities/", json=body, headers=JSON_LD)
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


# -- merge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "null"),
    [
        ("name", {"type": "Property", "value": NULL}),
        ("street", {"type": "LanguageProperty", "languageMap": {"@none": NULL}}),
        ("street", NULL),
    ],
)
def test_merge_deletes_an_attribute_given_as_ngsild_null(
    client: httpx.Client, uid: str, name: str, null: object
) -> None:
    entity_id = create(client, building(uid, name=NAME, street=STREET))
    response = client.patch(f"/entities/{entity_id}", json={name: null})
    assert response.status_code == 204, response.text
    assert name not in get(client, entity_id)


def test_merge_deletes_only_the_instance_of_the_datasetid(client: httpx.Client, uid: str) -> None:
    instances = [STREET, {**STREET, "datasetId": "urn:ngsi-ld:Dataset:01"}]
    entity_id = create(client, building(uid, street=instances))
    null = {
        "type": "LanguageProperty",
        "languageMap": {"@none": NULL},
        "datasetId": "urn:ngsi-ld:Dataset:01",
    }
    assert client.patch(f"/entities/{entity_id}", json={"street": null}).status_code == 204
    assert "datasetId" not in get(client, entity_id)["street"]


def test_merge_with_json_null_as_value_is_rejected_before_the_lookup(
    client: httpx.Client, uid: str
) -> None:
    response = client.patch(
        f"/entities/urn:ngsi-ld:Building:{uid}", json={"name": {"type": "Property", "value": None}}
    )
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


def test_merge_keeps_the_members_a_fragment_does_not_give(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, speed={"value": 5, "unitCode": "KMH"}))
    assert client.patch(f"/entities/{entity_id}", json={"speed": {"value": 7}}).status_code == 204
    assert get(client, entity_id)["speed"] == {"type": "Property", "value": 7, "unitCode": "KMH"}


# -- append ---------------------------------------------------------------------------


def test_append_replaces_the_scope(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, scope="/A"))
    assert client.post(f"/entities/{entity_id}/attrs/", json={"scope": "/B"}).status_code == 204
    assert get(client, entity_id)["scope"] == "/B"


def test_append_with_no_overwrite_adds_scopes(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, scope="/A"))
    response = client.post(
        f"/entities/{entity_id}/attrs/", json={"scope": "/B"}, params={"options": "noOverwrite"}
    )
    assert response.status_code == 204
    assert sorted(get(client, entity_id)["scope"]) == ["/A", "/B"]


def test_append_no_overwrite_reports_compacted_names(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, name=NAME))
    response = client.post(
        f"/entities/{entity_id}/attrs/",
        json={"name": {"type": "Property", "value": "x"}, "height": 3},
        params={"options": "noOverwrite"},
    )
    assert response.status_code == 207
    body = response.json()
    assert body["updated"] == ["height"]
    assert [item["attributeName"] for item in body["notUpdated"]] == ["name"]


# -- update (PATCH /attrs) ------------------------------------------------------------


def test_update_adds_types(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid))
    response = client.patch(f"/entities/{entity_id}/attrs/", json={"type": ["Vehicle", "Building"]})
    assert response.status_code == 204
    assert sorted(get(client, entity_id)["type"]) == ["Building", "Vehicle"]


def test_update_replaces_an_existing_scope(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, scope="/A"))
    assert client.patch(f"/entities/{entity_id}/attrs/", json={"scope": "/B"}).status_code == 204
    assert get(client, entity_id)["scope"] == "/B"


def test_update_does_not_add_a_scope(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid))
    response = client.patch(f"/entities/{entity_id}/attrs/", json={"scope": "/B"})
    assert response.status_code == 207
    assert response.json()["notUpdated"][0]["attributeName"] == "scope"
    assert "scope" not in get(client, entity_id)


def test_update_appends_attributes_the_entity_lacks(client: httpx.Client, uid: str) -> None:
    """NGSI-LD 5.6.2.4: a non-matching attribute "shall be appended to the target Entity"."""
    entity_id = create(client, building(uid, name=NAME))
    response = client.patch(f"/entities/{entity_id}/attrs/", json={"name": "x", "other": 1})
    assert response.status_code == 204
    assert get(client, entity_id)["other"] == {"type": "Property", "value": 1}


def test_update_reports_a_null_for_a_missing_instance(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, name=NAME))
    response = client.patch(
        f"/entities/{entity_id}/attrs/", json={"other": {"type": "Property", "value": NULL}}
    )
    assert response.status_code == 207
    assert response.json()["notUpdated"][0]["attributeName"] == "other"


def test_update_deletes_an_attribute_given_as_ngsild_null(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, name=NAME, street=STREET))
    null = {"type": "LanguageProperty", "languageMap": {"@none": NULL}}
    assert client.patch(f"/entities/{entity_id}/attrs/", json={"street": null}).status_code == 204
    assert "street" not in get(client, entity_id)


# -- partial attribute update ---------------------------------------------------------


def test_partial_update_cannot_change_the_attribute_kind(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, speed={"value": 5}))
    response = client.patch(
        f"/entities/{entity_id}/attrs/speed", json={"type": "Relationship", "object": "urn:x"}
    )
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


@pytest.mark.parametrize(
    ("name", "null"),
    [
        ("name", {"type": "Property", "value": NULL}),
        ("location", {"type": "GeoProperty", "value": NULL}),
        ("street", {"type": "LanguageProperty", "languageMap": {"@none": NULL}}),
    ],
)
def test_partial_update_with_ngsild_null_deletes_the_instance(
    client: httpx.Client, uid: str, name: str, null: dict[str, Any]
) -> None:
    location = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}}
    entity_id = create(client, building(uid, name=NAME, street=STREET, location=location))
    assert client.patch(f"/entities/{entity_id}/attrs/{name}", json=null).status_code == 204
    assert name not in get(client, entity_id)


def test_partial_update_merges_the_given_members(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, speed={"value": 5, "unitCode": "KMH"}))
    assert client.patch(f"/entities/{entity_id}/attrs/speed", json={"value": 9}).status_code == 204
    assert get(client, entity_id)["speed"] == {"type": "Property", "value": 9, "unitCode": "KMH"}


# -- replace and delete one attribute -------------------------------------------------


@pytest.mark.parametrize("name", ["@invalid", "scope"])
def test_replace_attribute_with_a_name_that_is_no_attribute(
    client: httpx.Client, uid: str, name: str
) -> None:
    entity_id = create(client, building(uid, name=NAME, scope="/A"))
    response = client.put(f"/entities/{entity_id}/attrs/{name}", json=NAME)
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


def test_delete_scope(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, scope="/A"))
    assert client.delete(f"/entities/{entity_id}/attrs/scope").status_code == 204
    assert "scope" not in get(client, entity_id)
    assert client.delete(f"/entities/{entity_id}/attrs/scope").status_code == 404


# -- batches --------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["create", "upsert", "update", "merge", "delete"])
def test_an_empty_batch_is_bad_request_data(client: httpx.Client, operation: str) -> None:
    response = client.post(f"/entityOperations/{operation}", json=[])
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


def test_batch_json_entity_carrying_a_context_fails_alone(client: httpx.Client, uid: str) -> None:
    good, bad = building(uid + "a"), {**building(uid + "b"), "@context": CORE}
    response = client.post("/entityOperations/create", json=[good, bad])
    assert response.status_code == 207
    body = response.json()
    assert body["success"] == [good["id"]]
    assert body["errors"][0]["entityId"] == bad["id"]
    assert body["errors"][0]["error"]["type"] == ERRORS + "BadRequestData"


def test_batch_jsonld_entity_without_context_fails_alone(client: httpx.Client, uid: str) -> None:
    good, bad = {**building(uid + "a"), "@context": CORE}, building(uid + "b")
    response = client.post("/entityOperations/create", json=[good, bad], headers=JSON_LD)
    assert response.status_code == 207
    assert response.json()["errors"][0]["entityId"] == bad["id"]


def test_batch_jsonld_with_a_link_context_is_rejected(client: httpx.Client, uid: str) -> None:
    body = [{**building(uid), "@context": CORE}]
    response = client.post("/entityOperations/create", json=body, headers={**JSON_LD, **LINK})
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


def test_batch_update_no_overwrite_reports_existing_attributes(
    client: httpx.Client, uid: str
) -> None:
    entity_id = create(client, building(uid, name=NAME))
    response = client.post(
        "/entityOperations/update",
        json=[{"id": entity_id, "type": "Building", "name": "x", "height": 3}],
        params={"options": "noOverwrite"},
    )
    assert response.status_code == 207
    assert response.json()["errors"][0]["entityId"] == entity_id
    entity = get(client, entity_id)
    assert entity["name"] == NAME
    assert entity["height"] == {"type": "Property", "value": 3}


def test_batch_merge_reports_invalid_data_per_entity(client: httpx.Client, uid: str) -> None:
    item = building(uid, name={"type": "Property", "value": None})
    response = client.post("/entityOperations/merge", json=[item])
    assert response.status_code == 207
    assert response.json()["errors"][0]["error"]["type"] == ERRORS + "BadRequestData"


# -- purge ----------------------------------------------------------------------------


def test_purge_with_keep_and_drop_is_rejected(client: httpx.Client) -> None:
    response = client.delete("/entities/", params={"type": "Building", "keep": "a", "drop": "b"})
    assert response.status_code == 400
    assert error_type(response) == "BadRequestData"


def test_purge_drop_removes_only_those_attributes(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, name=NAME, height=3))
    assert client.delete("/entities/", params={"id": entity_id, "drop": "name"}).status_code == 204
    entity = get(client, entity_id)
    assert "name" not in entity
    assert "height" in entity


def test_purge_keep_removes_every_other_attribute(client: httpx.Client, uid: str) -> None:
    entity_id = create(client, building(uid, name=NAME, height=3, width=4))
    assert client.delete("/entities/", params={"id": entity_id, "keep": "name"}).status_code == 204
    entity = get(client, entity_id)
    assert entity["name"] == NAME
    assert "height" not in entity
    assert "width" not in entity


def test_purge_without_any_selector_is_rejected(client: httpx.Client) -> None:
    assert client.delete("/entities/").status_code == 400


def test_purge_local_alone_deletes_every_entity(tmp_path: Path) -> None:
    running = start_server(Settings(data_dir=tmp_path, auth="off"))
    try:
        with httpx.Client(base_url=running.base_url + NGSI, timeout=10) as own:
            first, second = create(own, building("p1")), create(own, building("p2", height=1))
            assert own.delete("/entities/", params={"local": "true"}).status_code == 204
            assert own.get(f"/entities/{first}").status_code == 404
            assert own.get(f"/entities/{second}").status_code == 404
    finally:
        running.stop()
