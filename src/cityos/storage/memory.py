"""An in-memory ``Storage`` for tests and throw-away runs; same contract as the SQLite backend."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from cityos.broker.model import StoredEntity
from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.storage.base import (
    DEFAULT_TENANT,
    AttributeUsage,
    EntityScan,
    index_rows,
)


class MemoryStorage:
    """Entities in dicts, keyed by tenant then id; pks are a global insertion counter."""

    def __init__(self) -> None:
        self._entities: dict[str, dict[str, tuple[int, StoredEntity]]] = {}
        self._next_pk = 1
        self._snapshot: dict[str, dict[str, tuple[int, StoredEntity]]] | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._snapshot is not None:
            yield
            return
        self._snapshot = copy.deepcopy(self._entities)
        try:
            yield
        except BaseException:
            self._entities = self._snapshot
            raise
        finally:
            self._snapshot = None

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        found = self._entities.get(tenant, {}).get(entity_id)
        return None if found is None else copy.deepcopy(found[1])

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
        return {
            entity_id: entity
            for entity_id in entity_ids
            if (entity := self.get(tenant, entity_id)) is not None
        }

    def insert(self, tenant: str, entity: StoredEntity) -> None:
        bucket = self._entities.setdefault(tenant, {})
        if entity["id"] in bucket:
            raise AlreadyExists(f"Entity {entity['id']} already exists")
        bucket[entity["id"]] = (self._next_pk, copy.deepcopy(entity))
        self._next_pk += 1

    def update(self, tenant: str, entity: StoredEntity) -> None:
        bucket = self._entities.get(tenant, {})
        if entity["id"] not in bucket:
            raise ResourceNotFound(f"Entity {entity['id']} not found")
        bucket[entity["id"]] = (bucket[entity["id"]][0], copy.deepcopy(entity))

    def delete(self, tenant: str, entity_id: str) -> bool:
        return self._entities.get(tenant, {}).pop(entity_id, None) is not None

    def scan(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        rows = sorted(self._entities.get(tenant, {}).values(), key=lambda row: row[0])
        for pk, entity in rows:
            if pk <= scan.after_pk:
                continue
            if scan.ids is not None and entity["id"] not in scan.ids:
                continue
            index = index_rows(entity)
            if scan.types_any is not None and not index.types & scan.types_any:
                continue
            if scan.attrs_any is not None and not {a for a, _ in index.attrs} & scan.attrs_any:
                continue
            if scan.geo_bbox is not None and not any(
                attr == scan.geo_attr and _boxes_intersect(box, scan.geo_bbox)
                for attr, box in index.boxes
            ):
                continue
            yield pk, copy.deepcopy(entity)

    def count_all(self, tenant: str) -> int:
        return len(self._entities.get(tenant, {}))

    def attribute_usage(self, tenant: str) -> list[AttributeUsage]:
        counts: Counter[tuple[str, str, str]] = Counter()
        for _, entity in self._entities.get(tenant, {}).values():
            index = index_rows(entity)
            for type_iri in index.types:
                for attr, kind in index.attrs:
                    counts[(type_iri, attr, kind)] += 1
        return [AttributeUsage(t, a, k, n) for (t, a, k), n in counts.items()]

    def type_counts(self, tenant: str) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for _, entity in self._entities.get(tenant, {}).values():
            counts.update(set(entity.get("type", ())))
        return dict(counts)

    def tenant_exists(self, tenant: str) -> bool:
        return tenant == DEFAULT_TENANT or tenant in self._entities

    def list_tenants(self) -> list[str]:
        return sorted(set(self._entities) | {DEFAULT_TENANT})

    def close(self) -> None:
        self._entities.clear()


def _boxes_intersect(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]
