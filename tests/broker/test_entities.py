"""Parsing NGSI-LD payloads into the stored form: types, names, NGSI-LD null, fragments."""

from __future__ import annotations

import pytest

from cityos.broker.context import CompiledContext
from cityos.broker.entities import (
    NULL_URI,
    check_attribute_iri,
    check_attribute_name,
    is_null_value,
    parse_fragment,
    parse_instance,
    parse_types,
)
from cityos.core.errors import BadRequestData

NOW = "2026-01-01T00:00:00.000Z"
CORE = CompiledContext()
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"


def test_a_type_the_context_maps_to_a_keyword_is_rejected() -> None:
    with pytest.raises(BadRequestData):
        parse_types("type", CORE.expand)


def test_a_plain_type_name_expands_with_the_vocabulary() -> None:
    assert parse_types(["Building", "Building"], CORE.expand) == [DEFAULT + "Building"]


@pytest.mark.parametrize("name", ["@invalid", "", "a b", "a(b)"])
def test_invalid_attribute_names_are_rejected(name: str) -> None:
    with pytest.raises(BadRequestData):
        check_attribute_name(name)


@pytest.mark.parametrize("name", ["scope", "createdAt", "id", "type"])
def test_entity_members_are_not_attributes_in_a_url(name: str) -> None:
    with pytest.raises(BadRequestData):
        check_attribute_iri(name, CORE.expand(name))


@pytest.mark.parametrize(
    "raw",
    [
        None,
        NULL_URI,
        {"type": "Property", "value": NULL_URI},
        {"type": "Relationship", "object": NULL_URI},
        {"type": "GeoProperty", "value": NULL_URI, "datasetId": "urn:d:1"},
        {"type": "LanguageProperty", "languageMap": {"@none": NULL_URI}},
        {"type": "VocabProperty", "vocab": NULL_URI},
        {"type": "JsonProperty", "json": NULL_URI},
        {"type": "ListProperty", "valueList": [NULL_URI]},
        {"type": "ListRelationship", "objectList": [{"object": NULL_URI}]},
    ],
)
def test_ngsild_null_in_every_attribute_form(raw: object) -> None:
    assert is_null_value(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        {"type": "Property", "value": None},
        {"type": "LanguageProperty", "languageMap": {"en": NULL_URI, "fr": "x"}},
    ],
)
def test_values_that_are_not_ngsild_null(raw: object) -> None:
    assert not is_null_value(raw)


def test_json_null_is_not_a_property_value() -> None:
    with pytest.raises(BadRequestData):
        parse_instance(
            "a", {"type": "Property", "value": None}, CORE.expand, NOW, entity_id="urn:e"
        )


def test_a_fragment_without_value_keeps_only_its_members() -> None:
    fragment = parse_fragment(
        "speed",
        {"observedAt": "2026-01-01T00:00:00Z", "source": NULL_URI},
        CORE.expand,
        NOW,
        entity_id="urn:e",
    )
    assert "type" not in fragment
    assert fragment["observedAt"] == "2026-01-01T00:00:00Z"
    assert fragment[DEFAULT + "source"] is None


def test_a_fragment_with_a_value_is_a_whole_instance() -> None:
    fragment = parse_fragment(
        "speed", {"type": "Relationship", "object": "urn:x"}, CORE.expand, NOW, entity_id="urn:e"
    )
    assert fragment["type"] == "Relationship"
    assert fragment["object"] == "urn:x"


def test_an_empty_fragment_is_rejected() -> None:
    with pytest.raises(BadRequestData):
        parse_fragment("speed", {}, CORE.expand, NOW, entity_id="urn:e")
