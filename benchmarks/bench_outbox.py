"""Notification outbox throughput of the subscription stores, with a plain SQL baseline.

Every notification costs the notifier one outbox insert (``enqueue``, in batches as the
dispatcher writes them) and one delete plus a delivery report (``settle``, batched every
0.2 s). This measures that store work per notification, in this process:

- SQLite (``SqliteSubscriptionStore``, one process) against plain ``executemany``
  inserts and deletes on a table of the same shape, in the same kind of transactions;
- PostgreSQL (``PostgresSubscriptionStore``, shared by processes: owner column, atomic
  status columns) against plain psycopg ``executemany`` inserts and an ``= ANY`` delete.

    .venv/bin/python benchmarks/bench_outbox.py                     # SQLite only
    .venv/bin/python benchmarks/bench_outbox.py --notifications 50000 \\
        --database postgresql://postgres@127.0.0.1:5432/postgres

With ``--database`` a scratch database is created on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from cityos.storage import postgres
from cityos.storage.postgres import create_database, drop_database
from cityos.storage.state_stores import open_state_stores
from cityos.storage.subscriptions import DeliveryReport, SubscriptionStore

console = Console()
PAYLOAD = b'{"id":"urn:ngsi-ld:Notification:x","type":"Notification","data":[' + b"0" * 300 + b"]}"
SUBSCRIPTIONS = 100


def run_store(store: SubscriptionStore, notifications: int, batch: int) -> float:
    """Seconds to enqueue and settle ``notifications`` through the store."""
    for n in range(SUBSCRIPTIONS):
        store.save("", f"urn:s:{n}", {"id": f"urn:s:{n}", "delivery": {}})
    started = time.perf_counter()
    for start in range(0, notifications, batch):
        rows = [("", f"urn:s:{n % SUBSCRIPTIONS}", PAYLOAD) for n in range(start, start + batch)]
        seqs = store.enqueue(rows)
        reports = []
        for n in range(SUBSCRIPTIONS if batch >= SUBSCRIPTIONS else batch):
            report = DeliveryReport("", f"urn:s:{n}", record={"id": f"urn:s:{n}"})
            report.add_attempt("2025-01-01T00:00:00.000Z", ok=True)
            reports.append(report)
        store.settle(seqs, reports)
    return time.perf_counter() - started


def run_plain_sqlite(path: Path, notifications: int, batch: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, s TEXT, p BLOB)")
    started = time.perf_counter()
    for start in range(0, notifications, batch):
        seqs = list(range(start + 1, start + batch + 1))
        db.execute("BEGIN")
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?)", [(s, "urn:s", PAYLOAD) for s in seqs])
        db.execute("COMMIT")
        db.execute("BEGIN")
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def run_plain_postgres(url: str, notifications: int, batch: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE plain_outbox (seq bigserial PRIMARY KEY, s text, p bytea)")
        started = time.perf_counter()
        for _ in range(0, notifications, batch):
            seqs = conn.execute(
                "INSERT INTO plain_outbox (s, p) SELECT 'urn:s', %s FROM generate_series(1, %s) "
                "RETURNING seq",
                (PAYLOAD, batch),
            ).fetchall()
            conn.execute("DELETE FROM plain_outbox WHERE seq = ANY(%s)", ([s for (s,) in seqs],))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="notifications per enqueue")
    parser.add_argument("--database", help="a PostgreSQL server URL (scratch db created)")
    args = parser.parse_args()
    n, batch = args.notifications - args.notifications % args.batch, args.batch
    table = Table(title=f"Outbox: {n:,} notifications, enqueued {batch} at a time")
    for column in ("backend", "store /s", "plain SQL /s", "ratio"):
        table.add_column(column, justify="right" if column != "backend" else "left")
    runs: list[tuple[str, Callable[[], float], Callable[[], float]]] = []
    with tempfile.TemporaryDirectory(prefix="cityos-bench-outbox-") as tmp:
        folder = Path(tmp)
        sqlite_stores = open_state_stores(None, folder / "cityos.sqlite3")
        runs.append(
            (
                "SQLite",
                lambda: run_store(sqlite_stores.subscriptions, n, batch),
                lambda: run_plain_sqlite(folder / "plain.sqlite3", n, batch),
            )
        )
        scratch = None
        if args.database:
            scratch = f"cityos_bench_{uuid.uuid4().hex[:8]}"
            url = create_database(args.database, scratch)
            with psycopg.connect(url, autocommit=True) as conn:
                postgres.upgrade_schema(conn)
            pg_stores = open_state_stores(url, folder / "unused")
            runs.append(
                (
                    "PostgreSQL",
                    lambda: run_store(pg_stores.subscriptions, n, batch),
                    lambda: run_plain_postgres(url, n, batch),
                )
            )
        try:
            for name, store_run, plain_run in runs:
                store_s, plain_s = store_run(), plain_run()
                table.add_row(
                    name, f"{n / store_s:,.0f}", f"{n / plain_s:,.0f}", f"{plain_s / store_s:.2f}x"
                )
        finally:
            sqlite_stores.close()
            if scratch is not None:
                pg_stores.close()
                drop_database(args.database, scratch)
    console.print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    console.print(table)


if __name__ == "__main__":
    main()
