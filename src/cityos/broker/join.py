"""Linked entity retrieval (NGSI-LD §4.5.23): ``join=inline|flat`` with ``joinLevel``.

Relationships of the rendered entities are followed to the entities they point at,
level by level (one storage look-up per level for all entities of that level), up to
``joinLevel`` hops. ``inline`` puts each linked entity inside the Relationship that
points at it (``"entity"`` in normalized and concise forms; in keyValues it replaces
the object id). ``flat`` appends every linked entity once to the list of results.
A Relationship whose target does not exist is left as it is.

Nested ``pick``/``omit`` expressions (``locatedAt{id,name}``) project the entities
linked through that Relationship; without one a linked entity is rendered whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from cityos.broker.model import StoredEntity
from cityos.broker.representation import CompactIri, RenderOptions, render_entity

JoinMode = Literal["inline", "flat"]
FetchEntities = Callable[[set[str]], dict[str, StoredEntity]]
"""Look entities up by id; ids that do not exist are simply absent from the result."""

_RELATIONSHIP_KINDS = ("Relationship", "ListRelationship")


@dataclass(frozen=True)
class JoinRequest:
    """How to follow Relationships: ``mode`` and how many hops (``level`` >= 1)."""

    mode: JoinMode
    level: int = 1


@dataclass
class _Node:
    stored: StoredEntity
    rendered: dict[str, Any]
    options: RenderOptions


def render_joined(
    entities: Iterable[StoredEntity],
    compact: CompactIri,
    options: RenderOptions,
    join: JoinRequest,
    fetch: FetchEntities,
) -> list[dict[str, Any]]:
    """Render ``entities`` with their linked entities; flat output appends those after them.

    An entity left with no members by ``pick``/``omit`` is dropped, as in a plain query.
    """
    frontier: list[_Node] = []
    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entity in entities:
        rendered = render_entity(entity, compact, options)
        if rendered:
            frontier.append(_Node(entity, rendered, options))
            results.append(rendered)
            seen.add(entity["id"])
    cache: dict[str, StoredEntity] = {}
    for _ in range(join.level):
        links = [(node, link) for node in frontier for link in _kept_links(node, compact)]
        wanted = {target for _, (_, _, targets) in links for target in targets} - cache.keys()
        if wanted:
            cache.update(fetch(wanted))
        next_frontier: list[_Node] = []
        for node, (attr_iri, name, targets) in links:
            linked_options = _linked_options(node.options, attr_iri)
            linked: dict[str, dict[str, Any]] = {}
            for target in targets:
                stored = cache.get(target)
                if stored is None:
                    continue
                rendered = render_entity(stored, compact, linked_options)
                if not rendered:
                    continue
                linked[target] = rendered
                next_frontier.append(_Node(stored, rendered, linked_options))
                if join.mode == "flat" and target not in seen:
                    seen.add(target)
                    results.append(rendered)
            if join.mode == "inline" and linked:
                _inline(node.rendered, name, linked, node.options.format == "keyValues")
        frontier = next_frontier
    return results


def _kept_links(node: _Node, compact: CompactIri) -> list[tuple[str, str, list[str]]]:
    """(attribute IRI, rendered name, target ids) of the Relationships left after projection."""
    links: list[tuple[str, str, list[str]]] = []
    for attr_iri, instances in node.stored.get("attrs", {}).items():
        name = compact(attr_iri)
        if name not in node.rendered:
            continue
        targets: list[str] = []
        for instance in instances:
            kind = instance.get("type")
            if kind not in _RELATIONSHIP_KINDS:
                continue
            value = instance.get("object" if kind == "Relationship" else "objectList")
            for target in value if isinstance(value, list) else [value]:
                if isinstance(target, dict):
                    target = target.get("object")
                if isinstance(target, str) and target not in targets:
                    targets.append(target)
        if targets:
            links.append((attr_iri, name, targets))
    return links


def _linked_options(options: RenderOptions, attr_iri: str) -> RenderOptions:
    return replace(
        options,
        attrs=None,
        pick=options.pick.nested(attr_iri) if options.pick is not None else None,
        omit=options.omit.nested(attr_iri) if options.omit is not None else None,
    )


def _inline(
    rendered: dict[str, Any], name: str, linked: dict[str, dict[str, Any]], key_values: bool
) -> None:
    value = rendered[name]
    if key_values:
        rendered[name] = _linked_value(value, linked)
        return
    for instance in value if isinstance(value, list) else [value]:
        if not isinstance(instance, dict):
            continue
        if "object" in instance:
            entity = _linked_value(instance["object"], linked)
            if entity is not instance["object"]:
                instance["entity"] = entity
        elif "objectList" in instance:
            entities = [linked[t] for t in _ids(instance["objectList"]) if t in linked]
            if entities:
                instance["entityList"] = entities


def _linked_value(value: Any, linked: dict[str, dict[str, Any]]) -> Any:  # Any: JSON value
    """The linked entity (or list of them) standing for a relationship object, else ``value``."""
    if isinstance(value, str):
        return linked.get(value, value)
    if isinstance(value, list):
        return [linked.get(v, v) if isinstance(v, str) else v for v in value]
    if isinstance(value, dict):
        list_value = value.get("objectList")
        if isinstance(list_value, list):
            return {
                "objectList": list_value,
                "entityList": [linked[t] for t in _ids(list_value) if t in linked],
            }
    return value


def _ids(object_list: Any) -> list[str]:  # Any: JSON value
    ids: list[str] = []
    for item in object_list if isinstance(object_list, list) else []:
        if isinstance(item, dict):
            item = item.get("object")
        if isinstance(item, str):
            ids.append(item)
    return ids
