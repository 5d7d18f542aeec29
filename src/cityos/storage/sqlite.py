"""The embedded default backend: one SQLite file in WAL mode with an R*Tree for geometry.

Design notes (why, not what):
- One connection, used from the event-loop thread. SQLite serialises writers anyway,
  and a single-entity operation takes tens of microseconds, less than a thread hop.
- ``synchronous=NORMAL`` in WAL mode: a commit survives a process crash; only an OS
  crash or power loss can lose the last transactions, the usual embedded trade-off.
- The schema comes from ``migrations/sqlite`` (:func:`upgrade_schema`), applied on open.
- Documents are orjson bytes; index tables carry the tenant so every index lookup
  is tenant-scoped without a join.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from cityos.broker.model import StoredEntity
from cityos.core.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.storage.base import (
    DEFAULT_TENANT,
    AttributeUsage,
    EntityScan,
    IndexRows,
    index_rows,
)
from cityos.storage.migrations import load_migrations

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


def upgrade_schema(db: sqlite3.Connection, *, target: int | None = None) -> list[int]:
    """Apply the pending SQLite migrations up to ``target`` (default: all); return those applied.

    Each migration runs in its own transaction together with the new version number, so
    a failure leaves the database at the last version that applied cleanly.
    ``schema_version`` holds a single row, as it did before migrations existed.
    """
    current = schema_version(db)
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


class SqliteStorage:
    """``Storage`` on one SQLite file. See :class:`cityos.storage.base.Storage`."""

    def __init__(self, path: Path, *, cache_mb: int = 64) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        self._tenants = {row[0] for row in db.execute("SELECT name FROM tenants")}

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
                raise
            self._depth -= 1
            if outermost:
                self._db.execute("COMMIT")

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
            if tenant not in self._tenants:
                self._db.execute("INSERT OR IGNORE INTO tenants VALUES (?)", (tenant,))
                self._tenants.add(tenant)

    def update(self, tenant: str, entity: StoredEntity) -> None:
        with self.transaction():
            row = self._db.execute(
                "SELECT pk, doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity["id"])
            ).fetchone()
            if row is None:
                raise ResourceNotFound(f"Entity {entity['id']} not found")
            pk, old_doc = row
            self._db.execute("UPDATE entities SET doc = ? WHERE pk = ?", (orjson.dumps(entity), pk))
            self._write_index(tenant, pk, index_rows(entity), index_rows(orjson.loads(old_doc)))

    def delete(self, tenant: str, entity_id: str) -> bool:
        with self.transaction():
            row = self._db.execute(
                "SELECT pk, doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
            ).fetchone()
            if row is None:
                return False
            pk, doc = row
            self._db.execute("DELETE FROM entities WHERE pk = ?", (pk,))
            self._db.execute("DELETE FROM entity_types WHERE pk = ?", (pk,))
            self._db.execute("DELETE FROM entity_attrs WHERE pk = ?", (pk,))
            self._delete_boxes(pk, len(index_rows(orjson.loads(doc)).boxes))
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

    def close(self) -> None:
        self._db.close()
