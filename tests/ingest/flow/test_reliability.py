"""Reliability: ``kill -9`` of the ingesting server during QoS 1 ingestion, and a restart
of the MQTT broker (a private Mosquitto on 18850-18859, never the shared one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import NGSI, RunningServer, free_port, start_server
from tests.ingest.flow.conftest import (
    SECRET,
    chirpstack_topic,
    chirpstack_up,
    ingest_settings,
    require_mosquitto,
    wait_for,
    water_level_payload,
)

PRIVATE_PORTS = range(18850, 18860)


def _register(base_url: str, dev_euis: list[str]) -> None:
    entities = [
        {
            "id": f"urn:ngsi-ld:Device:{eui}",
            "type": "Device",
            "deviceProfile": {"type": "Property", "value": "water-level"},
            "parameters": {"type": "JsonProperty", "json": {"mounting_height_m": 5.0}},
        }
        for eui in dev_euis
    ]
    response = httpx.post(base_url + NGSI + "/entityOperations/upsert", json=entities, timeout=30)
    assert response.status_code in (200, 201, 204), response.text


def _messages(app_id: str, dev_euis: list[str], count: int) -> list[tuple[str, bytes]]:
    """``count`` uplinks round-robin over the devices, each with its own time."""
    messages = []
    for index in range(count):
        eui = dev_euis[index % len(dev_euis)]
        at = f"2026-11-24T05:{index // 60 % 60:02d}:{index % 60:02d}.{index // 3600:03d}Z"
        body = chirpstack_up(eui, water_level_payload(1.0 + index % 3), f_cnt=index, at=at)
        messages.append((chirpstack_topic(app_id, eui), json.dumps(body).encode()))
    return messages


def _publisher(port: int) -> mqtt.Client:
    """A QoS 1 publisher with a persistent session that reconnects by itself."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:12]}",
        clean_session=False,
    )
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(0.1, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _publish_paced(client: mqtt.Client, messages: list[tuple[str, bytes]], rate: float) -> None:
    start = time.monotonic()
    for index, (topic, body) in enumerate(messages):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.publish(topic, body, qos=1)


def _history_counts(base_url: str, dev_euis: list[str]) -> dict[str, int]:
    counts = {}
    with httpx.Client(base_url=base_url + NGSI, timeout=30) as http:
        for eui in dev_euis:
            response = http.get(
                f"/temporal/entities/urn:ngsi-ld:WaterObserved:{eui}",
                params={"attrs": "waterLevel", "options": "temporalValues", "lastN": 1000},
            )
            values = (
                response.json().get("waterLevel", {}).get("values", [])
                if response.is_success
                else []
            )
            counts[eui] = len(values)
    return counts


# -- kill -9 ------------------------------------------------------------------------------


def _spawn_server(data_dir: Path, port: int, app_id: str) -> subprocess.Popen[bytes]:
    settings = ingest_settings(data_dir, app_id)
    env = {
        **os.environ,
        "CITYOS_DATA_DIR": str(data_dir),
        "CITYOS_PORT": str(port),
        "CITYOS_AUTH": "off",
        "CITYOS_MQTT_URL": str(settings.mqtt_url),
        "CITYOS_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "CITYOS_MQTT_CHIRPSTACK_TOPICS": settings.mqtt_chirpstack_topics[0],
        "CITYOS_INGEST_SECRET": SECRET,
        "CITYOS_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            status = httpx.get(base_url + "/ingest/stats", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return bool((status.get("mqtt") or {}).get("connected"))

    wait_for(ready, timeout_s=30, what="server with MQTT")
    return process


def test_kill_9_during_qos1_ingestion_loses_and_doubles_nothing(tmp_path: Path) -> None:
    require_mosquitto()
    app_id = f"k{uuid.uuid4().hex[:10]}"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    dev_euis = [uuid.uuid4().hex[:16] for _ in range(20)]
    server = _spawn_server(tmp_path, port, app_id)
    try:
        _register(base_url, dev_euis)
        messages = _messages(app_id, dev_euis, 600)
        publisher = _publisher(1883)
        sender = threading.Thread(target=_publish_paced, args=(publisher, messages, 200.0))
        sender.start()
        wait_for(
            lambda: httpx.get(base_url + "/ingest/stats").json()["process"]["uplinksStored"] > 100,
            what="ingestion under way",
        )
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        time.sleep(0.5)
        server = _spawn_server(tmp_path, port, app_id)
        sender.join(30)
        publisher.loop_stop()

        wait_for(
            lambda: sum(_history_counts(base_url, dev_euis).values()) >= len(messages),
            timeout_s=60,
            what="every uplink stored",
        )
        counts = _history_counts(base_url, dev_euis)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)

    assert counts == dict.fromkeys(dev_euis, len(messages) // len(dev_euis))
    with sqlite3.connect(tmp_path / "cityos.sqlite3") as db:
        (keys,) = db.execute("SELECT count(*) FROM ingest_uplink_keys").fetchone()
    assert keys == len(messages)


# -- broker restart -----------------------------------------------------------------------


class PrivateMosquitto:
    """A Mosquitto of the test's own, with persistence, on a port of 18850-18859."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("mosquitto") is None:
            if os.environ.get("CI") == "true":
                pytest.fail("mosquitto is not installed; CI needs it", pytrace=False)
            pytest.skip("mosquitto is not installed")
        self.directory = directory
        self.port = _free_private_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nmax_queued_messages 100000\n"
            # Started as root, mosquitto drops to user "mosquitto", which cannot write its
            # persistence file in our temporary directory (sessions would be lost).
            "user root\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, timeout_s=10, what="private mosquitto")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(10)
            self.process = None

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


def _free_private_port() -> int:
    import socket

    for port in PRIVATE_PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("No free port in 18850-18859 for a private Mosquitto")


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    broker = PrivateMosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_broker_restart_during_ingestion_reconnects_and_loses_nothing(
    tmp_path: Path, private_mosquitto: PrivateMosquitto
) -> None:
    app_id = f"r{uuid.uuid4().hex[:10]}"
    settings = ingest_settings(tmp_path / "data", app_id).model_copy(
        update={"mqtt_url": f"mqtt://127.0.0.1:{private_mosquitto.port}"}
    )
    running = start_server(settings)
    try:
        base_url = running.base_url
        wait_for(lambda: httpx.get(base_url + "/ingest/stats").json()["mqtt"]["connected"])
        dev_euis = [uuid.uuid4().hex[:16] for _ in range(10)]
        _register(base_url, dev_euis)
        messages = _messages(app_id, dev_euis, 300)
        publisher = _publisher(private_mosquitto.port)
        sender = threading.Thread(target=_publish_paced, args=(publisher, messages, 100.0))
        sender.start()
        time.sleep(1.0)
        private_mosquitto.stop()
        time.sleep(1.0)
        private_mosquitto.start()
        sender.join(30)

        wait_for(
            lambda: sum(_history_counts(base_url, dev_euis).values()) >= len(messages),
            timeout_s=60,
            what="every uplink stored",
        )
        counts = _history_counts(base_url, dev_euis)
        status = httpx.get(base_url + "/ingest/stats").json()["mqtt"]
        publisher.loop_stop()
    finally:
        running.stop()

    assert counts == dict.fromkeys(dev_euis, len(messages) // len(dev_euis))
    assert status["connections"] >= 2
    assert status["connected"]


def test_one_process_of_a_database_subscribes_and_another_takes_over(tmp_path: Path) -> None:
    # `cityos serve --workers N`: two clients with one id would throw each other off the
    # broker, so one process holds the MQTT duty; when it goes, another picks it up.
    require_mosquitto()
    settings = ingest_settings(tmp_path / "data", f"w{uuid.uuid4().hex[:10]}")
    first = start_server(settings)
    second = start_server(settings)
    try:

        def status(server: RunningServer) -> dict[str, object]:
            return dict(httpx.get(server.base_url + "/ingest/stats").json()["mqtt"])

        wait_for(lambda: status(first)["connected"], what="first subscribes")
        assert status(second)["connected"] is False
        first.stop()

        wait_for(lambda: status(second)["connected"], timeout_s=30, what="second takes over")
    finally:
        second.stop()
