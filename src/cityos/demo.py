"""Toyama demo data: the five official river gauges as NGSI-LD ``WaterObserved`` entities.

The gauges, their positions and their official thresholds come from the bundled
``toyama.json`` reference (see its ``certainty`` notes: positions are approximate).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from cityos.broker.context import ContextResolver
from cityos.broker.service import ContextBroker
from cityos.settings import Settings
from cityos.storage.base import DEFAULT_TENANT
from cityos.storage.sqlite import SqliteStorage

STATION_NAMES_EN = {
    "大川寺": "Daisenji",
    "大沢野大橋": "Osawano-Ohashi",
    "神通大橋": "Jinzu-Ohashi",
    "杉原橋": "Sugihara Bridge",
    "熊野橋": "Kumano Bridge",
}
RIVER_NAMES_EN = {
    "常願寺川": "Joganji River",
    "神通川": "Jinzu River",
    "井田川": "Ida River",
    "熊野川": "Kumano River",
}


def load_reference(name: str) -> Any:  # Any: JSON document
    """A reference data file bundled with the package (``cityos/data/reference``)."""
    text = resources.files("cityos").joinpath("data", "reference", name).read_text("utf-8")
    return json.loads(text)


def gauge_entities() -> list[dict[str, Any]]:
    """The river gauges of ``toyama.json`` as normalized NGSI-LD entities."""
    reference = load_reference("toyama.json")
    entities = []
    for number, gauge in enumerate(reference["river_gauges"], start=1):
        river_en = RIVER_NAMES_EN.get(gauge["river"], gauge["river"])
        entity: dict[str, Any] = {
            "id": f"urn:ngsi-ld:WaterObserved:toyama-gauge-{number:02d}",
            "type": "WaterObserved",
            "name": {
                "type": "LanguageProperty",
                "languageMap": {
                    "ja": f"{gauge['river']} {gauge['station']}",
                    "en": f"{river_en}, "
                    f"{STATION_NAMES_EN.get(gauge['station'], gauge['station'])} gauge",
                },
            },
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [gauge["lon"], gauge["lat"]]},
            },
            "river": {"type": "Property", "value": gauge["river"]},
            "evacuationDecisionLevel": {
                "type": "Property",
                "value": gauge["evacuation_decision_m"],
                "unitCode": "MTR",
            },
            "floodDangerLevel": {
                "type": "Property",
                "value": gauge["flood_danger_m"],
                "unitCode": "MTR",
            },
            "dataProvider": {"type": "Property", "value": "Toyama City demo data"},
        }
        entities.append(entity)
    return entities


async def seed_demo(settings: Settings) -> int:
    """Write the demo entities (idempotently: existing ones are replaced); return how many."""
    storage = SqliteStorage(settings.sqlite_path)
    try:
        broker = ContextBroker(storage)
        core = await ContextResolver(settings).resolve(None)
        items = [(entity, core.expand) for entity in gauge_entities()]
        result = broker.batch_upsert(DEFAULT_TENANT, items)
    finally:
        storage.close()
    if result.errors:
        raise RuntimeError(f"Demo data rejected: {result.errors}")
    return len(result.success)
