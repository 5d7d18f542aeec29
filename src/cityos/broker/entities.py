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
    """Reject attribute names with characters NGSI-LD forbids (they break ``q`` and URLs)."""
    if not name or _FORBIDDEN_NAME_CHARS.search(name):
        raise BadRequestData(f"Invalid attribute name: {name!r}")


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
        attrs[iri] = parse_attribute(
            name, raw, expand, now, entity_id=entity_id, allow_null=allow_null
        )
    return attrs


def parse_attribute(
    name: str,
    raw: object,
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
    allow_null: bool = False,
) -> list[AttributeInstance]:
    """Parse one attribute: a single instance, or a list of instances (multi-attribute)."""
    if isinstance(raw, list) and raw and all(_looks_like_instance(item) for item in raw):
        instances = [
            parse_instance(name, item, expand, now, entity_id=entity_id, allow_null=allow_null)
            for item in raw
        ]
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
    return [parse_instance(name, raw, expand, now, entity_id=entity_id, allow_null=allow_null)]


def _looks_like_instance(item: object) -> bool:
    return isinstance(item, dict) and (
        item.get("type") in ATTRIBUTE_KINDS
        or any(key in item for key in VALUE_KEY_BY_KIND.values())
    )


def is_null_value(raw: object) -> bool:
    """True for JSON null, the NGSI-LD null URI, or an attribute whose value is one."""
    if raw is None or raw == NULL_URI:
        return True
    if isinstance(raw, dict):
        for key in ("value", "object", "languageMap", "json", "vocab"):
            if key in raw and (raw[key] is None or raw[key] == NULL_URI):
                return True
    return False


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
    allow_null: bool = False,
    partial_of: str | None = None,
) -> AttributeInstance:
    """Parse one attribute instance (normalized or concise) into stored form.

    ``partial_of`` is the kind of the existing instance when the payload is a fragment to
    merge into it (partial attribute update, merge-patch): then the value may be absent.
    """
    where = f"Attribute {name} of {entity_id}"
    if (
        partial_of is not None
        and isinstance(raw, dict)
        and "type" not in raw
        and not any(key in raw for key in VALUE_KEY_BY_KIND.values())
    ):
        return _parse_fragment(name, raw, partial_of, expand, now, entity_id=entity_id)
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
    instance[value_key] = _parse_value(where, kind, raw[value_key], expand, allow_null)
    if kind == "Relationship" and "objectType" in raw:
        instance["objectType"] = parse_types(raw["objectType"], expand, what="objectType")
    for meta in ("observedAt", "unitCode", "datasetId"):
        if meta in raw:
            instance[meta] = _parse_meta(where, meta, raw[meta])
    instance["createdAt"] = now
    instance["modifiedAt"] = now
    for sub_name, sub_raw in raw.items():
        if sub_name in INSTANCE_RESERVED:
            continue
        check_attribute_name(sub_name)
        instance[expand(sub_name)] = parse_instance(
            f"{name}.{sub_name}", sub_raw, expand, now, entity_id=entity_id
        )
    return instance


def _parse_fragment(
    name: str,
    raw: dict[str, Any],
    kind: str,
    expand: ExpandTerm,
    now: str,
    *,
    entity_id: str,
) -> AttributeInstance:
    """A fragment without a value: only meta-properties and sub-attributes to merge."""
    where = f"Attribute {name} of {entity_id}"
    instance: AttributeInstance = {"type": kind, "modifiedAt": now}
    for meta in ("observedAt", "unitCode", "datasetId"):
        if meta in raw:
            instance[meta] = _parse_meta(where, meta, raw[meta])
    for sub_name, sub_raw in raw.items():
        if sub_name in INSTANCE_RESERVED:
            continue
        check_attribute_name(sub_name)
        instance[expand(sub_name)] = parse_instance(
            f"{name}.{sub_name}", sub_raw, expand, now, entity_id=entity_id
        )
    return instance


def _parse_value(
    where: str, kind: str, value: Any, expand: ExpandTerm, allow_null: bool
) -> Any:  # Any: JSON value
    if value is None and not allow_null:
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
