"""The storage contract: every backend must pass these (SQLite, PostgreSQL, memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.storage.base import DEFAULT_TENANT, EntityScan, Storage
from cityos.storage.memory import MemoryStorage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

T = "https://example.org/T"
U = "https://example.org/U"
TEMP = "https://example.org/temperature"
LOC = "https://uri.etsi.org/ngsi-ld/location"


@pytest.fixture(scope="module")
def contract_postgres_url(new_postgres_database: Callable[[], str]) -> str:
    """One database for the module's PostgreSQL cases, emptied before each of them."""
    url = new_postgres_database()
    PostgresStorage(url, upgrade=True).close()
    return url


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    backend: Storage
    if request.param == "sqlite":
        backend = SqliteStorage(tmp_path / "contract.sqlite3")
    elif request.param == "postgres":
        url = request.getfixturevalue("contract_postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE entities, entity_types, entity_attrs, entity_geometries, tenants "
                "RESTART IDENTITY"
            )
        backend = PostgresStorage(url)
    else:
        backend = MemoryStorage()
    yield backend
    backend.close()


def entity(
    entity_id: str,
    types: list[str] | None = None,
    *,
    lon: float | None = None,
    lat: float | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if temperature is not None:
        attrs[TEMP] = [{"type": "Property", "value": temperature}]
    if lon is not None and lat is not None:
        attrs[LOC] = [
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
        ]
    return {
        "id": entity_id,
        "type": types or [T],
        "createdAt": "2026-01-01T00:00:00.000Z",
        "modifiedAt": "2026-01-01T00:00:00.000Z",
        "attrs": attrs,
    }


def ids(storage: Storage, scan: EntityScan, tenant: str = DEFAULT_TENANT) -> list[str]:
    return [e["id"] for _, e in storage.scan(tenant, scan)]


def test_insert_then_get_returns_the_same_document(storage: Storage) -> None:
    doc = entity("urn:a", temperature=3.5)
    storage.insert(DEFAULT_TENANT, doc)
    assert storage.get(DEFAULT_TENANT, "urn:a") == doc


def test_insert_twice_raises_already_exists(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a"))
    with pytest.raises(AlreadyExists):
        storage.insert(DEFAULT_TENANT, entity("urn:a"))


def test_update_of_missing_entity_raises_not_found(storage: Storage) -> None:
    with pytest.raises(ResourceNotFound):
        storage.update(DEFAULT_TENANT, entity("urn:missing"))


def test_update_replaces_document_and_indexes(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a", [T]))
    storage.update(DEFAULT_TENANT, entity("urn:a", [U], temperature=1.0))
    assert ids(storage, EntityScan(types_any=frozenset({T}))) == []
    assert ids(storage, EntityScan(types_any=frozenset({U}))) == ["urn:a"]
    assert ids(storage, EntityScan(attrs_any=frozenset({TEMP}))) == ["urn:a"]


def test_delete_removes_entity_and_reports_absence(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a", lon=137.2, lat=36.7))
    assert storage.delete(DEFAULT_TENANT, "urn:a") is True
    assert storage.get(DEFAULT_TENANT, "urn:a") is None
    assert storage.delete(DEFAULT_TENANT, "urn:a") is False
    assert ids(storage, EntityScan(geo_attr=LOC, geo_bbox=(137, 36, 138, 37))) == []


def test_tenants_are_separate_namespaces(storage: Storage) -> None:
    storage.insert("city", entity("urn:a", temperature=1.0))
    storage.insert(DEFAULT_TENANT, entity("urn:a", temperature=2.0))
    assert storage.get("city", "urn:a")["attrs"][TEMP][0]["value"] == 1.0  # type: ignore[index]
    assert storage.get(DEFAULT_TENANT, "urn:a")["attrs"][TEMP][0]["value"] == 2.0  # type: ignore[index]
    assert storage.tenant_exists("city")
    assert not storage.tenant_exists("other")
    assert storage.list_tenants() == ["", "city"]


def test_scan_returns_insertion_order_and_honours_after_pk(storage: Storage) -> None:
    for n in range(600):
        storage.insert(DEFAULT_TENANT, entity(f"urn:e{n:04d}"))
    rows = list(storage.scan(DEFAULT_TENANT, EntityScan()))
    assert [e["id"] for _, e in rows] == [f"urn:e{n:04d}" for n in range(600)]
    after = rows[299][0]
    assert ids(storage, EntityScan(after_pk=after))[0] == "urn:e0300"


@pytest.mark.parametrize(
    ("scan", "expected"),
    [
        (EntityScan(ids=frozenset({"urn:b", "urn:zz"})), ["urn:b"]),
        (EntityScan(types_any=frozenset({U})), ["urn:b", "urn:c"]),
        (EntityScan(types_any=frozenset({T, U})), ["urn:a", "urn:b", "urn:c"]),
        (EntityScan(attrs_any=frozenset({TEMP})), ["urn:a", "urn:c"]),
        (EntityScan(geo_attr=LOC, geo_bbox=(137.1, 36.6, 137.3, 36.8)), ["urn:a"]),
        (EntityScan(geo_attr=LOC, geo_bbox=(0, 0, 1, 1)), []),
    ],
)
def test_scan_narrows_by_each_index(
    storage: Storage, scan: EntityScan, expected: list[str]
) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a", [T], lon=137.21, lat=36.69, temperature=5))
    storage.insert(DEFAULT_TENANT, entity("urn:b", [U]))
    storage.insert(DEFAULT_TENANT, entity("urn:c", [T, U], lon=140.0, lat=35.0, temperature=1))
    assert ids(storage, scan) == expected


def test_transaction_rolls_back_every_write_on_error(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:kept"))
    with pytest.raises(AlreadyExists), storage.transaction():
        storage.insert(DEFAULT_TENANT, entity("urn:new"))
        storage.insert(DEFAULT_TENANT, entity("urn:kept"))
    assert storage.get(DEFAULT_TENANT, "urn:new") is None
    assert storage.get(DEFAULT_TENANT, "urn:kept") is not None


def test_discovery_counts_types_and_attributes(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a", [T], temperature=1))
    storage.insert(DEFAULT_TENANT, entity("urn:b", [T], temperature=2, lon=1, lat=1))
    storage.insert(DEFAULT_TENANT, entity("urn:c", [U]))
    assert storage.type_counts(DEFAULT_TENANT) == {T: 2, U: 1}
    usage = {
        (u.type_iri, u.attr_iri, u.kind): u.entity_count
        for u in storage.attribute_usage(DEFAULT_TENANT)
    }
    assert usage == {(T, TEMP, "Property"): 2, (T, LOC, "GeoProperty"): 1}
    assert storage.count_all(DEFAULT_TENANT) == 3
