"""The same uplink delivered twice (webhook retry, QoS 1 redelivery, both transports) is
stored once: one history instance, one ``stored`` count."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.ingest.flow.conftest import (
    IngestServer,
    chirpstack_topic,
    chirpstack_up,
    new_dev_eui,
    ttn_up,
    wait_for,
    water_level_payload,
)

Publish = Callable[[str, bytes], None]


def _history(server: IngestServer, dev_eui: str) -> list[object]:
    return server.history(f"urn:ngsi-ld:WaterObserved:{dev_eui}", "waterLevel")


def test_webhook_retry_is_stored_once(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = chirpstack_up(dev_eui, water_level_payload(2.0))

    first = ingest_server.post_chirpstack(body)
    second = ingest_server.post_chirpstack(body)

    assert (first.json(), second.json()) == ({"status": "stored"}, {"status": "duplicate"})
    assert len(_history(ingest_server, dev_eui)) == 1


def test_uplink_over_mqtt_then_http_is_stored_once(
    ingest_server: IngestServer, publisher: Publish
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = chirpstack_up(dev_eui, water_level_payload(2.0), app_id=ingest_server.app_id)
    publisher(chirpstack_topic(ingest_server.app_id, dev_eui), json.dumps(body).encode())
    wait_for(lambda: _history(ingest_server, dev_eui), what="first copy")

    response = ingest_server.post_chirpstack(body)

    assert response.json() == {"status": "duplicate"}
    assert len(_history(ingest_server, dev_eui)) == 1


def test_ttn_redelivery_without_deduplication_id_is_stored_once(
    ingest_server: IngestServer,
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = ttn_up(dev_eui, water_level_payload(2.0), f_cnt=7)

    statuses = [ingest_server.post_ttn(body).json()["status"] for _ in range(2)]

    assert statuses == ["stored", "duplicate"]
    assert len(_history(ingest_server, dev_eui)) == 1


def test_same_uplink_twice_in_one_batch_is_stored_once(
    ingest_server: IngestServer, publisher: Publish
) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    body = json.dumps(chirpstack_up(dev_eui, water_level_payload(2.0))).encode()
    topic = chirpstack_topic(ingest_server.app_id, dev_eui)
    before = ingest_server.stats()["process"]["uplinksDuplicate"]

    for _ in range(3):
        publisher(topic, body)

    wait_for(
        lambda: ingest_server.stats()["process"]["uplinksDuplicate"] >= before + 2,
        what="duplicates counted",
    )
    assert len(_history(ingest_server, dev_eui)) == 1
