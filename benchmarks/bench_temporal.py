"""Temporal API latency over a river-gauge history, with a same-run plain SQL baseline.

Scenario (issue: temporal API): gauges report a level every 10 minutes; the full scale
is 1,000 gauges for one year (about 52 million instances). The history is seeded
directly through the storage layer (``TemporalStorage.append_history``, one month of one
gauge per batch), then a real ``cityos serve`` process answers, under load from wrk (a
separate process) on loopback:

- one gauge, one attribute, one calendar month, ``aggrMethods=avg,max`` per hour
  (``aggrPeriodDuration=PT1H``): target p95 <= 50 ms;
- one gauge, ``lastN=144`` (one day): target p95 <= 20 ms.

Each figure is printed next to a plain SQL range scan reading the same rows from the
same file in this process (``SELECT time_ms, doc ... WHERE tpk=? AND aid=? AND time_ms
BETWEEN ...``), p95 over the same kind of random picks, and their ratio.

Each gauge holds up to a year of 10-minute readings, so a smaller ``--instances`` uses
fewer gauges, not shorter histories: the per-query work is the same as at full scale.

    .venv/bin/python benchmarks/bench_temporal.py --instances 500000
    .venv/bin/python benchmarks/bench_temporal.py --instances 52560000   # full scale
    .venv/bin/python benchmarks/bench_temporal.py --instances 200000 \
        --database postgresql://postgres@127.0.0.1:5432/postgres

With ``--database`` PostgreSQL is measured too, in a scratch database created on that
server and dropped afterwards; its baseline is the same plain range scan in SQL on the
partitioned table, through psycopg.

Needs ``wrk`` (Debian: ``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from loadgen import run_wrk
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from cityos.storage.base import DEFAULT_TENANT, TemporalStorage
from cityos.storage.postgres import PostgresStorage, create_database, drop_database
from cityos.storage.sqlite import SqliteStorage

HERE = Path(__file__).resolve().parent
console = Console()

STEP = timedelta(minutes=10)
PER_YEAR = 52_560
START = datetime(2025, 1, 1, tzinfo=UTC)
GAUGE_TYPE = "https://smartdatamodels.org/dataModel.Environment/WaterObserved"
LEVEL = "https://smartdatamodels.org/dataModel.Environment/height"
CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
PORT = 8921


def gauge_id(n: int) -> str:
    return f"urn:ngsi-ld:WaterObserved:gauge-{n:04d}"


def seed(storage: TemporalStorage, gauges: int, per_gauge: int) -> None:
    """Write ``gauges`` entities and ``per_gauge`` level readings each through the storage."""
    rng = random.Random(7)
    now = START.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    batch = 4320  # about one month of 10-minute readings
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeding instances", total=gauges * per_gauge)
        for g in range(gauges):
            entity_id = gauge_id(g)
            storage.insert(
                DEFAULT_TENANT,
                {
                    "id": entity_id,
                    "type": [GAUGE_TYPE],
                    "createdAt": now,
                    "modifiedAt": now,
                    "attrs": {},
                },
            )
            level = rng.uniform(0.5, 3.0)
            for first in range(0, per_gauge, batch):
                rows = []
                for i in range(first, min(first + batch, per_gauge)):
                    level = max(0.0, level + rng.gauss(0, 0.02))
                    at = (START + i * STEP).strftime("%Y-%m-%dT%H:%M:%SZ")
                    rows.append(
                        (LEVEL, {"type": "Property", "value": round(level, 3), "observedAt": at})
                    )
                storage.append_history(DEFAULT_TENANT, entity_id, [GAUGE_TYPE], rows)
                progress.advance(task, len(rows))
    storage.close()


def month_bounds(month: int) -> tuple[datetime, datetime]:
    start = START.replace(month=month)
    end = start.replace(month=month + 1) if month < 12 else start.replace(year=start.year + 1)
    return start, end


def postgres_baseline(url: str, gauges: int, months: int, picks: int) -> dict[str, float]:
    """As :func:`sql_baseline`, on the PostgreSQL history table."""
    rng = random.Random(11)
    month_ms: list[float] = []
    last_ms: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT aid FROM temporal_attrs WHERE iri = %s", (LEVEL,)).fetchone()
        assert row is not None
        aid = row[0]
        tpks: dict[str, int] = dict(
            conn.execute("SELECT id, tpk FROM temporal_entities").fetchall()
        )
        for _ in range(picks):
            tpk = tpks[gauge_id(rng.randrange(gauges))]
            start, end = month_bounds(rng.randint(1, months))
            began = time.perf_counter()
            rows = conn.execute(
                "SELECT time, doc FROM temporal WHERE tpk = %s AND aid = %s "
                "AND time >= %s AND time < %s",
                (tpk, aid, start, end),
                binary=True,
            ).fetchall()
            month_ms.append((time.perf_counter() - began) * 1000)
            assert rows
            began = time.perf_counter()
            conn.execute(
                "SELECT time, doc FROM temporal WHERE tpk = %s AND aid = %s "
                "ORDER BY time DESC LIMIT 144",
                (tpk, aid),
                binary=True,
            ).fetchall()
            last_ms.append((time.perf_counter() - began) * 1000)
    return {"month": p95(month_ms), "lastN": p95(last_ms)}


def sql_baseline(path: Path, gauges: int, months: int, picks: int) -> dict[str, float]:
    """p95 ms of plain SQL reads of the rows each scenario reads (same file, same run)."""
    db = sqlite3.connect(path)
    rng = random.Random(11)
    aid = db.execute("SELECT aid FROM temporal_attrs WHERE iri = ?", (LEVEL,)).fetchone()[0]
    tpks = dict(db.execute("SELECT id, tpk FROM temporal_entities"))
    month_ms: list[float] = []
    last_ms: list[float] = []
    for _ in range(picks):
        tpk = tpks[gauge_id(rng.randrange(gauges))]
        start, end = month_bounds(rng.randint(1, months))
        began = time.perf_counter()
        rows = db.execute(
            "SELECT time_ms, doc FROM temporal WHERE tpk = ? AND aid = ? "
            "AND time_ms >= ? AND time_ms < ?",
            (tpk, aid, int(start.timestamp() * 1000), int(end.timestamp() * 1000)),
        ).fetchall()
        month_ms.append((time.perf_counter() - began) * 1000)
        assert rows
        began = time.perf_counter()
        db.execute(
            "SELECT time_ms, doc FROM temporal WHERE tpk = ? AND aid = ? "
            "ORDER BY time_ms DESC LIMIT 144",
            (tpk, aid),
        ).fetchall()
        last_ms.append((time.perf_counter() - began) * 1000)
    db.close()
    return {"month": p95(month_ms), "lastN": p95(last_ms)}


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def lua(gauges: int, months: int, kind: str) -> str:
    """A wrk script asking for a random gauge (and month) per request."""
    header = (
        f'wrk.headers["Link"] = "<{CONTEXT}>; rel=\\"http://www.w3.org/ns/json-ld#context\\""\n'
    )
    ids = "math.randomseed(42)\n"
    if kind == "month":
        bounds = [month_bounds(m) for m in range(1, months + 1)]
        starts = ",".join(f'"{s.strftime("%Y-%m-%dT%H:%M:%SZ")}"' for s, _ in bounds)
        ends = ",".join(f'"{e.strftime("%Y-%m-%dT%H:%M:%SZ")}"' for _, e in bounds)
        return (
            header
            + ids
            + f"starts = {{{starts}}}\nends = {{{ends}}}\n"
            + "request = function()\n"
            + f"  local g = math.random(0, {gauges - 1})\n"
            + f"  local m = math.random(1, {months})\n"
            + "  return wrk.format('GET', string.format('/ngsi-ld/v1/temporal/entities/"
            + "urn:ngsi-ld:WaterObserved:gauge-%04d?attrs="
            + LEVEL.replace(":", "%%3A")
            + "&timerel=between&timeAt=%s&endTimeAt=%s&options=aggregatedValues"
            + "&aggrMethods=avg,max&aggrPeriodDuration=PT1H', g, starts[m], ends[m]))\n"
            + "end\n"
        )
    return (
        header
        + ids
        + "request = function()\n"
        + f"  local g = math.random(0, {gauges - 1})\n"
        + "  return wrk.format('GET', string.format('/ngsi-ld/v1/temporal/entities/"
        + "urn:ngsi-ld:WaterObserved:gauge-%04d?attrs="
        + LEVEL.replace(":", "%%3A")
        + "&lastN=144', g))\n"
        + "end\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=5_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep the seeded SQLite data here"
    )
    parser.add_argument(
        "--database",
        default=None,
        help="also measure PostgreSQL: a server URL (postgresql://user@host:port/dbname); "
        "a scratch database is created there and dropped afterwards",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    gauges = max(1, min(1000, round(args.instances / PER_YEAR)))
    per_gauge = args.instances // gauges
    months = max(1, min(12, per_gauge * 10 // (31 * 24 * 60)))
    console.print(
        f"{gauges} gauges x {per_gauge:,} readings = {gauges * per_gauge:,} instances "
        f"({months} whole months each)"
    )
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    if args.database:
        backends.append(("PostgreSQL", args.database))
    for backend, server_url in backends:
        scratch = f"cityos_bench_temporal_{os.getpid()}"
        database = create_database(server_url, scratch) if server_url else None
        try:
            results, baseline = measure(backend, database, args, gauges, per_gauge, months)
        finally:
            if server_url:
                drop_database(server_url, scratch)
        print_table(backend, results, baseline, gauges * per_gauge, args.connections)


def measure(
    backend: str,
    database: str | None,
    args: argparse.Namespace,
    gauges: int,
    per_gauge: int,
    months: int,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Seed one backend, then load a real server on it; the wrk figures and the baseline."""
    with tempfile.TemporaryDirectory(prefix="cityos-bench-temporal-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        path = data_dir / "cityos.sqlite3"
        began = time.perf_counter()
        if database:
            seed(PostgresStorage(database, upgrade=True), gauges, per_gauge)
            # Statistics as autovacuum would have them on a database in service.
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        elif not path.exists():
            seed(SqliteStorage(path), gauges, per_gauge)
        seed_s = time.perf_counter() - began
        console.print(
            f"{backend}: seeded in {seed_s:.1f} s ({gauges * per_gauge / seed_s:,.0f} rows/s)"
        )
        if database:
            baseline = postgres_baseline(database, gauges, months, 500)
        else:
            baseline = sql_baseline(path, gauges, months, 500)
        env = {
            **os.environ,
            "CITYOS_AUTH": "off",
            "PYTHONPATH": str(HERE.parent / "src"),
            # lastN=144 must come back whole, as before temporal pagination existed.
            "CITYOS_TEMPORAL_INSTANCE_LIMIT": "1000",
        }
        cityos = str(Path(sys.executable).parent / "cityos")
        cmd = [cityos, "serve", "--port", str(PORT), "--data-dir", str(data_dir)]
        if database:
            cmd += ["--database", database]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{PORT}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(base + "/health", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            results = {
                kind: run_wrk(
                    base,
                    lua(gauges, months, kind),
                    seconds=args.seconds,
                    connections=args.connections,
                )
                for kind in ("month", "lastN")
            }
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
    return results, baseline


def print_table(
    backend: str,
    results: dict[str, dict[str, float]],
    baseline: dict[str, float],
    instances: int,
    connections: int,
) -> None:
    """One table of figures for one backend."""
    table = Table(title=f"Temporal API on {backend}, {instances:,} instances, c={connections}")
    for column in (
        "scenario",
        "req/s",
        "p50 ms",
        "p95 ms",
        "target",
        "SQL p95 ms",
        "ratio",
        "errors",
    ):
        table.add_column(column)
    targets = {"month": 50.0, "lastN": 20.0}
    names = {"month": "1 month avg,max per PT1H", "lastN": "lastN=144"}
    for kind, data in results.items():
        table.add_row(
            names[kind],
            f"{data['requests'] / data['seconds']:.0f}",
            f"{data['p50_ms']:.2f}",
            f"{data['p95_ms']:.2f}",
            f"<= {targets[kind]:.0f}",
            f"{baseline[kind]:.3f}",
            f"{data['p95_ms'] / baseline[kind]:.1f}x",
            f"{data['errors'] + data['non2xx']:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
