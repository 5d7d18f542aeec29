"""Subscriptions and the notification outbox in PostgreSQL, shared by every process.

How each notification is sent once although N processes run (design notes):

- Every entity write is made by exactly one process, and that process alone matches it
  against the subscriptions and writes the resulting notifications to ``outbox``, owned
  by itself (``owner`` = a random id per process start). It delivers them and deletes
  each row once the endpoint accepted it. No other process ever sees the write, so none
  can notify it a second time.
- A process proves it is alive by renewing its row in ``notifier_owners``
  (``lease_until``) every few seconds; every owner of outbox rows has such a row (an
  owner row goes only once it owns nothing). Rows of an owner whose lease ran out (the
  process died, or stopped cleanly and gave its lease up) are claimed by another process with
  ``UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED)``: each row goes to one
  claimer, and concurrent claimers skip each other's rows instead of waiting.
- The one window for a duplicate: a process frozen for longer than the lease (not dead)
  whose rows were claimed meanwhile. When it wakes, :meth:`renew_lease` tells it that
  its lease had run out and it drops from its queues the rows it no longer owns; a
  notification it was sending at that very moment may still arrive twice. NGSI-LD
  promises no more than at-least-once, and the lease (``notification_lease_s``) is
  far longer than any healthy pause of an event loop.
- Subscription changes reach the other processes' in-memory registries through
  ``NOTIFY cityos_subscriptions`` (sent in the transaction of the change, so it is
  delivered only if the change commits); a periodic full comparison is the safety net
  for notifications lost while a listener was reconnecting.
- Delivery status members are columns added to atomically by :meth:`settle`
  (``times_sent = times_sent + n``; latest times with ``GREATEST``; ``status`` from the
  latest attempt), never a rewrite of the record, so processes delivering for the same
  subscription do not overwrite each other's counts.
- ``throttling`` is checked across processes: ``throttled_at`` is set by a conditional
  ``UPDATE`` that succeeds for one process only per period (:meth:`claim_throttle`).
- Periodic (``timeInterval``) notifications are sent by the holder of a session-level
  advisory lock (:meth:`lead_periodic`); when it dies its session ends, the lock is
  free, and the next process that asks takes over.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import psycopg

from cityos.storage.postgres_state import Connection, StatePool
from cityos.storage.subscriptions import DeliveryReport, OutboxRow

log = logging.getLogger(__name__)

CHANNEL = "cityos_subscriptions"
_PERIODIC_LOCK = 0x63697479_7065  # "citype": the leader of periodic notifications
_DELIVERY_KEYS = (
    "timesSent",
    "timesFailed",
    "lastNotification",
    "lastSuccess",
    "lastFailure",
    "status",
)
_SELECT_RECORD = (
    "SELECT tenant, record, times_sent, times_failed, last_notification, last_success, "
    "last_failure, status FROM subscriptions"
)
_Key = tuple[str, str]


def _with_delivery(row: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """``(tenant, record)`` of a ``_SELECT_RECORD`` row, its status columns as ``delivery``."""
    record: dict[str, Any] = orjson.loads(row[1])
    record["delivery"] = dict(zip(_DELIVERY_KEYS, row[2:], strict=True))
    return row[0], record


class PostgresSubscriptionStore:
    """A :class:`~cityos.storage.subscriptions.SubscriptionStore` for several processes."""

    shared = True

    def __init__(self, pool: StatePool, url: str, *, lease_s: float = 10.0) -> None:
        """Register this process as an outbox owner with a lease of ``lease_s`` seconds.

        ``url`` opens the two connections that cannot come from the pool: the listener
        of subscription changes and the holder of the periodic-notification lock.
        """
        self._pool = pool
        self._url = url
        self._lease_s = lease_s
        self.owner = uuid.uuid4().hex
        """This process's id as an outbox owner."""
        self._leader: Connection | None = None
        self._leading = False
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO notifier_owners (owner, lease_until) "
                "VALUES (%s, now() + make_interval(secs => %s))",
                (self.owner, lease_s),
            )

    def close(self) -> None:
        """Drop the leadership of periodic notifications (the pool is the opener's)."""
        if self._leader is not None:
            with contextlib.suppress(psycopg.Error):
                self._leader.close()
            self._leader = None
        self._leading = False

    # ------------------------------------------------------------- subscriptions

    def save(self, tenant: str, sub_id: str, record: dict[str, Any], *, new: bool = False) -> bool:
        on_conflict = "NOTHING" if new else "UPDATE SET record = excluded.record"
        delivery = record.get("delivery") or {}
        document = {k: v for k, v in record.items() if k != "delivery"}
        with self._pool.connection() as conn, conn.transaction():
            cursor = conn.execute(
                "INSERT INTO subscriptions (tenant, id, record, times_sent, times_failed, "
                "last_notification, last_success, last_failure, status) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT (tenant, id) DO {on_conflict}",
                (
                    tenant,
                    sub_id,
                    orjson.dumps(document),
                    int(delivery.get("timesSent") or 0),
                    int(delivery.get("timesFailed") or 0),
                    delivery.get("lastNotification"),
                    delivery.get("lastSuccess"),
                    delivery.get("lastFailure"),
                    delivery.get("status"),
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._announce(conn, tenant, sub_id)
        return True

    def delete(self, tenant: str, sub_id: str) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "DELETE FROM subscriptions WHERE tenant = %s AND id = %s", (tenant, sub_id)
            )
            conn.execute(
                "DELETE FROM outbox WHERE tenant = %s AND subscription_id = %s", (tenant, sub_id)
            )
            self._announce(conn, tenant, sub_id)

    def _announce(self, conn: Connection, tenant: str, sub_id: str) -> None:
        """Tell the other processes (on commit) that a subscription changed."""
        payload = orjson.dumps({"tenant": tenant, "id": sub_id, "origin": self.owner}).decode()
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def load(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                _SELECT_RECORD + " WHERE tenant = %s AND id = %s", (tenant, sub_id)
            ).fetchone()
        return None if row is None else _with_delivery(row)[1]

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        with self._pool.connection() as conn:
            rows = conn.execute(_SELECT_RECORD + " ORDER BY seq").fetchall()
        return [_with_delivery(row) for row in rows]

    def delivery_status(self, tenant: str, sub_ids: list[str]) -> dict[str, dict[str, Any]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, times_sent, times_failed, last_notification, last_success, "
                "last_failure, status FROM subscriptions WHERE tenant = %s AND id = ANY(%s)",
                (tenant, sub_ids),
            ).fetchall()
        return {row[0]: dict(zip(_DELIVERY_KEYS, row[1:], strict=True)) for row in rows}

    async def changes(self, listening: Callable[[], None] | None = None) -> AsyncIterator[_Key]:
        """``(tenant, id)`` of every subscription another process changes, as they come;
        ``listening`` is called once changes are being listened to.

        Runs until cancelled; raises ``psycopg.Error`` when the connection is lost (the
        caller reconnects and compares everything, since changes may have been missed).
        """
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            if listening is not None:
                listening()
            async for notice in conn.notifies():
                message = orjson.loads(notice.payload)
                if message.get("origin") != self.owner:
                    yield message["tenant"], message["id"]

    # -------------------------------------------------------------------- outbox

    def enqueue(self, rows: list[tuple[str, str, bytes]]) -> list[int]:
        if not rows:
            return []
        tenants, sub_ids, payloads = (list(column) for column in zip(*rows, strict=True))
        with self._pool.connection() as conn:
            # The owner row is put back if a cleanup removed it while this process
            # was frozen: rows must never belong to an owner nobody can see expire.
            found = conn.execute(
                "WITH o AS (INSERT INTO notifier_owners (owner, lease_until) "
                " VALUES (%(me)s, now() + make_interval(secs => %(lease)s)) "
                " ON CONFLICT (owner) DO NOTHING) "
                "INSERT INTO outbox (tenant, subscription_id, payload, owner) "
                "SELECT t, s, p, %(me)s FROM unnest(%(t)s::text[], %(s)s::text[], %(p)s::bytea[]) "
                "WITH ORDINALITY AS r(t, s, p, n) ORDER BY n RETURNING seq",
                {
                    "me": self.owner,
                    "lease": self._lease_s,
                    "t": tenants,
                    "s": sub_ids,
                    "p": payloads,
                },
            ).fetchall()
        # bigserial values are drawn in the order of the ordered SELECT.
        return sorted(int(seq) for (seq,) in found)

    def take_over_outbox(self, limit: int = 10_000) -> list[OutboxRow]:
        """Claim up to ``limit`` rows of owners whose lease ran out (see the module notes)."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "UPDATE outbox SET owner = %(me)s WHERE seq IN ("
                " SELECT seq FROM outbox WHERE owner IN ("
                "  SELECT owner FROM notifier_owners WHERE lease_until <= now())"
                " ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                "RETURNING seq, tenant, subscription_id, payload",
                {"me": self.owner, "limit": limit},
            ).fetchall()
            # Owners that are gone and own nothing any more need no row.
            conn.execute(
                "DELETE FROM notifier_owners n WHERE lease_until < now() AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.owner = n.owner)"
            )
        return sorted(
            (
                OutboxRow(int(seq), tenant, sub_id, bytes(payload))
                for seq, tenant, sub_id, payload in rows
            ),
            key=lambda row: row.seq,
        )

    def outbox(self) -> list[OutboxRow]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT seq, tenant, subscription_id, payload FROM outbox ORDER BY seq"
            ).fetchall()
        return [
            OutboxRow(int(seq), tenant, sub_id, bytes(payload))
            for seq, tenant, sub_id, payload in rows
        ]

    def settle(self, seqs: list[int], reports: list[DeliveryReport]) -> None:
        if not seqs and not reports:
            return
        # One statement (atomic without a transaction block: one round trip).
        with self._pool.connection() as conn:
            conn.execute(
                "WITH d AS (DELETE FROM outbox WHERE seq = ANY(%(seqs)s)) "
                "UPDATE subscriptions s SET times_sent = s.times_sent + r.sent, "
                "times_failed = s.times_failed + r.failed, "
                "last_notification = GREATEST(s.last_notification, r.ln), "
                "last_success = GREATEST(s.last_success, r.ls), "
                "last_failure = GREATEST(s.last_failure, r.lf), "
                "status = CASE WHEN r.ln IS NOT NULL AND (s.last_notification IS NULL "
                " OR r.ln >= s.last_notification) THEN r.status ELSE s.status END "
                "FROM unnest(%(tenant)s::text[], %(id)s::text[], %(sent)s::bigint[], "
                " %(failed)s::bigint[], %(ln)s::text[], %(ls)s::text[], %(lf)s::text[], "
                " %(status)s::text[]) AS r(tenant, id, sent, failed, ln, ls, lf, status) "
                "WHERE s.tenant = r.tenant AND s.id = r.id",
                {
                    "seqs": seqs,
                    "tenant": [r.tenant for r in reports],
                    "id": [r.subscription_id for r in reports],
                    "sent": [r.sent for r in reports],
                    "failed": [r.failed for r in reports],
                    "ln": [r.last_notification for r in reports],
                    "ls": [r.last_success for r in reports],
                    "lf": [r.last_failure for r in reports],
                    "status": [r.status for r in reports],
                },
            )

    # ------------------------------------------------------------- coordination

    def renew_lease(self) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute(
                "WITH old AS (SELECT lease_until FROM notifier_owners WHERE owner = %(me)s) "
                "INSERT INTO notifier_owners (owner, lease_until) "
                "VALUES (%(me)s, now() + make_interval(secs => %(lease)s)) "
                "ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until "
                "RETURNING coalesce((SELECT lease_until > now() FROM old), false)",
                {"me": self.owner, "lease": self._lease_s},
            ).fetchone()
        return bool(row and row[0])

    def owned(self, seqs: list[int]) -> set[int]:
        if not seqs:
            return set()
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT seq FROM outbox WHERE seq = ANY(%s) AND owner = %s", (seqs, self.owner)
            ).fetchall()
        return {int(seq) for (seq,) in rows}

    def release(self) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE notifier_owners SET lease_until = '-infinity' WHERE owner = %s",
                (self.owner,),
            )
            conn.execute(
                "DELETE FROM notifier_owners WHERE owner = %(me)s AND NOT EXISTS "
                "(SELECT 1 FROM outbox WHERE owner = %(me)s)",
                {"me": self.owner},
            )

    def claim_throttle(self, requests: list[tuple[str, str, float]]) -> set[_Key]:
        if not requests:
            return set()
        unique = {(tenant, sub_id): period for tenant, sub_id, period in requests}
        with self._pool.connection() as conn:
            rows = conn.execute(
                "UPDATE subscriptions s SET throttled_at = clock_timestamp() "
                "FROM unnest(%s::text[], %s::text[], %s::float8[]) AS t(tenant, id, period) "
                "WHERE s.tenant = t.tenant AND s.id = t.id AND (s.throttled_at IS NULL "
                " OR s.throttled_at <= clock_timestamp() - make_interval(secs => t.period)) "
                "RETURNING s.tenant, s.id",
                (
                    [key[0] for key in unique],
                    [key[1] for key in unique],
                    list(unique.values()),
                ),
            ).fetchall()
        return {(tenant, sub_id) for tenant, sub_id in rows}

    def lead_periodic(self) -> bool:
        try:
            if self._leader is None:
                self._leader = psycopg.connect(self._url, autocommit=True)
                self._leading = False
            if self._leading:
                self._leader.execute("SELECT 1")
                return True
            row = self._leader.execute(
                "SELECT pg_try_advisory_lock(%s)", (_PERIODIC_LOCK,)
            ).fetchone()
        except psycopg.Error:
            log.warning("No connection for the periodic-notification lock; retrying later")
            self.close()
            return False
        self._leading = bool(row and row[0])
        if self._leading:
            log.info("This process now sends the periodic notifications")
        return self._leading
