"""Both network servers' formats over both transports, against the real server and
Mosquitto: each uplink updates the Device and the target entity, with history."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.ingest.flow.conftest import (
    FIXTURES,
    IngestServer,
    chirpstack_topic,
    chirpstack_up,
    new_dev_eui,
    ttn_topic,
    ttn_up,
    wait_for,
    water_level_payload,
)

Publish = Callable[[str, bytes], None]


def _water_level(server: IngestServer, dev_eui: str) -> float | None:
    entity = server.entity(f"urn:ngsi-ld:WaterObserved:{dev_eui}")
    return None if entity is None else entity.get("waterLevel")


def test_chirpstack_http_uplink_updates_device_and_target(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = chirpstack_up(dev_eui, water_level_payload(3.25), rssi=-97, snr=-2.5)

    response = ingest_server.post_chirpstack(body)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "stored"}
    assert _water_level(ingest_server, dev_eui) == 1.75
    device = ingest_server.entity(f"urn:ngsi-ld:Device:{dev_eui}")
    assert device is not None
    assert (device["rssi"], device["snr"], device["deviceState"]) == (-97, -2.5, "ok")
    assert device["batteryLevel"] == 0.9
    assert device["dateLastValueReported"] == "2026-11-24T01:02:03.456Z"


def test_chirpstack_http_protobuf_body_is_stored(ingest_server: IngestServer) -> None:
    dev_eui = "0101010101010101"
    ingest_server.register(dev_eui, profile="cayenne-lpp", parameters={})
    body = (FIXTURES / "chirpstack" / "up.pb").read_bytes()

    response = ingest_server.post_chirpstack(
        body, headers={"Content-Type": "application/octet-stream"}
    )

    assert response.status_code in (200, 202), response.text
    assert ingest_server.entity(f"urn:ngsi-ld:Device:{dev_eui}") is not None


def test_ttn_webhook_uplink_updates_target(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)

    response = ingest_server.post_ttn(ttn_up(dev_eui, water_level_payload(1.0), rssi=-91))

    assert response.status_code == 200, response.text
    assert _water_level(ingest_server, dev_eui) == 4.0
    device = ingest_server.entity(f"urn:ngsi-ld:Device:{dev_eui}")
    assert device is not None and device["rssi"] == -91


def test_chirpstack_mqtt_uplink_is_stored(ingest_server: IngestServer, publisher: Publish) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = chirpstack_up(dev_eui, water_level_payload(2.0), app_id=ingest_server.app_id)

    publisher(chirpstack_topic(ingest_server.app_id, dev_eui), json.dumps(body).encode())

    assert wait_for(lambda: _water_level(ingest_server, dev_eui) == 3.0, what="water level")


def test_ttn_mqtt_uplink_is_stored(ingest_server: IngestServer, publisher: Publish) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = ttn_up(dev_eui, water_level_payload(4.5), app_id=ingest_server.app_id)

    publisher(ttn_topic(ingest_server.app_id, dev_eui), json.dumps(body).encode())

    assert wait_for(lambda: _water_level(ingest_server, dev_eui) == 0.5, what="water level")


def test_uplinks_keep_history_with_uplink_times(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    times = ["2026-11-24T01:00:00.000Z", "2026-11-24T01:10:00.000Z", "2026-11-24T01:20:00.000Z"]
    for f_cnt, (at, distance) in enumerate(zip(times, (3.0, 2.5, 2.0), strict=True), start=1):
        body = chirpstack_up(dev_eui, water_level_payload(distance), f_cnt=f_cnt, at=at)
        assert ingest_server.post_chirpstack(body).status_code == 200

    values = ingest_server.history(f"urn:ngsi-ld:WaterObserved:{dev_eui}", "waterLevel")

    assert values == [[2.0, times[0]], [2.5, times[1]], [3.0, times[2]]]


def test_late_uplink_goes_to_history_without_overwriting_newer_value(
    ingest_server: IngestServer,
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    newer = chirpstack_up(dev_eui, water_level_payload(2.0), f_cnt=2, at="2026-11-24T02:00:00.000Z")
    older = chirpstack_up(dev_eui, water_level_payload(4.0), f_cnt=1, at="2026-11-24T01:00:00.000Z")
    assert ingest_server.post_chirpstack(newer).status_code == 200

    assert ingest_server.post_chirpstack(older).status_code == 200

    assert _water_level(ingest_server, dev_eui) == 3.0
    values = ingest_server.history(f"urn:ngsi-ld:WaterObserved:{dev_eui}", "waterLevel")
    assert [value for value, _ in values] == [1.0, 3.0]
