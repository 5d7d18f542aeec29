"""Two real cityos server processes on one PostgreSQL database: notifications go out once.

Each server is its own ``python -m cityos.cli serve`` process (as uvicorn workers or
machines would be); notifications go to an HTTP receiver on loopback in this test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cityos.storage import postgres
from tests.api.test_subscriptions_api import Receiver, sensor, serve_receiver, subscription
from tests.conftest import NGSI, free_port

LEASE_S = 1.5


@dataclass
class ServerProcess:
    """A ``cityos serve`` subprocess; its log is kept for failure messages."""

    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @property
    def api(self) -> str:
        return self.base_url + NGSI

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_process(database: str, data_dir: Path) -> ServerProcess:
    """Start a server process on ``database``; return once ``/health`` answers."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    env = {
        **os.environ,
        "CITYOS_AUTH": "off",
        "CITYOS_DATA_DIR": str(data_dir),
        "CITYOS_NOTIFICATION_LEASE_S": str(LEASE_S),
        "CITYOS_LOG_LEVEL": "warning",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cityos.cli",
                "serve",
                "--port",
                str(port),
                "--database",
                database,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cityos serve exited:\n{log.read_text()}")
        try:
            if httpx.get(running.base_url + "/health", timeout=1).status_code == 200:
                return running
        except httpx.TransportError:
            time.sleep(0.1)
    running.stop()
    raise RuntimeError(f"cityos serve did not start:\n{log.read_text()}")


@pytest.fixture
def database(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        postgres.upgrade_schema(conn)
    return url


@pytest.fixture
def two_servers(database: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = start_process(database, tmp_path / "one")
    try:
        second = start_process(database, tmp_path / "two")
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state, server = serve_receiver()
    yield state
    server.shutdown()
    server.server_close()


def received_values(receiver: Receiver, count: int, timeout_s: float = 10) -> list[Any]:
    """``(entity id, temperature)`` of each entity of the next ``count`` notifications."""
    values: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < count:
        _, body = receiver.next(timeout_s=max(0.01, deadline - time.monotonic()))
        values.extend((e["id"], e["temperature"]["value"]) for e in body["data"])
    return values


def patch(api: str, uid: str, n: int, value: float) -> None:
    response = httpx.patch(
        f"{api}/entities/urn:ngsi-ld:Sensor{uid}:{n}/attrs",
        json={"temperature": {"type": "Property", "value": value}},
    )
    assert response.status_code == 204, response.text


def test_every_write_of_either_process_is_notified_exactly_once(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    assert (
        httpx.post(first.api + "/subscriptions", json=subscription(uid, receiver.url)).status_code
        == 201
    )
    time.sleep(1.0)  # the other process hears of the subscription
    expected: list[tuple[str, float]] = []
    for n in range(10):
        server = (first, second)[n % 2]
        assert httpx.post(server.api + "/entities", json=sensor(uid, n, 0.0)).status_code == 201
        expected.append((f"urn:ngsi-ld:Sensor{uid}:{n}", 0.0))
    for step in range(1, 4):
        for n in range(10):
            patch((first, second)[(n + step) % 2].api, uid, n, float(step))
            expected.append((f"urn:ngsi-ld:Sensor{uid}:{n}", float(step)))
    got = received_values(receiver, len(expected))
    assert receiver.nothing_within(1.5), "no notification twice"
    assert Counter(got) == Counter(expected)


def test_subscription_created_in_one_process_fires_for_writes_in_the_other_within_a_second(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    assert (
        httpx.post(first.api + "/subscriptions", json=subscription(uid, receiver.url)).status_code
        == 201
    )
    time.sleep(1.0)
    assert httpx.post(second.api + "/entities", json=sensor(uid, 1, 5.0)).status_code == 201
    assert received_values(receiver, 1, timeout_s=5) == [(f"urn:ngsi-ld:Sensor{uid}:1", 5.0)]


def test_outbox_of_a_killed_process_is_delivered_once_by_the_survivor(
    two_servers: tuple[ServerProcess, ServerProcess], database: str, uid: str
) -> None:
    first, second = two_servers
    port = free_port()  # the receiver is down: nothing listens here yet
    body = subscription(uid, f"http://127.0.0.1:{port}/notify")
    assert httpx.post(first.api + "/subscriptions", json=body).status_code == 201
    time.sleep(1.0)
    assert httpx.post(first.api + "/entities", json=sensor(uid, 1, 0.0)).status_code == 201
    for value in range(1, 5):
        patch(first.api, uid, 1, float(value))
    with psycopg.connect(database, autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while conn.execute("SELECT count(*) FROM outbox").fetchone() != (5,):
            assert time.monotonic() < deadline, "the outbox never held the 5 notifications"
            time.sleep(0.05)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(5)
    receiver, server = serve_receiver(port)
    try:
        got = received_values(receiver, 5, timeout_s=LEASE_S + 10)
        assert receiver.nothing_within(1.5), "no notification twice"
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(got) == [(f"urn:ngsi-ld:Sensor{uid}:1", float(v)) for v in range(5)]
    status = httpx.get(f"{second.api}/subscriptions/{body['id']}").json()["notification"]
    assert status["status"] == "ok"


def test_throttling_holds_across_processes(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    body = subscription(uid, receiver.url, throttling=30)
    assert httpx.post(first.api + "/subscriptions", json=body).status_code == 201
    time.sleep(1.0)
    for n in range(6):
        server = (first, second)[n % 2]
        assert httpx.post(server.api + "/entities", json=sensor(uid, n)).status_code == 201
    assert len(received_values(receiver, 1)) == 1
    assert receiver.nothing_within(1.5), "one notification per throttling period in all"


def test_periodic_notifications_are_sent_by_one_process(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    assert httpx.post(first.api + "/entities", json=sensor(uid, 1)).status_code == 201
    body = subscription(uid, receiver.url, timeInterval=1)
    assert httpx.post(second.api + "/subscriptions", json=body).status_code == 201
    time.sleep(4.5)
    count = receiver.received.qsize()
    assert 2 <= count <= 5, f"{count} notifications in 4.5 s at one a second"


def test_delivery_status_counts_the_deliveries_of_both_processes(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    body = subscription(uid, receiver.url)
    assert httpx.post(first.api + "/subscriptions", json=body).status_code == 201
    time.sleep(1.0)
    for n in range(6):
        server = (first, second)[n % 2]
        assert httpx.post(server.api + "/entities", json=sensor(uid, n)).status_code == 201
    received_values(receiver, 6)
    deadline = time.monotonic() + 5
    while True:
        seen = [
            httpx.get(f"{server.api}/subscriptions/{body['id']}").json()["notification"]
            for server in (first, second)
        ]
        if all(status.get("timesSent") == 6 for status in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [status.get("timesSent") for status in seen] == [6, 6]
    assert all(status["status"] == "ok" for status in seen)


def test_subscription_deleted_in_one_process_stops_notifying_in_the_other(
    two_servers: tuple[ServerProcess, ServerProcess], receiver: Receiver, uid: str
) -> None:
    first, second = two_servers
    body = subscription(uid, receiver.url)
    assert httpx.post(first.api + "/subscriptions", json=body).status_code == 201
    time.sleep(1.0)
    assert httpx.post(second.api + "/entities", json=sensor(uid, 1)).status_code == 201
    received_values(receiver, 1)
    assert httpx.delete(f"{first.api}/subscriptions/{body['id']}").status_code == 204
    time.sleep(1.0)
    assert httpx.get(f"{second.api}/subscriptions/{body['id']}").status_code == 404
    patch(second.api, uid, 1, 9.0)
    assert receiver.nothing_within(1.5)
