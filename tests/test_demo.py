"""The demo data: the five official Toyama river gauges, valid and served."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cityos.demo import gauge_entities, seed_demo
from cityos.settings import Settings
from cityos.storage.base import DEFAULT_TENANT
from cityos.storage.sqlite import SqliteStorage


def test_gauges_carry_official_thresholds_from_the_reference() -> None:
    gauges = {e["id"]: e for e in gauge_entities()}
    assert len(gauges) == 5
    jinzu = gauges["urn:ngsi-ld:WaterObserved:toyama-gauge-03"]
    assert jinzu["floodDangerLevel"]["value"] == 8.0
    assert jinzu["evacuationDecisionLevel"]["value"] == 7.5
    assert jinzu["name"]["languageMap"]["en"] == "Jinzu River, Jinzu-Ohashi gauge"


def test_seeding_twice_keeps_five_entities(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert asyncio.run(seed_demo(settings)) == 5
    assert asyncio.run(seed_demo(settings)) == 5
    storage = SqliteStorage(settings.sqlite_path)
    assert storage.count_all(DEFAULT_TENANT) == 5
    storage.close()
