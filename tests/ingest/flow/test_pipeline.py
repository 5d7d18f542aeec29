"""The pipeline on a real SQLite file with the real registry, parser and codecs: codec
failures and time-outs become dead letters and the batch goes on; a batch holding one
message whose data cannot be written stores the others; silent devices raise Alerts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cityos.broker.bulk_write import ObservationWriter
from cityos.broker.changes import ObservedStorage
from cityos.broker.context import CompiledContext
from cityos.broker.service import ContextBroker
from cityos.core.timeutil import datetime_ms
from cityos.ingest.codecs.javascript import JavaScriptCodec
from cityos.ingest.health import HealthMonitor, HealthReport, alert_id
from cityos.ingest.model import RawMessage
from cityos.ingest.networks import parse_event
from cityos.ingest.pipeline import Pipeline
from cityos.ingest.profiles import BUILTIN_PROFILES, AttributeMapping, DeviceProfile
from cityos.ingest.registry import DeviceRegistry, RegisteredDevice
from cityos.storage.ingest_tables import DeadLetterFilter
from cityos.storage.sqlite import SqliteStorage
from tests.ingest.flow.conftest import chirpstack_up, new_dev_eui, water_level_payload

LOOPING = "function decodeUplink(input) { while (true) {} }"
THROWING = "function decodeUplink(input) { throw new Error('bad battery byte'); }"
# Passes the profile (a GeoJSON-looking value) but is no geometry: the write refuses it.
NOWHERE = (
    'function decodeUplink(input) { return {data: {pos: {type: "Point", coordinates: "x"}}}; }'
)


def _js_profile(
    name: str, source: str, mappings: tuple[AttributeMapping, ...] = ()
) -> DeviceProfile:
    return DeviceProfile(
        name=name,
        codec=JavaScriptCodec(source, name=name, time_limit_s=0.05),
        expected_interval_s=600,
        entity_type="DeviceMeasurement",
        mappings=mappings or (AttributeMapping("numValue", "1"),),
    )


PROFILES = {
    **BUILTIN_PROFILES,
    "looping": _js_profile("looping", LOOPING),
    "throwing": _js_profile("throwing", THROWING),
    "nowhere": _js_profile(
        "nowhere", NOWHERE, (AttributeMapping("location", "pos", on_device=True),)
    ),
}


@dataclass
class Setup:
    storage: SqliteStorage
    broker: ContextBroker
    registry: DeviceRegistry
    pipeline: Pipeline
    expand: Any


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    storage = SqliteStorage(tmp_path / "pipeline.sqlite3")
    observed = ObservedStorage(storage)
    broker = ContextBroker(observed)
    expand = CompiledContext().expand
    registry = DeviceRegistry(broker, expand=expand, profiles=PROFILES)
    observed.add_listener(registry.on_changes)
    writer = ObservationWriter(
        observed, storage, expand, cache_size=1000, changed_elsewhere=storage.changed_elsewhere
    )
    observed.add_listener(writer.on_changes)
    pipeline = Pipeline(
        storage=observed, tables=storage, writer=writer, registry=registry, parse=parse_event
    )
    yield Setup(storage, broker, registry, pipeline, expand)
    storage.close()


def _register(setup: Setup, profile: str, parameters: dict[str, Any] | None = None) -> str:
    dev_eui = new_dev_eui()
    setup.registry.register(
        RegisteredDevice(dev_eui, dev_eui, PROFILES[profile], parameters=parameters or {})
    )
    return dev_eui


def _raw(dev_eui: str, payload: bytes = b"\x01", **fields: Any) -> RawMessage:
    body = chirpstack_up(dev_eui, payload, **fields)
    return RawMessage(
        "mqtt",
        "chirpstack",
        f"application/app/device/{dev_eui}/event/up",
        json.dumps(body).encode(),
        None,
        0,
    )


@pytest.mark.parametrize(
    ("profile", "reason"), [("looping", "codec-timeout"), ("throwing", "codec-error")]
)
def test_codec_failure_is_dead_lettered_and_the_batch_goes_on(
    setup: Setup, profile: str, reason: str
) -> None:
    bad = _register(setup, profile)
    good = _register(setup, "water-level", {"mounting_height_m": 5.0})

    outcomes = setup.pipeline.process([_raw(bad), _raw(good, water_level_payload(1.0))])

    assert [o.status for o in outcomes] == ["rejected", "stored"]
    assert outcomes[0].reason == reason
    (letter,) = setup.storage.list_dead_letters(DeadLetterFilter(dev_eui=bad))
    assert letter.reason == reason and letter.replayable
    assert setup.storage.get("", f"urn:ngsi-ld:WaterObserved:{good}") is not None


def test_message_whose_data_cannot_be_written_does_not_sink_its_batch(setup: Setup) -> None:
    bad = _register(setup, "nowhere")
    good = _register(setup, "water-level", {"mounting_height_m": 5.0})

    outcomes = setup.pipeline.process([_raw(bad), _raw(good, water_level_payload(1.0))])

    assert [(o.status, o.reason) for o in outcomes] == [
        ("rejected", "mapping-error"),
        ("stored", None),
    ]
    assert setup.pipeline.stats.batch_failures == 1


def test_two_uplinks_of_one_device_in_a_batch_both_reach_history(setup: Setup) -> None:
    dev_eui = _register(setup, "water-level", {"mounting_height_m": 5.0})
    first = _raw(dev_eui, water_level_payload(1.0), f_cnt=1, at="2026-11-24T01:00:00.000Z")
    second = _raw(dev_eui, water_level_payload(2.0), f_cnt=2, at="2026-11-24T01:10:00.000Z")

    setup.pipeline.process([first, second])

    from cityos.storage.base import HistoryScan

    iri = setup.expand("waterLevel")
    rows = setup.storage.history(
        "", f"urn:ngsi-ld:WaterObserved:{dev_eui}", HistoryScan(attrs=frozenset({iri}))
    )
    assert [row.instance["value"] for row in rows] == [4.0, 3.0]


# -- device health ------------------------------------------------------------------------


def _monitor(setup: Setup, now_iso: str) -> HealthMonitor:
    return HealthMonitor(
        setup.broker,
        setup.registry,
        setup.storage,
        setup.expand,
        clock_ms=lambda: datetime_ms(now_iso),
    )


def _alert(setup: Setup, dev_eui: str) -> dict[str, Any] | None:
    entity = setup.storage.get("", alert_id(dev_eui))
    if entity is None:
        return None
    return {iri.rsplit("/", 1)[-1]: instances[0] for iri, instances in entity["attrs"].items()}


def test_device_silent_for_three_intervals_raises_an_alert(setup: Setup) -> None:
    dev_eui = _register(setup, "water-level", {"mounting_height_m": 5.0})
    setup.pipeline.process([_raw(dev_eui, water_level_payload(1.0), at="2026-11-24T01:00:00.000Z")])

    report = _monitor(setup, "2026-11-24T01:31:00.000Z").check()  # > 3 x 10 min

    assert dev_eui in report.issued
    alert = _alert(setup, dev_eui)
    assert alert is not None and "validTo" not in alert
    assert set(alert["description"]["languageMap"]) == {"ja", "en"}
    device = setup.storage.get("", f"urn:ngsi-ld:Device:{dev_eui}")
    assert device is not None
    assert device["attrs"][setup.expand("deviceState")][0]["value"] == "silent"


def test_device_within_three_intervals_raises_nothing(setup: Setup) -> None:
    dev_eui = _register(setup, "water-level", {"mounting_height_m": 5.0})
    setup.pipeline.process([_raw(dev_eui, water_level_payload(1.0), at="2026-11-24T01:00:00.000Z")])

    report = _monitor(setup, "2026-11-24T01:29:00.000Z").check()

    assert dev_eui not in report.issued
    assert _alert(setup, dev_eui) is None


def test_alert_is_cleared_when_the_device_speaks_again(setup: Setup) -> None:
    dev_eui = _register(setup, "water-level", {"mounting_height_m": 5.0})
    setup.pipeline.process([_raw(dev_eui, water_level_payload(1.0), at="2026-11-24T01:00:00.000Z")])
    monitor = _monitor(setup, "2026-11-24T02:00:00.000Z")
    monitor.check()
    setup.pipeline.process(
        [_raw(dev_eui, water_level_payload(1.0), f_cnt=2, at="2026-11-24T02:05:00.000Z")]
    )

    report = monitor.check()

    assert report.cleared == [dev_eui]
    alert = _alert(setup, dev_eui)
    assert alert is not None and alert["validTo"]["value"] == "2026-11-24T02:05:00.000Z"


def test_periodic_check_reads_devices_in_steps_with_the_same_verdict(setup: Setup) -> None:
    quiet, recent = (_register(setup, "water-level", {"mounting_height_m": 5.0}) for _ in "ab")
    setup.pipeline.process([_raw(quiet, water_level_payload(1.0), at="2026-11-24T01:00:00.000Z")])
    setup.pipeline.process([_raw(recent, water_level_payload(1.0), at="2026-11-24T01:30:00.000Z")])

    report = asyncio.run(_monitor(setup, "2026-11-24T01:31:00.000Z").check_in_steps(step=1))

    assert (report.checked, report.issued) == (2, [quiet])
    assert _alert(setup, quiet) is not None and _alert(setup, recent) is None


def test_device_speaking_during_a_periodic_check_is_not_taken_for_silent(setup: Setup) -> None:
    first, second = sorted(
        _register(setup, "water-level", {"mounting_height_m": 5.0}) for _ in "ab"
    )
    for dev_eui in (first, second):
        setup.pipeline.process(
            [_raw(dev_eui, water_level_payload(1.0), at="2026-11-24T01:00:00.000Z")]
        )
    monitor = _monitor(setup, "2026-11-24T01:31:00.000Z")

    async def check_while_first_speaks() -> HealthReport:
        check = asyncio.create_task(monitor.check_in_steps(step=1))
        await asyncio.sleep(0)  # the check reads the first device (silent) and yields
        setup.pipeline.process(
            [_raw(first, water_level_payload(1.0), f_cnt=2, at="2026-11-24T01:30:59.000Z")]
        )
        monitor.note_seen({first}, "2026-11-24T01:30:59.000Z")  # as the runtime does
        return await check

    report = asyncio.run(check_while_first_speaks())

    assert report.issued == [second]
    assert _alert(setup, first) is None


def test_entity_written_by_another_process_is_not_overwritten_from_the_cache(
    setup: Setup, tmp_path: Path
) -> None:
    dev_eui = _register(setup, "water-level", {"mounting_height_m": 5.0})
    setup.pipeline.process([_raw(dev_eui, water_level_payload(1.0), f_cnt=1)])
    other = SqliteStorage(tmp_path / "pipeline.sqlite3")  # e.g. `cityos devices import`
    device_id = f"urn:ngsi-ld:Device:{dev_eui}"
    device = other.get("", device_id)
    assert device is not None
    device["attrs"]["https://example.org/owner"] = [{"type": "Property", "value": "city"}]
    other.update("", device)
    other.close()

    setup.pipeline.process(
        [_raw(dev_eui, water_level_payload(2.0), f_cnt=2, at="2026-11-24T02:00:00.000Z")]
    )

    stored = setup.storage.get("", device_id)
    assert stored is not None
    assert "https://example.org/owner" in stored["attrs"]
