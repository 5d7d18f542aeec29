"""The device registry on real storage (SQLite file and PostgreSQL): devices and gateways
kept as entities, the in-memory cache, and its refresh rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cityos.broker.changes import ObservedStorage
from cityos.broker.context import CompiledContext
from cityos.broker.service import ContextBroker
from cityos.ingest.model import GatewayReception
from cityos.ingest.profiles import BUILTIN_PROFILES
from cityos.ingest.registry import DeviceRegistry, RegisteredDevice
from cityos.storage.base import DEFAULT_TENANT, Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

GAUGE = RegisteredDevice(
    dev_eui="70b3d57ed0000001",
    name="神通川 神通大橋",
    profile=BUILTIN_PROFILES["water-level"],
    location=(137.2018, 36.7124),
    owner="toyama-city",
    tags=("river", "jinzu"),
    parameters={"mounting_height_m": 6.5},
    target_entity_id="urn:ngsi-ld:WaterObserved:toyama-gauge-03",
)
TRACKER = RegisteredDevice("70b3d57ed0000002", "tracker 2", BUILTIN_PROFILES["gps-tracker"])


@pytest.fixture(params=["sqlite", "postgres"])
def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Storage]]:
    """Opens new connections to one database (as separate processes would)."""
    opened: list[Storage] = []
    if request.param == "sqlite":
        path = tmp_path / "registry.sqlite3"

        def open_one() -> Storage:
            opened.append(SqliteStorage(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("new_postgres_database")()
        PostgresStorage(url, upgrade=True).close()

        def open_one() -> Storage:
            opened.append(PostgresStorage(url))
            return opened[-1]

    yield open_one
    for storage in opened:
        storage.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registered_device_survives_a_restart(open_storage: Callable[[], Storage]) -> None:
    DeviceRegistry(ContextBroker(open_storage())).register_many([GAUGE, TRACKER])
    reloaded = DeviceRegistry(ContextBroker(open_storage()))
    assert reloaded.load() == 2
    assert reloaded.lookup(GAUGE.dev_eui) == GAUGE
    assert reloaded.lookup(TRACKER.dev_eui) == TRACKER


def test_device_entity_follows_the_smart_data_model(open_storage: Callable[[], Storage]) -> None:
    broker = ContextBroker(open_storage())
    DeviceRegistry(broker).register(GAUGE)
    context = CompiledContext()
    stored = broker.retrieve_entity(DEFAULT_TENANT, "urn:ngsi-ld:Device:70b3d57ed0000001")
    attrs = {context.compact(iri): instances[0] for iri, instances in stored["attrs"].items()}
    assert attrs["refDeviceModel"]["object"] == "urn:ngsi-ld:DeviceModel:water-level"
    assert attrs["controlledProperty"]["value"] == ["waterLevel"]
    assert attrs["owner"]["value"] == ["toyama-city"]
    assert attrs["location"]["value"] == {"type": "Point", "coordinates": [137.2018, 36.7124]}
    model = broker.retrieve_entity(DEFAULT_TENANT, "urn:ngsi-ld:DeviceModel:water-level")
    assert context.compact(model["type"][0]) == "DeviceModel"


def test_unknown_device_is_looked_up_at_most_once_per_retry_delay(
    open_storage: Callable[[], Storage],
) -> None:
    clock = FakeClock()
    worker = DeviceRegistry(ContextBroker(open_storage()), clock=clock, miss_retry_s=5)
    worker.load()
    assert worker.lookup(GAUGE.dev_eui) is None
    DeviceRegistry(ContextBroker(open_storage())).register(GAUGE)  # another process
    clock.now += 4.9
    assert worker.lookup(GAUGE.dev_eui) is None  # not asked again yet
    clock.now += 0.2
    assert worker.lookup(GAUGE.dev_eui) == GAUGE


def test_changes_through_the_broker_refresh_the_cache(open_storage: Callable[[], Storage]) -> None:
    storage = ObservedStorage(open_storage())
    broker = ContextBroker(storage)
    registry = DeviceRegistry(broker)
    storage.add_listener(registry.on_changes)
    registry.register(GAUGE)
    expand = CompiledContext().expand
    broker.append_attributes(
        DEFAULT_TENANT,
        GAUGE.entity_id,
        {"parameters": {"type": "JsonProperty", "json": {"mounting_height_m": 7.0}}},
        expand,
    )
    found = registry.lookup(GAUGE.dev_eui)
    assert found is not None and found.parameters == {"mounting_height_m": 7.0}
    broker.delete_entity(DEFAULT_TENANT, GAUGE.entity_id)
    assert registry.lookup(GAUGE.dev_eui) is None


def test_reregistering_keeps_measured_attributes(open_storage: Callable[[], Storage]) -> None:
    broker = ContextBroker(open_storage())
    registry = DeviceRegistry(broker)
    registry.register(GAUGE)
    expand = CompiledContext().expand
    broker.append_attributes(
        DEFAULT_TENANT,
        GAUGE.entity_id,
        {"batteryLevel": {"type": "Property", "value": 0.5}},
        expand,
    )
    registry.register(GAUGE)
    stored = broker.retrieve_entity(DEFAULT_TENANT, GAUGE.entity_id)
    assert expand("batteryLevel") in stored["attrs"]


def test_remove(open_storage: Callable[[], Storage]) -> None:
    registry = DeviceRegistry(ContextBroker(open_storage()))
    registry.register(GAUGE)
    assert registry.remove(GAUGE.dev_eui) is True
    assert registry.remove(GAUGE.dev_eui) is False
    assert DeviceRegistry(ContextBroker(open_storage())).load() == 0


def test_gateways_are_persisted_in_batches(open_storage: Callable[[], Storage]) -> None:
    registry = DeviceRegistry(ContextBroker(open_storage()))
    heard = (
        GatewayReception("gw-toyama-01", -90, 7.5, 36.70, 137.21, 12.0),
        GatewayReception("gw-toyama-02", -110, -3.0),
    )
    registry.note_gateways(heard, "2026-11-24T01:00:00.000Z")
    registry.note_gateways(heard[:1], "2026-11-24T01:05:00.000Z")
    assert registry.flush_gateways() == 2
    assert registry.flush_gateways() == 0
    reloaded = DeviceRegistry(ContextBroker(open_storage()))
    reloaded.load()
    first, second = reloaded.gateways()
    assert (first.gateway_id, first.last_seen, first.latitude) == (
        "gw-toyama-01",
        "2026-11-24T01:05:00.000Z",
        36.70,
    )
    assert (second.last_seen, second.latitude) == ("2026-11-24T01:00:00.000Z", None)


def test_device_with_unknown_profile_is_ignored(open_storage: Callable[[], Storage]) -> None:
    broker = ContextBroker(open_storage())
    DeviceRegistry(broker).register(GAUGE)
    narrower = DeviceRegistry(broker, profiles={"gps-tracker": BUILTIN_PROFILES["gps-tracker"]})
    assert narrower.load() == 0
