"""PostgreSQL outages against a real server on a private cluster that the tests restart.

While the database is away every request that needs it answers 503 ProblemDetails with
``Retry-After`` (never 500, never a long wait); the server reconnects by itself; no
write that was acknowledged is lost. The machine's shared cluster is never touched.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest

from cityos.settings import Settings
from tests.api.test_events import open_events
from tests.conftest import NGSI, RunningServer, start_server
from tests.private_postgres import PrivateCluster, cluster_problem, wait_until

SERVICE_UNAVAILABLE = "https://uri.etsi.org/ngsi-ld/errors/ServiceUnavailable"


@dataclass
class Outage:
    """A cityos server on a private cluster that a test may stop and restart."""

    cluster: PrivateCluster
    database: str
    server: RunningServer

    def back(self) -> None:
        """Start the cluster if a test left it stopped, and wait for the server."""
        with contextlib.suppress(RuntimeError):  # already running
            self.cluster.start()
        assert wait_until(lambda: _health(self.server) == 200, 15), "server did not recover"


def _health(server: RunningServer) -> int:
    try:
        return httpx.get(server.base_url + "/health", timeout=5).status_code
    except httpx.TransportError:
        return 0


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    problem = cluster_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI needs a private PostgreSQL cluster", pytrace=False)
        pytest.skip(problem)
    cluster = PrivateCluster()
    try:
        cluster.start()
        database = cluster.create_database("cityos_outage")
        server = start_server(
            Settings(
                data_dir=tmp_path_factory.mktemp("outage"),
                database=database,
                upgrade_on_start=True,
                auth="off",
            )
        )
        try:
            yield Outage(cluster, database, server)
        finally:
            server.stop()
    finally:
        cluster.remove()


def sensor(entity_id: str, value: float = 1.0) -> dict[str, object]:
    return {"id": entity_id, "type": "Sensor", "temperature": {"type": "Property", "value": value}}


def create(server: RunningServer, entity_id: str) -> httpx.Response:
    return httpx.post(server.base_url + NGSI + "/entities", json=sensor(entity_id), timeout=10)


REQUESTS = {
    "create": ("POST", "/entities", sensor("urn:ngsi-ld:Sensor:outage-new")),
    "read": ("GET", "/entities/urn:ngsi-ld:Sensor:outage-known", None),
    "query": ("GET", "/entities?type=Sensor&q=temperature%3E0", None),
    "update": ("PATCH", "/entities/urn:ngsi-ld:Sensor:outage-known/attrs", {"x": 1}),
    "batch": (
        "POST",
        "/entityOperations/create",
        [sensor("urn:ngsi-ld:Sensor:outage-b1"), sensor("urn:ngsi-ld:Sensor:outage-b2")],
    ),
    "history": ("GET", "/temporal/entities/urn:ngsi-ld:Sensor:outage-known", None),
    # Subscriptions and hosted @contexts live in the shared state tables (own pool).
    "subscribe": (
        "POST",
        "/subscriptions",
        {
            "type": "Subscription",
            "entities": [{"type": "Sensor"}],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/n"}},
        },
    ),
    "host context": ("POST", "/jsonldContexts", {"@context": {"x": "urn:x"}}),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_requests_answer_503_problem_details_while_the_database_is_down(
    outage: Outage, name: str
) -> None:
    create(outage.server, "urn:ngsi-ld:Sensor:outage-known")
    method, path, body = REQUESTS[name]
    outage.cluster.stop()
    try:
        answers = []
        for _ in range(2):  # the request that meets the failure, and one after it
            started = time.monotonic()
            response = httpx.request(
                method, outage.server.base_url + NGSI + path, json=body, timeout=10
            )
            answers.append((response, time.monotonic() - started))
    finally:
        outage.back()
    for response, elapsed_s in answers:
        assert response.status_code == 503, response.text
        assert response.json()["type"] == SERVICE_UNAVAILABLE
        assert int(response.headers["Retry-After"]) > 0
        assert elapsed_s < 5


def test_health_is_503_while_the_database_is_down(outage: Outage) -> None:
    outage.cluster.stop()
    try:
        response = httpx.get(outage.server.base_url + "/health", timeout=10)
    finally:
        outage.back()
    assert response.status_code == 503
    assert response.json()["database"] == "unavailable"


def test_server_serves_again_after_a_restart_by_itself(outage: Outage) -> None:
    outage.cluster.restart()
    assert wait_until(
        lambda: create(outage.server, f"urn:ngsi-ld:Sensor:{uuid.uuid4().hex}").status_code == 201,
        10,
    )


@dataclass
class WriteLoad:
    """Writers creating entities with unique ids, recording every answer."""

    server: RunningServer
    statuses: list[int] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base_url + NGSI, timeout=10) as http:
            while not self.stop.is_set():
                entity_id = f"urn:ngsi-ld:Sensor:load-{uuid.uuid4().hex}"
                started = time.monotonic()
                try:
                    status = http.post("/entities", json=sensor(entity_id)).status_code
                except httpx.TransportError:
                    status = 0
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                self.statuses.append(status)
                if status == 201:
                    self.acknowledged.append(entity_id)


def test_no_acknowledged_write_is_lost_across_a_restart(outage: Outage) -> None:
    load = WriteLoad(outage.server)
    writers = [threading.Thread(target=load.run) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(1.0)
        outage.cluster.restart()
        assert wait_until(lambda: load.statuses[-5:] == [201] * 5, 15)
        time.sleep(0.5)
    finally:
        load.stop.set()
        for writer in writers:
            writer.join(15)
    with psycopg.connect(outage.database) as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM entities WHERE id = ANY(%s)", (load.acknowledged,)
            )
        }
    assert set(load.statuses) <= {201, 503}
    assert 503 in load.statuses
    assert load.slowest_s < 5
    assert set(load.acknowledged) - stored == set()


def test_event_streams_get_a_reset_after_the_database_returns(outage: Outage) -> None:
    with open_events(outage.server.base_url, {"type": "Sensor"}) as events:
        events.until_ready()
        outage.cluster.restart()
        reset = events.next_event()
        assert wait_until(
            lambda: create(outage.server, "urn:ngsi-ld:Sensor:after-reset").status_code == 201,
            10,
        )
        created = events.next_event()
    assert reset.event == "reset"
    assert (created.event, created.json()["id"]) == (
        "entityCreated",
        "urn:ngsi-ld:Sensor:after-reset",
    )
