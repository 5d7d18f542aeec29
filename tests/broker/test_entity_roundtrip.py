"""Property-based: any valid normalized entity survives parse -> store -> render unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityos.broker.context import CompiledContext, ContextResolver
from cityos.broker.entities import ENTITY_RESERVED, INSTANCE_RESERVED, parse_entity
from cityos.broker.representation import RenderOptions, render_entity
from cityos.settings import Settings
from cityos.storage.base import Storage
from cityos.storage.memory import MemoryStorage
from cityos.storage.postgres import PostgresStorage

CORE: CompiledContext = asyncio.run(ContextResolver(Settings()).resolve(None))
NOW = "2026-11-24T12:00:00.000Z"

names = st.from_regex(r"[a-z][a-zA-Z0-9]{0,11}", fullmatch=True).filter(
    lambda n: (
        n not in ENTITY_RESERVED
        and n not in INSTANCE_RESERVED
        and CORE.compact(CORE.expand(n)) == n
    )
)
scalars = st.one_of(
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    st.booleans(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
uris = st.from_regex(r"urn:ngsi-ld:[A-Z][a-z]{1,8}:[a-z0-9]{1,8}", fullmatch=True)
points = st.tuples(st.floats(-180, 180, allow_nan=False), st.floats(-90, 90, allow_nan=False)).map(
    lambda c: {"type": "Point", "coordinates": [c[0], c[1]]}
)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z")


@st.composite
def instances(draw: st.DrawFn, *, depth: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Property", "Relationship", "GeoProperty", "LanguageProperty"]))
    instance: dict[str, Any] = {"type": kind}
    if kind == "Property":
        value = draw(json_values)
        if isinstance(value, dict) and value.get("type") is not None:
            value = {"v": value}
        instance["value"] = value
    elif kind == "Relationship":
        instance["object"] = draw(uris)
    elif kind == "GeoProperty":
        instance["value"] = draw(points)
    else:
        instance["languageMap"] = draw(
            st.dictionaries(st.sampled_from(["ja", "en", "fr"]), st.text(max_size=10), min_size=1)
        )
    if draw(st.booleans()):
        instance["observedAt"] = draw(instants)
    if kind == "Property" and draw(st.booleans()):
        instance["unitCode"] = draw(st.sampled_from(["MTR", "CEL", "P1"]))
    if depth == 0:
        for sub_name in draw(st.lists(names, max_size=2, unique=True)):
            instance[sub_name] = draw(instances(depth=1))
    return instance


@st.composite
def entities(draw: st.DrawFn) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": draw(uris),
        "type": draw(st.sampled_from(["WaterObserved", "Device", "CityWork"])),
    }
    for name in draw(st.lists(names, max_size=5, unique=True)):
        entity[name] = draw(instances())
    return entity


@pytest.fixture(scope="module", params=["memory", "postgres"])
def roundtrip_storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """One backend for all examples (hypothesis reuses fixtures across examples)."""
    storage: Storage
    if request.param == "postgres":
        url = request.getfixturevalue("new_postgres_database")()
        storage = PostgresStorage(url, upgrade=True)
    else:
        storage = MemoryStorage()
    yield storage
    storage.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entity=entities())
def test_normalized_entity_round_trips_through_storage(
    roundtrip_storage: Storage, entity: dict[str, Any]
) -> None:
    stored = parse_entity(entity, CORE.expand, NOW)
    storage = roundtrip_storage
    storage.delete("", entity["id"])
    storage.insert("", stored)
    fetched = storage.get("", entity["id"])
    assert fetched is not None
    assert render_entity(fetched, CORE.compact, RenderOptions()) == entity


@settings(max_examples=60, deadline=None)
@given(entities())
def test_key_values_keeps_every_attribute(entity: dict[str, Any]) -> None:
    stored = parse_entity(entity, CORE.expand, NOW)
    simplified = render_entity(stored, CORE.compact, RenderOptions(format="keyValues"))
    assert set(simplified) == set(entity)
