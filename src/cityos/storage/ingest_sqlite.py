"""The ingestion tables (:mod:`cityos.storage.ingest_tables`) on SQLite.

A mixin of :class:`cityos.storage.sqlite.SqliteStorage`: it runs on the storage's one
connection and inside its transactions, so uplink keys and dead letters commit with the
entity writes they belong to. Gateway statistics are merged in Python: a write
transaction (``BEGIN IMMEDIATE``) already excludes every other writer of the file.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import orjson

from cityos.storage.ingest_tables import (
    DeadLetter,
    DeadLetterFilter,
    GatewayHour,
    add_counts,
    counts_from_json,
    dead_letter_from_row,
    dead_letter_query,
)

_CHUNK = 500


class SqliteIngestTables:
    """Ingestion tables on the connection and transactions of a ``SqliteStorage``."""

    _db: sqlite3.Connection
    transaction: Callable[[], AbstractContextManager[None]]
    _forget_cached_rows: Callable[[], None]
    _seen_data_version: int | None = None
    path: Path
    _duty_files: dict[str, BinaryIO]

    def known_uplink_keys(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self._db.execute(
                    f"SELECT key FROM ingest_uplink_keys WHERE key IN ({marks})", chunk
                )
            )
        return found

    def claim_uplink_keys(self, keys: list[str], now_ms: int) -> set[str]:
        with self.transaction():
            fresh = set(keys) - self.known_uplink_keys(list(dict.fromkeys(keys)))
            self._db.executemany(
                "INSERT INTO ingest_uplink_keys (key, stored_ms) VALUES (?, ?)",
                [(key, now_ms) for key in fresh],
            )
        return fresh

    def expire_uplink_keys(self, before_ms: int) -> int:
        with self.transaction():
            cursor = self._db.execute(
                "DELETE FROM ingest_uplink_keys WHERE stored_ms < ?", (before_ms,)
            )
        return int(cursor.rowcount)

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        with self.transaction():
            self._db.executemany(
                "INSERT INTO ingest_dead_letters (received_ms, transport, network, address, "
                "reason, detail, body, body_size, content_type, dev_eui, dedup_key, truncated, "
                "attempts, last_attempt_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dedup_key) DO UPDATE SET reason = excluded.reason, "
                "detail = excluded.detail, body = excluded.body, body_size = excluded.body_size, "
                "truncated = excluded.truncated, attempts = attempts + 1, "
                "last_attempt_ms = excluded.last_attempt_ms",
                [
                    (
                        letter.received_ms,
                        letter.transport,
                        letter.network,
                        letter.address,
                        letter.reason,
                        letter.detail,
                        letter.body,
                        letter.body_size,
                        letter.content_type,
                        letter.dev_eui,
                        letter.dedup_key,
                        int(letter.truncated),
                        letter.attempts,
                        letter.last_attempt_ms or letter.received_ms,
                    )
                    for letter in letters
                ],
            )

    def list_dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        query, params = dead_letter_query(which, "?")
        rows = self._db.execute(query, params).fetchall()
        return [dead_letter_from_row(row) for row in rows]

    def expire_dead_letters(self, before_ms: int) -> int:
        with self.transaction():
            cursor = self._db.execute(
                "DELETE FROM ingest_dead_letters WHERE last_attempt_ms < ?", (before_ms,)
            )
        return int(cursor.rowcount)

    def remove_dead_letters(self, ids: list[int]) -> int:
        with self.transaction():
            cursor = self._db.executemany(
                "DELETE FROM ingest_dead_letters WHERE id = ?", [(i,) for i in ids]
            )
        return int(cursor.rowcount)

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT reason, count(*) FROM ingest_dead_letters GROUP BY reason")
        return {reason: int(count) for reason, count in rows}

    def add_gateway_hours(self, hours: list[GatewayHour]) -> None:
        if not hours:
            return
        with self.transaction():
            stored: dict[tuple[str, int], GatewayHour] = {}
            keys = [(hour.gateway_id, hour.hour_ms) for hour in hours]
            for start in range(0, len(keys), 400):
                chunk = keys[start : start + 400]
                values = ",".join(["(?, ?)"] * len(chunk))
                for gateway_id, hour_ms, uplinks, rssi, snr in self._db.execute(
                    "SELECT g.gateway_id, g.hour_ms, g.uplinks, g.rssi_counts, g.snr_counts "
                    f"FROM (VALUES {values}) AS k CROSS JOIN ingest_gateway_hours g "
                    "ON g.gateway_id = k.column1 AND g.hour_ms = k.column2",
                    [part for key in chunk for part in key],
                ):
                    stored[(gateway_id, hour_ms)] = GatewayHour(
                        gateway_id,
                        hour_ms,
                        int(uplinks),
                        counts_from_json(orjson.loads(rssi)),
                        counts_from_json(orjson.loads(snr)),
                    )
            for hour in hours:
                key = (hour.gateway_id, hour.hour_ms)
                stored.setdefault(key, GatewayHour(*key)).merge(hour)
            self._db.executemany(
                "INSERT OR REPLACE INTO ingest_gateway_hours "
                "(gateway_id, hour_ms, uplinks, rssi_counts, snr_counts) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        merged.gateway_id,
                        merged.hour_ms,
                        merged.uplinks,
                        _counts_json(merged.rssi_counts),
                        _counts_json(merged.snr_counts),
                    )
                    for merged in stored.values()
                ],
            )

    def gateway_hours(self, since_ms: int | None = None) -> list[GatewayHour]:
        rows = self._db.execute(
            "SELECT gateway_id, hour_ms, uplinks, rssi_counts, snr_counts "
            "FROM ingest_gateway_hours WHERE hour_ms >= ? ORDER BY gateway_id, hour_ms",
            (since_ms if since_ms is not None else -(2**62),),
        ).fetchall()
        return [
            GatewayHour(
                gateway_id,
                int(hour_ms),
                int(uplinks),
                counts_from_json(orjson.loads(rssi)),
                counts_from_json(orjson.loads(snr)),
            )
            for gateway_id, hour_ms, uplinks, rssi, snr in rows
        ]

    def changed_elsewhere(self) -> bool:
        # SQLite's data_version changes when another connection (a CLI process, say)
        # committed to the file; our own commits do not change it.
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._seen_data_version
        self._seen_data_version = version
        if changed:
            self._forget_cached_rows()
        return changed

    def claim_duty(self, name: str) -> bool:
        # Several processes may serve one file (`cityos serve --workers N`): a duty is an
        # exclusive lock on a file beside the database, held until close (the OS drops
        # it when the process dies, so another process can take the duty over).
        if name in self._duty_files:
            return True
        lock_path = self.path.with_name(f"{self.path.name}.{name}.lock")
        handle = open(lock_path, "a+b")  # noqa: SIM115 - held open while the duty is ours
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._duty_files[name] = handle
        return True

    def release_duties(self) -> None:
        """Give up every duty this storage holds."""
        for handle in self._duty_files.values():
            handle.close()
        self._duty_files.clear()


def _counts_json(counts: dict[int, int]) -> str:
    merged: dict[int, int] = {}
    add_counts(merged, counts)
    return orjson.dumps(merged, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS).decode()
