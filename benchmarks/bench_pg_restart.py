"""Reliability: restart PostgreSQL under a steady write load; count what clients saw.

Creates a private PostgreSQL cluster in a temporary directory (never the machine's
shared one), serves a cityos on it, and runs ``--writers`` concurrent clients that
create entities with unique ids for ``--seconds``. At ``--restart-at`` seconds the
cluster is restarted with ``pg_ctl restart -m fast``. Reported:

- requests, acknowledged writes (201) and the write rate before the restart (baseline);
- 503 answers, any other answer (500 would be a bug), transport errors, slowest answer;
- outage: from the first failed write to the last one around the restart;
- time to recover: from ``pg_ctl restart`` returning to the first 201 after it;
- lost acknowledged writes: 201-acknowledged ids missing from the database (must be 0).

    .venv/bin/python benchmarks/bench_pg_restart.py
    .venv/bin/python benchmarks/bench_pg_restart.py --writers 32 --seconds 30 --workers 2

Runs as root (initdb runs as the postgres user through runuser) or as postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from bench_ngsild import free_port, start, stop
from rich.console import Console

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.private_postgres import PrivateCluster, cluster_problem  # noqa: E402

OUT = HERE / "out"
console = Console()


@dataclass
class Answer:
    """One write as a client saw it."""

    started_s: float
    ended_s: float
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    entity_id: str


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)


async def writer(base: str, load: Load, until_s: float, origin: float) -> None:
    """Create entities one after another until ``until_s`` (monotonic)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() < until_s:
            entity_id = f"urn:ngsi-ld:Sensor:restart-{uuid.uuid4().hex}"
            body = {
                "id": entity_id,
                "type": "Sensor",
                "temperature": {"type": "Property", "value": 12.5, "unitCode": "CEL"},
            }
            started = time.monotonic()
            try:
                status = (await http.post("/ngsi-ld/v1/entities", json=body)).status_code
            except httpx.TransportError:
                status = 0
                await asyncio.sleep(0.05)
            load.answers.append(
                Answer(started - origin, time.monotonic() - origin, status, entity_id)
            )


async def run_load(base: str, writers: int, seconds: float, origin: float) -> Load:
    load = Load()
    until = origin + seconds
    await asyncio.gather(*(writer(base, load, until, origin) for _ in range(writers)))
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--restart-at", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=1, help="cityos API processes")
    args = parser.parse_args()
    problem = cluster_problem()
    if problem is not None:
        sys.exit(problem)
    OUT.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "CITYOS_AUTH": "off"}
    cluster = PrivateCluster()
    restart_window: list[float] = []
    try:
        cluster.start()
        database = cluster.create_database("cityos_restart")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="cityos-bench-restart-") as tmp:
            command = [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port)]
            command += ["--data-dir", tmp, "--database", database, "--upgrade"]
            command += ["--workers", str(args.workers)]
            server = start(command, env, base + "/health")
            try:
                time.sleep(2)  # every worker up
                origin = time.monotonic()

                def restart() -> None:
                    time.sleep(args.restart_at)
                    restart_window.append(time.monotonic() - origin)
                    cluster.restart()
                    restart_window.append(time.monotonic() - origin)

                restarter = threading.Thread(target=restart)
                restarter.start()
                load = asyncio.run(run_load(base, args.writers, args.seconds, origin))
                restarter.join()
            finally:
                stop(server)
        acknowledged = [a.entity_id for a in load.answers if a.status == 201]
        with psycopg.connect(database) as conn:
            stored = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM entities WHERE id = ANY(%s)", (acknowledged,)
                )
            }
    finally:
        cluster.remove()

    answers = load.answers
    failed = [a for a in answers if a.status != 201]
    began, returned = restart_window
    before = [a for a in answers if a.ended_s < began and a.status == 201]
    after_ok = [a.ended_s for a in answers if a.status == 201 and a.started_s >= returned]
    figures = {
        "requests": len(answers),
        "acknowledged": len(acknowledged),
        "rate_before_restart_per_s": len(before) / began if began else 0.0,
        "answers_503": sum(a.status == 503 for a in answers),
        "answers_other": sum(a.status not in (201, 503, 0) for a in answers),
        "transport_errors": sum(a.status == 0 for a in answers),
        "slowest_answer_s": max(a.ended_s - a.started_s for a in answers),
        "pg_restart_s": returned - began,
        "outage_s": (max(a.ended_s for a in failed) - min(a.started_s for a in failed))
        if failed
        else 0.0,
        "recovery_after_restart_s": (min(after_ok) - returned) if after_ok else float("nan"),
        "lost_acknowledged_writes": len(set(acknowledged) - stored),
    }
    load_avg = os.getloadavg()
    console.print(
        f"[bold]PostgreSQL restart under load[/] ({args.writers} writers, {args.workers} "
        f"API process(es), restart at {args.restart_at:.0f} s of {args.seconds:.0f} s)"
    )
    for name, value in figures.items():
        text = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        console.print(f"  {name:28} {text}")
    console.print(
        f"  load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; "
        "target: lost_acknowledged_writes = 0, answers_other = 0"
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"pg-restart-{stamp}.json").write_text(
        json.dumps({**figures, "writers": args.writers, "loadavg": load_avg}, indent=2)
    )
    if figures["lost_acknowledged_writes"] or figures["answers_other"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
