"""The storage protocol the broker talks to, and the index rows every backend derives.

A backend stores entities in the stored form of ``cityos.broker.model`` (opaque to it
but for the index rows below) per tenant, and answers *candidate* scans: a scan may
return more entities than match (the broker applies the exact predicates), but never
fewer. That keeps every backend small and all NGSI-LD semantics in one place.

Index rows a backend keeps per entity, derived with :func:`index_rows`:
- its type IRIs (for type queries and discovery),
- its attribute IRIs with their kinds (for ``attrs`` filters and discovery),
- the bounding box of each GeoProperty value (for geo-query candidates).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from cityos.broker.model import StoredEntity
from cityos.core.geo import bbox as geometry_bbox

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

    def update(self, tenant: str, entity: StoredEntity) -> None:
        """Replace an existing entity (same id); raise ``ResourceNotFound`` if absent."""
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
