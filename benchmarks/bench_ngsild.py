"""NGSI-LD broker throughput and latency, with the same-run baseline of a bare endpoint.

Scenarios (issue 2): create, partial attribute update, query by type + q returning 20
entities, and near;maxDistance==1000 over the stored points, against a cityos server
holding ``--entities`` entities in SQLite; plus server RSS with ``--rss-entities``
stored. Load comes from wrk (a separate process) on loopback; every scenario is
printed next to the req/s of a bare FastAPI endpoint served the same way (uvicorn,
uvloop, httptools) in the same run.

    .venv/bin/python benchmarks/bench_ngsild.py                 # 100,000 entities
    .venv/bin/python benchmarks/bench_ngsild.py --rss-entities 1000000
    .venv/bin/python benchmarks/bench_ngsild.py --entities 20000 --seconds 5 --pg-workers 2 \
        --database postgresql://postgres@127.0.0.1:5432/postgres

Needs ``wrk`` (Debian: ``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psycopg
from loadgen import run_wrk
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cityos.app import open_storage
from cityos.broker.context import ContextResolver
from cityos.broker.service import ContextBroker
from cityos.settings import Settings
from cityos.storage.base import DEFAULT_TENANT
from cityos.storage.keys import SqliteKeyStore
from cityos.storage.postgres import create_database, drop_database
from cityos.storage.state_stores import open_key_store

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
# Piped output (a log file) gets a width the tables fit in, instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)


def free_port() -> int:
    """A TCP port free on loopback now (fixed ports clash with other runs on the machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORTS = {"server": free_port(), "bare": free_port(), "rss": free_port()}

# Toyama City, roughly: where the simulated sensors stand.
MIN_LON, MAX_LON, MIN_LAT, MAX_LAT = 137.10, 137.35, 36.55, 36.78


@dataclass
class Figure:
    """One measured scenario."""

    name: str
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    target: str
    backend: str = ""
    load: float = 0.0
    """The machine's 1-minute load average when the scenario started."""


def seed(settings: Settings, count: int) -> None:
    """Write ``count`` sensor entities through the broker API into the settings' backend."""
    storage = open_storage(settings)
    broker = ContextBroker(storage)
    core = asyncio.run(ContextResolver(settings).resolve(None))
    rng = random.Random(42)
    batch = 2000
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"seeding {count:,} entities", total=count)
        for start in range(0, count, batch):
            items = []
            for n in range(start, min(start + batch, count)):
                items.append((sensor_entity(n, rng), core.expand))
            result = broker.batch_create(DEFAULT_TENANT, items)
            if result.errors:
                raise RuntimeError(result.errors[0])
            progress.advance(task, len(items))
    storage.close()
    if settings.database:
        # Statistics as autovacuum would have them on a database in service.
        with psycopg.connect(settings.database, autocommit=True) as conn:
            conn.execute("ANALYZE")


def sensor_entity(n: int, rng: random.Random) -> dict[str, object]:
    """A realistic environment sensor entity."""
    return {
        "id": f"urn:ngsi-ld:Sensor:{n}",
        "type": "Sensor",
        "temperature": {
            "type": "Property",
            "value": round(rng.uniform(-5, 35), 1),
            "unitCode": "CEL",
            "observedAt": "2026-11-24T10:00:00.000Z",
        },
        "humidity": {"type": "Property", "value": round(rng.uniform(20, 100), 1), "unitCode": "P1"},
        "location": {
            "type": "GeoProperty",
            "value": {
                "type": "Point",
                "coordinates": [
                    round(rng.uniform(MIN_LON, MAX_LON), 6),
                    round(rng.uniform(MIN_LAT, MAX_LAT), 6),
                ],
            },
        },
        "name": {"type": "Property", "value": f"sensor {n}"},
    }


def start(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    """Start a server process and wait until ``url`` answers."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, script: str, *, seconds: int, connections: int, name: str, target: str) -> Figure:
    """Run a wrk scenario and keep its figures under ``name``."""
    load = os.getloadavg()[0]
    data = run_wrk(url, script, seconds=seconds, connections=connections)
    return Figure(
        name,
        data["requests"] / data["seconds"],
        data["p50_ms"],
        data["p95_ms"],
        data["p99_ms"],
        int(data["errors"] + data["non2xx"]),
        target,
        load=load,
    )


def lua_headers(key: str) -> str:
    return f'wrk.headers["X-API-Key"] = "{key}"\nwrk.headers["Content-Type"] = "application/json"\n'


def scenarios(entities: int, key: str) -> dict[str, str]:
    """wrk Lua scripts per scenario."""
    headers = lua_headers(key)
    return {
        "create": headers
        + """
local n = 0
local tid = math.random(1, 1000000000)
request = function()
  n = n + 1
  local body = string.format('{"id":"urn:ngsi-ld:Sensor:new-%d-%d","type":"Sensor",'
    .. '"temperature":{"type":"Property","value":%d,"unitCode":"CEL"},'
    .. '"location":{"type":"GeoProperty","value":{"type":"Point","coordinates":[137.2,36.7]}}}',
    tid, n, n % 40)
  return wrk.format("POST", "/ngsi-ld/v1/entities", nil, body)
end
""",
        "partial update": headers
        + f"""
request = function()
  local id = math.random(0, {entities - 1})
  local body = string.format('{{"value":%d}}', math.random(-5, 35))
  return wrk.format("PATCH", "/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:" .. id
    .. "/attrs/temperature", nil, body)
end
""",
        "query type+q (20)": headers
        + """
request = function()
  local t = math.random(0, 30)
  return wrk.format("GET", "/ngsi-ld/v1/entities?type=Sensor&q=temperature%3E" .. t
    .. "&limit=20", nil, nil)
end
""",
        "near 1000 m": headers
        + f"""
request = function()
  local lon = {MIN_LON} + math.random() * {MAX_LON - MIN_LON}
  local lat = {MIN_LAT} + math.random() * {MAX_LAT - MIN_LAT}
  return wrk.format("GET", string.format("/ngsi-ld/v1/entities?type=Sensor"
    .. "&georel=near%%3BmaxDistance%%3D%%3D1000&geometry=Point"
    .. "&coordinates=%%5B%.5f,%.5f%%5D", lon, lat), nil, nil)
end
""",
    }


TARGETS = {
    "create": "≥ 1,500 req/s",
    "partial update": "≥ 2,000 req/s",
    "query type+q (20)": "≥ 800 req/s, p95 ≤ 50 ms",
    "near 1000 m": "p95 ≤ 20 ms",
}


def measure_broker(
    settings: Settings,
    backend: str,
    args: argparse.Namespace,
    env: dict[str, str],
    workers: int = 1,
) -> tuple[list[Figure], float]:
    """Seed the settings' backend, serve it with ``workers`` processes, run every
    scenario; figures and final RSS (MB, of the first process)."""
    seed(settings, args.entities)
    keys = open_key_store(settings.database, settings.sqlite_path)
    key = keys.create("bench", "operator")[0]
    keys.close()
    command = [sys.executable, "-m", "cityos.cli", "serve", "--port", str(PORTS["server"])]
    command += ["--data-dir", str(settings.data_dir)]
    if settings.database:
        command += ["--database", settings.database]
    if workers > 1:
        command += ["--workers", str(workers)]
    figures: list[Figure] = []
    server = start(command, env, f"http://127.0.0.1:{PORTS['server']}/health")
    try:
        scripts = scenarios(args.entities, key)
        runs = [(name, args.connections, name) for name in scripts]
        # Latency under light load: at 32 connections p95 is mostly queueing.
        runs += [
            (name, 4, f"{name}, 4 connections") for name in ("query type+q (20)", "near 1000 m")
        ]
        for name, connections, label in runs:
            figure = wrk(
                f"http://127.0.0.1:{PORTS['server']}",
                scripts[name],
                seconds=args.seconds,
                connections=connections,
                name=label,
                target=TARGETS[name],
            )
            figure.backend = backend
            figures.append(figure)
        return figures, rss_mb(server.pid)
    finally:
        stop(server)


def side_by_side(figures: list[Figure], backends: list[str]) -> Table:
    """req/s (p95 ms) of each scenario per backend, and the ratio of the last backend to
    the first (PostgreSQL to SQLite), measured in the same run."""
    table = Table(title="Side by side: req/s (p95 ms)")
    for column in ("scenario", *backends, f"{backends[-1]} ÷ {backends[0]}"):
        table.add_column(column)
    by_key = {(f.name, f.backend): f for f in figures}
    for name in dict.fromkeys(f.name for f in figures if f.backend):
        cells = [by_key.get((name, backend)) for backend in backends]
        first, last = cells[0], cells[-1]
        table.add_row(
            name,
            *(f"{c.req_per_s:,.0f} ({c.p95_ms:.1f})" if c else "" for c in cells),
            f"{last.req_per_s / first.req_per_s:.2f}" if first and last else "",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--database",
        default=None,
        help="also measure PostgreSQL: a server URL (postgresql://user@host:port/dbname); "
        "a scratch database is created there and dropped afterwards",
    )
    parser.add_argument(
        "--pg-workers",
        type=int,
        default=0,
        help="with --database: also measure PostgreSQL served by this many processes "
        "(cityos serve --workers N), the deployment on a machine with N cores",
    )
    parser.add_argument(
        "--rss-entities",
        type=int,
        default=0,
        help="also measure server RSS with this many entities stored",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    OUT.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    figures: list[Figure] = []
    extra: dict[str, float] = {}

    bare = start(
        [sys.executable, str(HERE / "bare_app.py"), str(PORTS["bare"])],
        env,
        f"http://127.0.0.1:{PORTS['bare']}/bare",
    )
    try:
        bare_get = wrk(
            f"http://127.0.0.1:{PORTS['bare']}/bare",
            "",
            seconds=args.seconds,
            connections=args.connections,
            name="bare GET (baseline)",
            target="",
        )
        bare_post = wrk(
            f"http://127.0.0.1:{PORTS['bare']}/bare",
            'wrk.method = "POST"\nwrk.body = \'{"id":"x"}\'\n',
            seconds=args.seconds,
            connections=args.connections,
            name="bare POST (baseline)",
            target="",
        )
    finally:
        stop(bare)
    figures += [bare_get, bare_post]

    backends: list[tuple[str, str | None, int]] = [("SQLite", None, 1)]
    if args.database:
        backends.append(("PostgreSQL", args.database, 1))
        if args.pg_workers > 1:
            backends.append((f"PostgreSQL ×{args.pg_workers}", args.database, args.pg_workers))
    for backend, server_url, workers in backends:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-") as tmp:
            data_dir = Path(tmp)
            scratch = f"cityos_bench_{os.getpid()}"
            database = create_database(server_url, scratch) if server_url else None
            try:
                settings = Settings(data_dir=data_dir, database=database, upgrade_on_start=True)
                measured, rss = measure_broker(settings, backend, args, env, workers)
            finally:
                if server_url:
                    drop_database(server_url, scratch)
        figures += measured
        extra[f"rss_mb_after_load_{backend}"] = rss

    if args.rss_entities:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-rss-") as tmp:
            data_dir = Path(tmp)
            seed(Settings(data_dir=data_dir), args.rss_entities)
            keys = SqliteKeyStore(data_dir / "keys.sqlite3")
            key = keys.create("bench", "operator")[0]
            keys.close()
            server = start(
                [
                    sys.executable,
                    "-m",
                    "cityos.cli",
                    "serve",
                    "--port",
                    str(PORTS["rss"]),
                    "--data-dir",
                    str(data_dir),
                ],
                env,
                f"http://127.0.0.1:{PORTS['rss']}/health",
            )
            try:
                script = scenarios(args.rss_entities, key)
                for name in ("query type+q (20)", "partial update", "near 1000 m"):
                    figures.append(
                        wrk(
                            f"http://127.0.0.1:{PORTS['rss']}",
                            script[name],
                            seconds=5,
                            connections=args.connections,
                            name=f"{name} @ {args.rss_entities:,}",
                            target="",
                        )
                    )
                    figures[-1].backend = "SQLite"
                extra[f"rss_mb_with_{args.rss_entities}"] = rss_mb(server.pid)
            finally:
                stop(server)

    table = Table(
        title=f"NGSI-LD broker, {' and '.join(b for b, _, _ in backends)}, "
        f"{args.entities:,} entities, wrk 1 thread {args.connections} connections"
    )
    for column in (
        "scenario",
        "backend",
        "req/s",
        "× bare",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "load",
        "target",
    ):
        table.add_column(column)
    for figure in figures:
        baseline = bare_post if figure.name.startswith("create") else bare_get
        ratio = figure.req_per_s / baseline.req_per_s
        table.add_row(
            figure.name,
            figure.backend,
            f"{figure.req_per_s:,.0f}",
            f"{ratio:.2f}",
            f"{figure.p50_ms:.1f}",
            f"{figure.p95_ms:.1f}",
            f"{figure.p99_ms:.1f}",
            str(figure.errors),
            f"{figure.load:.1f}",
            figure.target,
        )
    console.print(table)
    if len(backends) > 1:
        console.print(side_by_side(figures, [b for b, _, _ in backends]))
    for name, value in extra.items():
        console.print(f"{name}: {value:,.0f} MB")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"ngsild-{stamp}.json").write_text(
        json.dumps(
            {"entities": args.entities, "figures": [asdict(f) for f in figures], **extra}, indent=2
        )
    )


if __name__ == "__main__":
    main()
