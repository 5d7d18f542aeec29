"""Several real ``cityos serve`` processes on one PostgreSQL database.

Each test starts its processes with the real command line (``python -m cityos.cli
serve``), as an operator would, so the environment hand-over of ``--workers`` is part
of what is tested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cityos.storage.postgres import PostgresStorage
from tests.api.test_events import EventReader, Message, open_events
from tests.conftest import NGSI, free_port
from tests.private_postgres import wait_until

ENV = {
    **os.environ,
    "CITYOS_AUTH": "off",
    # Streams of these tests end on a keep-alive: quick ones make "nothing more came" cheap.
    "CITYOS_EVENTS_HEARTBEAT_S": "0.3",
}


@dataclass
class ServerProcess:
    """A ``cityos serve`` process tree started by :func:`serve`."""

    process: subprocess.Popen[bytes]
    base_url: str

    def stop(self) -> str:
        """Stop it (SIGINT, like Ctrl-C) and return what it wrote to stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr.decode(errors="replace")


def serve(data_dir: Path, *args: str) -> ServerProcess:
    """Start ``cityos serve`` on a free port; return once ``/health`` answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir), *args]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    running = ServerProcess(process, f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        try:
            return httpx.get(running.base_url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    if not wait_until(healthy, 60, 0.1) or process.poll() is not None:
        raise RuntimeError(f"cityos serve did not start:\n{running.stop()}")
    return running


@pytest.fixture
def database(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    PostgresStorage(url, upgrade=True).close()
    return url


@pytest.fixture
def two_processes(database: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two separate server processes (think: two machines) on one database."""
    first = serve(tmp_path, "--database", database)
    try:
        second = serve(tmp_path, "--database", database)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def create(base_url: str, entity_id: str) -> None:
    body = {"id": entity_id, "type": "Gauge", "level": {"type": "Property", "value": 1.0}}
    response = httpx.post(base_url + NGSI + "/entities", json=body, timeout=10)
    assert response.status_code == 201, response.text


def read_events(reader: EventReader, count: int) -> tuple[list[Message], Message]:
    """The next ``count`` events, and the message after them (a keep-alive comment when
    nothing more came)."""
    seen = [reader.next_event() for _ in range(count)]
    return seen, reader.next()


def test_every_change_reaches_the_streams_of_every_process_once(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    ids = [f"urn:ngsi-ld:Gauge:{uuid.uuid4().hex}" for _ in range(4)]
    with (
        open_events(first.base_url, {"type": "Gauge"}) as on_first,
        open_events(second.base_url, {"type": "Gauge"}) as on_second,
    ):
        on_first.until_ready()
        on_second.until_ready()
        for n, entity_id in enumerate(ids):
            create((first, second)[n % 2].base_url, entity_id)
        first_events, after_first = read_events(on_first, len(ids))
        second_events, after_second = read_events(on_second, len(ids))
    # Notices are sent after the commit, so writes on two processes an instant apart
    # may arrive in either order; what matters is that every process sees that order.
    assert sorted(m.json()["id"] for m in first_events) == sorted(ids)
    assert (after_first.event, after_second.event) == (":", ":")
    assert [(m.id, m.data) for m in second_events] == [(m.id, m.data) for m in first_events]


def test_a_write_on_one_process_starts_from_what_another_process_committed(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    """An attribute deleted through one process is not found by the next write through
    the other (no stale version), and one added there survives that process's update."""
    first, second = two_processes
    entity_id = f"urn:ngsi-ld:Gauge:{uuid.uuid4().hex}"
    url = first.base_url + NGSI + "/entities/" + entity_id
    create(first.base_url, entity_id)
    for value in (2.0, 3.0):
        patch = httpx.patch(url + "/attrs/level", json={"value": value}, timeout=10)
        assert patch.status_code == 204, patch.text
    other_url = second.base_url + NGSI + "/entities/" + entity_id
    added = httpx.post(
        other_url + "/attrs", json={"name": {"type": "Property", "value": "Jinzu"}}, timeout=10
    )
    assert added.status_code == 204, added.text
    deleted = httpx.delete(other_url + "/attrs/level", timeout=10)
    assert deleted.status_code == 204, deleted.text
    refused = httpx.patch(url + "/attrs/level", json={"value": 4.0}, timeout=10)
    assert refused.status_code == 404, refused.text
    renamed = httpx.patch(url + "/attrs/name", json={"value": "Ida"}, timeout=10)
    assert renamed.status_code == 204, renamed.text
    final = httpx.get(url, timeout=10).json()
    assert final["name"]["value"] == "Ida"
    assert "level" not in final


def test_last_event_id_of_one_process_replays_on_another(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    seen_id = f"urn:ngsi-ld:Gauge:{uuid.uuid4().hex}"
    missed = [f"urn:ngsi-ld:Gauge:{uuid.uuid4().hex}" for _ in range(3)]
    with open_events(first.base_url, {"type": "Gauge"}) as on_first:
        on_first.until_ready()
        create(first.base_url, seen_id)
        last = on_first.next_event()
    for entity_id in missed:
        create(first.base_url, entity_id)
    assert last.id is not None
    with open_events(second.base_url, {"type": "Gauge"}, {"Last-Event-ID": last.id}) as resumed:
        replayed, _ = resumed.until_ready()
    assert [(m.event, m.json()["id"]) for m in replayed] == [
        ("entityCreated", entity_id) for entity_id in missed
    ]


def test_position_id_of_another_process_gets_a_reset(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    with open_events(first.base_url, {"type": "Gauge"}) as on_first:
        _, ready = on_first.until_ready()
    assert ready.id is not None
    with open_events(second.base_url, {"type": "Gauge"}, {"Last-Event-ID": ready.id}) as other:
        before_ready, _ = other.until_ready()
    assert [m.event for m in before_ready] == ["reset"]


def _stream_boot(base_url: str) -> str:
    """Which process served a new stream: its ``ready`` id is ``<boot>-<seq>`` while no
    event has happened."""
    with open_events(base_url, {"type": "Gauge"}) as events:
        _, ready = events.until_ready()
    assert ready.id is not None and "-" in ready.id
    return ready.id.rpartition("-")[0]


def test_workers_share_one_port_and_one_database(database: str, tmp_path: Path) -> None:
    running = serve(tmp_path, "--database", database, "--workers", "2")
    try:
        boots = {_stream_boot(running.base_url) for _ in range(40)}
        entity_id = f"urn:ngsi-ld:Gauge:{uuid.uuid4().hex}"
        create(running.base_url, entity_id)
        readable = [
            httpx.get(f"{running.base_url}{NGSI}/entities/{entity_id}").status_code
            for _ in range(10)
        ]
    finally:
        running.stop()
    assert len(boots) == 2
    assert readable == [200] * 10


def test_workers_on_sqlite_are_served_with_a_warning(tmp_path: Path) -> None:
    running = serve(tmp_path, "--workers", "2")
    stderr = running.stop()
    assert "SQLite" in stderr and "PostgreSQL" in stderr
