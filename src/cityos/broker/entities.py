"""Turning NGSI-LD request payloads (normalized or concise) into the stored form.

Every function here takes a term expander (``CompiledContext.expand``) so that what is
stored never depends on the client's @context. Each validation failure raises
``BadRequestData`` naming the entity, attribute and the rule broken.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cityos.broker.model import (
    ATTRIBUTE_KINDS,
    VALUE_KEY_BY_KIND,
    AttributeInstance,
    StoredEntity,
)
from cityos.core.errors import BadRequestData
from cityos.core.geo import validate_geojson_geometry
from cityos.core.timeutil import is_datetime

ExpandTerm = Callable[[str], str]

NULL_URI = "urn:ngsi-ld:null"
"""The NGSI-LD null: in a merge, an attribute with this value is deleted."""

ENTITY_RESERVED = frozenset(
    {"id", "type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt", "@id", "@type"}
)
INSTANCE_RESERVED = frozenset(
    {
        "type",
        "value",
        "object",
        "objectType",
        "languageMap",
        "json",
        "vocab",
        "valueList",
        "objectList",
        "observedAt",
        "unitCode",
        "datasetId",
        "createdAt",
        "modifiedAt",
        "deletedAt",
        "lang",
        "@context",
        "instanceId",
        "previousValue",
        "entity",
    }
)
SCOPE_IRI = "https://uri.etsi.org/ngsi-ld/scope"
NOT_ATTRIBUTE_IRIS = frozenset(
    {
        SCOPE_IRI,
        "https://uri.etsi.org/ngsi-ld/createdAt",
        "https://uri.etsi.org/ngsi-ld/modifiedAt",
        "https://uri.etsi.org/ngsi-ld/deletedAt",
    }
)
"""Expanded names of entity members that are not attributes (``id``/``type`` expand to
``@id``/``@type``)."""

GEO_ATTRIBUTE_NAMES = frozenset({"location", "observationSpace", "operationSpace"})
GEOJSON_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
_FORBIDDEN_NAME_CHARS = re.compile(r"[<>\"'=;()\s\x00-\x1f]")


def is_uri(value: object) -> bool:
    """True for an absolute URI (a scheme, a colon, no spaces or forbidden characters)."""
    return isinstance(value, str) and _URI_RE.match(value) is not None


def check_entity_id(entity_id: object) -> str:
    """Return the id when it is a URI; raise ``BadRequestData`` otherwise."""
    if not isinstance(entity_id, str) or not is_uri(entity_id):
        raise BadRequestData(f"Entity id must be a URI: {entity_id!r}")
    return entity_id


def check_attribute_name(name: str) -> None:
    """Reject attribute names NGSI-LD forbids: characters that break ``q`` and URLs, and
    JSON-LD keywords (``@...``), which cannot name an attribute."""
    if not name or name.startswith("@") or _FORBIDDEN_NAME_CHARS.search(name):
        raise BadRequestData(f"Invalid attribute name: {name!r}")


def check_attribute_iri(name: str, iri: str) -> None:
    """Reject an attribute addressed by name (in a URL) that names no attribute: a JSON-LD
    keyword, or an entity member such as ``scope`` or ``createdAt``."""
    check_attribute_name(name)
    if iri.startswith("@") or iri in NOT_ATTRIBUTE_IRIS:
        raise BadRequestData(f"{name!r} is not an attribute name")


def is_complete(instance: AttributeInstance) -> bool:
    """True when a parsed fragment is a whole instance (it has a kind and its value)."""
    value_key = VALUE_KEY_BY_KIND.get(instance.get("type", ""))
    return value_key is not None and value_key in instance


def looks_like_instance_list(raw: object) -> bool:
    """True when an attribute's payload is a list of instances (a multi-attribute)."""
    return isinstance(raw, list) and bool(raw) and all(_looks_like_instance(i) for i in raw)


def parse_types(raw: object, expand: ExpandTerm, *, what: str = "Entity type") -> list[str]:
    """Parse ``type`` (a string or a non-empty list of strings) into expanded IRIs."""
    names = raw if isinstance(raw, list) else [raw]
    if not names:
        raise BadRequestData(f"{what} must not be empty")
    types: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name or _FORBIDDEN_NAME_CHARS.search(name):
            raise BadRequestData(f"Invalid {what.lower()}: {name!r}")
        iri = expand(name)
        # A term the @context maps to a keyword (e.g. "type" -> "@type") is not a type.
        if not is_uri(iri):
            raise BadRequestData(f"Invalid {what.lower()}: {name!r} is not a type name or IRI")
        if iri not in types:
            types.append(iri)
    return types


def parse_scopes(raw: object) -> list[str]:
    """Parse ``scope``: a string or list of strings, each starting with '/'."""
    scopes = raw if isinstance(raw, list) else [raw]
    for scope in scopes:
        if not isinstance(scope, str) or not re.match(r"^/[^\s#+]*$", scope):
            raise BadRequestData(f"Invalid scope: {scope!r}")
    return list(dict.fromkeys(scopes))


def parse_entity(
    payload: object, expand: ExpandTerm, now: str, *, require_type: bool = True
) -> StoredEntity:
    """Parse a whole entity payload (create, replace, upsert) into stored form.

    ``now`` becomes ``createdAt``/``modifiedAt`` of the entity and of every instance.
    """
    if not isinstance(payload, dict):
        raise BadRequestData("An entity must be a JSON object")
    entity_id = check_entity_id(payload.get("id", payload.get("@id")))
    raw_type = payload.get("type", payload.get("@type"))
    if raw_type is None:
        if require_type:
            raise BadRequestData(f"Entity {entity_id} has no type")
        types: list[str] = []
    else:
        types = parse_types(raw_type, expand)
    entity: StoredEntity = {"id": entity_id, "type": types}
    if "scope" in payload:
        entity["scope"] = parse_scopes(payload["scope"])
    entity["createdAt"] = now
    entity["modifiedAt"] = now
    entity["attrs"] = parse_attributes(payload, expand, now, entity_id=entity_id)
    return entity


def parse_attributes(
    payload: dict[str, Any],
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
    allow_null: bool = False,
) -> dict[str, list[AttributeInstance]]:
    """Parse every non-reserved member of ``payload`` as an attribute.

    With ``allow_null`` (merge-patch), an attribute whose value is JSON null or the
    NGSI-LD null is returned as an empty list, meaning "delete this attribute".
    """
    attrs: dict[str, list[AttributeInstance]] = {}
    for name, raw in payload.items():
        if name in ENTITY_RESERVED:
            continue
        check_attribute_name(name)
        iri = expand(name)
        if allow_null and is_null_value(raw):
            attrs[iri] = []
            continue
        attrs[iri] = parse_attribute(name, raw, expand, now, entity_id=entity_id)
    return attrs


def parse_attribute(
    name: str,
    raw: object,
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
) -> list[AttributeInstance]:
    """Parse one attribute: a single instance, or a list of instances (multi-attribute)."""
    if looks_like_instance_list(raw):
        assert isinstance(raw, list)
        instances = [parse_instance(name, item, expand, now, entity_id=entity_id) for item in raw]
        seen: set[str | None] = set()
        for instance in instances:
            dataset_id = instance.get("datasetId")
            if dataset_id in seen:
                raise BadRequestData(
                    f"Attribute {name} of {entity_id} has two instances with datasetId "
                    f"{dataset_id!r}"
                )
            seen.add(dataset_id)
        return instances
    return [parse_instance(name, raw, expand, now, entity_id=entity_id)]


def _looks_like_instance(item: object) -> bool:
    return isinstance(item, dict) and (
        item.get("type") in ATTRIBUTE_KINDS
        or any(key in item for key in VALUE_KEY_BY_KIND.values())
    )


def is_null_value(raw: object) -> bool:
    """True when ``raw`` asks to delete an attribute (instance): JSON null, the NGSI-LD
    null ``urn:ngsi-ld:null``, or an attribute whose value is the NGSI-LD null in the form
    its kind uses (NGSI-LD 4.5.5: ``value``, ``object``, ``vocab``, ``json``,
    ``languageMap: {"@none": null}``, ``valueList``/``objectList: [null]``)."""
    if raw is None or raw == NULL_URI:
        return True
    if not isinstance(raw, dict):
        return False
    for key in ("value", "object", "vocab", "json"):
        if key in raw and raw[key] == NULL_URI:
            return True
    if "languageMap" in raw and raw["languageMap"] == {"@none": NULL_URI}:
        return True
    for key in ("valueList", "objectList"):
        if key in raw and raw[key] in ([NULL_URI], [{"object": NULL_URI}]):
            return True
    return False


def attribute_kind(name: str, raw: object) -> str:
    """The attribute kind a payload declares or implies (``Property`` for a bare value)."""
    kind = _implied_kind(name, raw)
    if kind is None:
        assert isinstance(raw, dict)
        return str(raw["type"])
    return kind


def _implied_kind(name: str, raw: object) -> str | None:
    """The attribute kind of a concise value, or ``None`` for a normalized one with type."""
    if not isinstance(raw, dict):
        return "Property"
    declared = raw.get("type")
    if declared in ATTRIBUTE_KINDS:
        return None
    if isinstance(declared, str) and declared in GEOJSON_TYPES and "coordinates" in raw:
        return "GeoProperty"
    if declared is not None and not isinstance(declared, str):
        raise BadRequestData(f"Attribute {name}: type must be a string")
    for kind, key in (
        ("Relationship", "object"),
        ("LanguageProperty", "languageMap"),
        ("JsonProperty", "json"),
        ("VocabProperty", "vocab"),
        ("ListProperty", "valueList"),
        ("ListRelationship", "objectList"),
    ):
        if key in raw:
            return kind
    if declared is not None:
        raise BadRequestData(f"Attribute {name}: unknown attribute type {declared!r}")
    if "value" in raw:
        value = raw["value"]
        if name in GEO_ATTRIBUTE_NAMES or (
            isinstance(value, dict) and value.get("type") in GEOJSON_TYPES
        ):
            return "GeoProperty"
        return "Property"
    return "Property"


def parse_instance(
    name: str,
    raw: object,
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
) -> AttributeInstance:
    """Parse one complete attribute instance (normalized or concise) into stored form."""
    where = f"Attribute {name} of {entity_id}"
    kind = _implied_kind(name, raw)
    if kind is not None and not isinstance(raw, dict):
        if raw is None:
            raise BadRequestData(f"{where}: null is not a valid value")
        return {"type": "Property", "value": raw, "createdAt": now, "modifiedAt": now}
    assert isinstance(raw, dict)
    if kind == "GeoProperty" and "coordinates" in raw:
        raw = {"value": raw}
    kind = kind if kind is not None else str(raw["type"])
    value_key = VALUE_KEY_BY_KIND[kind]
    instance: AttributeInstance = {"type": kind}
    if value_key not in raw:
        raise BadRequestData(f"{where}: a {kind} needs a '{value_key}' member")
    for other_kind, other_key in VALUE_KEY_BY_KIND.items():
        if other_key != value_key and other_key in raw and other_kind != kind:
            raise BadRequestData(f"{where}: a {kind} cannot have a '{other_key}' member")
    instance[value_key] = _parse_value(where, kind, raw[value_key], expand)
    if kind == "Relationship" and "objectType" in raw:
        instance["objectType"] = parse_types(raw["objectType"], expand, what="objectType")
    _parse_members(name, raw, instance, expand, now, entity_id=entity_id, fragment=False)
    instance["createdAt"] = now
    instance["modifiedAt"] = now
    return instance


def parse_fragment(
    name: str, raw: object, expand: ExpandTerm, now: str, *, entity_id: str
) -> AttributeInstance:
    """Parse an attribute fragment to merge into an existing instance (merge, partial update).

    A fragment carrying a value parses as a complete instance. One without a value (only
    meta-properties and sub-attributes) parses to those members alone, with no ``type``
    key; its sub-attributes that are NGSI-LD null come out as ``None`` (delete them).
    """
    if isinstance(raw, dict) and not any(key in raw for key in VALUE_KEY_BY_KIND.values()):
        declared = raw.get("type")
        if declared is not None and declared not in ATTRIBUTE_KINDS:
            raise BadRequestData(f"Attribute {name}: unknown attribute type {declared!r}")
        instance: AttributeInstance = {} if declared is None else {"type": declared}
        _parse_members(name, raw, instance, expand, now, entity_id=entity_id, fragment=True)
        if not instance:
            raise BadRequestData(f"Attribute {name} of {entity_id}: the fragment is empty")
        instance["modifiedAt"] = now
        return instance
    return parse_instance(name, raw, expand, now, entity_id=entity_id)


def _parse_members(
    name: str,
    raw: dict[str, Any],
    instance: AttributeInstance,
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
    fragment: bool,
) -> None:
    """Parse the meta-properties and sub-attributes of ``raw`` into ``instance``."""
    where = f"Attribute {name} of {entity_id}"
    for meta in ("observedAt", "unitCode", "datasetId"):
        if meta in raw:
            instance[meta] = _parse_meta(where, meta, raw[meta])
    for sub_name, sub_raw in raw.items():
        if sub_name in INSTANCE_RESERVED:
            continue
        check_attribute_name(sub_name)
        if fragment and is_null_value(sub_raw):
            instance[expand(sub_name)] = None
            continue
        instance[expand(sub_name)] = parse_instance(
            f"{name}.{sub_name}", sub_raw, expand, now, entity_id=entity_id
        )


def _parse_value(where: str, kind: str, value: Any, expand: ExpandTerm) -> Any:  # Any: JSON
    if value is None:
        raise BadRequestData(f"{where}: null is not a valid value")
    if kind == "Relationship":
        objects = value if isinstance(value, list) else [value]
        if not objects or not all(is_uri(obj) for obj in objects):
            raise BadRequestData(f"{where}: a Relationship object must be a URI: {value!r}")
    elif kind == "GeoProperty":
        validate_geojson_geometry(value)
    elif kind == "LanguageProperty":
        if (
            not isinstance(value, dict)
            or not value
            or not all(
                isinstance(text, str)
                or (isinstance(text, list) and all(isinstance(t, str) for t in text))
                for text in value.values()
            )
        ):
            raise BadRequestData(f"{where}: languageMap must map language tags to strings")
    elif kind == "VocabProperty":
        terms = value if isinstance(value, list) else [value]
        if not terms or not all(isinstance(term, str) and term for term in terms):
            raise BadRequestData(f"{where}: vocab must be a term or a list of terms")
        expanded = [expand(term) for term in terms]
        return expanded if isinstance(value, list) else expanded[0]
    elif kind == "ListProperty" and not isinstance(value, list):
        raise BadRequestData(f"{where}: valueList must be a list")
    elif kind == "ListRelationship" and (
        not isinstance(value, list)
        or not all(
            is_uri(item) or (isinstance(item, dict) and is_uri(item.get("object")))
            for item in value
        )
    ):
        raise BadRequestData(f"{where}: objectList must be a list of URIs")
    return value


def _parse_meta(where: str, meta: str, value: object) -> str:
    if meta == "observedAt":
        if not isinstance(value, str) or not is_datetime(value):
            raise BadRequestData(f"{where}: observedAt must be an ISO 8601 date-time: {value!r}")
    elif meta == "datasetId":
        if not is_uri(value):
            raise BadRequestData(f"{where}: datasetId must be a URI: {value!r}")
    elif not isinstance(value, str) or not value:
        raise BadRequestData(f"{where}: {meta} must be a non-empty string")
    assert isinstance(value, str)
    return value
