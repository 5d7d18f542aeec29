"""Fixtures of the ingestion flow tests: a real server with HTTP and MQTT ingestion on
SQLite and on PostgreSQL, the real Mosquitto, devices registered through the API, and
network messages built from the vendors' recorded payloads (``tests/ingest/fixtures``).

Each server subscribes to topics of its own application id, so tests sharing the
machine's Mosquitto never see each other's messages.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityos.settings import Settings
from tests.conftest import NGSI, RunningServer, start_server

FIXTURES = Path(__file__).parent.parent / "fixtures"
MOSQUITTO = ("127.0.0.1", 1883)
SECRET = "test-ingest-secret"


def mosquitto_problem(host: str = MOSQUITTO[0], port: int = MOSQUITTO[1]) -> str | None:
    """Why the MQTT broker cannot be used, or ``None``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as error:
        return f"No MQTT broker on {host}:{port}: {error}"


def require_mosquitto() -> None:
    """Fail under CI, skip otherwise, when the shared Mosquitto is not there."""
    problem = mosquitto_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI needs Mosquitto", pytrace=False)
        pytest.skip(problem)


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what}")
        time.sleep(0.05)


def new_dev_eui() -> str:
    return uuid.uuid4().hex[:16]


def water_level_payload(distance_m: float, battery_pct: int = 90) -> bytes:
    return round(distance_m * 1000).to_bytes(2, "big") + bytes([battery_pct])


def chirpstack_up(
    dev_eui: str,
    payload: bytes,
    *,
    f_cnt: int = 1,
    at: str = "2026-11-24T01:02:03.456Z",
    dedup_id: str | None = None,
    f_port: int = 1,
    app_id: str = "app",
    rssi: float = -87,
    snr: float = 7.5,
    gateway: str = "0016c001f153a14c",
) -> dict[str, Any]:
    """A ChirpStack v4 ``up`` event, from the recorded one with these fields changed."""
    body = json.loads((FIXTURES / "chirpstack" / "up.json").read_text())
    body["deduplicationId"] = dedup_id or str(uuid.uuid4())
    body["time"] = at
    body["deviceInfo"]["devEui"] = dev_eui
    body["deviceInfo"]["applicationId"] = app_id
    body["fCnt"] = f_cnt
    body["fPort"] = f_port
    body["data"] = base64.b64encode(payload).decode()
    body.pop("object", None)
    body["rxInfo"] = [{**body["rxInfo"][0], "gatewayId": gateway, "rssi": rssi, "snr": snr}]
    return body


def ttn_up(
    dev_eui: str,
    payload: bytes,
    *,
    f_cnt: int = 1,
    at: str = "2026-11-24T01:02:03.456Z",
    f_port: int = 1,
    app_id: str = "app",
    rssi: float = -91,
    snr: float = 4.0,
    gateway: str = "gtw1",
) -> dict[str, Any]:
    """A TTN v3 uplink message, from the recorded one with these fields changed."""
    body = json.loads((FIXTURES / "ttn" / "uplink.json").read_text())
    body["end_device_ids"]["dev_eui"] = dev_eui.upper()
    body["end_device_ids"]["application_ids"]["application_id"] = app_id
    body["received_at"] = at
    message = body["uplink_message"]
    message["f_cnt"] = f_cnt
    message["f_port"] = f_port
    message["frm_payload"] = base64.b64encode(payload).decode()
    message.pop("decoded_payload", None)
    message["received_at"] = at
    message["rx_metadata"] = [
        {
            **message["rx_metadata"][0],
            "gateway_ids": {"gateway_id": gateway},
            "rssi": rssi,
            "snr": snr,
        }
    ]
    return body


def chirpstack_topic(app_id: str, dev_eui: str, event: str = "up") -> str:
    return f"application/{app_id}/device/{dev_eui}/event/{event}"


def ttn_topic(app_id: str, dev_eui: str) -> str:
    return f"v3/{app_id}@ttn/devices/dev-{dev_eui}/up"


@dataclass
class IngestServer:
    """A running server with ingestion, and what the tests need to talk to it."""

    running: RunningServer
    app_id: str
    backend: str

    @property
    def base_url(self) -> str:
        return self.running.base_url

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=20)

    def register(
        self,
        dev_eui: str,
        profile: str = "water-level",
        parameters: dict[str, Any] | None = None,
        location: tuple[float, float] | None = (137.2137, 36.6953),
    ) -> None:
        """Register a device the way any NGSI-LD client can: by creating its Device."""
        entity: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Device:{dev_eui}",
            "type": "Device",
            "name": {"type": "Property", "value": f"gauge {dev_eui}"},
            "deviceProfile": {"type": "Property", "value": profile},
            "parameters": {
                "type": "JsonProperty",
                "json": parameters if parameters is not None else {"mounting_height_m": 5.0},
            },
        }
        if location is not None:
            entity["location"] = {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": list(location)},
            }
        with self.http() as http:
            response = http.post(NGSI + "/entities", json=entity)
            assert response.status_code == 201, response.text

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        with self.http() as http:
            response = http.get(f"{NGSI}/entities/{entity_id}", params={"options": "keyValues"})
        return response.json() if response.status_code == 200 else None

    def history(self, entity_id: str, attr: str) -> list[Any]:
        with self.http() as http:
            response = http.get(
                f"{NGSI}/temporal/entities/{entity_id}",
                params={"attrs": attr, "options": "temporalValues"},
            )
        if response.status_code != 200:
            return []
        return list(response.json().get(attr, {}).get("values", []))

    def stats(self) -> dict[str, Any]:
        with self.http() as http:
            return dict(http.get("/ingest/stats").json())

    def dead_letters(self) -> dict[str, int]:
        return dict(self.stats()["deadLetters"])

    def post_chirpstack(
        self,
        body: dict[str, Any] | bytes,
        event: str = "up",
        secret: str | None = SECRET,
        **kw: Any,
    ) -> httpx.Response:
        headers = {} if secret is None else {"X-Ingest-Secret": secret}
        headers.update(kw.pop("headers", {}))
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.http() as http:
            return http.post(
                "/ingest/chirpstack",
                params={"event": event},
                content=content,
                headers={"Content-Type": "application/json", **headers},
            )

    def post_ttn(
        self, body: dict[str, Any] | bytes, path: str = "/ingest/ttn/uplink", secret: str = SECRET
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.http() as http:
            return http.post(
                path,
                content=content,
                headers={"Content-Type": "application/json", "X-Ingest-Secret": secret},
            )


def ingest_settings(data_dir: Path, app_id: str, database: str | None = None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database=database,
        upgrade_on_start=True,
        auth="off",
        mqtt_url=f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}",
        mqtt_client_id=f"cityos-test-{app_id}",
        mqtt_chirpstack_topics=[f"application/{app_id}/device/+/event/+"],
        mqtt_ttn_topics=[f"v3/{app_id}@ttn/devices/+/+"],
        ingest_secret=SECRET,
        ingest_max_body_bytes=4096,
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def ingest_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestServer]:
    """One ingesting server per backend, shared by the flow tests (unique DevEUIs)."""
    require_mosquitto()
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("new_postgres_database")()
    app_id = f"t{uuid.uuid4().hex[:10]}"
    running = start_server(
        ingest_settings(tmp_path_factory.mktemp(f"ingest-{request.param}"), app_id, database)
    )
    wait_for(lambda: running.settings and _mqtt_connected(running.base_url), what="MQTT")
    yield IngestServer(running, app_id, request.param)
    running.stop()


def _mqtt_connected(base_url: str) -> bool:
    status = httpx.get(base_url + "/ingest/stats", timeout=5).json().get("mqtt") or {}
    return bool(status.get("connected"))


@pytest.fixture
def publisher() -> Iterator[Callable[[str, bytes], None]]:
    """Publish QoS 1 messages to the shared Mosquitto (waits for each PUBACK)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:12]}")
    client.connect(*MOSQUITTO)
    client.loop_start()

    def publish(topic: str, payload: bytes) -> None:
        client.publish(topic, payload, qos=1).wait_for_publish(10)

    yield publish
    client.loop_stop()
    client.disconnect()
