"""SubscriptionRegistry: which subscriptions a change is matched against."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cityos.broker.context import CompiledContext, ContextResolver
from cityos.broker.subscriptions import Subscription, SubscriptionRegistry, compile_rules
from cityos.core.timeutil import now_utc
from cityos.settings import Settings

CORE: CompiledContext = asyncio.run(ContextResolver(Settings()).resolve(None))
SENSOR = CORE.expand("Sensor")
GAUGE = CORE.expand("Gauge")


def make(sub_id: str, entities: list[dict[str, Any]]) -> Subscription:
    document = {
        "entities": entities,
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
    }
    return Subscription(
        tenant="",
        id=sub_id,
        document=document,
        context_value=None,
        jsonld_context=None,
        created_at="",
        modified_at="",
        rules=compile_rules(document, CORE, now_utc()),
        ctx=CORE,
        notify_ctx=CORE,
    )


@pytest.fixture
def registry() -> SubscriptionRegistry:
    registry = SubscriptionRegistry()
    registry.put(make("urn:s:one", [{"id": "urn:e:1", "type": "Sensor"}]))
    registry.put(
        make("urn:s:two", [{"id": "urn:e:2", "type": "Sensor"}, {"id": "urn:e:3", "type": "Gauge"}])
    )
    registry.put(make("urn:s:type", [{"type": "Sensor"}]))
    return registry


@pytest.mark.parametrize(
    ("entity_id", "types", "expected"),
    [
        ("urn:e:1", [SENSOR], {"urn:s:one", "urn:s:type"}),
        ("urn:e:2", [SENSOR], {"urn:s:two", "urn:s:type"}),
        ("urn:e:3", [GAUGE], {"urn:s:two"}),
        ("urn:e:9", [SENSOR], {"urn:s:type"}),
    ],
)
def test_subscriptions_by_entity_id_are_candidates_only_for_their_ids(
    registry: SubscriptionRegistry, entity_id: str, types: list[str], expected: set[str]
) -> None:
    assert {s.id for s in registry.candidates("", types, entity_id)} == expected


def test_removed_subscription_is_no_candidate(registry: SubscriptionRegistry) -> None:
    registry.remove("", "urn:s:one")
    assert {s.id for s in registry.candidates("", [SENSOR], "urn:e:1")} == {"urn:s:type"}
