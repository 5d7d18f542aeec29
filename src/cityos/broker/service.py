"""The broker's Python interface: every NGSI-LD entity operation, independent of HTTP.

Routes translate HTTP into these calls and their results back; domains call them
directly. Each method works on one tenant and takes attribute names already expanded
to IRIs (callers expand with their ``CompiledContext``). Errors are ``cityos.core.errors``.

Operations on one entity are read-modify-write without an ``await`` in between, so in
one process they are atomic; across processes the storage transaction makes them so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityos.broker.entities import (
    ENTITY_RESERVED,
    NOT_ATTRIBUTE_IRIS,
    SCOPE_IRI,
    ExpandTerm,
    check_attribute_iri,
    check_attribute_name,
    check_entity_id,
    is_complete,
    is_null_value,
    looks_like_instance_list,
    parse_entity,
    parse_fragment,
    parse_instance,
    parse_scopes,
    parse_types,
)
from cityos.broker.geoquery import GeoQuery
from cityos.broker.model import AttributeInstance, StoredEntity, is_sub_attribute_key
from cityos.broker.ordering import OrderBy
from cityos.broker.query_language import QExpression, ScopeExpression, TypeExpression
from cityos.core.errors import (
    BadRequestData,
    CityosError,
    ResourceNotFound,
    TooManyResults,
)
from cityos.core.timeutil import now_iso
from cityos.storage.base import DEFAULT_TENANT, EntityScan, Storage


class NonexistentTenant(ResourceNotFound):
    """A read addressed a tenant that nothing was ever written to."""

    title = "Nonexistent tenant"


@dataclass(frozen=True)
class EntitySelector:
    """Which entities by id, id pattern and type; every given part must hold."""

    ids: frozenset[str] | None = None
    id_pattern: re.Pattern[str] | None = None
    types: TypeExpression | None = None

    def matches(self, entity: StoredEntity) -> bool:
        """True when the entity satisfies every given part."""
        if self.ids is not None and entity["id"] not in self.ids:
            return False
        if self.id_pattern is not None and not self.id_pattern.fullmatch(entity["id"]):
            return False
        return self.types is None or self.types.matches(entity["type"])


@dataclass(frozen=True)
class EntityQuery:
    """A query over entities; every given criterion must hold (all IRIs expanded).

    ``selectors``: the entity must match at least one of them (none = any entity).
    ``order_by``: sort all matches before paging (``None`` = insertion order).
    """

    selectors: tuple[EntitySelector, ...] = ()
    attrs: frozenset[str] | None = None
    q: QExpression | None = None
    scope_q: ScopeExpression | None = None
    geo: GeoQuery | None = None
    geo_attr: str | None = None
    limit: int = 20
    offset: int = 0
    count: bool = False
    order_by: OrderBy | None = None


@dataclass
class QueryResult:
    """One page of matching entities, and the total when it was asked for."""

    entities: list[StoredEntity]
    total: int | None = None


@dataclass
class UpdateResult:
    """Which attributes an update changed, and why the others were not."""

    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BatchResult:
    """Per-entity outcome of a batch operation: ids that succeeded, and errors by id."""

    success: list[str] = field(default_factory=list)
    errors: list[tuple[str, CityosError]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)


class ContextBroker:
    """NGSI-LD entity operations over one ``Storage``."""

    def __init__(self, storage: Storage, *, max_limit: int = 1000) -> None:
        self.storage = storage
        self.max_limit = max_limit

    # -- tenants --------------------------------------------------------------------

    def check_tenant(self, tenant: str) -> None:
        """Raise ``NonexistentTenant`` for reads on a tenant never written to."""
        if not self.storage.tenant_exists(tenant):
            raise NonexistentTenant(f"Tenant {tenant!r} does not exist")

    # -- whole entities ---------------------------------------------------------------

    def create_entity(self, tenant: str, payload: object, expand: ExpandTerm) -> str:
        """Create an entity from a payload; return its id. ``AlreadyExists`` if taken."""
        entity = parse_entity(payload, expand, now_iso())
        self.storage.insert(tenant, entity)
        return str(entity["id"])

    def retrieve_entity(self, tenant: str, entity_id: str) -> StoredEntity:
        """The stored entity; ``ResourceNotFound`` (or ``NonexistentTenant``) if absent."""
        self.check_tenant(tenant)
        entity = self.storage.get(tenant, entity_id)
        if entity is None:
            raise ResourceNotFound(f"Entity {entity_id} not found")
        return entity

    def delete_entity(self, tenant: str, entity_id: str) -> None:
        """Delete an entity; ``ResourceNotFound`` if absent."""
        self.check_tenant(tenant)
        if not self.storage.delete(tenant, entity_id):
            raise ResourceNotFound(f"Entity {entity_id} not found")

    def replace_entity(
        self, tenant: str, entity_id: str, payload: dict[str, Any], expand: ExpandTerm
    ) -> None:
        """Replace all of an entity's attributes (and type, scope), keeping its createdAt."""
        old = self.retrieve_entity(tenant, entity_id)
        body = dict(payload)
        body.setdefault("id", entity_id)
        if body["id"] != entity_id:
            raise BadRequestData("The id in the body differs from the id in the URL")
        if "type" not in body:
            body["type"] = old["type"]
            new = parse_entity(body, lambda t: t if t in old["type"] else expand(t), now_iso())
        else:
            new = parse_entity(body, expand, now_iso())
        new["createdAt"] = old["createdAt"]
        self.storage.update(tenant, new)

    def merge_entity(
        self, tenant: str, entity_id: str, payload: dict[str, Any], expand: ExpandTerm
    ) -> None:
        """Merge-patch an entity (NGSI-LD 5.6.17): add new attributes, merge existing
        instances member by member, delete those given as NGSI-LD null; types are added,
        scope is replaced. The payload is validated before the entity is looked up."""
        if payload.get("id", payload.get("@id", entity_id)) != entity_id:
            raise BadRequestData("The id in the body differs from the id in the URL")
        now = now_iso()
        edit = _parse_entity_edit(payload, expand, now, entity_id, fragments=True)
        entity = self.retrieve_entity(tenant, entity_id)
        _add_types(entity, edit.types)
        if edit.scope is not None:
            _set_scope(entity, edit.scope)
        attrs: dict[str, list[AttributeInstance]] = entity["attrs"]
        for iri, changes in edit.attrs.items():
            existing = attrs.get(iri, [])
            for change in changes:
                target = _find_instance(existing, change.dataset_id)
                if change.instance is None:
                    if target is not None:
                        existing.remove(target)
                elif target is None:
                    existing.append(_complete(change, expand, now, entity_id))
                elif change.instance.get("type", target["type"]) != target["type"]:
                    # A different kind cannot merge member by member: it replaces.
                    replacement = _complete(change, expand, now, entity_id)
                    replacement["createdAt"] = target.get("createdAt", now)
                    existing[existing.index(target)] = replacement
                else:
                    _merge_instance(target, change.instance, now)
            if existing:
                attrs[iri] = existing
            else:
                attrs.pop(iri, None)
        entity["modifiedAt"] = now
        self.storage.update(tenant, entity)

    # -- attributes -----------------------------------------------------------------

    def append_attributes(
        self,
        tenant: str,
        entity_id: str,
        payload: dict[str, Any],
        expand: ExpandTerm,
        *,
        no_overwrite: bool = False,
    ) -> UpdateResult:
        """Append attributes (NGSI-LD 5.6.3): add new instances, replace same-datasetId
        ones unless ``no_overwrite``. Types are added; scope is replaced, or with
        ``no_overwrite`` the new scopes are added. NGSI-LD null deletes an instance."""
        now = now_iso()
        edit = _parse_entity_edit(payload, expand, now, entity_id, fragments=False)
        entity = self.retrieve_entity(tenant, entity_id)
        result = UpdateResult()
        _add_types(entity, edit.types)
        if edit.scope is not None:
            if no_overwrite and edit.scope:
                edit.scope = list(dict.fromkeys([*entity.get("scope", []), *edit.scope]))
            _set_scope(entity, edit.scope)
            result.updated.append(SCOPE_IRI)
        attrs: dict[str, list[AttributeInstance]] = entity["attrs"]
        for iri, changes in edit.attrs.items():
            if _apply_instance_changes(attrs, iri, changes, now, overwrite=not no_overwrite):
                result.updated.append(iri)
            elif no_overwrite:
                result.not_updated.append((iri, "attribute exists and noOverwrite was given"))
            else:
                result.not_updated.append((iri, "no instance with that datasetId to delete"))
        entity["modifiedAt"] = now
        self.storage.update(tenant, entity)
        return result

    def update_attributes(
        self, tenant: str, entity_id: str, payload: dict[str, Any], expand: ExpandTerm
    ) -> UpdateResult:
        """Update attributes (NGSI-LD 5.6.2): replace the instances with matching datasetIds,
        append those the entity does not have, delete those given as NGSI-LD null. Types
        are added; a scope replaces an existing one and is reported as not updated when the
        entity has none."""
        now = now_iso()
        edit = _parse_entity_edit(payload, expand, now, entity_id, fragments=False)
        entity = self.retrieve_entity(tenant, entity_id)
        result = UpdateResult()
        changed = _add_types(entity, edit.types)
        if edit.scope is not None:
            if "scope" in entity:
                _set_scope(entity, edit.scope)
                result.updated.append(SCOPE_IRI)
                changed = True
            else:
                result.not_updated.append((SCOPE_IRI, "the entity has no scope to update"))
        attrs: dict[str, list[AttributeInstance]] = entity["attrs"]
        for iri, changes in edit.attrs.items():
            if _apply_instance_changes(attrs, iri, changes, now, overwrite=True):
                result.updated.append(iri)
                changed = True
            else:
                result.not_updated.append((iri, "no such instance to delete"))
        if changed:
            entity["modifiedAt"] = now
            self.storage.update(tenant, entity)
        return result

    def partial_update_attribute(
        self, tenant: str, entity_id: str, name: str, fragment: dict[str, Any], expand: ExpandTerm
    ) -> None:
        """Merge a fragment into one attribute instance, selected by its datasetId
        (NGSI-LD 5.6.4); an NGSI-LD null deletes the instance. The fragment may not change
        the attribute's kind."""
        iri = expand(name)
        check_attribute_iri(name, iri)
        now = now_iso()
        dataset_id = fragment.get("datasetId")
        patch = (
            None
            if is_null_value(fragment)
            else parse_fragment(name, fragment, expand, now, entity_id=entity_id)
        )
        entity = self.retrieve_entity(tenant, entity_id)
        existing = entity["attrs"].get(iri) or []
        target = _find_instance(existing, dataset_id)
        if target is None:
            raise ResourceNotFound(f"Attribute {name} not found in entity {entity_id}")
        if patch is None:
            existing.remove(target)
            if not existing:
                del entity["attrs"][iri]
        elif patch.get("type", target["type"]) != target["type"]:
            raise BadRequestData(
                f"Attribute {name} of {entity_id} is a {target['type']}, "
                f"the fragment is a {patch['type']}"
            )
        else:
            _merge_instance(target, patch, now)
        entity["modifiedAt"] = now
        self.storage.update(tenant, entity)

    def replace_attribute(
        self, tenant: str, entity_id: str, name: str, raw: object, expand: ExpandTerm
    ) -> None:
        """Replace one attribute instance (selected by datasetId); 404 if it does not exist."""
        iri = expand(name)
        check_attribute_iri(name, iri)
        now = now_iso()
        instance = parse_instance(name, raw, expand, now, entity_id=entity_id)
        entity = self.retrieve_entity(tenant, entity_id)
        existing = entity["attrs"].get(iri) or []
        target = _find_instance(existing, instance.get("datasetId"))
        if target is None:
            raise ResourceNotFound(f"Attribute {name} not found in entity {entity_id}")
        instance["createdAt"] = target.get("createdAt", now)
        existing[existing.index(target)] = instance
        entity["modifiedAt"] = now
        self.storage.update(tenant, entity)

    def delete_attribute(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        *,
        dataset_id: str | None = None,
        delete_all: bool = False,
    ) -> None:
        """Delete the default instance, one datasetId's, or all instances of an attribute.

        ``scope`` (its expanded name) deletes the entity's scope.
        """
        if attr_iri.startswith("@") or (attr_iri in NOT_ATTRIBUTE_IRIS and attr_iri != SCOPE_IRI):
            raise BadRequestData(f"{attr_iri!r} is not an attribute name")
        entity = self.retrieve_entity(tenant, entity_id)
        if attr_iri == SCOPE_IRI:
            if "scope" not in entity:
                raise ResourceNotFound(f"Entity {entity_id} has no scope")
            del entity["scope"]
            entity["modifiedAt"] = now_iso()
            self.storage.update(tenant, entity)
            return
        existing = entity["attrs"].get(attr_iri)
        if not existing:
            raise ResourceNotFound(f"Attribute {attr_iri} not found in entity {entity_id}")
        if delete_all:
            remaining: list[AttributeInstance] = []
        else:
            target = _find_instance(existing, dataset_id)
            if target is None:
                raise ResourceNotFound(
                    f"Attribute {attr_iri} has no instance with datasetId {dataset_id}"
                )
            remaining = [i for i in existing if i is not target]
        if remaining:
            entity["attrs"][attr_iri] = remaining
        else:
            del entity["attrs"][attr_iri]
        entity["modifiedAt"] = now_iso()
        self.storage.update(tenant, entity)

    # -- queries ----------------------------------------------------------------------

    def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult:
        """Entities matching ``query`` in insertion order, one page of it."""
        self._check_query(tenant, query)
        if query.order_by is not None:
            # Ordering needs every match before the first page can be cut.
            matches = list(self._matching(tenant, query))
            query.order_by.sort(matches)
            return QueryResult(
                matches[query.offset : query.offset + query.limit],
                len(matches) if query.count else None,
            )
        page: list[StoredEntity] = []
        total = 0
        wanted = query.offset + query.limit
        for entity in self._matching(tenant, query):
            if query.offset <= total < wanted:
                page.append(entity)
            total += 1
            if total >= wanted and not query.count:
                break
        return QueryResult(page, total if query.count else None)

    def matching_entities(self, tenant: str, query: EntityQuery) -> Iterator[StoredEntity]:
        """Every entity matching ``query``, in its order (``order_by`` or insertion),
        ignoring ``limit``/``offset``: for callers that filter further before paging
        (the temporal API drops entities with no instance in the time range)."""
        self._check_query(tenant, query)
        if query.order_by is None:
            return self._matching(tenant, query)
        matches = list(self._matching(tenant, query))
        query.order_by.sort(matches)
        return iter(matches)

    def _check_query(self, tenant: str, query: EntityQuery) -> None:
        if query.limit > self.max_limit:
            raise TooManyResults(
                f"limit {query.limit} is over the maximum of {self.max_limit} per page"
            )
        if not self.storage.tenant_exists(tenant):
            raise NonexistentTenant(f"Tenant {tenant!r} does not exist")

    def _matching(self, tenant: str, query: EntityQuery) -> Iterator[StoredEntity]:
        # The scan may only narrow by a criterion every selector shares; the exact
        # selector test runs on each candidate below.
        selectors = query.selectors
        ids: frozenset[str] | None = None
        types_any: frozenset[str] | None = None
        if selectors and all(s.ids is not None for s in selectors):
            ids = frozenset().union(*(s.ids or () for s in selectors))
        if selectors and all(s.types is not None for s in selectors):
            types_any = frozenset().union(
                *(s.types.type_names() for s in selectors if s.types is not None)
            )
        scan = EntityScan(
            ids=ids,
            types_any=types_any,
            attrs_any=query.attrs,
            geo_attr=query.geo_attr if query.geo is not None else None,
            geo_bbox=query.geo.candidate_bbox() if query.geo is not None else None,
        )
        for _, entity in self.storage.scan(tenant, scan):
            if selectors and not any(s.matches(entity) for s in selectors):
                continue
            if query.scope_q is not None and not query.scope_q.matches(entity.get("scope", [])):
                continue
            if query.geo is not None and not _geo_matches(entity, query.geo, query.geo_attr):
                continue
            if query.q is not None and not query.q.matches(entity):
                continue
            yield entity

    # -- batches --------------------------------------------------------------------

    def _each_entity(
        self,
        items: Sequence[tuple[Any, ExpandTerm]],
        operation: Callable[[Any, ExpandTerm], str],
    ) -> BatchResult:
        """Run ``operation`` on each payload in one transaction; one error fails only its
        own entity (NGSI-LD batch semantics). ``operation`` returns the entity id."""
        result = BatchResult()
        with self.storage.transaction():
            for payload, expand in items:
                try:
                    entity_id = operation(payload, expand)
                except CityosError as error:
                    result.errors.append((_payload_id(payload), error))
                else:
                    result.success.append(entity_id)
        return result

    def batch_create(self, tenant: str, items: Sequence[tuple[Any, ExpandTerm]]) -> BatchResult:
        """Create each entity; one failing does not stop the others."""
        result = self._each_entity(
            items, lambda payload, expand: self.create_entity(tenant, payload, expand)
        )
        result.created = list(result.success)
        return result

    def batch_upsert(
        self, tenant: str, items: Sequence[tuple[Any, ExpandTerm]], *, replace: bool = True
    ) -> BatchResult:
        """Create missing entities; replace (or update, with ``replace=False``) existing ones."""
        created: list[str] = []

        def upsert(payload: Any, expand: ExpandTerm) -> str:  # Any: JSON value
            entity = parse_entity(payload, expand, now_iso())
            entity_id: str = entity["id"]
            if self.storage.get(tenant, entity_id) is None:
                self.storage.insert(tenant, entity)
                created.append(entity_id)
            elif replace:
                self.replace_entity(tenant, entity_id, payload, expand)
            else:
                self.append_attributes(tenant, entity_id, payload, expand)
            return entity_id

        result = self._each_entity(items, upsert)
        result.created = created
        return result

    def batch_update(
        self, tenant: str, items: Sequence[tuple[Any, ExpandTerm]], *, no_overwrite: bool = False
    ) -> BatchResult:
        """Append attributes to each existing entity (``noOverwrite`` keeps existing ones).

        With ``noOverwrite``, an entity that kept some of its attributes is reported as an
        error naming them, although its new attributes were added.
        """

        def update(payload: Any, expand: ExpandTerm) -> str:  # Any: JSON value
            entity_id = _existing_id(payload)
            appended = self.append_attributes(
                tenant, entity_id, payload, expand, no_overwrite=no_overwrite
            )
            if appended.not_updated:
                names = ", ".join(iri for iri, _ in appended.not_updated)
                raise BadRequestData(
                    f"Attributes not updated in {entity_id}: {names}",
                    title="Attributes not updated",
                )
            return entity_id

        return self._each_entity(items, update)

    def batch_merge(self, tenant: str, items: Sequence[tuple[Any, ExpandTerm]]) -> BatchResult:
        """Merge-patch each existing entity."""

        def merge(payload: Any, expand: ExpandTerm) -> str:  # Any: JSON value
            entity_id = _existing_id(payload)
            self.merge_entity(tenant, entity_id, payload, expand)
            return entity_id

        return self._each_entity(items, merge)

    def batch_delete(self, tenant: str, entity_ids: Iterable[object]) -> BatchResult:
        """Delete each entity by id."""
        result = BatchResult()
        with self.storage.transaction():
            for raw_id in entity_ids:
                entity_id = raw_id if isinstance(raw_id, str) else repr(raw_id)
                try:
                    check_entity_id(raw_id)
                    self.delete_entity(tenant, entity_id)
                except CityosError as error:
                    result.errors.append((entity_id, error))
                else:
                    result.success.append(entity_id)
        return result

    def purge_entities(
        self,
        tenant: str,
        query: EntityQuery,
        *,
        keep: frozenset[str] | None = None,
        drop: frozenset[str] | None = None,
    ) -> int:
        """Delete every entity matching ``query`` (all pages); return how many matched.

        With ``drop`` (expanded names) only those attributes are removed from each entity;
        with ``keep`` every attribute but those. Either way the entities stay.
        """
        if keep is not None and drop is not None:
            raise BadRequestData("Give at most one of keep and drop")
        self.check_tenant(tenant)
        matching = list(self._matching(tenant, query))
        now = now_iso()
        with self.storage.transaction():
            for entity in matching:
                if keep is None and drop is None:
                    self.storage.delete(tenant, entity["id"])
                    continue
                attrs: dict[str, list[AttributeInstance]] = entity["attrs"]
                removed = [
                    iri
                    for iri in attrs
                    if (drop is not None and iri in drop) or (keep is not None and iri not in keep)
                ]
                if removed:
                    for iri in removed:
                        del attrs[iri]
                    entity["modifiedAt"] = now
                    self.storage.update(tenant, entity)
        return len(matching)


def _existing_id(payload: object) -> str:
    """The id of a batch item that addresses an existing entity; 400 when not usable."""
    if not isinstance(payload, dict):
        raise BadRequestData("An entity must be a JSON object")
    return check_entity_id(_payload_id(payload))


def _payload_id(payload: object) -> str:
    if isinstance(payload, dict):
        raw = payload.get("id", payload.get("@id"))
        if isinstance(raw, str):
            return raw
    return ""


def _apply_instance_changes(
    attrs: dict[str, list[AttributeInstance]],
    iri: str,
    changes: Iterable[_Change],
    now: str,
    *,
    overwrite: bool,
) -> bool:
    """Apply one attribute's instance changes: a null deletes the instance with its
    datasetId, a new datasetId is appended, an existing one is replaced (keeping its
    createdAt) only when ``overwrite``. Drops the attribute when no instance is left;
    returns whether anything changed."""
    existing = attrs.get(iri, [])
    changed = False
    for change in changes:
        target = _find_instance(existing, change.dataset_id)
        if change.instance is None:
            if target is not None:
                existing.remove(target)
                changed = True
        elif target is None:
            existing.append(change.instance)
            changed = True
        elif overwrite:
            change.instance["createdAt"] = target.get("createdAt", now)
            existing[existing.index(target)] = change.instance
            changed = True
    if existing:
        attrs[iri] = existing
    else:
        attrs.pop(iri, None)
    return changed


def _find_instance(
    instances: list[AttributeInstance], dataset_id: str | None
) -> AttributeInstance | None:
    for instance in instances:
        if instance.get("datasetId") == dataset_id:
            return instance
    return None


def _merge_instance(target: AttributeInstance, patch: AttributeInstance, now: str) -> None:
    """Merge a parsed fragment into a stored instance, recursively for sub-attributes."""
    for key, value in patch.items():
        if key == "createdAt":
            continue
        if value is None:
            target.pop(key, None)
        elif is_sub_attribute_key(key):
            existing = target.get(key)
            if (
                isinstance(existing, dict)
                and isinstance(value, dict)
                and (value.get("type") == existing.get("type"))
            ):
                _merge_instance(existing, value, now)
            else:
                target[key] = value
        else:
            target[key] = value
    target["modifiedAt"] = now


@dataclass
class _Change:
    """One instance an edit gives for an attribute: ``instance`` None means delete it."""

    name: str
    dataset_id: str | None
    instance: AttributeInstance | None
    raw: object


@dataclass
class _EntityEdit:
    """A parsed merge / append / update payload, validated before the entity is read."""

    types: list[str]
    scope: list[str] | None
    attrs: dict[str, list[_Change]]


def _parse_entity_edit(
    payload: dict[str, Any], expand: ExpandTerm, now: str, entity_id: str, *, fragments: bool
) -> _EntityEdit:
    """Parse types, scope (``[]`` when NGSI-LD null) and attributes of an edit payload.

    With ``fragments`` (merge) an instance may lack its value; otherwise each is complete.
    """
    types = parse_types(payload["type"], expand) if "type" in payload else []
    scope: list[str] | None = None
    if "scope" in payload:
        scope = [] if is_null_value(payload["scope"]) else parse_scopes(payload["scope"])
    attrs: dict[str, list[_Change]] = {}
    for name, raw in payload.items():
        if name in ENTITY_RESERVED:
            continue
        check_attribute_name(name)
        items = raw if looks_like_instance_list(raw) else [raw]
        changes: list[_Change] = []
        for item in items:
            dataset_id = item.get("datasetId") if isinstance(item, dict) else None
            if any(change.dataset_id == dataset_id for change in changes):
                raise BadRequestData(
                    f"Attribute {name} of {entity_id} has two instances with datasetId "
                    f"{dataset_id!r}"
                )
            if is_null_value(item):
                instance = None
            elif fragments:
                instance = parse_fragment(name, item, expand, now, entity_id=entity_id)
            else:
                instance = parse_instance(name, item, expand, now, entity_id=entity_id)
            changes.append(_Change(name, dataset_id, instance, item))
        attrs[expand(name)] = changes
    return _EntityEdit(types, scope, attrs)


def _complete(change: _Change, expand: ExpandTerm, now: str, entity_id: str) -> AttributeInstance:
    """The change as a whole new instance (raises when the fragment lacks a value)."""
    assert change.instance is not None
    if is_complete(change.instance):
        return change.instance
    return parse_instance(change.name, change.raw, expand, now, entity_id=entity_id)


def _add_types(entity: StoredEntity, types: list[str]) -> bool:
    added = False
    for type_iri in types:
        if type_iri not in entity["type"]:
            entity["type"].append(type_iri)
            added = True
    return added


def _set_scope(entity: StoredEntity, scope: list[str]) -> None:
    if scope:
        entity["scope"] = scope
    else:
        entity.pop("scope", None)


def _geo_matches(entity: StoredEntity, geo: GeoQuery, geo_attr: str | None) -> bool:
    for instance in entity.get("attrs", {}).get(geo_attr or "", []):
        value = instance.get("value")
        if instance.get("type") == "GeoProperty" and isinstance(value, dict) and geo.matches(value):
            return True
    return False


__all__ = [
    "DEFAULT_TENANT",
    "BatchResult",
    "ContextBroker",
    "EntityQuery",
    "NonexistentTenant",
    "QueryResult",
    "UpdateResult",
]
