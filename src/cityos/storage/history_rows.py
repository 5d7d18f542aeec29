"""History rows as they are stored, read from and written to either backend (``db copy``).

The storage protocol reads history by entity and writes new instances only; moving an
installation must keep every row's instance id (``seq``) and time, so these adapters
read and write the history tables themselves. They are the one place that knows both
history schemas (see the design notes of ``storage.sqlite`` and ``storage.postgres``).
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

from cityos.storage import postgres

Progress = Callable[[str, int, int | None], None]
"""``progress(table, rows_done_now, total_or_None)``: called as rows are copied."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def read_sqlite_history(path: Path) -> Iterator[HistoryRecord]:
    """Every history row of the SQLite file at ``path``, in instance order."""
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


def read_postgres_history(url: str) -> Iterator[HistoryRecord]:
    """Every history row of the PostgreSQL database at ``url``, in instance order."""
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


def write_sqlite_history(path: Path, rows: Iterator[HistoryRecord], progress: Progress) -> None:
    """Replace the history of the SQLite file at ``path`` by ``rows`` (one transaction)."""
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


def write_postgres_history(url: str, rows: Iterator[HistoryRecord], progress: Progress) -> None:
    """Replace the history of the PostgreSQL database at ``url`` by ``rows``, creating
    the monthly partitions they need and moving the instance sequence past them."""
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
