"""The storage protocol the broker talks to, and the index rows every backend derives.

A backend stores entities in the stored form of ``cityos.broker.model`` (opaque to it
but for the index rows below) per tenant, and answers *candidate* scans: a scan may
return more entities than match (the broker applies the exact predicates), but never
fewer. That keeps every backend small and all NGSI-LD semantics in one place.

Index rows a backend keeps per entity, derived with :func:`index_rows`:
- its type IRIs (for type queries and discovery),
- its attribute IRIs with their kinds (for ``attrs`` filters and discovery),
- the bounding box of each GeoProperty value (for geo-query candidates).

Temporal history: every ``insert``/``update``/``delete`` also appends, in the same
transaction, one history row per attribute instance that is new or changed
(:func:`changed_instances`), and a deletion marker per instance that went away. History
rows of an entity outlive the entity (core delete keeps them; temporal delete removes
them, see :meth:`TemporalStorage.delete_history`).

An observation is identified by (entity, attribute, datasetId, ``observedAt``): a new
row with the same ``observedAt`` *replaces* the old one instead of adding a duplicate,
so re-sent measurements and corrected values do not double in the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from cityos.broker.model import VALUE_KEY_BY_KIND, AttributeInstance, StoredEntity
from cityos.core.geo import bbox as geometry_bbox
from cityos.core.timeutil import datetime_ms

BoundingBox = tuple[float, float, float, float]
"""(min_lon, min_lat, max_lon, max_lat) in WGS84 degrees."""

DEFAULT_TENANT = ""
"""The default tenant, addressed by requests without an ``NGSILD-Tenant`` header."""


@dataclass(frozen=True)
class EntityScan:
    """What a backend must narrow a scan by; every given field must hold for a candidate.

    ``None`` means "no restriction". ``after_pk`` supports keyset pagination in the
    backend's stable order (insertion order).
    """

    ids: frozenset[str] | None = None
    types_any: frozenset[str] | None = None
    attrs_any: frozenset[str] | None = None
    geo_attr: str | None = None
    geo_bbox: BoundingBox | None = None
    after_pk: int = 0


@dataclass(frozen=True)
class IndexRows:
    """The rows an entity contributes to a backend's indexes."""

    types: frozenset[str]
    attrs: frozenset[tuple[str, str]]
    """(attribute IRI, attribute kind) pairs."""
    boxes: tuple[tuple[str, BoundingBox], ...] = field(default=())
    """(GeoProperty attribute IRI, bounding box) pairs, one per instance."""


def index_rows(entity: StoredEntity) -> IndexRows:
    """Derive the index rows of a stored entity."""
    attrs: set[tuple[str, str]] = set()
    boxes: list[tuple[str, BoundingBox]] = []
    for attr_iri, instances in entity.get("attrs", {}).items():
        for instance in instances:
            kind = instance.get("type", "Property")
            attrs.add((attr_iri, kind))
            if kind == "GeoProperty" and isinstance(instance.get("value"), dict):
                boxes.append((attr_iri, geometry_bbox(instance["value"])))
    return IndexRows(frozenset(entity.get("type", ())), frozenset(attrs), tuple(boxes))


@dataclass(frozen=True)
class AttributeUsage:
    """One discovery row: how many entities of ``type_iri`` have ``attr_iri`` of ``kind``."""

    type_iri: str
    attr_iri: str
    kind: str
    entity_count: int


INSTANCE_ID_PREFIX = "urn:ngsi-ld:Instance:"
"""Instance ids are this prefix and the backend's history sequence number."""

NULL = "urn:ngsi-ld:null"


@dataclass(frozen=True)
class HistoryRow:
    """One attribute instance of an entity's history.

    ``time_ms`` is the instance's ``observedAt``, or when it has none the time it was
    written (``modifiedAt``; ``deletedAt`` for deletion markers), in Unix milliseconds.
    ``instance`` is the stored instance, without ``instanceId``.
    """

    attr_iri: str
    time_ms: int
    instance_id: str
    instance: AttributeInstance


@dataclass(frozen=True)
class HistoryScan:
    """Which history rows of one entity to read; ``None`` means "no restriction".

    ``start_ms`` is inclusive and ``end_ms`` exclusive. ``last_n`` keeps the most recent
    ``last_n`` rows *per attribute* within the time range. ``attrs`` narrows by attribute
    IRI. Rows come grouped by attribute, each group in ascending time.
    """

    attrs: frozenset[str] | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    last_n: int | None = None


@dataclass(frozen=True)
class HistoryBucket:
    """The numeric summary of one aggregation period: period ``index`` counted from the
    origin, how many values, their sum, sum of squares, min, max and (when asked) how
    many distinct values."""

    index: int
    count: int
    total: float
    total_sq: float
    minimum: float
    maximum: float
    distinct: int | None = None


@dataclass(frozen=True)
class AggregatedHistory:
    """Periods of ``period_ms`` from ``origin_ms`` that hold at least one value."""

    origin_ms: int
    period_ms: int
    buckets: list[HistoryBucket]


def numeric_value(instance: AttributeInstance) -> float | None:
    """The value a backend may aggregate itself: a number (not a boolean) of a Property
    of the default instance that is not a deletion marker; ``None`` otherwise, and any
    such row in a range sends aggregation back to the broker's general code."""
    if instance.get("type", "Property") != "Property":
        return None
    if "deletedAt" in instance or "datasetId" in instance:
        return None
    value = instance.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def aggregation_bounds(
    times_ms: tuple[int, int], start_ms: int | None, end_ms: int | None, period_ms: int | None
) -> tuple[int, int]:
    """(origin, period) of an aggregation over rows from ``times_ms[0]`` to
    ``times_ms[1]``: periods start at ``start_ms`` when given, else at the first row; with
    no period, one period covers the range (to ``end_ms``, or just past the last row)."""
    origin = start_ms if start_ms is not None else times_ms[0]
    last = end_ms if end_ms is not None else times_ms[1] + 1
    return origin, period_ms or max(last - origin, 1)


def bucket_values(
    timed_values: list[tuple[int, float]], origin_ms: int, period_ms: int, *, distinct: bool
) -> list[HistoryBucket]:
    """Group (time, value) pairs into periods and summarise each (for backends that
    aggregate in Python)."""
    groups: dict[int, list[float]] = {}
    for time_ms, value in timed_values:
        groups.setdefault((time_ms - origin_ms) // period_ms, []).append(value)
    return [
        HistoryBucket(
            index,
            len(values),
            sum(values),
            sum(v * v for v in values),
            min(values),
            max(values),
            len(set(values)) if distinct else None,
        )
        for index, values in sorted(groups.items())
    ]


def instance_time_ms(instance: AttributeInstance) -> int:
    """The time a history row is filed under (see :class:`HistoryRow`)."""
    for key in ("observedAt", "deletedAt", "modifiedAt", "createdAt"):
        value = instance.get(key)
        if isinstance(value, str):
            return datetime_ms(value)
    return 0


def deletion_marker(instance: AttributeInstance, now: str) -> AttributeInstance:
    """The history row that records the deletion of ``instance`` at ``now``."""
    kind = instance.get("type", "Property")
    key = VALUE_KEY_BY_KIND.get(kind, "value")
    marker: AttributeInstance = {
        "type": kind,
        key: {"@none": NULL} if key == "languageMap" else NULL,
    }
    if "datasetId" in instance:
        marker["datasetId"] = instance["datasetId"]
    marker["deletedAt"] = now
    return marker


SCOPE_IRI = "https://uri.etsi.org/ngsi-ld/scope"
"""History rows of an entity's scope are filed under this attribute IRI."""


def _scope_change(
    old: StoredEntity | None, new: StoredEntity | None, now: str
) -> list[tuple[str, AttributeInstance]]:
    """The history row of a scope change: a Property whose value is the new scope list,
    or, when the scope went away, a deletion marker whose value is the empty list (the
    temporal representation of a scope, as the ETSI conformance tests 020_19/020_20
    read it back)."""
    before = old.get("scope") if old else None
    after = new.get("scope") if new else None
    if before == after:
        return []
    if after:
        instance: AttributeInstance = {"type": "Property", "value": list(after)}
        instance["createdAt"] = instance["modifiedAt"] = now
        return [(SCOPE_IRI, instance)]
    return [(SCOPE_IRI, {"type": "Property", "value": [], "deletedAt": now})]


def rebase_entity(base: StoredEntity, mine: StoredEntity, current: StoredEntity) -> StoredEntity:
    """``mine`` (an edit of ``base``) re-applied on ``current`` (what another writer made of
    ``base`` meanwhile), attribute by attribute.

    A write that finds its entity changed since it was read must not overwrite the other
    writer's change with the stale rest of its own document (a lost update). Every
    attribute and top-level member that ``mine`` changed, added or removed relative to
    ``base`` takes ``mine``'s state; everything else keeps ``current``'s. Two writers
    that changed the same attribute: the later write wins, as if they had run one after
    the other.
    """
    result = dict(current)
    for key in base.keys() | mine.keys():
        if key == "attrs" or base.get(key) == mine.get(key):
            continue
        if key in mine:
            result[key] = mine[key]
        else:
            result.pop(key, None)
    base_attrs, mine_attrs = base.get("attrs", {}), mine.get("attrs", {})
    attrs = dict(current.get("attrs", {}))
    for name in base_attrs.keys() | mine_attrs.keys():
        if base_attrs.get(name) == mine_attrs.get(name):
            continue
        if name in mine_attrs:
            attrs[name] = mine_attrs[name]
        else:
            attrs.pop(name, None)
    result["attrs"] = attrs
    return result


def changed_instances(
    old: StoredEntity | None, new: StoredEntity | None, now: str
) -> list[tuple[str, AttributeInstance]]:
    """The history rows a write from ``old`` to ``new`` adds, as (attribute IRI, instance).

    An instance of ``new`` that is not equal to the one with the same datasetId in
    ``old`` is new history; an instance of ``old`` whose datasetId is gone from ``new``
    gets a deletion marker dated ``now``. A change of the entity's ``scope`` is history
    too (§4.18): see :func:`_scope_change`.
    """
    rows: list[tuple[str, AttributeInstance]] = _scope_change(old, new, now)
    old_attrs: dict[str, list[AttributeInstance]] = old.get("attrs", {}) if old else {}
    new_attrs: dict[str, list[AttributeInstance]] = new.get("attrs", {}) if new else {}
    for attr_iri, instances in new_attrs.items():
        before = old_attrs.get(attr_iri)
        if before is instances:
            continue  # the same list: unchanged (writers copy what they change)
        for instance in instances:
            if before is None or instance not in before:
                rows.append((attr_iri, instance))
    for attr_iri, instances in old_attrs.items():
        after = new_attrs.get(attr_iri, [])
        if after is instances:
            continue
        kept = {i.get("datasetId") for i in after}
        for instance in instances:
            if instance.get("datasetId") not in kept:
                rows.append((attr_iri, deletion_marker(instance, now)))
    return rows


class Storage(Protocol):
    """What the broker needs from a database. Implementations: SQLite, PostgreSQL, memory.

    All methods are synchronous and fast (sub-millisecond for single-entity work); the
    caller decides whether to run them on a worker thread. Writes outside
    :meth:`transaction` commit immediately; inside it they commit together at the end
    (or not at all when the block raises).
    """

    def transaction(self) -> AbstractContextManager[None]:
        """Group the writes of the block into one atomic commit."""
        ...

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        """The stored entity, or ``None``."""
        ...

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
        """The stored entities among ``entity_ids`` that exist, by id."""
        ...

    def insert(self, tenant: str, entity: StoredEntity) -> None:
        """Store a new entity; raise ``AlreadyExists`` if the id is taken in that tenant."""
        ...

    def update(self, tenant: str, entity: StoredEntity) -> StoredEntity:
        """Replace an existing entity (same id) and return the document it replaced; raise
        ``ResourceNotFound`` if absent. (Backends read the old document anyway, for index
        and history diffs; returning it spares listeners a second read.)"""
        ...

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        """Write entities whose previous documents the caller read in this transaction,
        in order: (``None``, new) inserts, (old, new) replaces ``old`` by ``new``, with the
        history rows of each pair's difference (the lean path of sensor ingestion; the
        same entity may appear several times, each pair starting where the last ended)."""
        ...

    def delete(self, tenant: str, entity_id: str) -> bool:
        """Delete an entity; ``False`` when it did not exist."""
        ...

    def scan(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        """Candidates for ``scan`` as (pk, entity) pairs in ascending pk (insertion) order."""
        ...

    def count_all(self, tenant: str) -> int:
        """How many entities the tenant holds."""
        ...

    def attribute_usage(self, tenant: str) -> list[AttributeUsage]:
        """Discovery statistics: per (type, attribute, kind), how many entities."""
        ...

    def type_counts(self, tenant: str) -> dict[str, int]:
        """How many entities have each type IRI."""
        ...

    def tenant_exists(self, tenant: str) -> bool:
        """True once anything has been written for the tenant (the default always exists)."""
        ...

    def list_tenants(self) -> list[str]:
        """Every tenant that has been written to, the default included."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class TemporalStorage(Storage, Protocol):
    """A ``Storage`` that also keeps entity history (both real backends and the fake).

    A separate protocol so that wrappers of the entity seam (``ObservedStorage``) stay
    ``Storage``; the temporal API talks to the backend itself, while entity writes still
    go through the wrappers and record history inside the backend.
    """

    def history(self, tenant: str, entity_id: str, scan: HistoryScan) -> list[HistoryRow]:
        """History rows of an entity (see :class:`HistoryScan` for order and narrowing)."""
        ...

    def aggregate_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        start_ms: int | None,
        end_ms: int | None,
        period_ms: int | None,
        *,
        distinct: bool,
    ) -> AggregatedHistory | None:
        """Summarise an attribute's rows in [start, end) per period (see
        :func:`aggregation_bounds`), by ``observedAt`` (row time). ``None`` when a row in
        the range has no :func:`numeric_value`, or there is no row: the caller then
        aggregates the rows itself."""
        ...

    def temporal_types(self, tenant: str, entity_id: str) -> list[str] | None:
        """The type IRIs of an entity that has history (last known); ``None`` if none."""
        ...

    def append_history(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        rows: list[tuple[str, AttributeInstance]],
    ) -> list[str]:
        """Add history rows (attribute IRI, instance) without touching the entity;
        return their instance ids."""
        ...

    def delete_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str | None = None,
        *,
        dataset_id: str | None = None,
        all_datasets: bool = True,
    ) -> int:
        """Delete history rows; return how many.

        ``attr_iri`` ``None`` deletes the whole temporal entity (rows and its type
        record). Otherwise only that attribute's rows: of every datasetId when
        ``all_datasets``, else of ``dataset_id`` (``None`` = the default instance).
        """
        ...

    def replace_history_instance(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        instance_id: str,
        instance: AttributeInstance,
    ) -> bool:
        """Replace one history row (it may move in time); ``False`` if there is none."""
        ...

    def delete_history_instance(
        self, tenant: str, entity_id: str, attr_iri: str, instance_id: str
    ) -> bool:
        """Delete one history row; ``False`` if there is none."""
        ...

    def expire_history(self, type_iri: str, before_ms: int) -> int:
        """Delete, in every tenant, the rows older than ``before_ms`` of entities of
        ``type_iri`` (retention); return how many."""
        ...
