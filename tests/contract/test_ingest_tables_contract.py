"""The ingestion tables' contract (``cityos.storage.ingest_tables``) on every backend:
uplink keys, dead letters, gateway hours, bulk entity writes, and that all of them
commit or roll back with the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from cityos.storage.base import EntityScan, HistoryScan, TemporalStorage
from cityos.storage.ingest_tables import DeadLetter, DeadLetterFilter, GatewayHour, IngestTables
from cityos.storage.memory import MemoryStorage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

T = "https://example.org/T"
LEVEL = "https://example.org/level"
LOC = "https://uri.etsi.org/ngsi-ld/location"


class Backend(TemporalStorage, IngestTables, Protocol):
    """What the ingestion pipeline needs of a storage backend."""


@pytest.fixture(scope="module")
def ingest_postgres_url(new_postgres_database: Callable[[], str]) -> str:
    url = new_postgres_database()
    PostgresStorage(url, upgrade=True).close()
    return url


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    store: Any  # Any: one of the three backends
    if request.param == "sqlite":
        store = SqliteStorage(tmp_path / "ingest.sqlite3")
    elif request.param == "postgres":
        url = request.getfixturevalue("ingest_postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE entities, entity_types, entity_attrs, entity_geometries, tenants, "
                "temporal, temporal_entities, temporal_attrs, ingest_uplink_keys, "
                "ingest_dead_letters, ingest_gateway_hours RESTART IDENTITY"
            )
        store = PostgresStorage(url)
    else:
        store = MemoryStorage()
    yield store
    store.close()


def letter(reason: str = "unknown-device", **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "received_ms": 1_000,
        "transport": "mqtt",
        "network": "chirpstack",
        "address": "application/a/device/0102030405060708/event/up",
        "reason": reason,
        "detail": "No device",
        "body": b'{"x": 1}',
        "body_size": 8,
        "dev_eui": "0102030405060708",
        "dedup_key": None,
        "last_attempt_ms": 1_000,
    }
    values.update(fields)
    return DeadLetter(**values)


def reading(entity_id: str, value: float, at: str) -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": [T],
        "createdAt": "2026-01-01T00:00:00.000Z",
        "modifiedAt": at,
        "attrs": {LEVEL: [{"type": "Property", "value": value, "observedAt": at}]},
    }


# -- uplink keys ------------------------------------------------------------------------


def test_claim_returns_only_keys_not_stored_before(backend: Backend) -> None:
    assert backend.claim_uplink_keys(["a", "b"], 1) == {"a", "b"}

    assert backend.claim_uplink_keys(["b", "c", "c"], 2) == {"c"}
    assert backend.known_uplink_keys(["a", "c", "z"]) == {"a", "c"}


def test_claim_in_a_rolled_back_transaction_is_not_kept(backend: Backend) -> None:
    with pytest.raises(RuntimeError), backend.transaction():
        backend.claim_uplink_keys(["k"], 1)
        raise RuntimeError("crash before commit")

    assert backend.known_uplink_keys(["k"]) == set()


def test_expire_forgets_keys_stored_before_the_cut(backend: Backend) -> None:
    backend.claim_uplink_keys(["old"], 100)
    backend.claim_uplink_keys(["new"], 200)

    assert backend.expire_uplink_keys(150) == 1
    assert backend.known_uplink_keys(["old", "new"]) == {"new"}


# -- dead letters -----------------------------------------------------------------------


def test_dead_letters_are_listed_newest_first_with_their_fields(backend: Backend) -> None:
    backend.add_dead_letters([letter("invalid-json", dev_eui=None), letter(body=None)])

    listed = backend.list_dead_letters(DeadLetterFilter())

    assert [(x.reason, x.body, x.attempts) for x in listed] == [
        ("unknown-device", None, 1),
        ("invalid-json", b'{"x": 1}', 1),
    ]
    assert listed[0].id > listed[1].id
    assert not listed[0].replayable and listed[1].replayable


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        (DeadLetterFilter(reason="codec-error"), ["codec-error"]),
        (DeadLetterFilter(dev_eui="AAAAAAAAAAAAAAAA"), ["unknown-fport"]),
        (DeadLetterFilter(since_ms=5_000), ["codec-error"]),
        (DeadLetterFilter(limit=1), ["codec-error"]),
    ],
)
def test_dead_letters_filter(
    backend: Backend, which: DeadLetterFilter, expected: list[str]
) -> None:
    backend.add_dead_letters(
        [
            letter("unknown-fport", dev_eui="aaaaaaaaaaaaaaaa"),
            letter("codec-error", last_attempt_ms=6_000),
        ]
    )

    assert [x.reason for x in backend.list_dead_letters(which)] == expected


def test_same_uplink_failing_again_updates_its_letter(backend: Backend) -> None:
    backend.add_dead_letters([letter("unknown-device", dedup_key="u1")])

    backend.add_dead_letters([letter("codec-error", dedup_key="u1", last_attempt_ms=9_000)])

    (stored,) = backend.list_dead_letters(DeadLetterFilter())
    assert (stored.reason, stored.attempts, stored.last_attempt_ms) == ("codec-error", 2, 9_000)


def test_removed_letters_are_gone_and_counted(backend: Backend) -> None:
    backend.add_dead_letters([letter(), letter(), letter("oversize")])
    ids = [x.id for x in backend.list_dead_letters(DeadLetterFilter(reason="unknown-device"))]

    assert backend.remove_dead_letters([*ids, 999_999]) == 2
    assert backend.dead_letter_counts() == {"oversize": 1}


def test_expire_deletes_letters_last_tried_before_the_cut(backend: Backend) -> None:
    backend.add_dead_letters(
        [letter(last_attempt_ms=1_000), letter("oversize", last_attempt_ms=5_000)]
    )

    assert backend.expire_dead_letters(5_000) == 1
    assert backend.dead_letter_counts() == {"oversize": 1}


def test_dead_letter_with_nul_in_text_fields_is_kept(backend: Backend) -> None:
    backend.add_dead_letters([letter(address="topic/\x00/x", detail="bad \x00")])

    (stored,) = backend.list_dead_letters(DeadLetterFilter())
    assert stored.address.startswith("topic/")


# -- gateway hours ----------------------------------------------------------------------


def test_gateway_hours_merge_counts(backend: Backend) -> None:
    backend.add_gateway_hours([GatewayHour("gw", 3_600_000, 2, {-90: 2}, {10: 1, 12: 1})])

    backend.add_gateway_hours(
        [GatewayHour("gw", 3_600_000, 1, {-90: 1}, {12: 1}), GatewayHour("gw2", 0, 1, {-70: 1}, {})]
    )

    hours = {(h.gateway_id, h.hour_ms): h for h in backend.gateway_hours()}
    assert hours[("gw", 3_600_000)] == GatewayHour("gw", 3_600_000, 3, {-90: 3}, {10: 1, 12: 2})
    assert [h.gateway_id for h in backend.gateway_hours(since_ms=1)] == ["gw"]


# -- bulk entity writes -------------------------------------------------------------------


def test_write_many_inserts_and_updates_with_history_per_pair(backend: Backend) -> None:
    first = reading("urn:e", 1.0, "2026-01-01T00:00:01.000Z")
    second = reading("urn:e", 2.0, "2026-01-01T00:00:02.000Z")
    third = reading("urn:e", 3.0, "2026-01-01T00:00:03.000Z")

    backend.write_many("", [(None, first), (first, second), (second, third)])

    assert backend.get("", "urn:e") == third
    rows = backend.history("", "urn:e", HistoryScan(attrs=frozenset({LEVEL})))
    assert [row.instance["value"] for row in rows] == [1.0, 2.0, 3.0]


def test_write_many_observation_at_a_stored_time_replaces_it(backend: Backend) -> None:
    first = reading("urn:e", 1.0, "2026-01-01T00:00:01.000Z")
    backend.insert("", first)
    again = reading("urn:e", 5.0, "2026-01-01T00:00:01.000Z")

    backend.write_many("", [(first, again)])

    rows = backend.history("", "urn:e", HistoryScan(attrs=frozenset({LEVEL})))
    assert [row.instance["value"] for row in rows] == [5.0]


def test_write_many_keeps_the_geo_index_of_a_moved_entity(backend: Backend) -> None:
    first = reading("urn:e", 1.0, "2026-01-01T00:00:01.000Z")
    first["attrs"][LOC] = [
        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 1]}}
    ]
    backend.insert("", first)
    moved = reading("urn:e", 1.0, "2026-01-01T00:00:02.000Z")
    moved["attrs"][LOC] = [
        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [50, 50]}}
    ]

    backend.write_many("", [(first, moved)])

    found = [
        e["id"] for _, e in backend.scan("", EntityScan(geo_attr=LOC, geo_bbox=(49, 49, 51, 51)))
    ]
    assert found == ["urn:e"]
    assert list(backend.scan("", EntityScan(geo_attr=LOC, geo_bbox=(0, 0, 2, 2)))) == []


def test_write_many_rolls_back_with_the_caller(backend: Backend) -> None:
    first = reading("urn:e", 1.0, "2026-01-01T00:00:01.000Z")

    with pytest.raises(RuntimeError), backend.transaction():
        backend.write_many("", [(None, first)])
        backend.claim_uplink_keys(["k"], 1)
        raise RuntimeError("crash before commit")

    assert backend.get("", "urn:e") is None
    assert backend.history("", "urn:e", HistoryScan()) == []
    assert backend.known_uplink_keys(["k"]) == set()


def test_duty_is_held_by_the_first_claimant(backend: Backend) -> None:
    assert backend.claim_duty("device-health")
    assert backend.claim_duty("device-health")


def test_postgres_duty_goes_to_one_process_until_it_closes(ingest_postgres_url: str) -> None:
    first, second = PostgresStorage(ingest_postgres_url), PostgresStorage(ingest_postgres_url)
    try:
        assert first.claim_duty("device-health")
        assert not second.claim_duty("device-health")
        first.close()
        assert second.claim_duty("device-health")
    finally:
        second.close()
