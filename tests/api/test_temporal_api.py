"""The temporal API against a real server: provision, queries, representations, errors."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx
import pytest

from cityos.settings import Settings
from tests.conftest import NGSI, start_server

XML = "application/xml"


def gauge(uid: str, levels: list[tuple[float, str]], **extra: object) -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:Gauge:{uid}",
        "type": "Gauge",
        "level": [{"type": "Property", "value": v, "observedAt": t} for v, t in levels],
        **extra,
    }


LEVELS = [
    (1.0, "2026-01-01T00:00:00Z"),
    (2.0, "2026-01-01T00:20:00Z"),
    (4.0, "2026-01-01T00:40:00Z"),
    (8.0, "2026-01-01T01:10:00Z"),
]


@pytest.fixture
def gauge_id(client: httpx.Client, uid: str) -> str:
    response = client.post("/temporal/entities", json=gauge(uid, LEVELS))
    assert response.status_code == 201
    return f"urn:ngsi-ld:Gauge:{uid}"


def level_values(body: dict[str, object]) -> list[object]:
    level = body["level"]
    assert isinstance(level, list)
    return [instance["value"] for instance in level]


def test_create_then_retrieve_all_instances_in_time_order(
    client: httpx.Client, gauge_id: str
) -> None:
    response = client.get(f"/temporal/entities/{gauge_id}")
    assert response.status_code == 200
    assert level_values(response.json()) == [1.0, 2.0, 4.0, 8.0]
    assert all(
        i["instanceId"].startswith("urn:ngsi-ld:Instance:") for i in response.json()["level"]
    )
    # The latest instance is the entity's current value.
    assert client.get(f"/entities/{gauge_id}").json()["level"]["value"] == 8.0


def test_core_updates_are_recorded_with_their_time(client: httpx.Client, gauge_id: str) -> None:
    patch = {"level": {"type": "Property", "value": 16.0, "observedAt": "2026-01-01T02:00:00Z"}}
    assert client.patch(f"/entities/{gauge_id}/attrs", json=patch).status_code == 204
    assert level_values(client.get(f"/temporal/entities/{gauge_id}").json())[-1] == 16.0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"timerel": "after", "timeAt": "2026-01-01T00:20:00Z"}, [2.0, 4.0, 8.0]),
        ({"timerel": "before", "timeAt": "2026-01-01T00:20:00Z"}, [1.0]),
        (
            {
                "timerel": "between",
                "timeAt": "2026-01-01T00:10:00Z",
                "endTimeAt": "2026-01-01T01:00:00Z",
            },
            [2.0, 4.0],
        ),
        ({"lastN": "2"}, [4.0, 8.0]),
        ({"lastN": "1", "timerel": "before", "timeAt": "2026-01-01T01:00:00Z"}, [4.0]),
    ],
)
def test_timerel_and_last_n(
    client: httpx.Client, gauge_id: str, params: dict[str, str], expected: list[float]
) -> None:
    response = client.get(f"/temporal/entities/{gauge_id}", params=params)
    assert response.status_code == 200
    assert level_values(response.json()) == expected


def test_temporal_values_representation(client: httpx.Client, gauge_id: str) -> None:
    body = client.get(f"/temporal/entities/{gauge_id}", params={"options": "temporalValues"}).json()
    assert body["level"] == {"type": "Property", "values": [[v, t] for v, t in LEVELS]}


def test_aggregated_values_per_hour_match_python(client: httpx.Client, gauge_id: str) -> None:
    params = {
        "options": "aggregatedValues",
        "aggrMethods": "avg,max,stddev,totalCount",
        "aggrPeriodDuration": "PT1H",
    }
    level = client.get(f"/temporal/entities/{gauge_id}", params=params).json()["level"]
    first_hour = [1.0, 2.0, 4.0]
    assert level["avg"][0] == [
        statistics.fmean(first_hour),
        "2026-01-01T00:00:00Z",
        "2026-01-01T01:00:00Z",
    ]
    assert level["max"] == [
        [4.0, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"],
        [8.0, "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"],
    ]
    assert level["stddev"][0][0] == pytest.approx(statistics.stdev(first_hour))
    assert [row[0] for row in level["totalCount"]] == [3, 1]


def test_query_by_type_with_q_and_attrs(client: httpx.Client, gauge_id: str, uid: str) -> None:
    params = {"type": "Gauge", "q": "level>7", "attrs": "level", "id": gauge_id, "lastN": "1"}
    body = client.get("/temporal/entities", params=params).json()
    assert [(e["id"], level_values(e)) for e in body] == [(gauge_id, [8.0])]


def test_query_with_geo_filter(client: httpx.Client, uid: str) -> None:
    located = gauge(
        uid,
        LEVELS[:1],
        location={
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [137.21, 36.69]},
        },
    )
    assert client.post("/temporal/entities", json=located).status_code == 201
    params = {
        "type": "Gauge",
        "georel": "near;maxDistance==1000",
        "geometry": "Point",
        "coordinates": "[137.211,36.691]",
        "id": located["id"],
    }
    assert [e["id"] for e in client.get("/temporal/entities", params=params).json()] == [
        located["id"]
    ]


def test_append_instances_and_upsert_existing(
    client: httpx.Client, gauge_id: str, uid: str
) -> None:
    more = {"level": [{"type": "Property", "value": 0.5, "observedAt": "2025-12-31T23:00:00Z"}]}
    assert client.post(f"/temporal/entities/{gauge_id}/attrs", json=more).status_code == 204
    again = gauge(uid, [(32.0, "2026-01-01T03:00:00Z")])
    assert client.post("/temporal/entities", json=again).status_code == 204
    assert level_values(client.get(f"/temporal/entities/{gauge_id}").json()) == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        32.0,
    ]
    assert client.get(f"/entities/{gauge_id}").json()["level"]["value"] == 32.0


def test_modify_and_delete_one_instance(client: httpx.Client, gauge_id: str) -> None:
    first = client.get(f"/temporal/entities/{gauge_id}").json()["level"][0]["instanceId"]
    url = f"/temporal/entities/{gauge_id}/attrs/level/{first}"
    fix = {"level": {"type": "Property", "value": 1.5, "observedAt": "2026-01-01T00:00:00Z"}}
    assert client.patch(url, json=fix).status_code == 204
    assert level_values(client.get(f"/temporal/entities/{gauge_id}").json())[0] == 1.5
    assert client.delete(url).status_code == 204
    assert client.delete(url).status_code == 404
    assert level_values(client.get(f"/temporal/entities/{gauge_id}").json()) == [2.0, 4.0, 8.0]


def test_delete_attribute_and_entity_history(client: httpx.Client, gauge_id: str) -> None:
    assert client.delete(f"/temporal/entities/{gauge_id}/attrs/level").status_code == 204
    response = client.get(f"/temporal/entities/{gauge_id}", params={"attrs": "level"})
    assert response.status_code == 404
    assert client.delete(f"/temporal/entities/{gauge_id}").status_code == 204
    assert client.get(f"/temporal/entities/{gauge_id}").status_code == 404
    assert client.get(f"/entities/{gauge_id}").status_code == 404


def test_core_delete_keeps_history_with_deletion_markers(
    client: httpx.Client, gauge_id: str
) -> None:
    assert client.delete(f"/entities/{gauge_id}").status_code == 204
    assert level_values(client.get(f"/temporal/entities/{gauge_id}").json()) == [1.0, 2.0, 4.0, 8.0]
    deleted = client.get(f"/temporal/entities/{gauge_id}", params={"timeproperty": "deletedAt"})
    assert level_values(deleted.json()) == ["urn:ngsi-ld:null"]


@pytest.mark.parametrize(
    "params",
    [
        {"timerel": "after"},
        {"timerel": "between", "timeAt": "2026-01-01T00:00:00Z"},
        {"timerel": "later", "timeAt": "2026-01-01T00:00:00Z"},
        {"options": "aggregatedValues", "aggrMethods": "median"},
        {"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "1 hour"},
        {"options": "aggregatedValues"},
        {"lastN": "-1"},
        {"format": "sideways"},
        {"unknownParam": "x"},
    ],
)
def test_bad_parameters_get_400(
    client: httpx.Client, gauge_id: str, params: dict[str, str]
) -> None:
    response = client.get(f"/temporal/entities/{gauge_id}", params=params)
    assert response.status_code == 400
    assert response.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


def test_query_without_entity_selection_is_400(client: httpx.Client) -> None:
    response = client.get(
        "/temporal/entities", params={"timerel": "after", "timeAt": "2026-01-01T00:00:00Z"}
    )
    assert response.status_code == 400


@pytest.mark.parametrize("accept", [XML, "application/geo+json"])
def test_unacceptable_media_types_get_406(client: httpx.Client, accept: str) -> None:
    response = client.get("/temporal/entities/urn:ngsi-ld:Gauge:none", headers={"Accept": accept})
    assert response.status_code == 406


def test_accept_any_gets_json_with_link(client: httpx.Client, gauge_id: str) -> None:
    response = client.get(f"/temporal/entities/{gauge_id}", headers={"Accept": "*/*"})
    assert response.headers["content-type"] == "application/json"
    assert "json-ld#context" in response.headers["link"]


def test_xml_body_gets_415(client: httpx.Client) -> None:
    response = client.post("/temporal/entities", content=b"<a/>", headers={"Content-Type": XML})
    assert response.status_code == 415


def test_unreachable_context_gets_503(client: httpx.Client, uid: str) -> None:
    link = '<http://127.0.0.1:9/missing.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'
    response = client.post(
        "/temporal/entities", json=gauge(uid, LEVELS[:1]), headers={"Link": link}
    )
    assert response.status_code == 503


def test_retention_task_deletes_expired_history(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, auth="off", retention={"Gauge": "P30D"}, retention_interval_s=0.05
    )
    running = start_server(settings)
    try:
        with httpx.Client(base_url=running.base_url + NGSI, timeout=10) as http:
            recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            body = gauge("kept", [(1.0, "2020-01-01T00:00:00Z"), (2.0, recent)])
            assert http.post("/temporal/entities", json=body).status_code == 201
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                levels = level_values(http.get(f"/temporal/entities/{body['id']}").json())
                if levels == [2.0]:
                    break
                time.sleep(0.05)
            assert levels == [2.0]
    finally:
        running.stop()
