"""The storage contract: every backend must pass these (SQLite, PostgreSQL, memory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.storage.base import (
    DEFAULT_TENANT,
    NULL,
    SCOPE_IRI,
    EntityScan,
    HistoryScan,
    Storage,
    TemporalStorage,
)
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
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TemporalStorage]:
    backend: TemporalStorage
    if request.param == "sqlite":
        backend = SqliteStorage(tmp_path / "contract.sqlite3")
    elif request.param == "postgres":
        url = request.getfixturevalue("contract_postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE entities, entity_types, entity_attrs, entity_geometries, tenants, "
                "temporal, temporal_entities, temporal_attrs "
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


# -- temporal history ------------------------------------------------------------------


def observed(value: float, at: str, dataset_id: str | None = None) -> dict[str, Any]:
    instance: dict[str, Any] = {"type": "Property", "value": value, "observedAt": at}
    if dataset_id is not None:
        instance["datasetId"] = dataset_id
    return instance


def with_temperature(entity_id: str, *instances: dict[str, Any]) -> dict[str, Any]:
    doc = entity(entity_id)
    doc["attrs"][TEMP] = list(instances)
    return doc


def values(storage: TemporalStorage, scan: HistoryScan, entity_id: str = "urn:h") -> list[Any]:
    return [row.instance.get("value") for row in storage.history(DEFAULT_TENANT, entity_id, scan)]


def test_insert_and_update_record_only_changed_instances(storage: TemporalStorage) -> None:
    storage.insert(DEFAULT_TENANT, with_temperature("urn:h", observed(1, "2026-01-01T00:00:00Z")))
    unchanged = with_temperature("urn:h", observed(1, "2026-01-01T00:00:00Z"))
    unchanged["attrs"][LOC] = [
        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}}
    ]
    storage.update(DEFAULT_TENANT, unchanged)
    storage.update(DEFAULT_TENANT, with_temperature("urn:h", observed(2, "2026-01-01T00:10:00Z")))
    rows = storage.history(DEFAULT_TENANT, "urn:h", HistoryScan(attrs=frozenset({TEMP})))
    assert [r.instance["value"] for r in rows] == [1, 2]
    assert rows[1].time_ms - rows[0].time_ms == 600_000
    assert len({r.instance_id for r in rows}) == 2


def test_removed_instance_gets_a_deletion_marker(storage: TemporalStorage) -> None:
    storage.insert(DEFAULT_TENANT, with_temperature("urn:h", observed(1, "2026-01-01T00:00:00Z")))
    storage.update(DEFAULT_TENANT, entity("urn:h"))
    rows = storage.history(DEFAULT_TENANT, "urn:h", HistoryScan())
    assert [r.instance["value"] for r in rows] == [1, NULL]
    assert "deletedAt" in rows[1].instance


def test_history_outlives_core_delete_until_deleted_itself(storage: TemporalStorage) -> None:
    storage.insert(DEFAULT_TENANT, with_temperature("urn:h", observed(1, "2026-01-01T00:00:00Z")))
    storage.delete(DEFAULT_TENANT, "urn:h")
    assert storage.temporal_types(DEFAULT_TENANT, "urn:h") == [T]
    assert values(storage, HistoryScan())[0] == 1
    assert storage.delete_history(DEFAULT_TENANT, "urn:h") > 0
    assert storage.temporal_types(DEFAULT_TENANT, "urn:h") is None
    assert values(storage, HistoryScan()) == []


@pytest.mark.parametrize(
    ("scan", "expected"),
    [
        (HistoryScan(), [0, 1, 2, 3, 4]),
        (HistoryScan(start_ms=1_767_225_720_000), [2, 3, 4]),
        (HistoryScan(end_ms=1_767_225_720_000), [0, 1]),
        (HistoryScan(last_n=2), [3, 4]),
        (HistoryScan(end_ms=1_767_225_720_000, last_n=1), [1]),
        (HistoryScan(attrs=frozenset({"urn:other"})), []),
    ],
)
def test_history_scan_narrows_by_time_and_last_n(
    storage: TemporalStorage, scan: HistoryScan, expected: list[int]
) -> None:
    # Appended out of order: the scan must still answer in time order.
    rows = [(TEMP, observed(n, f"2026-01-01T00:0{n}:00Z")) for n in (3, 0, 4, 1, 2)]
    storage.append_history(DEFAULT_TENANT, "urn:h", [T], rows)
    assert values(storage, scan) == expected


def test_one_instance_can_be_replaced_or_deleted_by_id(storage: TemporalStorage) -> None:
    ids_ = storage.append_history(
        DEFAULT_TENANT,
        "urn:h",
        [T],
        [(TEMP, observed(n, f"2026-01-01T00:0{n}:00Z")) for n in range(3)],
    )
    moved = observed(9, "2026-01-01T00:09:00Z")
    assert storage.replace_history_instance(DEFAULT_TENANT, "urn:h", TEMP, ids_[0], moved)
    assert values(storage, HistoryScan()) == [1, 2, 9]
    assert storage.delete_history_instance(DEFAULT_TENANT, "urn:h", TEMP, ids_[1])
    assert values(storage, HistoryScan()) == [2, 9]
    assert not storage.delete_history_instance(DEFAULT_TENANT, "urn:h", TEMP, ids_[1])
    assert not storage.delete_history_instance(DEFAULT_TENANT, "urn:h", TEMP, "urn:x:1")


def test_delete_history_of_one_dataset(storage: TemporalStorage) -> None:
    storage.append_history(
        DEFAULT_TENANT,
        "urn:h",
        [T],
        [
            (TEMP, observed(1, "2026-01-01T00:01:00Z")),
            (TEMP, observed(2, "2026-01-01T00:02:00Z", "urn:ds:a")),
        ],
    )
    storage.delete_history(DEFAULT_TENANT, "urn:h", TEMP, dataset_id="urn:ds:a", all_datasets=False)
    assert values(storage, HistoryScan()) == [1]
    storage.delete_history(DEFAULT_TENANT, "urn:h", TEMP)
    assert values(storage, HistoryScan()) == []


def test_expire_history_deletes_old_rows_of_the_type_only(storage: TemporalStorage) -> None:
    for entity_id, types in (("urn:h", [T]), ("urn:u", [U])):
        storage.append_history(
            DEFAULT_TENANT,
            entity_id,
            types,
            [(TEMP, observed(n, f"2026-01-01T00:0{n}:00Z")) for n in range(3)],
        )
    assert storage.expire_history(T, 1_767_225_720_000) == 2
    assert values(storage, HistoryScan()) == [2]
    assert values(storage, HistoryScan(), "urn:u") == [0, 1, 2]


def test_history_rolls_back_with_the_transaction(storage: TemporalStorage) -> None:
    with pytest.raises(AlreadyExists), storage.transaction():
        storage.insert(
            DEFAULT_TENANT, with_temperature("urn:h", observed(1, "2026-01-01T00:00:00Z"))
        )
        storage.insert(DEFAULT_TENANT, entity("urn:h"))
    assert values(storage, HistoryScan()) == []


def test_same_observation_replaces_its_history_row(storage: TemporalStorage) -> None:
    storage.append_history(
        DEFAULT_TENANT,
        "urn:h",
        [T],
        [
            (TEMP, observed(1, "2026-01-01T00:01:00Z")),
            (TEMP, observed(5, "2026-01-01T00:01:00Z", "urn:ds:a")),
        ],
    )
    storage.append_history(
        DEFAULT_TENANT, "urn:h", [T], [(TEMP, observed(2, "2026-01-01T00:01:00Z"))]
    )
    assert sorted(values(storage, HistoryScan())) == [2, 5]


def test_aggregate_history_summarises_numeric_rows_per_period(storage: TemporalStorage) -> None:
    # Minutes 0..5, values 0,1,2,3,4,4; periods of 2 minutes from minute 0.
    rows = [(TEMP, observed(n if n < 5 else 4, f"2026-01-01T00:0{n}:00Z")) for n in range(6)]
    storage.append_history(DEFAULT_TENANT, "urn:h", [T], rows)
    start = 1767225600000  # 2026-01-01T00:00:00Z
    summary = storage.aggregate_history(
        DEFAULT_TENANT, "urn:h", TEMP, start, None, 120_000, distinct=True
    )
    assert summary is not None
    assert (summary.origin_ms, summary.period_ms) == (start, 120_000)
    assert [
        (b.index, b.count, b.total, b.total_sq, b.minimum, b.maximum, b.distinct)
        for b in summary.buckets
    ] == [
        (0, 2, 1.0, 1.0, 0.0, 1.0, 2),
        (1, 2, 5.0, 13.0, 2.0, 3.0, 2),
        (2, 2, 8.0, 32.0, 4.0, 4.0, 1),
    ]


@pytest.mark.parametrize(
    "odd",
    [
        {"type": "Property", "value": "high"},
        {"type": "Property", "value": 2.0, "datasetId": "urn:ds"},
        {"type": "Property", "value": True},
    ],
)
def test_aggregate_history_declines_ranges_with_other_rows(
    storage: TemporalStorage, odd: dict[str, Any]
) -> None:
    rows = [(TEMP, observed(1.0, "2026-01-01T00:00:00Z"))]
    rows.append((TEMP, {**odd, "observedAt": "2026-01-01T00:01:00Z"}))
    storage.append_history(DEFAULT_TENANT, "urn:h", [T], rows)
    assert (
        storage.aggregate_history(DEFAULT_TENANT, "urn:h", TEMP, None, None, None, distinct=False)
        is None
    )


def test_aggregate_history_of_an_empty_range_is_none(storage: TemporalStorage) -> None:
    storage.append_history(
        DEFAULT_TENANT, "urn:h", [T], [(TEMP, observed(1.0, "2026-01-01T00:00:00Z"))]
    )
    assert (
        storage.aggregate_history(DEFAULT_TENANT, "urn:h", TEMP, 0, 1000, None, distinct=False)
        is None
    )


def test_aggregate_history_follows_a_replaced_instance(storage: TemporalStorage) -> None:
    ids_ = storage.append_history(
        DEFAULT_TENANT, "urn:h", [T], [(TEMP, observed(1.0, "2026-01-01T00:00:00Z"))]
    )
    text = {"type": "Property", "value": "high", "observedAt": "2026-01-01T00:00:00Z"}
    assert storage.replace_history_instance(DEFAULT_TENANT, "urn:h", TEMP, ids_[0], text)
    args = (DEFAULT_TENANT, "urn:h", TEMP, None, None, None)
    assert storage.aggregate_history(*args, distinct=False) is None
    number = observed(4.0, "2026-01-01T00:00:00Z")
    assert storage.replace_history_instance(DEFAULT_TENANT, "urn:h", TEMP, ids_[0], number)
    summary = storage.aggregate_history(*args, distinct=False)
    assert summary is not None
    assert [(b.count, b.total) for b in summary.buckets] == [(1, 4.0)]


def test_aggregate_history_without_period_is_one_bucket_to_the_end(
    storage: TemporalStorage,
) -> None:
    rows = [(TEMP, observed(n, f"2026-01-01T00:0{n}:00Z")) for n in range(3)]
    storage.append_history(DEFAULT_TENANT, "urn:h", [T], rows)
    first = 1767225600000  # 2026-01-01T00:00:00Z
    summary = storage.aggregate_history(
        DEFAULT_TENANT, "urn:h", TEMP, None, first + 600_000, None, distinct=False
    )
    assert summary is not None
    assert (summary.origin_ms, summary.period_ms) == (first, 600_000)
    assert [(b.index, b.count, b.maximum, b.distinct) for b in summary.buckets] == [
        (0, 3, 2.0, None)
    ]


def test_scope_changes_are_history(storage: TemporalStorage) -> None:
    storage.insert(DEFAULT_TENANT, {**entity("urn:h"), "scope": ["/a"]})
    storage.update(DEFAULT_TENANT, {**entity("urn:h"), "scope": ["/a", "/b"]})
    storage.update(DEFAULT_TENANT, entity("urn:h"))
    rows = storage.history(DEFAULT_TENANT, "urn:h", HistoryScan(attrs=frozenset({SCOPE_IRI})))
    assert [row.instance["value"] for row in rows] == [["/a"], ["/a", "/b"], []]
    assert "deletedAt" in rows[2].instance


def test_update_returns_the_document_it_replaced(storage: Storage) -> None:
    storage.insert(DEFAULT_TENANT, entity("urn:a", temperature=1.0))
    previous = storage.update(DEFAULT_TENANT, entity("urn:a", temperature=2.0))
    assert previous["attrs"][TEMP][0]["value"] == 1.0
