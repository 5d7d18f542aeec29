"""Persistent subscriptions and the notification outbox: the ``SubscriptionStore`` seam.

Records are opaque JSON documents to this layer (the broker owns their meaning), with
one exception: the ``delivery`` member (the notification status of NGSI-LD 5.2.14),
which several processes may update at once for the same subscription. Tenants are
separate namespaces through the ``tenant`` column.

The outbox holds notifications that were generated but not yet delivered: a row is
written before delivery starts and deleted once the endpoint accepted it, so a
restart delivers again what was queued (at-least-once).

Two implementations: :class:`SqliteSubscriptionStore` (one file beside the entities,
one process) and ``postgres_subscriptions.PostgresSubscriptionStore`` (shared by every
process of an installation; its module notes explain how each notification is sent
once across processes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

_Key = tuple[str, str]


@dataclass(frozen=True)
class OutboxRow:
    """One undelivered notification."""

    seq: int
    tenant: str
    subscription_id: str
    payload: bytes


@dataclass
class DeliveryReport:
    """What one process's delivery attempts for one subscription added since its last
    report, and the subscription's record as that process sees it.

    A store used by one process may simply write ``record`` (its in-memory copy is the
    truth); a shared store adds the counters and keeps the latest times instead, so that
    reports of several processes for the same subscription all count.
    """

    tenant: str
    subscription_id: str
    sent: int = 0
    failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None
    status: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    """The full record, for stores that are not ``shared`` (empty otherwise)."""

    def add_attempt(self, sent_at: str, *, ok: bool) -> None:
        """Count one attempt made at ``sent_at`` (fixed-width ISO time)."""
        self.sent += 1
        self.last_notification = sent_at
        self.status = "ok" if ok else "failed"
        if ok:
            self.last_success = sent_at
        else:
            self.failed += 1
            self.last_failure = sent_at


class SubscriptionStore(Protocol):
    """Subscriptions, their delivery status and the notification outbox.

    ``shared`` tells whether several processes use the store at once. The members
    marked "shared stores" matter only then; a one-process store answers them
    trivially (it owns every row, always leads, never loses a lease).
    """

    @property
    def shared(self) -> bool:
        """True when other processes use the same subscriptions and outbox."""
        ...

    def save(self, tenant: str, sub_id: str, record: dict[str, Any], *, new: bool = False) -> bool:
        """Insert or replace a subscription record (creation order is kept); with
        ``new``, only insert, and return ``False`` if the id is taken.

        A new record's ``delivery`` member is its initial status; on replace a shared
        store keeps the status it has (only :meth:`settle` changes it). Other
        processes learn of the change (shared stores)."""
        ...

    def delete(self, tenant: str, sub_id: str) -> None:
        """Delete a subscription and its undelivered notifications."""
        ...

    def load(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        """One record with its current ``delivery`` status, or ``None``."""
        ...

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every subscription record as ``(tenant, record)``, in creation order."""
        ...

    def delivery_status(self, tenant: str, sub_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored ``delivery`` member of each subscription named, by id."""
        ...

    def changes(self, listening: Callable[[], None] | None = None) -> AsyncIterator[_Key]:
        """Shared stores: ``(tenant, id)`` of each subscription another process saves or
        deletes, until cancelled; ``listening`` is called once the feed is open (what
        changed before is not in it: compare with :meth:`load_all`). Raises when the
        feed breaks. One-process stores end at once."""
        ...

    def enqueue(self, rows: list[tuple[str, str, bytes]]) -> list[int]:
        """Add ``(tenant, subscription_id, payload)`` notifications, owned by this
        process, in one transaction; return their sequence numbers in order."""
        ...

    def take_over_outbox(self) -> list[OutboxRow]:
        """Undelivered notifications nobody delivers, now owned by this process, oldest
        first: at start-up those left by a previous run; on a shared store, later too,
        those of processes whose lease ran out."""
        ...

    def outbox(self) -> list[OutboxRow]:
        """Every undelivered notification, whoever owns it, oldest first (read only)."""
        ...

    def settle(self, seqs: list[int], reports: list[DeliveryReport]) -> None:
        """In one transaction: forget delivered (or dropped) notifications and record
        the delivery reports of subscriptions that still exist."""
        ...

    def renew_lease(self) -> bool:
        """Shared stores: extend this process's lease on its outbox rows; ``False`` when
        it had run out (another process may have taken rows over: see :meth:`owned`)."""
        ...

    def owned(self, seqs: list[int]) -> set[int]:
        """Shared stores: which of these outbox rows this process still owns."""
        ...

    def release(self) -> None:
        """Shared stores: give this process's outbox rows up at once (clean shutdown)."""
        ...

    def claim_throttle(self, requests: list[tuple[str, str, float]]) -> set[_Key]:
        """Shared stores: of ``(tenant, id, throttling_s)``, the subscriptions that may
        notify now (none did within its throttling period, in any process); they are
        marked as having notified now."""
        ...

    def lead_periodic(self) -> bool:
        """Shared stores: whether this process sends the periodic (``timeInterval``)
        notifications; exactly one live process does."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


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


class SingleProcessCoordination:
    """The coordination members of :class:`SubscriptionStore` for a store that one process
    owns alone (SQLite file, memory): every row and every decision is its own."""

    def renew_lease(self) -> bool:
        return True

    def owned(self, seqs: list[int]) -> set[int]:
        return set(seqs)

    def release(self) -> None:
        """Nothing to give up: the next run of this process takes the rows over."""

    def claim_throttle(self, requests: list[tuple[str, str, float]]) -> set[_Key]:
        return {(tenant, sub_id) for tenant, sub_id, _ in requests}

    def lead_periodic(self) -> bool:
        return True


class SqliteSubscriptionStore(SingleProcessCoordination):
    """Subscriptions and their outbox in one SQLite file (WAL, used by one process).

    Why a file of its own: the entity database is written on every request, the outbox
    on every notification; separate files keep their write locks apart. The process's
    in-memory subscriptions are the truth, so :meth:`settle` writes their records.
    """

    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # One process owns the file, so it numbers the rows itself: the numbers are
        # needed at once (to delete the rows after delivery) and executemany cannot
        # return them.
        self._next_seq = self._last_seq() + 1
        self._taken_over = False

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # ------------------------------------------------------------- subscriptions

    def save(self, tenant: str, sub_id: str, record: dict[str, Any], *, new: bool = False) -> bool:
        on_conflict = "NOTHING" if new else "UPDATE SET record = excluded.record"
        cursor = self._db.execute(
            "INSERT INTO subscriptions (tenant, id, seq, record) VALUES (?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM subscriptions), ?) "
            f"ON CONFLICT (tenant, id) DO {on_conflict}",
            (tenant, sub_id, orjson.dumps(record)),
        )
        return cursor.rowcount > 0

    def delete(self, tenant: str, sub_id: str) -> None:
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM subscriptions WHERE tenant = ? AND id = ?", (tenant, sub_id))
        self._db.execute(
            "DELETE FROM outbox WHERE tenant = ? AND subscription_id = ?", (tenant, sub_id)
        )
        self._db.execute("COMMIT")

    def load(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT record FROM subscriptions WHERE tenant = ? AND id = ?", (tenant, sub_id)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute("SELECT tenant, record FROM subscriptions ORDER BY seq")
        return [(tenant, orjson.loads(record)) for tenant, record in rows]

    def delivery_status(self, tenant: str, sub_ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for sub_id in sub_ids:
            record = self.load(tenant, sub_id)
            if record is not None:
                found[sub_id] = record.get("delivery") or {}
        return found

    async def changes(self, listening: Callable[[], None] | None = None) -> AsyncIterator[_Key]:
        """Nothing: no other process writes this file."""
        nothing: tuple[_Key, ...] = ()
        for change in nothing:
            yield change

    # -------------------------------------------------------------------- outbox

    def enqueue(self, rows: list[tuple[str, str, bytes]]) -> list[int]:
        if not rows:
            return []
        first = self._next_seq
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO outbox (seq, tenant, subscription_id, payload) VALUES (?, ?, ?, ?)",
            [
                (first + i, tenant, sub_id, payload)
                for i, (tenant, sub_id, payload) in enumerate(rows)
            ],
        )
        self._db.execute("COMMIT")
        self._next_seq = first + len(rows)
        return list(range(first, first + len(rows)))

    def _last_seq(self) -> int:
        """The highest sequence number ever given to an outbox row (0 if none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        newest = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()
        return max(int(row[0]) if row else 0, int(newest[0] or 0))

    def take_over_outbox(self) -> list[OutboxRow]:
        """At the first call, the rows a previous run left; afterwards nothing (this
        process owns every row it wrote)."""
        if self._taken_over:
            return []
        self._taken_over = True
        return [row for row in self.outbox() if row.seq < self._next_seq]

    def outbox(self) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT seq, tenant, subscription_id, payload FROM outbox ORDER BY seq"
        )
        return [
            OutboxRow(int(seq), tenant, sub_id, bytes(payload))
            for seq, tenant, sub_id, payload in rows
        ]

    def settle(self, seqs: list[int], reports: list[DeliveryReport]) -> None:
        if not seqs and not reports:
            return
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
        self._db.executemany(
            "UPDATE subscriptions SET record = ? WHERE tenant = ? AND id = ?",
            [(orjson.dumps(r.record), r.tenant, r.subscription_id) for r in reports],
        )
        self._db.execute("COMMIT")
