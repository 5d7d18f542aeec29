"""The ingestion tables (:mod:`cityos.storage.ingest_tables`) on PostgreSQL.

A mixin of :class:`cityos.storage.postgres.PostgresStorage`: statements run on the
connection of the caller's transaction (``_connection``), so uplink keys and dead
letters commit with the entity writes they belong to. Several ingesting processes may
share the database (MQTT shared subscriptions), so every write is one statement that
is right under concurrency: keys are claimed with ``ON CONFLICT DO NOTHING RETURNING``
(a key two processes race for is returned to one of them only), and gateway histograms
are summed inside the upsert. Duties (device health) are session advisory locks held
on a connection of their own until the storage closes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson
import psycopg

from cityos.storage.ingest_tables import (
    DeadLetter,
    DeadLetterFilter,
    GatewayHour,
    counts_from_json,
    dead_letter_from_row,
    dead_letter_query,
)

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type

_DUTY_LOCK_BASE = 0x696E6765_00000000  # "inge": advisory lock keys of duties

_MERGE_COUNTS = (
    "(SELECT coalesce(jsonb_object_agg(k, n), '{{}}'::jsonb) FROM (SELECT k, sum(v) AS n "
    "FROM (SELECT key AS k, value::bigint AS v FROM jsonb_each_text(ingest_gateway_hours.{col}) "
    "UNION ALL SELECT key, value::bigint FROM jsonb_each_text(excluded.{col})) AS both_sides "
    "GROUP BY k) AS summed)"
)


class PostgresIngestTables:
    """Ingestion tables on the connections and transactions of a ``PostgresStorage``."""

    _connection: Callable[[], AbstractContextManager[Connection]]
    transaction: Callable[[], AbstractContextManager[None]]
    _url: str
    _duty_connection: Connection | None = None
    _duties: set[str]

    def known_uplink_keys(self, keys: list[str]) -> set[str]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT key FROM ingest_uplink_keys WHERE key = ANY(%s)",
                ([_text(key) for key in keys],),
            ).fetchall()
        found = {key for (key,) in rows}
        return {key for key in keys if _text(key) in found}

    def claim_uplink_keys(self, keys: list[str], now_ms: int) -> set[str]:
        with self._connection() as conn:
            rows = conn.execute(
                "INSERT INTO ingest_uplink_keys (key, stored_ms) "
                "SELECT DISTINCT unnest(%s::text[]), %s ON CONFLICT (key) DO NOTHING RETURNING key",
                ([_text(key) for key in keys], now_ms),
            ).fetchall()
        claimed = {key for (key,) in rows}
        return {key for key in keys if _text(key) in claimed}

    def expire_uplink_keys(self, before_ms: int) -> int:
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM ingest_uplink_keys WHERE stored_ms < %s", (before_ms,)
            )
        return int(cursor.rowcount)

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        with self.transaction(), self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO ingest_dead_letters (received_ms, transport, network, address, "
                "reason, detail, body, body_size, content_type, dev_eui, dedup_key, truncated, "
                "attempts, last_attempt_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (dedup_key) DO UPDATE SET reason = excluded.reason, "
                "detail = excluded.detail, body = excluded.body, body_size = excluded.body_size, "
                "truncated = excluded.truncated, "
                "attempts = ingest_dead_letters.attempts + 1, "
                "last_attempt_ms = excluded.last_attempt_ms",
                [
                    (
                        letter.received_ms,
                        letter.transport,
                        letter.network,
                        _text(letter.address),
                        letter.reason,
                        _text(letter.detail),
                        letter.body,
                        letter.body_size,
                        None if letter.content_type is None else _text(letter.content_type),
                        None if letter.dev_eui is None else _text(letter.dev_eui),
                        None if letter.dedup_key is None else _text(letter.dedup_key),
                        letter.truncated,
                        letter.attempts,
                        letter.last_attempt_ms or letter.received_ms,
                    )
                    for letter in letters
                ],
            )

    def list_dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        query, params = dead_letter_query(which, "%s")
        with self._connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return [dead_letter_from_row(row) for row in rows]

    def expire_dead_letters(self, before_ms: int) -> int:
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM ingest_dead_letters WHERE last_attempt_ms < %s", (before_ms,)
            )
        return int(cursor.rowcount)

    def remove_dead_letters(self, ids: list[int]) -> int:
        with self._connection() as conn:
            cursor = conn.execute("DELETE FROM ingest_dead_letters WHERE id = ANY(%s)", (ids,))
        return int(cursor.rowcount)

    def dead_letter_counts(self) -> dict[str, int]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT reason, count(*) FROM ingest_dead_letters GROUP BY reason"
            ).fetchall()
        return {reason: int(count) for reason, count in rows}

    def add_gateway_hours(self, hours: list[GatewayHour]) -> None:
        if not hours:
            return
        merge_rssi = _MERGE_COUNTS.format(col="rssi_counts")
        merge_snr = _MERGE_COUNTS.format(col="snr_counts")
        # Sorted so that concurrent writers lock the rows in the same order (no deadlock).
        ordered = sorted(hours, key=lambda hour: (hour.gateway_id, hour.hour_ms))
        with self.transaction(), self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO ingest_gateway_hours "
                "(gateway_id, hour_ms, uplinks, rssi_counts, snr_counts) "
                "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb) "
                "ON CONFLICT (gateway_id, hour_ms) DO UPDATE SET "
                "uplinks = ingest_gateway_hours.uplinks + excluded.uplinks, "
                f"rssi_counts = {merge_rssi}, snr_counts = {merge_snr}",
                [
                    (
                        _text(hour.gateway_id),
                        hour.hour_ms,
                        hour.uplinks,
                        orjson.dumps(hour.rssi_counts, option=orjson.OPT_NON_STR_KEYS).decode(),
                        orjson.dumps(hour.snr_counts, option=orjson.OPT_NON_STR_KEYS).decode(),
                    )
                    for hour in ordered
                ],
            )

    def gateway_hours(self, since_ms: int | None = None) -> list[GatewayHour]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT gateway_id, hour_ms, uplinks, rssi_counts, snr_counts "
                "FROM ingest_gateway_hours WHERE hour_ms >= %s ORDER BY gateway_id, hour_ms",
                (since_ms if since_ms is not None else -(2**62),),
            ).fetchall()
        return [
            GatewayHour(
                gateway_id,
                int(hour_ms),
                int(uplinks),
                counts_from_json(rssi),
                counts_from_json(snr),
            )
            for gateway_id, hour_ms, uplinks, rssi, snr in rows
        ]

    def changed_elsewhere(self) -> bool:
        return True  # other workers share the database at any time

    def claim_duty(self, name: str) -> bool:
        if name in self._duties:
            return True
        if self._duty_connection is None or self._duty_connection.closed:
            self._duty_connection = psycopg.connect(self._url, autocommit=True)
        key = _DUTY_LOCK_BASE + zlib.crc32(name.encode())
        row = self._duty_connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is not None and row[0]:
            self._duties.add(name)
            return True
        return False

    def release_duties(self) -> None:
        """Close the connection that holds the duty locks (other processes may take them)."""
        if self._duty_connection is not None:
            self._duty_connection.close()
            self._duty_connection = None
        self._duties.clear()


def _text(value: str) -> str:
    """Text for a text column, which cannot hold U+0000 (raw input may contain it)."""
    return value.replace("\x00", "\\u0000")
