"""``cityos db copy``: move a whole installation between SQLite and PostgreSQL.

What moves: the entities of every tenant, their history with its instance ids and
times, the tenants, API keys, @contexts (hosted, implicitly created, cached),
subscriptions with their delivery status, and the undelivered notifications.

How (why, not what):
- Entities go through the ``Storage`` protocol (each backend builds its own index
  rows, R*Tree or PostGIS), in source insertion order, in transactions of a batch.
  Inserting records history in the target, so that generated history is wiped and the
  source's history rows are copied as they are, seq (the instance id) and time
  included: the storage protocol cannot write a row with a given instance id.
- History rows are read and written by the small dialect adapters below, the one
  place that knows both history schemas. The PostgreSQL instance sequence is moved past
  the copied ids, so new instances never reuse one.
- Keys, documents, subscriptions and the outbox go through their store protocols.
  Copied outbox rows belong to no live process, so the first server to start on a
  PostgreSQL target delivers them; on SQLite the next server does.
- A target that holds anything is refused unless ``force``, which empties it first
  (PostgreSQL: every cityos table; SQLite: the installation's files are removed).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from cityos.storage import postgres
from cityos.storage.base import EntityScan, TemporalStorage
from cityos.storage.postgres import PostgresStorage, is_postgres_url
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.state_stores import (
    StateStores,
    open_state_stores,
    sqlite_key_path,
    sqlite_subscription_path,
)

Progress = Callable[[str, int, int | None], None]
"""``progress(table, rows_done_now, total_or_None)``: called as rows are copied."""

_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEPT_TABLES = ("schema_version", "spatial_ref_sys")


class TransferError(RuntimeError):
    """The copy cannot start (bad URL, missing source, non-empty target)."""


@dataclass(frozen=True)
class HistoryRecord:
    """One history row as both dialects can hold it."""

    tenant: str
    entity_id: str
    types: list[str]
    attr_iri: str
    time_ms: int
    seq: int
    doc: bytes
    value_num: float | None


def sqlite_path_of(url: str) -> Path:
    """The main SQLite file a ``sqlite:///path`` URL names; ``TransferError`` otherwise."""
    if not url.startswith("sqlite:///"):
        raise TransferError(
            f"Not a database URL: {url!r} (use sqlite:///path/cityos.sqlite3 or postgresql://...)"
        )
    return Path(url.removeprefix("sqlite:///"))


# ------------------------------------------------------------------ history adapters


def _sqlite_history(path: Path) -> Iterator[HistoryRecord]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT e.tenant, e.id, e.types, a.iri, t.time_ms, t.seq, t.doc, t.value_num "
            "FROM temporal t JOIN temporal_entities e ON e.tpk = t.tpk "
            "JOIN temporal_attrs a ON a.aid = t.aid ORDER BY t.seq"
        )
        for tenant, entity_id, types, iri, time_ms, seq, doc, num in rows:
            yield HistoryRecord(
                tenant, entity_id, orjson.loads(types), iri, time_ms, seq, bytes(doc), num
            )
    finally:
        db.close()


def _postgres_history(url: str) -> Iterator[HistoryRecord]:
    with psycopg.connect(url) as conn, conn.cursor(name="cityos_copy_history") as cursor:
        cursor.execute(
            "SELECT e.tenant, e.id, e.types, a.iri, "
            "(extract(epoch FROM t.time) * 1000)::bigint, t.seq, t.doc, t.value_num "
            "FROM temporal t JOIN temporal_entities e ON e.tpk = t.tpk "
            "JOIN temporal_attrs a ON a.aid = t.aid ORDER BY t.seq"
        )
        for tenant, entity_id, types, iri, time_ms, seq, doc, num in cursor:
            yield HistoryRecord(
                tenant, entity_id, list(types), iri, int(time_ms), int(seq), bytes(doc), num
            )


def _sqlite_write_history(path: Path, rows: Iterator[HistoryRecord], progress: Progress) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM temporal")
        db.execute("DELETE FROM temporal_entities")
        db.execute("DELETE FROM temporal_attrs")
        tpks: dict[tuple[str, str], int] = {}
        aids: dict[str, int] = {}
        for row in rows:
            key = (row.tenant, row.entity_id)
            tpk = tpks.get(key)
            if tpk is None:
                cursor = db.execute(
                    "INSERT INTO temporal_entities (tenant, id, types) VALUES (?, ?, ?)",
                    (row.tenant, row.entity_id, orjson.dumps(row.types)),
                )
                assert cursor.lastrowid is not None
                tpk = tpks[key] = cursor.lastrowid
            aid = aids.get(row.attr_iri)
            if aid is None:
                cursor = db.execute("INSERT INTO temporal_attrs (iri) VALUES (?)", (row.attr_iri,))
                assert cursor.lastrowid is not None
                aid = aids[row.attr_iri] = cursor.lastrowid
            db.execute(
                "INSERT INTO temporal (tpk, aid, time_ms, seq, doc, value_num) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (tpk, aid, row.time_ms, row.seq, row.doc, row.value_num),
            )
            progress("history", 1, None)
        db.execute("COMMIT")
    finally:
        db.close()


def _postgres_write_history(url: str, rows: Iterator[HistoryRecord], progress: Progress) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE temporal, temporal_entities, temporal_attrs RESTART IDENTITY")
        months = postgres.history_partitions(conn)
        tpks: dict[tuple[str, str], int] = {}
        aids: dict[str, int] = {}
        top_seq = 0
        batch: list[HistoryRecord] = []

        def flush() -> None:
            for month in {postgres.month_of(row.time_ms) for row in batch} - months:
                postgres.create_history_partition(conn, month)
                months.add(month)
            with conn.transaction(), conn.cursor() as cursor:
                for row in batch:
                    key = (row.tenant, row.entity_id)
                    if key not in tpks:
                        found = cursor.execute(
                            "INSERT INTO temporal_entities (tenant, id, types) "
                            "VALUES (%s, %s, %s) RETURNING tpk",
                            (row.tenant, row.entity_id, row.types),
                        ).fetchone()
                        assert found is not None
                        tpks[key] = int(found[0])
                    if row.attr_iri not in aids:
                        found = cursor.execute(
                            "INSERT INTO temporal_attrs (iri) VALUES (%s) RETURNING aid",
                            (row.attr_iri,),
                        ).fetchone()
                        assert found is not None
                        aids[row.attr_iri] = int(found[0])
                with cursor.copy(
                    "COPY temporal (tpk, aid, time, seq, dataset_id, deleted, doc, value_num) "
                    "FROM STDIN"
                ) as copy:
                    for row in batch:
                        instance: dict[str, Any] = orjson.loads(row.doc)
                        copy.write_row(
                            (
                                tpks[(row.tenant, row.entity_id)],
                                aids[row.attr_iri],
                                _EPOCH + timedelta(milliseconds=row.time_ms),
                                row.seq,
                                instance.get("datasetId"),
                                "deletedAt" in instance,
                                row.doc,
                                row.value_num,
                            )
                        )
            progress("history", len(batch), None)
            batch.clear()

        for row in rows:
            batch.append(row)
            top_seq = max(top_seq, row.seq)
            if len(batch) >= 5000:
                flush()
        if batch:
            flush()
        if top_seq:
            conn.execute(
                "SELECT setval('temporal_seq', "
                "GREATEST(%s, (SELECT last_value FROM temporal_seq)))",
                (top_seq,),
            )


# ---------------------------------------------------------------- an installation


@dataclass
class Installation:
    """The storage and state stores of one installation, opened for the copy."""

    url: str
    storage: TemporalStorage
    state: StateStores

    @property
    def is_postgres(self) -> bool:
        return is_postgres_url(self.url)

    def history(self) -> Iterator[HistoryRecord]:
        if self.is_postgres:
            return _postgres_history(self.url)
        return _sqlite_history(sqlite_path_of(self.url))

    def _history_count(self) -> int:
        if self.is_postgres:
            with psycopg.connect(self.url) as conn:
                row = conn.execute("SELECT count(*) FROM temporal").fetchone()
        else:
            db = sqlite3.connect(sqlite_path_of(self.url))
            try:
                row = db.execute("SELECT count(*) FROM temporal").fetchone()
            finally:
                db.close()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        """How many rows of each kind the installation holds."""
        tenants = self.storage.list_tenants()
        return {
            "entities": sum(self.storage.count_all(tenant) for tenant in tenants),
            "history": self._history_count(),
            "keys": len(self.state.keys.export_keys()),
            "contexts": len(self.state.contexts.items()),
            "subscriptions": len(self.state.subscriptions.load_all()),
            "outbox": len(self.state.subscriptions.outbox()),
        }

    def close(self) -> None:
        self.storage.close()
        self.state.close()


def open_installation(url: str, *, create: bool) -> Installation:
    """Open the installation at ``url`` (upgrading its schema). Without ``create`` a
    SQLite installation must exist already."""
    if not is_postgres_url(url) and not create and not sqlite_path_of(url).exists():
        raise TransferError(f"No SQLite database at {sqlite_path_of(url)}")
    storage = _open_storage(url)
    try:
        if is_postgres_url(url):
            return Installation(url, storage, open_state_stores(url, Path("unused")))
        return Installation(url, storage, open_state_stores(None, sqlite_path_of(url)))
    except BaseException:
        storage.close()
        raise


def _open_storage(url: str) -> TemporalStorage:
    if is_postgres_url(url):
        return PostgresStorage(url, upgrade=True)
    return SqliteStorage(sqlite_path_of(url))


def empty_installation(url: str) -> None:
    """Remove everything cityos keeps at ``url`` (its schema stays on PostgreSQL)."""
    if is_postgres_url(url):
        with psycopg.connect(url, autocommit=True) as conn:
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
                    "AND NOT c.relispartition AND c.relname <> ALL(%s)",
                    (list(_KEPT_TABLES),),
                ).fetchall()
            ]
            if tables:
                conn.execute(
                    sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                        sql.SQL(", ").join(map(sql.Identifier, tables))
                    )
                )
        return
    path = sqlite_path_of(url)
    for file in (path, sqlite_key_path(path), sqlite_subscription_path(path)):
        for suffix in ("", "-wal", "-shm"):
            file.with_name(file.name + suffix).unlink(missing_ok=True)


def copy_installation(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copy the installation at ``source_url`` to ``target_url``; return the rows copied
    per kind. ``TransferError`` when the target holds data and ``force`` is not given."""
    report: Progress = progress or (lambda table, done, total: None)
    if source_url == target_url:
        raise TransferError("The source and the target are the same database")
    source = open_installation(source_url, create=False)
    try:
        target = open_installation(target_url, create=True)
        held = {kind: count for kind, count in target.counts().items() if count}
        if held:
            target.close()
            if not force:
                summary = ", ".join(f"{kind} {count}" for kind, count in held.items())
                raise TransferError(
                    f"The target is not empty ({summary}); use --force to replace its data"
                )
            empty_installation(target_url)
            target = open_installation(target_url, create=True)
        try:
            return _copy(source, target, report)
        finally:
            target.close()
    finally:
        source.close()


def _copy(source: Installation, target: Installation, progress: Progress) -> dict[str, int]:
    counts = source.counts()
    copied = dict.fromkeys(counts, 0)

    def count(table: str, done: int, total: int | None) -> None:
        copied[table] += done
        progress(table, done, counts[table] if total is None else total)

    count("entities", 0, None)
    for tenant in source.storage.list_tenants():
        batch = []
        for _, entity in source.storage.scan(tenant, EntityScan()):
            batch.append(entity)
            if len(batch) >= _BATCH:
                _insert(target.storage, tenant, batch)
                count("entities", len(batch), None)
                batch = []
        if batch:
            _insert(target.storage, tenant, batch)
            count("entities", len(batch), None)
    tenants = source.storage.list_tenants()
    target.storage.close()
    _copy_tenants(target.url, tenants)
    count("history", 0, None)
    if target.is_postgres:
        _postgres_write_history(target.url, source.history(), count)
    else:
        _sqlite_write_history(sqlite_path_of(target.url), source.history(), count)
    # Reopened: the backends cache history ids (attributes, next instance seq) on open.
    target.storage = _open_storage(target.url)

    keys = source.state.keys.export_keys()
    target.state.keys.import_keys(keys)
    count("keys", len(keys), None)
    for key, document in source.state.contexts.items():
        target.state.contexts.put(key, document)
        count("contexts", 1, None)
    subscriptions = source.state.subscriptions
    for tenant, record in subscriptions.load_all():
        target.state.subscriptions.save(tenant, record["id"], record, new=True)
        count("subscriptions", 1, None)
    outbox = subscriptions.outbox()
    for start in range(0, len(outbox), _BATCH):
        rows = outbox[start : start + _BATCH]
        target.state.subscriptions.enqueue(
            [(row.tenant, row.subscription_id, row.payload) for row in rows]
        )
        count("outbox", len(rows), None)
    target.state.subscriptions.release()
    return copied


def _insert(storage: TemporalStorage, tenant: str, entities: list[Any]) -> None:
    with storage.transaction():
        for entity in entities:
            storage.insert(tenant, entity)


def _copy_tenants(url: str, tenants: list[str]) -> None:
    """Tenants that hold only history (or nothing any more) exist in the target too."""
    if is_postgres_url(url):
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tenants (name) VALUES (%s) ON CONFLICT DO NOTHING",
                [(t,) for t in tenants],
            )
        return
    db = sqlite3.connect(sqlite_path_of(url), isolation_level=None)
    try:
        db.executemany("INSERT OR IGNORE INTO tenants (name) VALUES (?)", [(t,) for t in tenants])
    finally:
        db.close()
