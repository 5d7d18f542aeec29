"""Rendering stored entities for clients: normalized, concise, keyValues and GeoJSON.

The inverse of ``cityos.broker.entities``: attribute names, types and vocab values are
compacted with the client's @context (``CompiledContext.compact``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cityos.broker.model import (
    VALUE_KEY_BY_KIND,
    AttributeInstance,
    StoredEntity,
    is_sub_attribute_key,
)
from cityos.broker.projection import Projection, omits, picks

CompactIri = Callable[[str], str]
Format = Literal["normalized", "concise", "keyValues"]

_META_KEYS = ("observedAt", "unitCode", "datasetId")
_SYS_KEYS = ("createdAt", "modifiedAt")


@dataclass(frozen=True)
class RenderOptions:
    """How to render: format, system attributes, projection and language choice.

    ``attrs`` keeps only those attribute IRIs (``None`` = all). ``pick``/``omit`` apply to
    the entity's top-level members by IRI, plus the literal names ``id``, ``type``,
    ``scope``; their nested parts are for linked entities (``cityos.broker.join``).
    ``lang`` is an NGSI-LD language filter (``ja``, ``en,ja;q=0.5``, ``*``).
    ``dataset_ids`` keeps only instances with those datasetIds (``"@none"`` = default).
    """

    format: Format = "normalized"
    sys_attrs: bool = False
    attrs: frozenset[str] | None = None
    pick: Projection | None = None
    omit: Projection | None = None
    lang: str | None = None
    dataset_ids: frozenset[str] | None = None


def render_entity(
    entity: StoredEntity, compact: CompactIri, options: RenderOptions
) -> dict[str, Any]:
    """Render one stored entity as a JSON object (without ``@context``)."""
    out: dict[str, Any] = {}
    if _kept("id", options):
        out["id"] = entity["id"]
    if _kept("type", options):
        types = [compact(t) for t in entity.get("type", [])]
        out["type"] = types[0] if len(types) == 1 else types
    if "scope" in entity and _kept("scope", options):
        scopes = entity["scope"]
        out["scope"] = scopes[0] if len(scopes) == 1 else scopes
    if options.sys_attrs and options.format != "keyValues":
        for key in _SYS_KEYS:
            if key in entity and _kept(key, options):
                out[key] = entity[key]
    for attr_iri, instances in entity.get("attrs", {}).items():
        if options.attrs is not None and attr_iri not in options.attrs:
            continue
        if not _kept(attr_iri, options):
            continue
        if options.dataset_ids is not None:
            instances = [i for i in instances if i.get("datasetId", "@none") in options.dataset_ids]
        if not instances:
            continue
        out[compact(attr_iri)] = render_attribute(instances, compact, options)
    return out


def _kept(member: str, options: RenderOptions) -> bool:
    return picks(options.pick, member) and not omits(options.omit, member)


def render_attribute(
    instances: list[AttributeInstance], compact: CompactIri, options: RenderOptions
) -> Any:  # Any: JSON value
    """Render an attribute: one instance as an object, several as a list.

    In keyValues, several instances become ``{"dataset": {datasetId: value}}`` with
    ``@none`` for the default instance (NGSI-LD 4.5.3), so no value is lost.
    """
    if options.format == "keyValues":
        if len(instances) == 1:
            return key_value(instances[0], compact, options.lang)
        return {
            "dataset": {
                i.get("datasetId", "@none"): key_value(i, compact, options.lang) for i in instances
            }
        }
    rendered = [render_instance(i, compact, options) for i in instances]
    return rendered[0] if len(rendered) == 1 else rendered


def key_value(instance: AttributeInstance, compact: CompactIri, lang: str | None) -> Any:
    """The simplified (keyValues) value of an instance."""
    kind = instance.get("type", "Property")
    value = instance.get(VALUE_KEY_BY_KIND.get(kind, "value"))
    if kind == "LanguageProperty":
        if lang is not None:
            return pick_language(value, lang)[1]
        return {"languageMap": value}
    if kind == "VocabProperty":
        return _compact_vocab(value, compact)
    if kind == "Relationship":
        return value
    if kind in ("JsonProperty", "ListProperty", "ListRelationship"):
        return {VALUE_KEY_BY_KIND[kind]: value}
    return value


def render_instance(
    instance: AttributeInstance, compact: CompactIri, options: RenderOptions
) -> Any:  # Any: JSON value
    """Render one instance in normalized or concise form."""
    kind = instance.get("type", "Property")
    value_key = VALUE_KEY_BY_KIND.get(kind, "value")
    out: dict[str, Any] = {}
    value = instance.get(value_key)
    if kind == "LanguageProperty" and options.lang is not None:
        tag, text = pick_language(value, options.lang)
        out["type"] = "Property"
        out["value"] = text
        if tag is not None:
            out["lang"] = tag
    else:
        out["type"] = kind
        out[value_key] = _compact_vocab(value, compact) if kind == "VocabProperty" else value
    if "objectType" in instance:
        types = [compact(t) for t in instance["objectType"]]
        out["objectType"] = types[0] if len(types) == 1 else types
    for key in _META_KEYS:
        if key in instance:
            out[key] = instance[key]
    if options.sys_attrs:
        for key in _SYS_KEYS:
            if key in instance:
                out[key] = instance[key]
    for key, sub in instance.items():
        if is_sub_attribute_key(key):
            out[compact(key)] = render_instance(sub, compact, options)
    if options.format == "concise":
        return _concise(out)
    return out


def _concise(rendered: dict[str, Any]) -> Any:  # Any: JSON value
    """Drop what the concise form implies: the kind, and the wrapper of a bare scalar value."""
    kind = rendered.pop("type", "Property")
    if kind == "Property" and set(rendered) == {"value"}:
        value = rendered["value"]
        if not isinstance(value, dict | list):
            return value
    if kind == "GeoProperty" and set(rendered) == {"value"}:
        return rendered
    return rendered


def _compact_vocab(value: Any, compact: CompactIri) -> Any:  # Any: JSON value
    if isinstance(value, list):
        return [compact(v) for v in value]
    return compact(value) if isinstance(value, str) else value


def pick_language(language_map: Any, lang: str) -> tuple[str | None, Any]:
    """Choose the text of a languageMap for an NGSI-LD ``lang`` filter.

    Tags are tried in preference order (``q`` weights honoured); ``*`` takes any. Falls
    back to ``@none`` and then the first entry, so a client always gets a value.
    """
    if not isinstance(language_map, dict) or not language_map:
        return None, language_map
    for tag in _ranked_tags(lang):
        if tag == "*":
            first = next(iter(language_map))
            return first, language_map[first]
        if tag in language_map:
            return tag, language_map[tag]
        for key in language_map:
            if key.lower().split("-")[0] == tag.lower():
                return key, language_map[key]
    if "@none" in language_map:
        return "@none", language_map["@none"]
    first = next(iter(language_map))
    return first, language_map[first]


def _ranked_tags(lang: str) -> list[str]:
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(lang.split(",")):
        tag, _, weight = part.strip().partition(";q=")
        try:
            quality = float(weight) if weight else 1.0
        except ValueError:
            quality = 0.0
        if tag:
            ranked.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def to_geojson_feature(
    rendered: dict[str, Any], geometry_name: str, key_values: bool
) -> dict[str, Any]:
    """Wrap a rendered entity as a GeoJSON Feature using its ``geometry_name`` attribute."""
    geometry: Any = None
    geo = rendered.get(geometry_name)
    if isinstance(geo, list):
        geo = geo[0] if geo else None
    if isinstance(geo, dict):
        geometry = geo if key_values else geo.get("value", geo)
        if isinstance(geometry, dict) and "value" in geometry:
            geometry = geometry["value"]
    elif geo is not None and key_values:
        geometry = geo
    properties = {k: v for k, v in rendered.items() if k != "id"}
    return {
        "id": rendered.get("id"),
        "type": "Feature",
        "geometry": geometry,
        "properties": properties,
    }
