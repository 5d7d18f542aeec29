"""The stored form of an NGSI-LD entity, shared by the broker, its query evaluators and storage.

An entity is kept *normalized* with every attribute name and type **expanded to its
full IRI**, so that what is stored does not depend on the @context a client used.
Values themselves are kept as the client sent them (JSON), except ``vocab`` values,
which are expanded IRIs.

Stored entity (a ``dict``, serialised with orjson)::

    {
      "id": "urn:ngsi-ld:WaterObserved:toyama-jinzu-1",
      "type": ["https://smartdatamodels.org/dataModel.Environment/WaterObserved"],
      "scope": ["/Toyama/Rivers"],                # optional, never expanded
      "createdAt": "2026-11-24T10:00:00.000Z",
      "modifiedAt": "2026-11-24T10:00:00.000Z",
      "attrs": {
        "<attribute IRI>": [ <instance>, ... ]      # one per datasetId; default has none
      }
    }

Attribute instance::

    {
      "type": "Property" | "Relationship" | "GeoProperty" | "LanguageProperty"
              | "JsonProperty" | "VocabProperty" | "ListProperty" | "ListRelationship",
      "value": ...,            # Property, GeoProperty (GeoJSON geometry object)
      "object": "urn:..." | [...],   # Relationship
      "objectType": "<type IRI>",    # Relationship, optional
      "languageMap": {"en": "...", "ja": "..."},   # LanguageProperty
      "json": ...,             # JsonProperty
      "vocab": "<IRI>" | ["<IRI>", ...],            # VocabProperty
      "valueList": [...],      # ListProperty
      "objectList": [...],     # ListRelationship
      "observedAt": "...", "unitCode": "...", "datasetId": "urn:...",
      "createdAt": "...", "modifiedAt": "...",
      "<sub-attribute IRI>": <instance>    # sub-attributes: keys that contain ':'
    }

Keys of an instance that contain ``:`` are sub-attributes; all others are reserved
meta-properties. This keeps the test "is this a sub-attribute" to one character.
"""

from __future__ import annotations

from typing import Any

StoredEntity = dict[str, Any]
"""An entity in the stored form described in this module's docstring."""

AttributeInstance = dict[str, Any]
"""One instance of an attribute (a Property, Relationship, ...) in stored form."""

ATTRIBUTE_KINDS = frozenset(
    {
        "Property",
        "Relationship",
        "GeoProperty",
        "LanguageProperty",
        "JsonProperty",
        "VocabProperty",
        "ListProperty",
        "ListRelationship",
    }
)

VALUE_KEY_BY_KIND = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "JsonProperty": "json",
    "VocabProperty": "vocab",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
}
"""Which key of an instance carries its value, per attribute kind."""


def is_sub_attribute_key(key: str) -> bool:
    """True for instance keys that name sub-attributes (expanded IRIs), not meta-properties."""
    return ":" in key


def instance_value(instance: AttributeInstance) -> Any:  # Any: a JSON value
    """The value an instance carries, whatever its kind (``None`` when absent)."""
    return instance.get(VALUE_KEY_BY_KIND.get(instance.get("type", "Property"), "value"))
