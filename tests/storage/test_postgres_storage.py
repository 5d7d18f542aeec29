"""What the PostgreSQL backend does beyond the shared contract (tests/contract)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson
import psycopg
import pytest

from cityos.core.errors import BadRequestData
from cityos.storage.base import DEFAULT_TENANT, EntityScan
from cityos.storage.postgres import PostgresStorage

LOC = "https://uri.etsi.org/ngsi-ld/location"
TEMP = "https://example.org/temperature"
T = "https://example.org/T"


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
            "temporal, temporal_entities, temporal_attrs "
            "RESTART IDENTITY"
        )
    backend = PostgresStorage(url)
    yield backend
    backend.close()


def sensor(entity_id: str, lon: float, temperature: float) -> dict[str, object]:
    return {
        "id": entity_id,
        "type": [T],
        "attrs": {
            TEMP: [{"type": "Property", "value": temperature}],
            LOC: [{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, 36.7]}}],
        },
    }


def geometry_row_ids(url: str, entity_id: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT g.ctid::text FROM entity_geometries g JOIN entities e ON e.pk = g.pk "
            "WHERE e.id = %s",
            (entity_id,),
        ).fetchall()
    return [row[0] for row in rows]


def test_update_of_a_value_leaves_geometry_rows_untouched(
    storage: PostgresStorage, url: str
) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:keep-geo", 137.2, 1.0))
    before = geometry_row_ids(url, "urn:keep-geo")
    storage.update(DEFAULT_TENANT, sensor("urn:keep-geo", 137.2, 2.0))
    assert geometry_row_ids(url, "urn:keep-geo") == before


def test_update_of_a_geometry_moves_the_entity_between_boxes(storage: PostgresStorage) -> None:
    storage.insert(DEFAULT_TENANT, sensor("urn:moving", 137.2, 1.0))
    storage.update(DEFAULT_TENANT, sensor("urn:moving", 139.5, 1.0))
    near_old = EntityScan(geo_attr=LOC, geo_bbox=(137.1, 36.6, 137.3, 36.8))
    near_new = EntityScan(geo_attr=LOC, geo_bbox=(139.4, 36.6, 139.6, 36.8))
    assert [e["id"] for _, e in storage.scan(DEFAULT_TENANT, near_old)] == []
    assert [e["id"] for _, e in storage.scan(DEFAULT_TENANT, near_new)] == ["urn:moving"]


def test_three_dimensional_positions_are_stored(storage: PostgresStorage) -> None:
    entity = sensor("urn:3d", 137.2, 1.0)
    entity["attrs"][LOC][0]["value"]["coordinates"] = [137.2, 36.7, 12.5]  # type: ignore[index]
    storage.insert(DEFAULT_TENANT, entity)
    assert storage.get(DEFAULT_TENANT, "urn:3d") == entity


def test_a_nul_character_in_an_id_is_refused_and_the_transaction_goes_on(
    storage: PostgresStorage,
) -> None:
    with storage.transaction():
        with pytest.raises(BadRequestData, match="U\\+0000"):
            storage.insert(DEFAULT_TENANT, sensor("urn:bad\x00id", 137.2, 1.0))
        storage.insert(DEFAULT_TENANT, sensor("urn:after-nul", 137.2, 1.0))
    assert storage.get(DEFAULT_TENANT, "urn:after-nul") is not None


def test_a_nul_character_in_a_value_round_trips(storage: PostgresStorage) -> None:
    entity = sensor("urn:nul-value", 137.2, 1.0)
    entity["attrs"][TEMP][0]["value"] = "a\x00b"  # type: ignore[index]
    storage.insert(DEFAULT_TENANT, entity)
    assert storage.get(DEFAULT_TENANT, "urn:nul-value") == entity


def test_an_unreachable_server_raises_the_drivers_reason() -> None:
    with pytest.raises(psycopg.OperationalError):
        PostgresStorage("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2")


def observed(value: float, at: str) -> tuple[str, dict[str, object]]:
    return TEMP, {"type": "Property", "value": value, "observedAt": at}


def partition_of_rows(url: str) -> dict[float, str]:
    """Which partition holds each history row, by the row's value."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tableoid::regclass::text, doc FROM temporal").fetchall()
    return {orjson.loads(doc)["value"]: name for name, doc in rows}


def test_history_rows_land_in_the_partition_of_their_month(
    storage: PostgresStorage, url: str
) -> None:
    storage.append_history(
        DEFAULT_TENANT,
        "urn:h",
        [T],
        [observed(1, "2031-01-31T23:59:59.999Z"), observed(2, "2031-02-01T00:00:00Z")],
    )
    assert partition_of_rows(url) == {1: "temporal_y2031m01", 2: "temporal_y2031m02"}


def test_a_month_without_partition_is_created_inside_an_open_transaction(
    storage: PostgresStorage, url: str
) -> None:
    # The transaction holds the history table when the second month first appears:
    # creating its partition must not wait for the transaction (it would wait forever).
    with storage.transaction():
        storage.append_history(DEFAULT_TENANT, "urn:h", [T], [observed(1, "2033-03-01T00:00:00Z")])
        storage.append_history(DEFAULT_TENANT, "urn:h", [T], [observed(2, "2033-04-01T00:00:00Z")])
    assert partition_of_rows(url) == {1: "temporal_y2033m03", 2: "temporal_y2033m04"}


def test_a_second_process_finds_the_partitions_of_the_first(
    storage: PostgresStorage, url: str
) -> None:
    storage.append_history(DEFAULT_TENANT, "urn:h", [T], [observed(1, "2035-06-01T00:00:00Z")])
    other = PostgresStorage(url)
    try:
        other.append_history(DEFAULT_TENANT, "urn:h", [T], [observed(2, "2035-06-02T00:00:00Z")])
    finally:
        other.close()
    assert set(partition_of_rows(url).values()) == {"temporal_y2035m06"}


def test_a_nul_character_in_a_dataset_id_is_refused(storage: PostgresStorage) -> None:
    attr, instance = observed(1, "2031-01-01T00:00:00Z")
    with pytest.raises(BadRequestData, match="U\\+0000"):
        storage.append_history(
            DEFAULT_TENANT, "urn:h", [T], [(attr, {**instance, "datasetId": "urn:a\x00"})]
        )
