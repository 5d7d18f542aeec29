"""An in-memory ``Storage`` for tests and throw-away runs; same contract as the SQLite backend."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from cityos.broker.model import AttributeInstance, StoredEntity
from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.core.timeutil import now_iso
from cityos.storage.base import (
    DEFAULT_TENANT,
    INSTANCE_ID_PREFIX,
    AggregatedHistory,
    AttributeUsage,
    EntityScan,
    HistoryRow,
    HistoryScan,
    aggregation_bounds,
    bucket_values,
    changed_instances,
    index_rows,
    instance_time_ms,
    numeric_value,
)
from cityos.storage.ingest_memory import IngestState, MemoryIngestTables


class _TemporalEntity:
    """The history of one entity: its last known types and its rows."""

    def __init__(self, types: list[str]) -> None:
        self.types = list(types)
        self.rows: list[HistoryRow] = []


class MemoryStorage(MemoryIngestTables):
    """Entities in dicts, keyed by tenant then id; pks are a global insertion counter."""

    def __init__(self) -> None:
        self._entities: dict[str, dict[str, tuple[int, StoredEntity]]] = {}
        self._next_pk = 1
        self._snapshot: dict[str, dict[str, tuple[int, StoredEntity]]] | None = None
        self._history: dict[tuple[str, str], _TemporalEntity] = {}
        self._history_snapshot: dict[tuple[str, str], _TemporalEntity] | None = None
        self._next_seq = 1
        self._ingest = IngestState()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._snapshot is not None:
            yield
            return
        self._snapshot = copy.deepcopy(self._entities)
        self._history_snapshot = copy.deepcopy(self._history)
        ingest_snapshot = copy.deepcopy(self._ingest)
        try:
            yield
        except BaseException:
            self._entities = self._snapshot
            assert self._history_snapshot is not None
            self._history = self._history_snapshot
            self._ingest = ingest_snapshot
            raise
        finally:
            self._snapshot = None
            self._history_snapshot = None

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
        self._record(
            tenant, entity, changed_instances(None, entity, entity.get("modifiedAt") or now_iso())
        )

    def update(self, tenant: str, entity: StoredEntity) -> StoredEntity:
        bucket = self._entities.get(tenant, {})
        if entity["id"] not in bucket:
            raise ResourceNotFound(f"Entity {entity['id']} not found")
        old = bucket[entity["id"]][1]
        bucket[entity["id"]] = (bucket[entity["id"]][0], copy.deepcopy(entity))
        now = entity.get("modifiedAt") or now_iso()
        self._record(tenant, entity, changed_instances(old, entity, now))
        return copy.deepcopy(old)

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        with self.transaction():
            for old, new in changes:
                if old is None:
                    self.insert(tenant, new)
                else:
                    self.update(tenant, new)

    def delete(self, tenant: str, entity_id: str) -> bool:
        found = self._entities.get(tenant, {}).pop(entity_id, None)
        if found is None:
            return False
        self._record(tenant, found[1], changed_instances(found[1], None, now_iso()))
        return True

    # -- temporal history -------------------------------------------------------------

    def _record(
        self, tenant: str, entity: StoredEntity, rows: list[tuple[str, AttributeInstance]]
    ) -> None:
        self.append_history(tenant, entity["id"], entity["type"], rows)

    def history(self, tenant: str, entity_id: str, scan: HistoryScan) -> list[HistoryRow]:
        found = self._history.get((tenant, entity_id))
        if found is None:
            return []
        by_attr: dict[str, list[HistoryRow]] = {}
        for row in found.rows:
            if scan.attrs is not None and row.attr_iri not in scan.attrs:
                continue
            if scan.start_ms is not None and row.time_ms < scan.start_ms:
                continue
            if scan.end_ms is not None and row.time_ms >= scan.end_ms:
                continue
            by_attr.setdefault(row.attr_iri, []).append(row)
        out: list[HistoryRow] = []
        for attr_iri in sorted(by_attr):
            rows = sorted(by_attr[attr_iri], key=lambda r: (r.time_ms, _seq(r.instance_id)))
            if scan.last_n is not None:
                rows = rows[-scan.last_n :] if scan.last_n else []
            out.extend(copy.deepcopy(rows))
        return out

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
        rows = self.history(
            tenant,
            entity_id,
            HistoryScan(attrs=frozenset({attr_iri}), start_ms=start_ms, end_ms=end_ms),
        )
        timed = [(row.time_ms, numeric_value(row.instance)) for row in rows]
        numbers = [(t, v) for t, v in timed if v is not None]
        if not numbers or len(numbers) != len(timed):
            return None
        origin, period = aggregation_bounds(
            (numbers[0][0], numbers[-1][0]), start_ms, end_ms, period_ms
        )
        return AggregatedHistory(
            origin, period, bucket_values(numbers, origin, period, distinct=distinct)
        )

    def temporal_types(self, tenant: str, entity_id: str) -> list[str] | None:
        found = self._history.get((tenant, entity_id))
        return None if found is None else list(found.types)

    def append_history(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        rows: list[tuple[str, AttributeInstance]],
    ) -> list[str]:
        found = self._history.setdefault((tenant, entity_id), _TemporalEntity(types))
        found.types = list(types)
        ids = []
        for attr_iri, instance in rows:
            instance_id = f"{INSTANCE_ID_PREFIX}{self._next_seq}"
            self._next_seq += 1
            time_ms = instance_time_ms(instance)
            if "observedAt" in instance:
                found.rows = [
                    row
                    for row in found.rows
                    if not (
                        row.attr_iri == attr_iri
                        and row.time_ms == time_ms
                        and row.instance.get("datasetId") == instance.get("datasetId")
                        and "deletedAt" not in row.instance
                    )
                ]
            found.rows.append(
                HistoryRow(
                    attr_iri, instance_time_ms(instance), instance_id, copy.deepcopy(instance)
                )
            )
            ids.append(instance_id)
        return ids

    def delete_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str | None = None,
        *,
        dataset_id: str | None = None,
        all_datasets: bool = True,
    ) -> int:
        found = self._history.get((tenant, entity_id))
        if found is None:
            return 0
        if attr_iri is None:
            del self._history[(tenant, entity_id)]
            return len(found.rows) + 1
        kept = [
            row
            for row in found.rows
            if row.attr_iri != attr_iri
            or (not all_datasets and row.instance.get("datasetId") != dataset_id)
        ]
        count = len(found.rows) - len(kept)
        found.rows = kept
        return count

    def replace_history_instance(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        instance_id: str,
        instance: AttributeInstance,
    ) -> bool:
        found = self._history.get((tenant, entity_id))
        for index, row in enumerate(found.rows if found else []):
            if row.attr_iri == attr_iri and row.instance_id == instance_id:
                assert found is not None
                found.rows[index] = HistoryRow(
                    attr_iri, instance_time_ms(instance), instance_id, copy.deepcopy(instance)
                )
                return True
        return False

    def delete_history_instance(
        self, tenant: str, entity_id: str, attr_iri: str, instance_id: str
    ) -> bool:
        found = self._history.get((tenant, entity_id))
        for index, row in enumerate(found.rows if found else []):
            if row.attr_iri == attr_iri and row.instance_id == instance_id:
                assert found is not None
                del found.rows[index]
                return True
        return False

    def expire_history(self, type_iri: str, before_ms: int) -> int:
        count = 0
        for found in self._history.values():
            if type_iri in found.types:
                kept = [row for row in found.rows if row.time_ms >= before_ms]
                count += len(found.rows) - len(kept)
                found.rows = kept
        return count

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


def _seq(instance_id: str) -> int:
    return int(instance_id.removeprefix(INSTANCE_ID_PREFIX))


def _boxes_intersect(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]
