"""Notification delivery under load: completeness and update-to-receipt latency.

Issue: 1,000 active subscriptions, 1,000 entity updates/s for 60 s, a local receiver
counting; 100 % of the expected notifications delivered and p99 update-to-receipt
latency <= 500 ms. Then the same with dead endpoints added (a closed port and a
server that accepts connections and never answers), each subscribed to *every*
update: the live subscriptions must still get 100 % with unchanged latency.

Four processes, each with its own interpreter: the cityos server (``python -m
cityos.cli serve``, auth off, a fresh data directory), the receiver (a bare ASGI app
under uvicorn + uvloop + httptools, recording arrival times), the load driver (a
paced asyncio client on raw keep-alive HTTP/1.1 connections) and this script, which
orchestrates and prints. Subscription ``i`` watches entity ``i % entities``, so each
update fires exactly ``subscriptions / entities`` notifications. The updated value
carries the driver's send time (epoch seconds) and a per-entity sequence number, so
the receiver measures latency from just before the PATCH leaves the driver to the
notification's arrival, and checks that notifications of one entity arrive in order.

Baselines measured in the same run: the receiver's capacity for the same POSTs sent
directly (closed loop), the latency of direct POSTs at the same paced rate, and the
broker's PATCH capacity without subscriptions.

    .venv/bin/python benchmarks/bench_notify.py                      # 60 s, 1,000/s
    .venv/bin/python benchmarks/bench_notify.py --seconds 10 --rate 500 --subscriptions 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
NGSI = "/ngsi-ld/v1"
TYPE = "BenchSensor"
console = Console(width=200)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def entity_id(n: int) -> str:
    return f"urn:ngsi-ld:{TYPE}:{n}"


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


# --------------------------------------------------------------- raw HTTP/1.1 client


class Connection:
    """One keep-alive HTTP/1.1 connection; bodies are read by Content-Length only.

    Why not httpx: the driver shares two cores with the server and the receiver, and
    httpx costs several times more CPU per request than these few lines.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes) -> int:
        """Send one request, return the status code (reconnecting once if needed)."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            try:
                self.writer.write(head + body)
                status_line = await self.reader.readuntil(b"\r\n")
                length = 0
                while True:
                    line = await self.reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await self.reader.readexactly(length)
                return int(status_line.split()[1])
            except (ConnectionError, asyncio.IncompleteReadError):
                self.writer = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------ receiver


def receiver_app() -> Callable[..., Awaitable[None]]:
    """The receiver: POST records a notification, GET /stats summarises, POST /reset."""
    arrivals: list[tuple[float, bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        payload = b""
        if path == "/stats":
            payload = orjson.dumps(summarise(arrivals))
        elif path == "/reset":
            arrivals.clear()
        else:
            arrivals.append((time.time(), body))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def summarise(arrivals: list[tuple[float, bytes]]) -> dict[str, Any]:
    """Count, latency percentiles (ms), duplicates and order violations of notifications."""
    latencies: list[float] = []
    last_seq: dict[tuple[str, str], int] = {}
    seen: set[tuple[str, str, int]] = set()
    duplicates = out_of_order = 0
    for received_at, body in arrivals:
        notification = orjson.loads(body)
        sub_id = notification.get("subscriptionId", "")
        for item in notification.get("data", []):
            reading = item.get("reading")
            if not isinstance(reading, dict):
                continue
            key = (sub_id, item["id"])
            seq = int(reading["seq"])
            if (sub_id, item["id"], seq) in seen:
                duplicates += 1
                continue
            seen.add((sub_id, item["id"], seq))
            if last_seq.get(key, -1) > seq:
                out_of_order += 1
            last_seq[key] = seq
            latencies.append((received_at - float(reading["sent"])) * 1000)
    latencies.sort()
    return {
        "notifications": len(arrivals),
        "unique": len(seen),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
    }


async def serve_hanging(port: int) -> None:
    """Accept connections, read whatever comes, never answer (a hung endpoint)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def run_receiver(port: int, hang_port: int) -> None:
    import uvicorn

    async def main() -> None:
        config = uvicorn.Config(
            receiver_app(),
            host="127.0.0.1",
            port=port,
            loop="none",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=4096,
        )
        hang = asyncio.create_task(serve_hanging(hang_port))
        await uvicorn.Server(config).serve()
        hang.cancel()

    import uvloop

    uvloop.run(main())


# -------------------------------------------------------------------------- driver


@dataclass
class DriveResult:
    """What a driver run achieved."""

    sent: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float


async def drive(
    port: int,
    make_request: Callable[[int, float], tuple[str, str, bytes]],
    *,
    rate: float,
    seconds: float,
    connections: int,
) -> DriveResult:
    """Send request ``n`` at ``start + n / rate`` (rate 0: closed loop, as fast as possible).

    Each connection takes the next due request; a request that cannot leave on time
    leaves late (never skipped), so the count is exact and lateness shows as latency.
    """
    total = int(rate * seconds) if rate else 1 << 62
    next_index = 0
    errors = 0
    latencies: list[float] = []
    start = time.monotonic()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal next_index, errors
        conn = Connection("127.0.0.1", port)
        while True:
            n = next_index
            if n >= total:
                return
            next_index += 1
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif time.monotonic() >= deadline:
                return
            sent = time.time()
            method, path, body = make_request(n, sent)
            t0 = time.monotonic()
            try:
                status = await conn.request(method, path, body)
            except OSError:
                status = 0
            latencies.append((time.monotonic() - t0) * 1000)
            if not 200 <= status < 300:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - start
    latencies.sort()
    return DriveResult(
        len(latencies), errors, elapsed, percentile(latencies, 50), percentile(latencies, 99)
    )


def update_request(entities: int) -> Callable[[int, float], tuple[str, str, bytes]]:
    """Update ``n`` goes to entity ``n % entities`` with sequence number ``n // entities``."""

    def make(n: int, sent: float) -> tuple[str, str, bytes]:
        body = orjson.dumps(
            {"reading": {"type": "Property", "value": {"sent": sent, "seq": n // entities}}}
        )
        return "PATCH", f"{NGSI}/entities/{entity_id(n % entities)}/attrs", body

    return make


def direct_request(entities: int) -> Callable[[int, float], tuple[str, str, bytes]]:
    """A notification like the broker's, POSTed straight to the receiver."""

    def make(n: int, sent: float) -> tuple[str, str, bytes]:
        body = orjson.dumps(
            {
                "id": f"urn:ngsi-ld:Notification:{n}",
                "type": "Notification",
                "subscriptionId": "urn:ngsi-ld:Subscription:direct",
                "notifiedAt": "2026-01-01T00:00:00.000Z",
                "data": [
                    {
                        "id": entity_id(n % entities),
                        "type": TYPE,
                        "reading": {"sent": sent, "seq": n // entities},
                    }
                ],
            }
        )
        return "POST", "/notify", body

    return make


def run_driver(args: argparse.Namespace) -> None:
    make = {"update": update_request, "direct": direct_request}[args.kind](args.entities)
    result = asyncio.run(
        drive(
            args.port,
            make,
            rate=args.rate,
            seconds=args.seconds,
            connections=args.connections,
        )
    )
    sys.stdout.write(orjson.dumps(result.__dict__).decode() + "\n")


# ---------------------------------------------------------------------- orchestrator


def spawn(
    argv: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a Python process; with ``log``, its output goes there (a pipe nobody reads
    would block it once full)."""
    out: Any = subprocess.PIPE if log is None else log.open("wb")
    return subprocess.Popen(
        [sys.executable, *argv],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
    )


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {proc.args}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def driver(
    kind: str, port: int, *, rate: float, seconds: float, entities: int, connections: int
) -> DriveResult:
    proc = spawn(
        [
            __file__,
            "driver",
            "--kind",
            kind,
            "--port",
            str(port),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--entities",
            str(entities),
            "--connections",
            str(connections),
        ]
    )
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"driver failed: {err.decode()}")
    return DriveResult(**orjson.loads(out.splitlines()[-1]))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_drained(
    client: httpx.Client, expected: int, idle_s: float = 15.0, limit_s: float = 300.0
) -> tuple[dict[str, Any], float]:
    """Poll the receiver until ``expected`` unique notifications arrived, or none for
    ``idle_s``; return its summary and the seconds waited."""
    start = last_change = time.monotonic()
    last = -1
    while True:
        stats: dict[str, Any] = client.get("/stats", timeout=60).json()
        now = time.monotonic()
        if stats["unique"] >= expected:
            return stats, now - start
        if stats["unique"] != last:
            last, last_change = stats["unique"], now
        if now - last_change > idle_s or now - start > limit_s:
            return stats, now - start
        time.sleep(0.5)


def subscription(n: int, entity: int, uri: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Subscription:bench:{n}",
        "type": "Subscription",
        "entities": [{"id": entity_id(entity), "type": TYPE}],
        "watchedAttributes": ["reading"],
        "notification": {
            "format": "keyValues",
            "attributes": ["reading"],
            "endpoint": {"uri": uri, "accept": "application/json"},
        },
    }


def create_fixtures(api: httpx.Client, entities: int, subscriptions: int, receiver: str) -> None:
    for start in range(0, entities, 500):
        batch = [
            {
                "id": entity_id(n),
                "type": TYPE,
                "reading": {"type": "Property", "value": {"sent": 0, "seq": -1}},
            }
            for n in range(start, min(entities, start + 500))
        ]
        response = api.post("/entityOperations/create", json=batch)
        assert response.status_code in (200, 201), response.text
    for n in range(subscriptions):
        response = api.post("/subscriptions", json=subscription(n, n % entities, receiver))
        assert response.status_code == 201, response.text


@dataclass
class Row:
    """One line of the result table."""

    scenario: str
    sent: int
    send_rate: float
    expected: int
    delivered: int
    duplicates: int
    out_of_order: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    drain_s: float
    server_cpu: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role")
    run = sub.add_parser("run")
    run.add_argument("--seconds", type=float, default=60)
    run.add_argument("--rate", type=float, default=1000)
    run.add_argument("--subscriptions", type=int, default=1000)
    run.add_argument("--entities", type=int, default=None, help="default: --subscriptions")
    run.add_argument("--connections", type=int, default=16)
    run.add_argument("--no-dead", action="store_true", help="skip the dead-endpoint run")
    run.add_argument("--profile", type=Path, help="run the server under cProfile, write here")
    recv = sub.add_parser("receiver")
    recv.add_argument("--port", type=int, required=True)
    recv.add_argument("--hang-port", type=int, required=True)
    drv = sub.add_parser("driver")
    drv.add_argument("--kind", choices=["update", "direct"], required=True)
    drv.add_argument("--port", type=int, required=True)
    drv.add_argument("--rate", type=float, required=True)
    drv.add_argument("--seconds", type=float, required=True)
    drv.add_argument("--entities", type=int, required=True)
    drv.add_argument("--connections", type=int, required=True)
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    if args.role == "receiver":
        run_receiver(args.port, args.hang_port)
    elif args.role == "driver":
        run_driver(args)
    else:
        orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    entities = args.entities or args.subscriptions
    fanout = args.subscriptions / entities
    if args.subscriptions % entities:
        raise SystemExit("--subscriptions must be a multiple of --entities")
    console.print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"{args.subscriptions:,} subscriptions on {entities:,} entities "
        f"({fanout:g} per update), {args.rate:g} updates/s for {args.seconds:g} s"
    )
    recv_port, hang_port, server_port = free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="cityos-bench-notify-"))
    receiver = spawn(
        [__file__, "receiver", "--port", str(recv_port), "--hang-port", str(hang_port)]
    )
    server = spawn(
        [
            *(["-m", "cProfile", "-o", str(args.profile), "-m"] if args.profile else ["-m"]),
            "cityos.cli",
            "serve",
            "--port",
            str(server_port),
            "--data-dir",
            str(data_dir),
        ],
        env={"CITYOS_AUTH": "off", "CITYOS_LOG_LEVEL": "warning"},
        log=data_dir / "server.log",
    )
    rows: list[Row] = []
    try:
        wait_http(f"http://127.0.0.1:{recv_port}/stats", receiver)
        wait_http(f"http://127.0.0.1:{server_port}/health", server)
        rx = httpx.Client(base_url=f"http://127.0.0.1:{recv_port}")
        api = httpx.Client(base_url=f"http://127.0.0.1:{server_port}{NGSI}", timeout=30)
        notify_url = f"http://127.0.0.1:{recv_port}/notify"
        conns = args.connections
        short = min(10.0, args.seconds)

        # Baselines, same run: the receiver alone, then the broker without subscriptions.
        capacity = driver(
            "direct", recv_port, rate=0, seconds=short, entities=entities, connections=conns
        )
        rx.post("/reset")
        paced = driver(
            "direct", recv_port, rate=args.rate, seconds=short, entities=entities, connections=conns
        )
        direct = rx.get("/stats").json()
        rx.post("/reset")
        create_fixtures(api, entities, 0, notify_url)
        bare = driver(
            "update", server_port, rate=0, seconds=short, entities=entities, connections=conns
        )
        console.print(
            f"receiver capacity {capacity.sent / capacity.seconds:,.0f} POST/s; "
            f"broker without subscriptions {bare.sent / bare.seconds:,.0f} PATCH/s "
            f"(p99 {bare.p99_ms:.1f} ms)"
        )
        rows.append(
            Row(
                "direct POST to receiver (baseline)",
                paced.sent,
                paced.sent / paced.seconds,
                paced.sent,
                direct["unique"],
                direct["duplicates"],
                direct["out_of_order"],
                direct["p50_ms"],
                direct["p95_ms"],
                direct["p99_ms"],
                0.0,
                float("nan"),
            )
        )
        for n in range(args.subscriptions):
            response = api.post("/subscriptions", json=subscription(n, n % entities, notify_url))
            assert response.status_code == 201, response.text

        scenarios = [("live endpoints only", [])]
        if not args.no_dead:
            dead_uris = [
                f"http://127.0.0.1:{free_port()}/closed",
                f"http://127.0.0.1:{hang_port}/hangs",
            ]
            scenarios.append(("+ closed port and hung endpoint, every update", dead_uris))
        for name, dead in scenarios:
            for k, uri in enumerate(dead):
                body = {
                    "id": f"urn:ngsi-ld:Subscription:dead:{k}",
                    "type": "Subscription",
                    "entities": [{"type": TYPE}],
                    "notification": {"format": "keyValues", "endpoint": {"uri": uri}},
                }
                assert api.post("/subscriptions", json=body).status_code == 201
            rx.post("/reset")
            # Let the previous scenario's stragglers (if any) settle before counting.
            time.sleep(1)
            rx.post("/reset")
            cpu0 = cpu_s(server.pid)
            result = driver(
                "update",
                server_port,
                rate=args.rate,
                seconds=args.seconds,
                entities=entities,
                connections=conns,
            )
            stats, drain_s = wait_drained(rx, int(result.sent * fanout))
            cpu = cpu_s(server.pid) - cpu0
            rows.append(
                Row(
                    name,
                    result.sent,
                    result.sent / result.seconds,
                    int(result.sent * fanout),
                    stats["unique"],
                    stats["duplicates"],
                    stats["out_of_order"],
                    stats["p50_ms"],
                    stats["p95_ms"],
                    stats["p99_ms"],
                    drain_s,
                    cpu / (result.seconds + drain_s),
                )
            )
            if result.errors:
                console.print(f"[red]{name}: {result.errors} update(s) failed[/red]")
    finally:
        stop(server)
        stop(receiver)
    print_table(rows, args)
    console.print(f"server log: {data_dir / 'server.log'}")


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    table = Table(
        title=f"Notifications: {args.subscriptions:,} subscriptions, "
        f"{args.rate:g} updates/s, {args.seconds:g} s"
    )
    for column in (
        "scenario",
        "updates",
        "rate/s",
        "expected",
        "delivered",
        "dup",
        "order",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99 ratio",
        "drain s",
        "server CPU",
    ):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    base = rows[0].p99_ms if rows else float("nan")
    for row in rows:
        pct = 100 * row.delivered / row.expected if row.expected else float("nan")
        table.add_row(
            row.scenario,
            f"{row.sent:,}",
            f"{row.send_rate:,.0f}",
            f"{row.expected:,}",
            f"{row.delivered:,} ({pct:.2f} %)",
            str(row.duplicates),
            str(row.out_of_order),
            f"{row.p50_ms:.1f}",
            f"{row.p95_ms:.1f}",
            f"{row.p99_ms:.1f}",
            f"{row.p99_ms / base:.1f}x",
            f"{row.drain_s:.1f}",
            "" if row.server_cpu != row.server_cpu else f"{100 * row.server_cpu:.0f} %",
        )
    console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
