"""Scale-out: partial-update throughput of 1 API process against N on one PostgreSQL.

Seeds ``--entities`` Sensor entities into a scratch database on the PostgreSQL server
given, then serves the same data with ``cityos serve --workers 1`` and with
``--workers N``, and drives each with the same wrk load (PATCH of one attribute of a
random entity, ``--connections`` connections, API-key auth on). Prints both figures and
their ratio (issue 4 target: >= 1.6 for 2 processes on a 2-core machine). The
single-process run is the baseline of the ratio, measured in the same run.

    .venv/bin/python benchmarks/bench_scaling.py
    .venv/bin/python benchmarks/bench_scaling.py --entities 20000 --seconds 10 --rounds 2 \
        --database postgresql://postgres@127.0.0.1:5432/postgres

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). The scratch database is dropped at
the end. wrk, PostgreSQL and the API processes share the machine's cores: on 2 cores
the ratio says how much a second process buys when everything competes for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_ngsild import free_port, scenarios, seed, start, stop
from loadgen import run_wrk
from rich.console import Console
from rich.table import Table

from cityos.settings import Settings
from cityos.storage.postgres import create_database, drop_database
from cityos.storage.state_stores import open_key_store

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
console = Console()


def measure(
    workers: int, settings: Settings, key: str, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, float]:
    """Serve with ``workers`` processes, warm up, run the partial-update load once."""
    port = free_port()
    assert settings.database is not None
    command = [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port)]
    command += ["--data-dir", str(settings.data_dir), "--database", settings.database]
    command += ["--workers", str(workers)]
    base = f"http://127.0.0.1:{port}"
    server = start(command, env, base + "/health")
    try:
        script = scenarios(args.entities, key)["partial update"]
        # Every worker past its start-up, pools and caches warm, before measuring.
        time.sleep(2)
        run_wrk(base, script, seconds=3, connections=args.connections)
        return run_wrk(base, script, seconds=args.seconds, connections=args.connections)
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server URL; a scratch database is created there and dropped",
    )
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="processes of the second run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both runs, alternating")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    OUT.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    scratch = f"cityos_bench_scaling_{os.getpid()}"
    database = create_database(args.database, scratch)
    results: list[tuple[int, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-scaling-") as tmp:
            settings = Settings(data_dir=Path(tmp), database=database, upgrade_on_start=True)
            seed(settings, args.entities)
            # Keys live where the installation keeps them (PostgreSQL here).
            keys = open_key_store(settings.database, settings.sqlite_path)
            key = keys.create("bench", "operator")[0]
            keys.close()
            for _ in range(args.rounds):
                for workers in (1, args.workers):
                    console.print(f"measuring {workers} process(es)…")
                    results.append((workers, measure(workers, settings, key, args, env)))
    finally:
        drop_database(args.database, scratch)

    def rate(figures: dict[str, float]) -> float:
        """Successful requests per second: failed answers are no throughput."""
        return (figures["requests"] - figures["errors"] - figures["non2xx"]) / figures["seconds"]

    table = Table(
        title=f"Partial update on PostgreSQL, {args.entities:,} entities, "
        f"wrk 1 thread {args.connections} connections, {args.seconds} s"
    )
    for column in ("processes", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors + non-2xx"):
        table.add_column(column)
    for workers, figures in results:
        table.add_row(
            str(workers),
            f"{rate(figures):,.0f}",
            f"{figures['p50_ms']:.1f}",
            f"{figures['p95_ms']:.1f}",
            f"{figures['p99_ms']:.1f}",
            str(int(figures["errors"] + figures["non2xx"])),
        )
    console.print(table)
    failed = sum(f["errors"] + f["non2xx"] for _, f in results)
    if failed > 0.01 * sum(f["requests"] for _, f in results):
        console.print(f"[red]{failed:,.0f} requests failed: the figures are not valid[/]")
        raise SystemExit(1)
    single = [rate(f) for w, f in results if w == 1]
    several = [rate(f) for w, f in results if w == args.workers]
    ratio = (sum(several) / len(several)) / (sum(single) / len(single))
    load = os.getloadavg()
    console.print(
        f"ratio {args.workers} processes / 1 process: [bold]{ratio:.2f}[/] (target ≥ 1.6); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"scaling-{stamp}.json").write_text(
        json.dumps(
            {
                "entities": args.entities,
                "connections": args.connections,
                "runs": [{"workers": w, **f} for w, f in results],
                "ratio": ratio,
                "loadavg": load,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
