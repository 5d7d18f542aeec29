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
- History rows are read and written by the dialect adapters of ``history_rows``, the
  one place that knows both history schemas. (An entity's record of types that has no
  history row left, after retention deleted them all, is not copied.) The PostgreSQL
  instance sequence is moved past the copied ids, so new instances never reuse one.
- Keys, documents, subscriptions and the outbox go through their store protocols.
  Copied outbox rows belong to no live process, so the first server to start on a
  PostgreSQL target delivers them; on SQLite the next server does.
- A target that holds anything is refused unless ``force``, which empties it first
  (PostgreSQL: every cityos table; SQLite: the installation's files are removed).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cityos.storage.base import EntityScan, TemporalStorage
from cityos.storage.history_rows import (
    HistoryRecord,
    Progress,
    read_postgres_history,
    read_sqlite_history,
    write_postgres_history,
    write_sqlite_history,
)
from cityos.storage.postgres import PostgresStorage, is_postgres_url
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.state_stores import (
    StateStores,
    open_state_stores,
    sqlite_key_path,
    sqlite_subscription_path,
)

_BATCH = 500
_KEPT_TABLES = ("schema_version", "spatial_ref_sys")


class TransferError(RuntimeError):
    """The copy cannot start (bad URL, missing source, non-empty target)."""


def sqlite_path_of(url: str) -> Path:
    """The main SQLite file a ``sqlite:///path`` URL names; ``TransferError`` otherwise."""
    if not url.startswith("sqlite:///"):
        raise TransferError(
            f"Not a database URL: {url!r} (use sqlite:///path/cityos.sqlite3 or postgresql://...)"
        )
    return Path(url.removeprefix("sqlite:///"))


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
            return read_postgres_history(self.url)
        return read_sqlite_history(sqlite_path_of(self.url))

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
        write_postgres_history(target.url, source.history(), count)
    else:
        write_sqlite_history(sqlite_path_of(target.url), source.history(), count)
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
