"""The embedded default backend: one SQLite file in WAL mode with an R*Tree for geometry.

Design notes (why, not what):
- One connection, used from the event-loop thread. SQLite serialises writers anyway,
  and a single-entity operation takes tens of microseconds, less than a thread hop.
- ``synchronous=NORMAL`` in WAL mode: a commit survives a process crash; only an OS
  crash or power loss can lose the last transactions, the usual embedded trade-off.
- The schema comes from ``migrations/sqlite`` (:func:`upgrade_schema`), applied on open.
- Documents are orjson bytes; index tables carry the tenant so every index lookup
  is tenant-scoped without a join.
- History (``temporal``) is a WITHOUT ROWID table whose primary key is
  (entity, attribute, time, seq): the rows of one attribute of one entity are stored
  together in time order, so a time range or a "last N" read is one B-tree seek and a
  contiguous scan, with no separate index to maintain on the write path. Entity ids and
  attribute IRIs are replaced by small integers (``temporal_entities``,
  ``temporal_attrs``) because they repeat in every row: a 60-byte IRI per row would
  triple the table at tens of millions of rows. ``seq`` makes instances unique (and
  is the instance id); finding an instance by id scans its attribute's rows, which
  is acceptable for the rare single-instance edits.
- ``value_num`` holds the instance's value when it is a plain number
  (:func:`~cityos.storage.base.numeric_value`), computed at write time, so aggregation
  runs in SQL (``GROUP BY`` period over the clustered range) without decoding a
  document; a range holding any other row is aggregated by the broker instead.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from cityos.broker.model import AttributeInstance, StoredEntity
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.core.timeutil import now_iso
from cityos.storage.base import (
    DEFAULT_TENANT,
    INSTANCE_ID_PREFIX,
    AggregatedHistory,
    AttributeUsage,
    EntityScan,
    HistoryBucket,
    HistoryRow,
    HistoryScan,
    IndexRows,
    aggregation_bounds,
    changed_instances,
    index_rows,
    instance_time_ms,
    numeric_value,
)
from cityos.storage.ingest_sqlite import SqliteIngestTables
from cityos.storage.migrations import load_migrations
from cityos.storage.sqlite_checkpoint import FALLBACK_AUTOCHECKPOINT_PAGES, WalCheckpointer

GEO_SLOTS = 256
"""R*Tree ids are ``pk * GEO_SLOTS + slot``: the entity is known from the id alone, which
keeps box scans on the R*Tree's own index (reading auxiliary columns is ~7x slower)."""
_FIRST_SCAN_BATCH = 64
_MAX_SCAN_BATCH = 4096


def schema_version(db: sqlite3.Connection) -> int:
    """The schema version recorded in ``db`` (0 for an empty database)."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


_INLINE_SCHEMA_2_IS = 3
"""The migration version whose schema equals the pre-migration inline schema version 2."""


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def upgrade_schema(db: sqlite3.Connection, *, target: int | None = None) -> list[int]:
    """Apply the pending SQLite migrations up to ``target`` (default: all); return those applied.

    Each migration runs in its own transaction together with the new version number, so
    a failure leaves the database at the last version that applied cleanly.
    ``schema_version`` holds a single row, as it did before migrations existed.

    Before migrations existed on SQLite, cityos kept an inline schema with its own
    numbers: its version 1 is entities plus history (our 0001 + 0002, which 0002 allows
    for with IF NOT EXISTS) and its version 2 added ``temporal.value_num`` (our 0003).
    So a file at "2" is either ours (no ``value_num``) or the inline one (which has it,
    filled at write time and by its own upgrade from 1): the column tells them apart,
    and the inline kind is recorded as 3 instead of failing on a duplicate column.
    """
    current = schema_version(db)
    if current == 2 and _has_column(db, "temporal", "value_num"):
        db.executescript(
            "BEGIN IMMEDIATE; DELETE FROM schema_version;"
            f" INSERT INTO schema_version VALUES ({_INLINE_SCHEMA_2_IS}); COMMIT;"
        )
        current = _INLINE_SCHEMA_2_IS
    applied: list[int] = []
    for migration in load_migrations("sqlite"):
        if migration.version <= current or (target is not None and migration.version > target):
            continue
        try:
            db.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\n"
                "DELETE FROM schema_version;\n"
                f"INSERT INTO schema_version VALUES ({migration.version});\nCOMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


class SqliteStorage(SqliteIngestTables):
    """``Storage`` on one SQLite file. See :class:`cityos.storage.base.Storage`."""

    def __init__(self, path: Path, *, cache_mb: int = 64) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._duty_files: dict[str, BinaryIO] = {}
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        self._lock = threading.RLock()
        self._depth = 0
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("PRAGMA busy_timeout=5000")
        # An embedded file has one user, so it is always brought up to date on open.
        upgrade_schema(db)
        # Checkpoints run on a thread of their own, not inside our commits (see there).
        db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT_PAGES}")
        self._checkpointer = WalCheckpointer(path)
        self._tenants = {row[0] for row in db.execute("SELECT name FROM tenants")}
        self._attr_ids: dict[str, int] = dict(db.execute("SELECT iri, aid FROM temporal_attrs"))
        self._attr_iris = {aid: iri for iri, aid in self._attr_ids.items()}
        self._next_seq = 1 + (db.execute("SELECT max(seq) FROM temporal").fetchone()[0] or 0)
        self._tpks: dict[tuple[str, str], int] = {}
        """Temporal entity keys known to exist (the bulk write path; see write_many)."""
        self._latest_ms: dict[tuple[int, int], int] = {}
        """For some (tpk, aid): no history row is later than this (an upper bound), so
        a newer observation cannot replace a row and needs no lookup (see write_many)."""

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outermost = self._depth == 0
            if outermost:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outermost:
                    self._db.execute("ROLLBACK")
                    # Attribute ids assigned in the rolled-back transaction are gone too.
                    self._attr_ids = dict(self._db.execute("SELECT iri, aid FROM temporal_attrs"))
                    self._attr_iris = {aid: iri for iri, aid in self._attr_ids.items()}
                    self._tpks.clear()
                    self._latest_ms.clear()
                raise
            self._depth -= 1
            if outermost:
                self._db.execute("COMMIT")
                self._checkpointer.committed()

    # -- reads ----------------------------------------------------------------------

    def get(self, tenant: str, entity_id: str) -> StoredEntity | None:
        row = self._db.execute(
            "SELECT doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def get_many(self, tenant: str, entity_ids: list[str]) -> dict[str, StoredEntity]:
        found: dict[str, StoredEntity] = {}
        for start in range(0, len(entity_ids), 500):
            chunk = entity_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for entity_id, doc in self._db.execute(
                f"SELECT id, doc FROM entities WHERE tenant = ? AND id IN ({marks})",
                (tenant, *chunk),
            ):
                found[entity_id] = orjson.loads(doc)
        return found

    def scan(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        if scan.geo_bbox is not None:
            yield from self._scan_by_box(tenant, scan)
            return
        sql, params = self._scan_sql(tenant, scan)
        after = scan.after_pk
        # Small first page: most queries stop after ``limit`` matches, so reading
        # hundreds of documents up front would be wasted work.
        batch = _FIRST_SCAN_BATCH
        while True:
            rows = self._db.execute(sql, (*params, after, batch)).fetchall()
            for pk, doc in rows:
                yield pk, orjson.loads(doc)
            if len(rows) < batch:
                return
            after = rows[-1][0]
            batch = min(batch * 4, _MAX_SCAN_BATCH)

    def _scan_by_box(self, tenant: str, scan: EntityScan) -> Iterator[tuple[int, StoredEntity]]:
        """Geo candidates: the pks of boxes that intersect, in order, then their documents.

        The box query touches only the R*Tree, never documents, so it
        stays fast however large the table; documents are read a page at a time because
        the caller usually stops after ``limit`` matches. Boxes of other attributes are
        candidates too: the broker's exact geo test looks at ``geo_attr`` only.
        """
        assert scan.geo_bbox is not None
        min_x, min_y, max_x, max_y = scan.geo_bbox
        # Only the R*Tree here: a per-row type probe would cost more than the few extra
        # documents it saves; types are checked on the documents below.
        sql = (
            f"SELECT gid / {GEO_SLOTS} FROM geo_rtree "
            "WHERE max_x >= ? AND min_x <= ? AND max_y >= ? AND min_y <= ?"
        )
        pks = sorted({row[0] for row in self._db.execute(sql, (min_x, max_x, min_y, max_y))})
        pks = [pk for pk in pks if pk > scan.after_pk]
        batch = _FIRST_SCAN_BATCH
        for start in range(0, len(pks), batch):
            chunk = pks[start : start + batch]
            marks = ",".join("?" * len(chunk))
            docs = dict(
                self._db.execute(
                    f"SELECT pk, doc FROM entities WHERE tenant = ? AND pk IN ({marks})",
                    (tenant, *chunk),
                ).fetchall()
            )
            for pk in chunk:
                if pk not in docs:
                    continue
                entity = orjson.loads(docs[pk])
                if scan.ids is not None and entity["id"] not in scan.ids:
                    continue
                if scan.attrs_any is not None and not scan.attrs_any & entity["attrs"].keys():
                    continue
                if scan.types_any is not None and not scan.types_any.intersection(entity["type"]):
                    continue
                yield pk, entity

    @staticmethod
    def _scan_sql(tenant: str, scan: EntityScan) -> tuple[str, list[object]]:
        """Build a keyset-paginated candidate query; the last two parameters are pk, limit.

        One type (the common case) drives the query through its index; otherwise the
        entities are walked in pk order (geo boxes go through :meth:`_scan_by_box`). The
        remaining criteria are index probes per candidate row, so SQLite never
        materialises a large set to intersect.
        """
        joins: list[str] = []
        where: list[str] = []
        params: list[object] = []
        driver = "entities"
        if scan.types_any is not None and len(scan.types_any) == 1 and scan.ids is None:
            driver = "type"
            joins.append("FROM entity_types t JOIN entities e ON e.pk = t.pk")
            where.append("t.tenant = ? AND t.type = ?")
            params.extend([tenant, next(iter(scan.types_any))])
        else:
            joins.append("FROM entities e")
        where.append("e.tenant = ?")
        params.append(tenant)
        if scan.ids is not None:
            where.append(f"e.id IN ({','.join('?' * len(scan.ids))})")
            params.extend(sorted(scan.ids))
        if scan.types_any is not None and driver != "type":
            marks = ",".join("?" * len(scan.types_any))
            where.append(
                "EXISTS (SELECT 1 FROM entity_types t2 WHERE t2.tenant = ? "
                f"AND t2.type IN ({marks}) AND t2.pk = e.pk)"
            )
            params.extend([tenant, *sorted(scan.types_any)])
        if scan.attrs_any is not None:
            marks = ",".join("?" * len(scan.attrs_any))
            where.append(
                "EXISTS (SELECT 1 FROM entity_attrs a WHERE a.tenant = ? "
                f"AND a.attr IN ({marks}) AND a.pk = e.pk)"
            )
            params.extend([tenant, *sorted(scan.attrs_any)])
        # Order by the driving table's pk so SQLite walks its index instead of sorting.
        order = "t.pk" if driver == "type" else "e.pk"
        sql = (
            f"SELECT e.pk, e.doc {' '.join(joins)} WHERE {' AND '.join(where)} "
            f"AND {order} > ? ORDER BY {order} LIMIT ?"
        )
        return sql, params

    def count_all(self, tenant: str) -> int:
        row = self._db.execute("SELECT count(*) FROM entities WHERE tenant = ?", (tenant,))
        return int(row.fetchone()[0])

    def attribute_usage(self, tenant: str) -> list[AttributeUsage]:
        rows = self._db.execute(
            "SELECT t.type, a.attr, a.kind, count(DISTINCT a.pk) FROM entity_attrs a "
            "JOIN entity_types t ON t.pk = a.pk AND t.tenant = a.tenant "
            "WHERE a.tenant = ? GROUP BY t.type, a.attr, a.kind",
            (tenant,),
        )
        return [AttributeUsage(*row) for row in rows]

    def type_counts(self, tenant: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT type, count(*) FROM entity_types WHERE tenant = ? GROUP BY type", (tenant,)
        )
        return {type_iri: count for type_iri, count in rows}

    def tenant_exists(self, tenant: str) -> bool:
        return tenant == DEFAULT_TENANT or tenant in self._tenants

    def list_tenants(self) -> list[str]:
        return sorted(self._tenants | {DEFAULT_TENANT})

    # -- writes ---------------------------------------------------------------------

    def insert(self, tenant: str, entity: StoredEntity) -> None:
        with self.transaction():
            try:
                cursor = self._db.execute(
                    "INSERT INTO entities (tenant, id, doc) VALUES (?, ?, ?)",
                    (tenant, entity["id"], orjson.dumps(entity)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"Entity {entity['id']} already exists") from None
            pk = cursor.lastrowid
            assert pk is not None
            self._write_index(tenant, pk, index_rows(entity), None)
            self._record(
                tenant,
                entity,
                changed_instances(None, entity, entity.get("modifiedAt") or now_iso()),
            )
            if tenant not in self._tenants:
                self._db.execute("INSERT OR IGNORE INTO tenants VALUES (?)", (tenant,))
                self._tenants.add(tenant)

    def update(self, tenant: str, entity: StoredEntity) -> StoredEntity:
        with self.transaction():
            row = self._db.execute(
                "SELECT pk, doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity["id"])
            ).fetchone()
            if row is None:
                raise ResourceNotFound(f"Entity {entity['id']} not found")
            pk, old_doc = row
            old: StoredEntity = orjson.loads(old_doc)
            self._db.execute("UPDATE entities SET doc = ? WHERE pk = ?", (orjson.dumps(entity), pk))
            self._write_index(tenant, pk, index_rows(entity), index_rows(old))
            now = entity.get("modifiedAt") or now_iso()
            self._record(tenant, entity, changed_instances(old, entity, now), old["type"])
            return old

    # -- bulk writes (sensor ingestion) ------------------------------------------------

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        """The lean path: an update whose index rows stay the same (a sensor's new
        values) is a document UPDATE and history INSERTs, each one ``executemany`` for
        the whole batch; finding the observations a row replaces is one indexed join per
        few hundred rows. Creations and index changes take the ordinary path, after the
        pending lean writes (so every write sees the ones before it)."""
        docs: list[tuple[bytes, str, str]] = []
        history: list[tuple[StoredEntity, list[tuple[str, AttributeInstance]]]] = []

        def flush() -> None:
            self._db.executemany("UPDATE entities SET doc = ? WHERE tenant = ? AND id = ?", docs)
            self._record_many(tenant, history)
            docs.clear()
            history.clear()

        with self.transaction():
            self.changed_elsewhere()
            for old, new in changes:
                if old is None or not _same_index_rows(old, new):
                    flush()
                    if old is None:
                        self.insert(tenant, new)
                    else:
                        self.update(tenant, new)
                    continue
                docs.append((orjson.dumps(new), tenant, new["id"]))
                now = new.get("modifiedAt") or now_iso()
                history.append((new, changed_instances(old, new, now)))
            flush()

    def _forget_cached_rows(self) -> None:
        """Drop what the bulk path remembers of history rows (another process wrote)."""
        self._tpks.clear()
        self._latest_ms.clear()

    def _record_many(
        self, tenant: str, items: list[tuple[StoredEntity, list[tuple[str, AttributeInstance]]]]
    ) -> None:
        """History rows of several entity writes whose types did not change."""
        items = [(entity, rows) for entity, rows in items if rows]
        if not items:
            return
        tpks = self._bulk_tpks(tenant, [entity for entity, _ in items])
        inserts: list[tuple[int, int, int, int, bytes, float | None]] = []
        observed: dict[tuple[int, int, int, str | None], int] = {}
        for entity, rows in items:
            tpk = tpks[entity["id"]]
            for attr_iri, instance in rows:
                aid = self._attr_id(attr_iri)
                time_ms = instance_time_ms(instance)
                if "observedAt" in instance:
                    # A later observation of the batch replaces an earlier one.
                    key = (tpk, aid, time_ms, instance.get("datasetId"))
                    earlier = observed.get(key)
                    if earlier is not None:
                        inserts[earlier] = (0, 0, 0, 0, b"", None)
                    if "deletedAt" not in instance:
                        observed[key] = len(inserts)
                seq = self._next_seq
                self._next_seq += 1
                inserts.append(
                    (tpk, aid, time_ms, seq, orjson.dumps(instance), numeric_value(instance))
                )
        self._delete_same_observations(self._possible_replacements(list(observed)))
        for tpk, aid, time_ms, _ in observed:
            self._note_time(tpk, aid, time_ms)
        self._db.executemany(
            "INSERT INTO temporal (tpk, aid, time_ms, seq, doc, value_num) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [row for row in inserts if row[0]],
        )

    def _bulk_tpks(self, tenant: str, entities: list[StoredEntity]) -> dict[str, int]:
        """Temporal entity keys of entities, from memory, one query, or new rows."""
        found: dict[str, int] = {}
        missing: list[str] = []
        for entity in entities:
            tpk = self._tpks.get((tenant, entity["id"]))
            if tpk is None:
                missing.append(entity["id"])
            else:
                found[entity["id"]] = tpk
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for entity_id, tpk in self._db.execute(
                f"SELECT id, tpk FROM temporal_entities WHERE tenant = ? AND id IN ({marks})",
                (tenant, *chunk),
            ):
                found[entity_id] = tpk
        for entity in entities:
            if entity["id"] not in found:
                found[entity["id"]] = self._temporal_pk(
                    tenant, entity["id"], entity["type"], types_changed=False
                )
        for entity_id, tpk in found.items():
            self._tpks[(tenant, entity_id)] = tpk
        return found

    def _note_time(self, tpk: int, aid: int, time_ms: int) -> None:
        latest = self._latest_ms.get((tpk, aid))
        if latest is not None and time_ms > latest:
            self._latest_ms[(tpk, aid)] = time_ms

    def _possible_replacements(
        self, keys: list[tuple[int, int, int, str | None]]
    ) -> list[tuple[int, int, int, str | None]]:
        """The observation keys that may have a stored row to replace: not later than
        every stored row of their attribute (the live case, a newer reading, has none)."""
        unknown = list({(tpk, aid) for tpk, aid, _, _ in keys} - self._latest_ms.keys())
        for start in range(0, len(unknown), 400):
            chunk = unknown[start : start + 400]
            values = ",".join(["(?, ?)"] * len(chunk))
            for tpk, aid, latest in self._db.execute(
                f"SELECT k.column1, k.column2, (SELECT max(t.time_ms) FROM temporal t "
                f"WHERE t.tpk = k.column1 AND t.aid = k.column2) FROM (VALUES {values}) AS k",
                [part for pair in chunk for part in pair],
            ):
                self._latest_ms[(tpk, aid)] = latest if latest is not None else -(2**62)
        return [key for key in keys if key[2] <= self._latest_ms[(key[0], key[1])]]

    def _delete_same_observations(self, keys: list[tuple[int, int, int, str | None]]) -> None:
        """Drop stored rows that observations about to be inserted replace."""
        doomed: list[tuple[int, int, int, int]] = []
        wanted = set(keys)
        for start in range(0, len(keys), 300):
            chunk = keys[start : start + 300]
            values = ",".join(["(?, ?, ?)"] * len(chunk))
            for tpk, aid, time_ms, seq, doc in self._db.execute(
                f"SELECT t.tpk, t.aid, t.time_ms, t.seq, t.doc FROM (VALUES {values}) AS k "
                "CROSS JOIN temporal t ON t.tpk = k.column1 AND t.aid = k.column2 "
                "AND t.time_ms = k.column3",
                [part for key in chunk for part in key[:3]],
            ):
                old = orjson.loads(doc)
                if "deletedAt" not in old and (tpk, aid, time_ms, old.get("datasetId")) in wanted:
                    doomed.append((tpk, aid, time_ms, seq))
        self._db.executemany(
            "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ? AND seq = ?", doomed
        )

    def delete(self, tenant: str, entity_id: str) -> bool:
        with self.transaction():
            row = self._db.execute(
                "SELECT pk, doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
            ).fetchone()
            if row is None:
                return False
            pk, doc = row
            old = orjson.loads(doc)
            self._db.execute("DELETE FROM entities WHERE pk = ?", (pk,))
            self._db.execute("DELETE FROM entity_types WHERE pk = ?", (pk,))
            self._db.execute("DELETE FROM entity_attrs WHERE pk = ?", (pk,))
            self._delete_boxes(pk, len(index_rows(old).boxes))
            self._record(tenant, old, changed_instances(old, None, now_iso()), old["type"])
            return True

    def _write_index(self, tenant: str, pk: int, new: IndexRows, old: IndexRows | None) -> None:
        """Bring the index rows of ``pk`` from ``old`` to ``new``, touching only what changed."""
        db = self._db
        old_types = old.types if old else frozenset()
        for type_iri in old_types - new.types:
            db.execute(
                "DELETE FROM entity_types WHERE tenant = ? AND type = ? AND pk = ?",
                (tenant, type_iri, pk),
            )
        db.executemany(
            "INSERT INTO entity_types (tenant, type, pk) VALUES (?, ?, ?)",
            [(tenant, type_iri, pk) for type_iri in new.types - old_types],
        )
        old_attrs = old.attrs if old else frozenset()
        for attr, kind in old_attrs - new.attrs:
            db.execute(
                "DELETE FROM entity_attrs WHERE tenant = ? AND attr = ? AND pk = ? AND kind = ?",
                (tenant, attr, pk, kind),
            )
        db.executemany(
            "INSERT INTO entity_attrs (tenant, attr, pk, kind) VALUES (?, ?, ?, ?)",
            [(tenant, attr, pk, kind) for attr, kind in new.attrs - old_attrs],
        )
        if old is not None and old.boxes == new.boxes:
            return
        if old is not None:
            self._delete_boxes(pk, len(old.boxes))
        if len(new.boxes) > GEO_SLOTS:
            raise BadRequestData(
                f"An entity may carry at most {GEO_SLOTS} geometries (GeoProperty instances)"
            )
        db.executemany(
            "INSERT INTO geo_rtree VALUES (?, ?, ?, ?, ?)",
            [
                (pk * GEO_SLOTS + slot, min_x, max_x, min_y, max_y)
                for slot, (_, (min_x, min_y, max_x, max_y)) in enumerate(new.boxes)
            ],
        )

    def _delete_boxes(self, pk: int, count: int) -> None:
        self._db.executemany(
            "DELETE FROM geo_rtree WHERE gid = ?",
            [(pk * GEO_SLOTS + slot,) for slot in range(count)],
        )

    # -- temporal history -------------------------------------------------------------

    def _record(
        self,
        tenant: str,
        entity: StoredEntity,
        rows: list[tuple[str, AttributeInstance]],
        old_types: list[str] | None = None,
    ) -> None:
        """Append history rows of an entity write (inside the caller's transaction).

        The temporal entity row is written only when the entity is new to history or its
        types changed, so a plain attribute update costs one INSERT per changed instance.
        """
        types: list[str] = entity["type"]
        if not rows and old_types == types:
            return
        tpk = self._temporal_pk(tenant, entity["id"], types, types_changed=old_types != types)
        self._insert_rows(tpk, rows)

    def _temporal_pk(
        self, tenant: str, entity_id: str, types: list[str], *, types_changed: bool
    ) -> int:
        row = self._db.execute(
            "SELECT tpk FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        if row is None:
            cursor = self._db.execute(
                "INSERT INTO temporal_entities (tenant, id, types) VALUES (?, ?, ?)",
                (tenant, entity_id, orjson.dumps(types)),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid
        if types_changed:
            self._db.execute(
                "UPDATE temporal_entities SET types = ? WHERE tpk = ?",
                (orjson.dumps(types), row[0]),
            )
        return int(row[0])

    def _find_tpk(self, tenant: str, entity_id: str) -> int | None:
        row = self._db.execute(
            "SELECT tpk FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        return None if row is None else int(row[0])

    def _attr_id(self, iri: str) -> int:
        aid = self._attr_ids.get(iri)
        if aid is None:
            self._db.execute("INSERT OR IGNORE INTO temporal_attrs (iri) VALUES (?)", (iri,))
            aid = int(
                self._db.execute("SELECT aid FROM temporal_attrs WHERE iri = ?", (iri,)).fetchone()[
                    0
                ]
            )
            self._attr_ids[iri] = aid
            self._attr_iris[aid] = iri
        return aid

    def _insert_rows(self, tpk: int, rows: list[tuple[str, AttributeInstance]]) -> list[str]:
        ids = []
        for attr_iri, instance in rows:
            seq = self._next_seq
            self._next_seq += 1
            aid = self._attr_id(attr_iri)
            time_ms = instance_time_ms(instance)
            if "observedAt" in instance:
                self._delete_same_observation(tpk, aid, time_ms, instance.get("datasetId"))
            # Inserted one by one: a later row of the same batch may replace an earlier one.
            self._db.execute(
                "INSERT INTO temporal (tpk, aid, time_ms, seq, doc, value_num) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (tpk, aid, time_ms, seq, orjson.dumps(instance), numeric_value(instance)),
            )
            self._note_time(tpk, aid, time_ms)
            ids.append(f"{INSTANCE_ID_PREFIX}{seq}")
        return ids

    def _delete_same_observation(
        self, tpk: int, aid: int, time_ms: int, dataset_id: str | None
    ) -> None:
        """Drop the row this observation replaces: one seek on the primary key."""
        for seq, doc in self._db.execute(
            "SELECT seq, doc FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ?",
            (tpk, aid, time_ms),
        ).fetchall():
            old = orjson.loads(doc)
            if old.get("datasetId") == dataset_id and "deletedAt" not in old:
                self._db.execute(
                    "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ? AND seq = ?",
                    (tpk, aid, time_ms, seq),
                )

    def _entity_attr_ids(self, tpk: int) -> list[int]:
        """The attributes with history, by skipping from one attribute's rows to the next
        (one seek each; a DISTINCT would read every row of the entity)."""
        aids: list[int] = []
        last = -1
        while True:
            row = self._db.execute(
                "SELECT aid FROM temporal WHERE tpk = ? AND aid > ? ORDER BY aid LIMIT 1",
                (tpk, last),
            ).fetchone()
            if row is None:
                return aids
            last = int(row[0])
            aids.append(last)

    def history(self, tenant: str, entity_id: str, scan: HistoryScan) -> list[HistoryRow]:
        tpk = self._find_tpk(tenant, entity_id)
        if tpk is None:
            return []
        if scan.attrs is not None:
            aids = sorted(self._attr_ids[iri] for iri in scan.attrs if iri in self._attr_ids)
        else:
            aids = self._entity_attr_ids(tpk)
        start = scan.start_ms if scan.start_ms is not None else -(2**62)
        end = scan.end_ms if scan.end_ms is not None else 2**62
        out: list[HistoryRow] = []
        for aid in aids:
            iri = self._attr_iris[aid]
            if scan.last_n is None:
                rows = self._db.execute(
                    "SELECT time_ms, seq, doc FROM temporal WHERE tpk = ? AND aid = ? "
                    "AND time_ms >= ? AND time_ms < ? ORDER BY time_ms, seq",
                    (tpk, aid, start, end),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT time_ms, seq, doc FROM temporal WHERE tpk = ? AND aid = ? "
                    "AND time_ms >= ? AND time_ms < ? ORDER BY time_ms DESC, seq DESC LIMIT ?",
                    (tpk, aid, start, end, scan.last_n),
                ).fetchall()
                rows.reverse()
            out.extend(
                HistoryRow(iri, time_ms, f"{INSTANCE_ID_PREFIX}{seq}", orjson.loads(doc))
                for time_ms, seq, doc in rows
            )
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
        tpk = self._find_tpk(tenant, entity_id)
        aid = self._attr_ids.get(attr_iri)
        if tpk is None or aid is None:
            return None
        start = start_ms if start_ms is not None else -(2**62)
        end = end_ms if end_ms is not None else 2**62
        # min and max are one seek each on the clustered key.
        first, last = self._db.execute(
            "SELECT min(time_ms), max(time_ms) FROM temporal "
            "WHERE tpk = ? AND aid = ? AND time_ms >= ? AND time_ms < ?",
            (tpk, aid, start, end),
        ).fetchone()
        if first is None:
            return None
        origin, period = aggregation_bounds((first, last), start_ms, end_ms, period_ms)
        distinct_sql = "count(DISTINCT value_num)" if distinct else "NULL"
        rows = self._db.execute(
            "SELECT (time_ms - ?) / ?, count(*), count(value_num), sum(value_num), "
            f"sum(value_num * value_num), min(value_num), max(value_num), {distinct_sql} "
            "FROM temporal WHERE tpk = ? AND aid = ? AND time_ms >= ? AND time_ms < ? "
            "GROUP BY 1 ORDER BY 1",
            (origin, period, tpk, aid, start, end),
        ).fetchall()
        if any(count != numeric for _, count, numeric, *_ in rows):
            return None
        return AggregatedHistory(
            origin,
            period,
            [
                HistoryBucket(index, count, total, total_sq, low, high, distinct_count)
                for index, count, _, total, total_sq, low, high, distinct_count in rows
            ],
        )

    def temporal_types(self, tenant: str, entity_id: str) -> list[str] | None:
        row = self._db.execute(
            "SELECT types FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        return None if row is None else list(orjson.loads(row[0]))

    def append_history(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        rows: list[tuple[str, AttributeInstance]],
    ) -> list[str]:
        with self.transaction():
            tpk = self._temporal_pk(tenant, entity_id, types, types_changed=False)
            return self._insert_rows(tpk, rows)

    def delete_history(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str | None = None,
        *,
        dataset_id: str | None = None,
        all_datasets: bool = True,
    ) -> int:
        with self.transaction():
            tpk = self._find_tpk(tenant, entity_id)
            if tpk is None:
                return 0
            if attr_iri is None:
                count = self._db.execute("DELETE FROM temporal WHERE tpk = ?", (tpk,)).rowcount
                self._db.execute("DELETE FROM temporal_entities WHERE tpk = ?", (tpk,))
                self._tpks.pop((tenant, entity_id), None)
                return count + 1
            aid = self._attr_ids.get(attr_iri)
            if aid is None:
                return 0
            if all_datasets:
                return int(
                    self._db.execute(
                        "DELETE FROM temporal WHERE tpk = ? AND aid = ?", (tpk, aid)
                    ).rowcount
                )
            doomed = [
                (time_ms, seq)
                for time_ms, seq, doc in self._db.execute(
                    "SELECT time_ms, seq, doc FROM temporal WHERE tpk = ? AND aid = ?", (tpk, aid)
                ).fetchall()
                if orjson.loads(doc).get("datasetId") == dataset_id
            ]
            self._db.executemany(
                "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ? AND seq = ?",
                [(tpk, aid, time_ms, seq) for time_ms, seq in doomed],
            )
            return len(doomed)

    def _locate(
        self, tenant: str, entity_id: str, attr_iri: str, instance_id: str
    ) -> tuple[int, int, int, int] | None:
        """(tpk, aid, time_ms, seq) of an instance, or ``None``."""
        seq = _instance_seq(instance_id)
        tpk = self._find_tpk(tenant, entity_id)
        aid = self._attr_ids.get(attr_iri)
        if seq is None or tpk is None or aid is None:
            return None
        row = self._db.execute(
            "SELECT time_ms FROM temporal WHERE tpk = ? AND aid = ? AND seq = ?", (tpk, aid, seq)
        ).fetchone()
        return None if row is None else (tpk, aid, int(row[0]), seq)

    def replace_history_instance(
        self,
        tenant: str,
        entity_id: str,
        attr_iri: str,
        instance_id: str,
        instance: AttributeInstance,
    ) -> bool:
        with self.transaction():
            found = self._locate(tenant, entity_id, attr_iri, instance_id)
            if found is None:
                return False
            tpk, aid, time_ms, seq = found
            self._db.execute(
                "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ? AND seq = ?",
                (tpk, aid, time_ms, seq),
            )
            self._note_time(tpk, aid, instance_time_ms(instance))
            self._db.execute(
                "INSERT INTO temporal (tpk, aid, time_ms, seq, doc, value_num) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tpk,
                    aid,
                    instance_time_ms(instance),
                    seq,
                    orjson.dumps(instance),
                    numeric_value(instance),
                ),
            )
            return True

    def delete_history_instance(
        self, tenant: str, entity_id: str, attr_iri: str, instance_id: str
    ) -> bool:
        with self.transaction():
            found = self._locate(tenant, entity_id, attr_iri, instance_id)
            if found is None:
                return False
            self._db.execute(
                "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms = ? AND seq = ?", found
            )
            return True

    def expire_history(self, type_iri: str, before_ms: int) -> int:
        type_json = orjson.dumps(type_iri).decode()
        tpks = [
            tpk
            for tpk, types in self._db.execute("SELECT tpk, types FROM temporal_entities")
            if type_json in types.decode() and type_iri in orjson.loads(types)
        ]
        count = 0
        with self.transaction():
            for tpk in tpks:
                # One range delete per attribute keeps each on the clustered key.
                for aid in self._entity_attr_ids(tpk):
                    count += self._db.execute(
                        "DELETE FROM temporal WHERE tpk = ? AND aid = ? AND time_ms < ?",
                        (tpk, aid, before_ms),
                    ).rowcount
        return count

    def close(self) -> None:
        self.release_duties()
        self._checkpointer.stop()
        self._db.close()


def _same_index_rows(old: StoredEntity, new: StoredEntity) -> bool:
    """True when ``new`` has the index rows of ``old`` (types, attribute kinds, geometry),
    judged without computing them: only attributes whose instance list changed are
    compared."""
    if old["type"] != new["type"]:
        return False
    old_attrs: dict[str, list[AttributeInstance]] = old["attrs"]
    new_attrs: dict[str, list[AttributeInstance]] = new["attrs"]
    if old_attrs.keys() != new_attrs.keys():
        return False
    for iri, instances in new_attrs.items():
        before = old_attrs[iri]
        if instances is before:
            continue
        if len(instances) != len(before):
            return False
        for now, then in zip(instances, before, strict=True):
            kind = now.get("type", "Property")
            if kind != then.get("type", "Property"):
                return False
            if kind == "GeoProperty" and now.get("value") != then.get("value"):
                return False
    return True


def _instance_seq(instance_id: str) -> int | None:
    tail = instance_id.removeprefix(INSTANCE_ID_PREFIX)
    if tail == instance_id or not tail.isdigit():
        return None
    return int(tail)
