"""Persistent subscriptions and notification outbox: one SQLite file beside the entities.

Why a file of its own: the entity database is written on every request, the outbox
on every notification; separate files keep their write locks apart. Records are
opaque JSON documents to this layer (the broker owns their meaning); tenants are
separate namespaces through the ``tenant`` column.

The outbox holds notifications that were generated but not yet delivered: a row is
written before delivery starts and deleted once the endpoint accepted it, so a
restart delivers again what was queued (at-least-once).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    payload BLOB NOT NULL
);
-- The outbox is read whole at start-up and deleted from by seq; an index by
-- subscription would only slow down its thousands of inserts and deletes a second.
DROP INDEX IF EXISTS outbox_by_subscription;
"""


class SqliteSubscriptionStore:
    """Subscriptions and their outbox in one SQLite file (WAL, used from one thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # ------------------------------------------------------------- subscriptions

    def save(self, tenant: str, sub_id: str, record: dict[str, Any]) -> None:
        """Insert or replace a subscription record (creation order is kept)."""
        self._db.execute(
            "INSERT INTO subscriptions (tenant, id, seq, record) VALUES (?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM subscriptions), ?) "
            "ON CONFLICT (tenant, id) DO UPDATE SET record = excluded.record",
            (tenant, sub_id, orjson.dumps(record)),
        )

    def delete(self, tenant: str, sub_id: str) -> None:
        """Delete a subscription and its undelivered notifications."""
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM subscriptions WHERE tenant = ? AND id = ?", (tenant, sub_id))
        self._db.execute(
            "DELETE FROM outbox WHERE tenant = ? AND subscription_id = ?", (tenant, sub_id)
        )
        self._db.execute("COMMIT")

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every subscription record as ``(tenant, record)``, in creation order."""
        rows = self._db.execute("SELECT tenant, record FROM subscriptions ORDER BY seq")
        return [(tenant, orjson.loads(record)) for tenant, record in rows]

    # -------------------------------------------------------------------- outbox

    def enqueue(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        """Add ``(seq, tenant, subscription_id, payload)`` notifications in one transaction.

        The caller numbers them (see :meth:`last_seq`): it needs the numbers at once to
        delete the rows after delivery, and one process owns the file.
        """
        if not rows:
            return
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO outbox (seq, tenant, subscription_id, payload) VALUES (?, ?, ?, ?)", rows
        )
        self._db.execute("COMMIT")

    def last_seq(self) -> int:
        """The highest sequence number ever given to an outbox row (0 if none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        newest = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()
        return max(int(row[0]) if row else 0, int(newest[0] or 0))

    def load_outbox(self) -> list[tuple[int, str, str, bytes]]:
        """Every undelivered notification as ``(seq, tenant, subscription_id, payload)``,
        oldest first."""
        rows = self._db.execute(
            "SELECT seq, tenant, subscription_id, payload FROM outbox ORDER BY seq"
        )
        return [(int(seq), tenant, sub_id, bytes(payload)) for seq, tenant, sub_id, payload in rows]

    def settle(self, seqs: list[int], records: list[tuple[str, str, dict[str, Any]]]) -> None:
        """In one transaction: forget delivered (or dropped) notifications and save
        subscription records ``(tenant, id, record)`` of subscriptions that still exist."""
        if not seqs and not records:
            return
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
        self._db.executemany(
            "UPDATE subscriptions SET record = ? WHERE tenant = ? AND id = ?",
            [(orjson.dumps(record), tenant, sub_id) for tenant, sub_id, record in records],
        )
        self._db.execute("COMMIT")
