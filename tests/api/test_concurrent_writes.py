"""Concurrent writes over HTTP: none is lost, and none is acknowledged before it is
durable (on PostgreSQL the writes of concurrent requests share commits, see
cityos.storage.group_commit)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from cityos.app import open_storage
from tests.conftest import NGSI, RunningServer

WRITERS = 16


def concurrently(
    server: RunningServer, count: int, call: Callable[[httpx.Client, int], int]
) -> list[int]:
    """Run ``call(client, n)`` for n in range(count) from parallel clients; their results."""
    with ThreadPoolExecutor(WRITERS) as pool:
        clients = [
            httpx.Client(base_url=server.base_url + NGSI, timeout=30) for _ in range(WRITERS)
        ]
        try:
            return list(pool.map(lambda n: call(clients[n % WRITERS], n), range(count)))
        finally:
            for client in clients:
                client.close()


def test_concurrent_updates_of_different_attributes_of_one_entity_all_stay(
    server: RunningServer, client: httpx.Client, uid: str
) -> None:
    entity_id = f"urn:ngsi-ld:Sensor:{uid}"
    body: dict[str, object] = {"id": entity_id, "type": "Sensor"}
    body |= {f"a{n}": {"type": "Property", "value": 0} for n in range(WRITERS * 2)}
    assert client.post("/entities", json=body).status_code == 201

    def patch(http: httpx.Client, n: int) -> int:
        response = http.patch(f"/entities/{entity_id}/attrs/a{n}", json={"value": n + 1})
        return response.status_code

    assert set(concurrently(server, WRITERS * 2, patch)) == {204}
    stored = client.get(f"/entities/{entity_id}", params={"options": "keyValues"}).json()
    assert [stored[f"a{n}"] for n in range(WRITERS * 2)] == list(range(1, WRITERS * 2 + 1))


def test_concurrent_creates_of_one_id_give_one_201(server: RunningServer, uid: str) -> None:
    body = {"id": f"urn:ngsi-ld:Sensor:{uid}", "type": "Sensor"}

    def create(http: httpx.Client, n: int) -> int:
        return http.post("/entities", json=body).status_code

    statuses = concurrently(server, WRITERS * 2, create)
    assert sorted(statuses) == [201] + [409] * (WRITERS * 2 - 1)


def test_an_acknowledged_write_is_committed(server: RunningServer, uid: str) -> None:
    """Each response is checked at once through a storage object of its own (another
    connection): an acknowledgement sent before the commit would show the old value."""
    ids = [f"urn:ngsi-ld:Sensor:{uid}-{n}" for n in range(WRITERS)]

    def create_then_update(http: httpx.Client, n: int) -> int:
        other = open_storage(server.settings)
        try:
            body = {"id": ids[n], "type": "Sensor", "t": {"type": "Property", "value": 0}}
            assert http.post("/entities", json=body).status_code == 201
            assert other.get("", ids[n]) is not None
            seen = 0
            for value in range(1, 6):
                response = http.patch(f"/entities/{ids[n]}/attrs/t", json={"value": value})
                assert response.status_code == 204
                stored = other.get("", ids[n])
                assert stored is not None
                instance = next(iter(stored["attrs"].values()))[0]
                seen += instance["value"] == value
            return seen
        finally:
            other.close()

    assert concurrently(server, WRITERS, create_then_update) == [5] * WRITERS
