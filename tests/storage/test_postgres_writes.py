"""The PostgreSQL write path: conditional writes from a remembered read, and updates that
touch only the index rows they change (cityos.storage.postgres_updates)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator

import psycopg
import pytest

from cityos.broker.model import StoredEntity
from cityos.storage.base import DEFAULT_TENANT, HistoryScan
from cityos.storage.postgres import PostgresStorage

LOC = "https://uri.etsi.org/ngsi-ld/location"
TEMP = "https://example.org/temperature"
HUMIDITY = "https://example.org/humidity"
NAME = "https://example.org/name"
T = "https://example.org/T"
T2 = "https://example.org/T2"
NOW = "2030-05-01T00:00:00.000Z"


@pytest.fixture(scope="module")
def url(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    PostgresStorage(url, upgrade=True).close()
    return url


@pytest.fixture
def storage(url: str) -> Iterator[PostgresStorage]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE entities, entity_types, entity_attrs, entity_geometries, tenants, "
            "temporal, temporal_entities, temporal_attrs RESTART IDENTITY"
        )
    backend = PostgresStorage(url)
    yield backend
    backend.close()


@pytest.fixture
def other_writer(url: str) -> Iterator[PostgresStorage]:
    """A second storage on the same database: another process, as far as writes go."""
    backend = PostgresStorage(url)
    yield backend
    backend.close()


def sensor(entity_id: str, temperature: float, lon: float = 137.2) -> StoredEntity:
    return {
        "id": entity_id,
        "type": [T],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {
            TEMP: [{"type": "Property", "value": temperature, "modifiedAt": NOW}],
            LOC: [
                {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [lon, 36.7]},
                    "modifiedAt": NOW,
                }
            ],
        },
    }


def with_temperature(entity: StoredEntity, value: float) -> StoredEntity:
    changed = copy.deepcopy(entity)
    changed["attrs"][TEMP][0]["value"] = value
    return changed


def temperatures(storage: PostgresStorage, entity_id: str) -> list[object]:
    rows = storage.history(DEFAULT_TENANT, entity_id, HistoryScan(attrs=frozenset({TEMP})))
    return [row.instance.get("value") for row in rows]


def test_an_update_after_a_read_replaces_the_version_another_writer_made_since(
    storage: PostgresStorage, other_writer: PostgresStorage
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    read = storage.get(DEFAULT_TENANT, "urn:e")
    assert read is not None
    other_writer.update(DEFAULT_TENANT, with_temperature(read, 2.0))
    replaced = storage.update(DEFAULT_TENANT, with_temperature(read, 3.0))
    assert replaced["attrs"][TEMP][0]["value"] == 2.0
    assert temperatures(storage, "urn:e") == [1.0, 2.0, 3.0]


def test_an_update_after_a_read_keeps_what_another_writer_changed_since(
    storage: PostgresStorage, other_writer: PostgresStorage
) -> None:
    # Two processes PATCH different attributes of one entity at once: neither is lost.
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    read = storage.get(DEFAULT_TENANT, "urn:e")
    assert read is not None
    grown = copy.deepcopy(read)
    grown["attrs"][HUMIDITY] = [{"type": "Property", "value": 50, "modifiedAt": NOW}]
    other_writer.update(DEFAULT_TENANT, grown)
    storage.update(DEFAULT_TENANT, with_temperature(read, 3.0))
    stored = storage.get(DEFAULT_TENANT, "urn:e")
    assert stored is not None
    assert stored["attrs"][HUMIDITY][0]["value"] == 50
    assert stored["attrs"][TEMP][0]["value"] == 3.0
    assert temperatures(storage, "urn:e") == [1.0, 3.0]


def test_a_delete_after_a_read_records_the_attributes_another_writer_added_since(
    storage: PostgresStorage, other_writer: PostgresStorage
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    read = storage.get(DEFAULT_TENANT, "urn:e")
    assert read is not None
    grown = copy.deepcopy(read)
    grown["attrs"][HUMIDITY] = [{"type": "Property", "value": 50, "modifiedAt": NOW}]
    other_writer.update(DEFAULT_TENANT, grown)
    assert storage.delete(DEFAULT_TENANT, "urn:e")
    rows = storage.history(DEFAULT_TENANT, "urn:e", HistoryScan(attrs=frozenset({HUMIDITY})))
    assert sorted("deletedAt" in row.instance for row in rows) == [False, True]


def test_an_update_after_a_read_of_another_entity_reads_its_own(
    storage: PostgresStorage,
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:a", 1.0))
    storage.insert(DEFAULT_TENANT, sensor("urn:b", 5.0))
    storage.get(DEFAULT_TENANT, "urn:a")
    replaced = storage.update(DEFAULT_TENANT, sensor("urn:b", 6.0))
    assert replaced["attrs"][TEMP][0]["value"] == 5.0


def test_two_updates_in_one_transaction_each_replace_the_previous(
    storage: PostgresStorage,
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    with storage.transaction():
        first = storage.get(DEFAULT_TENANT, "urn:e")
        assert first is not None
        storage.update(DEFAULT_TENANT, with_temperature(first, 2.0))
        second = storage.get(DEFAULT_TENANT, "urn:e")
        assert second is not None
        replaced = storage.update(DEFAULT_TENANT, with_temperature(second, 3.0))
    assert replaced["attrs"][TEMP][0]["value"] == 2.0
    assert temperatures(storage, "urn:e") == [1.0, 2.0, 3.0]


def row_versions(url: str, table: str) -> list[str]:
    """The physical row addresses of a table: a rewritten row gets a new one."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT ctid::text FROM {table} ORDER BY ctid").fetchall()
    return [ctid for (ctid,) in rows]


@pytest.mark.parametrize(
    "table", ["entity_types", "entity_attrs", "entity_geometries", "temporal_entities"]
)
def test_a_value_update_rewrites_no_index_row(
    storage: PostgresStorage, url: str, table: str
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    before = row_versions(url, table)
    storage.update(DEFAULT_TENANT, sensor("urn:e", 2.0))
    assert row_versions(url, table) == before


def index_of(url: str, entity_id: str) -> dict[str, object]:
    with psycopg.connect(url) as conn:
        pk = conn.execute("SELECT pk FROM entities WHERE id = %s", (entity_id,)).fetchone()
        assert pk is not None
        return {
            "types": sorted(
                t for (t,) in conn.execute("SELECT type FROM entity_types WHERE pk = %s", pk)
            ),
            "attrs": sorted(
                conn.execute("SELECT attr, kind FROM entity_attrs WHERE pk = %s", pk).fetchall()
            ),
            "points": sorted(
                conn.execute(
                    "SELECT attr, ST_X(geom) FROM entity_geometries WHERE pk = %s", pk
                ).fetchall()
            ),
            "history types": conn.execute(
                "SELECT types FROM temporal_entities WHERE id = %s", (entity_id,)
            ).fetchone(),
        }


def test_index_rows_follow_a_change_of_types_attributes_and_geometry(
    storage: PostgresStorage, url: str
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    changed = sensor("urn:e", 1.0, lon=139.5)
    changed["type"] = [T2]
    del changed["attrs"][TEMP]
    changed["attrs"][NAME] = [{"type": "Relationship", "object": "urn:x", "modifiedAt": NOW}]
    storage.update(DEFAULT_TENANT, changed)
    assert index_of(url, "urn:e") == {
        "types": [T2],
        "attrs": [(NAME, "Relationship"), (LOC, "GeoProperty")],
        "points": [(LOC, 139.5)],
        "history types": ([T2],),
    }


def test_an_update_after_the_history_was_deleted_starts_a_new_one(
    storage: PostgresStorage,
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:e", 1.0))
    storage.delete_history(DEFAULT_TENANT, "urn:e")
    storage.update(DEFAULT_TENANT, sensor("urn:e", 2.0))
    assert storage.temporal_types(DEFAULT_TENANT, "urn:e") == [T]
    assert temperatures(storage, "urn:e") == [2.0]


def test_a_write_starts_from_the_row_read_ahead(
    storage: PostgresStorage, other_writer: PostgresStorage
) -> None:
    """The row read ahead (on the event loop, without blocking it) is what the next
    ``get`` of the entity gives; a change made after it is kept by the write."""
    storage.insert(DEFAULT_TENANT, sensor("urn:ngsi-ld:T:ahead", 1))

    async def write_after_read_ahead() -> StoredEntity | None:
        await storage.read_ahead(DEFAULT_TENANT, "urn:ngsi-ld:T:ahead")
        # Another process changes the entity between the read-ahead and the write.
        other = other_writer.get(DEFAULT_TENANT, "urn:ngsi-ld:T:ahead")
        assert other is not None
        other["attrs"][NAME] = [{"type": "Property", "value": "Jinzu", "modifiedAt": NOW}]
        other_writer.update(DEFAULT_TENANT, other)
        start = storage.get(DEFAULT_TENANT, "urn:ngsi-ld:T:ahead")
        assert start is not None
        storage.update(DEFAULT_TENANT, with_temperature(start, 9))
        await storage.close_async()
        return start

    start = asyncio.run(write_after_read_ahead())
    assert start is not None and NAME not in start["attrs"]  # the row read ahead
    final = storage.get(DEFAULT_TENANT, "urn:ngsi-ld:T:ahead")
    assert final is not None
    assert final["attrs"][TEMP][0]["value"] == 9
    assert final["attrs"][NAME][0]["value"] == "Jinzu"


def test_a_row_read_ahead_while_this_process_wrote_the_entity_is_not_used(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:ngsi-ld:T:raced", 1))
    before = storage.get(DEFAULT_TENANT, "urn:ngsi-ld:T:raced")
    assert before is not None
    read = storage._reader.read

    async def read_during_a_write(tenant: str, entity_id: str) -> object:
        found = await read(tenant, entity_id)
        # Another request of this process writes the entity before the read-ahead
        # resumes: the row read may be older than that write.
        storage.update(DEFAULT_TENANT, with_temperature(before, 2))
        return found

    monkeypatch.setattr(storage._reader, "read", read_during_a_write)

    async def read_ahead_then_get() -> StoredEntity | None:
        await storage.read_ahead(DEFAULT_TENANT, "urn:ngsi-ld:T:raced")
        start = storage.get(DEFAULT_TENANT, "urn:ngsi-ld:T:raced")
        await storage.close_async()
        return start

    start = asyncio.run(read_ahead_then_get())
    assert start is not None and start["attrs"][TEMP][0]["value"] == 2
