"""The traffic simulator: its messages are real network events our adapters and profiles
accept, the flood scenario crosses the official thresholds, and publishing reaches a
real Mosquitto (127.0.0.1:1883) and a loopback HTTP endpoint."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from cityos.cli import app
from cityos.ingest.model import RawMessage, Uplink
from cityos.ingest.networks import parse_event
from cityos.ingest.simulator import (
    FloodScenario,
    HttpPublisher,
    MqttPublisher,
    TrafficBuilder,
    build_fleet,
    pre_encode,
    publish_in_parallel,
    run,
)

MOSQUITTO = ("127.0.0.1", 1883)


@pytest.fixture(scope="module")
def mosquitto() -> str:
    try:
        socket.create_connection(MOSQUITTO, timeout=2).close()
    except OSError as error:
        message = f"Mosquitto is not reachable on {MOSQUITTO}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"


def test_fleet_starts_with_the_official_gauges() -> None:
    fleet = build_fleet(40)
    assert [d.target_entity_id for d in fleet[:5]] == [
        f"urn:ngsi-ld:WaterObserved:toyama-gauge-{n:02d}" for n in range(1, 6)
    ]
    assert len({d.dev_eui for d in fleet}) == 40
    assert {d.kind for d in fleet[5:]} >= {"gps-tracker", "sprinkler", "temperature-humidity"}


@pytest.mark.parametrize("network", ["chirpstack", "ttn"])
def test_every_message_parses_decodes_and_maps(network: Any) -> None:
    fleet = build_fleet(60)
    devices = {d.dev_eui: d.registration() for d in fleet}
    messages = pre_encode(TrafficBuilder(fleet, network=network), 120)
    counters: dict[str, list[int | None]] = {}
    for address, body in messages:
        (uplink,) = parse_event(RawMessage("mqtt", network, address, body, None, 0))
        assert isinstance(uplink, Uplink)
        device = devices[uplink.dev_eui]
        writes = device.profile.measurements(device, uplink, device.profile.decode(uplink))
        assert writes
        assert uplink.receptions and uplink.spreading_factor in (7, 8, 9, 10)
        counters.setdefault(uplink.dev_eui, []).append(uplink.f_cnt)
    assert all(seen == [0, 1] for seen in counters.values())  # rising, 0 omitted on the wire


def test_flood_raises_the_river_through_its_thresholds() -> None:
    fleet = build_fleet(5)
    jinzu = [d for d in fleet if d.river == "神通川"]
    flood = FloodScenario("神通川", minutes=5, started_at=0.0)
    gauge = jinzu[0]
    start, end = flood.level_m(gauge, 0.0), flood.level_m(gauge, 300.0)
    assert start < gauge.parameters["evacuation_decision_m"]
    assert end > gauge.parameters["flood_danger_m"]
    assert flood.level_m(gauge, 150.0) < end


def test_flood_scenario_levels_reach_the_wire() -> None:
    fleet = build_fleet(5)
    flood = FloodScenario("神通川", minutes=1 / 60, started_at=time.monotonic() - 10)
    builder = TrafficBuilder(fleet, flood=flood)
    levels = {}
    for device in fleet:
        address, body = builder.message(device)
        (uplink,) = parse_event(RawMessage("mqtt", "chirpstack", address, body, None, 0))
        registered = device.registration()
        writes = registered.profile.measurements(
            registered, uplink, registered.profile.decode(uplink)
        )
        levels[device.name] = (writes[0].attributes["waterLevel"]["value"], device.parameters)
    for name, (level, parameters) in levels.items():
        if name.startswith("神通川"):
            assert level > parameters["flood_danger_m"]
        else:
            assert level < parameters["evacuation_decision_m"]


def test_mqtt_publisher_delivers_every_message_qos1(mosquitto: str) -> None:
    prefix = f"cityos-test-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    subscribed = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-sub")
    subscriber.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
    subscriber.on_subscribe = lambda *a: subscribed.set()
    subscriber.on_message = lambda c, u, message: received.append(message.payload)
    subscriber.connect(*MOSQUITTO)
    subscriber.loop_start()
    try:
        assert subscribed.wait(10)
        messages = [
            (f"{prefix}/{address}", body)
            for address, body in pre_encode(TrafficBuilder(build_fleet(30)), 500)
        ]
        publisher = MqttPublisher(mosquitto, max_inflight=50)
        for address, body in messages:
            publisher.publish(address, body)
        publisher.close()
        assert publisher.acknowledged == 500
        deadline = time.monotonic() + 10
        while len(received) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(received) == sorted(body for _, body in messages)
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, dict(self.headers), body))
            self.send_response(200 if self.headers.get("X-Ingest-Secret") == "s3cret" else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_publisher_posts_chirpstack_events_with_the_secret(
    http_receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> None:
    base, seen = http_receiver
    publisher = HttpPublisher(f"{base}/ingest/chirpstack", "chirpstack", secret="s3cret")
    report = run(TrafficBuilder(build_fleet(10)), publisher, rate=0, count=5)
    assert (report.sent, report.acknowledged) == (5, 5)
    path, headers, body = seen[0]
    assert path == "/ingest/chirpstack?event=up"
    assert headers["Content-Type"] == "application/json"
    parse_event(RawMessage("http", "chirpstack", path, body, "application/json", 0))


def test_http_publisher_counts_refusals(
    http_receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> None:
    base, _ = http_receiver
    publisher = HttpPublisher(f"{base}/ingest/ttn", "ttn", secret="wrong")
    report = run(TrafficBuilder(build_fleet(10), network="ttn"), publisher, rate=0, count=3)
    assert (report.sent, report.acknowledged, publisher.failed) == (3, 0, 3)


def test_run_paces_to_the_rate(mosquitto: str) -> None:
    publisher = MqttPublisher(mosquitto)
    builder = TrafficBuilder(build_fleet(10))
    report = run(builder, publisher, rate=50, count=25)
    assert report.seconds >= 0.48


def test_cli_simulate_registers_and_sends(mosquitto: str, tmp_path: Any) -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--to",
            mosquitto,
            "--devices",
            "12",
            "--rate",
            "0",
            "--duration",
            "0.5",
            "--register",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Registered 12 simulated devices" in result.output
    listed = CliRunner().invoke(app, ["devices", "list", "--data-dir", str(tmp_path)])
    assert "12 devices" in listed.output


def test_parallel_publishers_deliver_every_message(mosquitto: str) -> None:
    prefix = f"cityos-test-{uuid.uuid4().hex[:8]}"
    messages = [
        (f"{prefix}/{address}", body)
        for address, body in pre_encode(TrafficBuilder(build_fleet(10)), 60)
    ]
    report = publish_in_parallel(mosquitto, messages, processes=2)
    assert (report.sent, report.acknowledged) == (60, 60)
