"""Bad input over HTTP and MQTT: each case answered in the right format, counted, and
kept as a dead letter with its reason (never dropped, never a crash)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.ingest.flow.conftest import (
    IngestServer,
    chirpstack_topic,
    chirpstack_up,
    new_dev_eui,
    wait_for,
    water_level_payload,
)

Publish = Callable[[str, bytes], None]


def _bad_body(case: str, dev_eui: str, registered: str) -> bytes:
    """The body of each bad-input case (``registered`` is a known device's DevEUI)."""
    if case == "invalid-json":
        return b'{"deduplicationId": "x", "deviceInfo": '
    if case == "bad-base64":
        body = chirpstack_up(registered, b"")
        body["data"] = "%%% not base64 %%%"
        return json.dumps(body).encode()
    if case == "unknown-device":
        return json.dumps(chirpstack_up(dev_eui, water_level_payload(1.0))).encode()
    if case == "unknown-fport":
        return json.dumps(chirpstack_up(registered, water_level_payload(1.0), f_port=9)).encode()
    if case == "codec-error":
        return json.dumps(chirpstack_up(registered, b"\x01")).encode()
    raise AssertionError(case)


CASES = ["invalid-json", "bad-base64", "unknown-device", "unknown-fport", "codec-error"]
EXPECTED_STATUS = {
    "invalid-json": 400,
    "bad-base64": 400,
    "unknown-device": 202,
    "unknown-fport": 202,
    "codec-error": 202,
}


@pytest.mark.parametrize("case", CASES)
def test_bad_http_message_is_answered_counted_and_dead_lettered(
    ingest_server: IngestServer, case: str
) -> None:
    registered = new_dev_eui()
    ingest_server.register(registered)
    before = ingest_server.dead_letters().get(case, 0)
    rejected_before = ingest_server.stats()["process"]["rejected"].get(case, 0)

    response = ingest_server.post_chirpstack(_bad_body(case, new_dev_eui(), registered))

    assert response.status_code == EXPECTED_STATUS[case], response.text
    if response.status_code == 400:
        assert response.headers["content-type"].startswith("application/json")
        assert case in response.json()["detail"]
    else:
        assert response.json()["reason"] == case
    assert ingest_server.dead_letters().get(case, 0) == before + 1
    assert ingest_server.stats()["process"]["rejected"][case] == rejected_before + 1


@pytest.mark.parametrize("case", CASES)
def test_bad_mqtt_message_is_counted_and_dead_lettered(
    ingest_server: IngestServer, publisher: Publish, case: str
) -> None:
    registered = new_dev_eui()
    ingest_server.register(registered)
    unknown = new_dev_eui()
    topic_dev_eui = unknown if case == "unknown-device" else registered
    before = ingest_server.dead_letters().get(case, 0)

    publisher(
        chirpstack_topic(ingest_server.app_id, topic_dev_eui), _bad_body(case, unknown, registered)
    )

    wait_for(lambda: ingest_server.dead_letters().get(case, 0) > before, what=f"{case} letter")


def test_wrong_secret_is_401_counted_and_stores_nothing(ingest_server: IngestServer) -> None:
    dev_eui = new_dev_eui()
    ingest_server.register(dev_eui)
    before = ingest_server.dead_letters().get("unauthorized", 0)

    response = ingest_server.post_chirpstack(
        chirpstack_up(dev_eui, water_level_payload(1.0)), secret="wrong"
    )

    assert response.status_code == 401
    assert response.json()["title"].startswith("Wrong ingest secret")
    assert ingest_server.entity(f"urn:ngsi-ld:WaterObserved:{dev_eui}") is None
    assert ingest_server.dead_letters()["unauthorized"] == before + 1


def test_missing_secret_is_401(ingest_server: IngestServer) -> None:
    response = ingest_server.post_chirpstack(b"{}", secret=None)

    assert response.status_code == 401


def test_oversize_body_is_413_and_dead_lettered(ingest_server: IngestServer) -> None:
    before = ingest_server.dead_letters().get("oversize", 0)
    body: dict[str, Any] = chirpstack_up(new_dev_eui(), b"")
    body["padding"] = "x" * 10_000

    response = ingest_server.post_chirpstack(body)

    assert response.status_code == 413
    assert ingest_server.dead_letters()["oversize"] == before + 1


def test_oversize_mqtt_message_is_dead_lettered(
    ingest_server: IngestServer, publisher: Publish
) -> None:
    dev_eui = new_dev_eui()
    before = ingest_server.dead_letters().get("oversize", 0)
    body: dict[str, Any] = chirpstack_up(dev_eui, b"")
    body["padding"] = "x" * 10_000

    publisher(chirpstack_topic(ingest_server.app_id, dev_eui), json.dumps(body).encode())

    wait_for(lambda: ingest_server.dead_letters().get("oversize", 0) > before, what="letter")


def test_http_ingestion_without_a_secret_configured_is_503(server: Any) -> None:
    body = json.dumps({"data": base64.b64encode(b"x").decode()})

    response = httpx.post(server.base_url + "/ingest/chirpstack?event=up", content=body, timeout=10)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert "CITYOS_INGEST_SECRET" in response.json()["detail"]
