"""Sensor ingestion end to end: MQTT (Mosquitto on loopback) -> decode -> entities ->
history committed, with same-run baselines.

Issue 5 targets (2 cores, SQLite): >= 10,000 uplinks/s sustained; p99 <= 200 ms at
2,000 uplinks/s; throughput >= 0.35 of raw Mosquitto delivery; JavaScript codec cost per
uplink reported separately; after ``kill -9`` at 2,000 uplinks/s, every published
uplink stored exactly once.

Processes: a private Mosquitto (ports 18850-18859, persistence on, this script's own
temporary directory), the cityos server (``python -m cityos.cli serve`` with
``CITYOS_MQTT_URL``), a publisher (this script with ``--role publish``: paho, QoS 1,
ChirpStack v4 ``up`` events of ``--devices`` water-level gauges, round robin, each
uplink's ``time`` = its publish time) and, for the baseline, a bare paho subscriber
(``--role subscribe``: MQTT 5, QoS 1, Receive Maximum 1000, acknowledges at once).

Figures:
1. **Throughput**: with the server stopped (its persistent session stays on the
   broker), ``--uplinks`` are queued for it; then the server starts and drains them.
   Its commit count (``GET /ingest/stats``, polled) gives uplinks/s from its first to
   its last commit. The publisher's own speed (Python, sharing the two cores) is thus
   out of the figure. Before it, one uplink per device creates the entities.
2. **Latency at ``--rate``/s**: the server records, per stored uplink, commit time minus
   the uplink's ``time`` (publish time, same clock): p50/p99 over that window.
3. **Raw Mosquitto**: the same messages queued the same way for the bare subscriber's
   persistent session, then drained by it.
4. **Raw SQLite**: the same rows (two entity documents and five history rows per
   uplink) inserted with ``executemany`` in transactions of 500 uplinks.
5. **Codec cost**: the demo JavaScript codec (QuickJS) and its Python twin, per call.
6. **kill -9**: ``--kill-seconds`` at ``--rate``/s, the server killed half-way and
   restarted; then the keys and history rows of the run are counted in the database.

7. ``--profile`` (instead of 1-6): the server's own ingestion driven in this process,
   without MQTT or HTTP: the recorded messages go through the intake of an app built by
   ``create_app`` (the same pipeline, writer, SQLite storage and change listeners as
   ``serve``), and the CPU time per uplink is printed (the whole process, and the
   event-loop thread alone); ``--cprofile N`` adds the N functions that cost most.
   This is where per-uplink costs are found and compared.

    .venv/bin/python benchmarks/bench_ingest.py
    .venv/bin/python benchmarks/bench_ingest.py --devices 1000 --uplinks 20000 --seconds 10
    .venv/bin/python benchmarks/bench_ingest.py --profile --uplinks 50000 --cprofile 40
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
console = Console(width=200)
APP = "bench"
PRIVATE_PORTS = range(18850, 18860)
SERVER_PORTS = range(8850, 8860)


# -- helpers ----------------------------------------------------------------------------


def free_port(candidates: range) -> int:
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"No free port in {candidates.start}-{candidates.stop - 1}")


def dev_eui(index: int) -> str:
    return f"70b3d5{index:010x}"


def iso_ms(time_s: float) -> str:
    whole = int(time_s)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        + f".{int((time_s - whole) * 1000):03d}Z"
    )


def uplink(index: int, devices: int, sent_s: float) -> tuple[str, bytes]:
    """The ``index``-th ChirpStack up event (topic, body), stamped ``sent_s``."""
    eui = dev_eui(index % devices)
    distance_mm = 1000 + index % 3000
    body = {
        "deduplicationId": str(uuid.uuid4()),
        "time": iso_ms(sent_s),
        "deviceInfo": {
            "tenantName": "bench",
            "applicationId": APP,
            "deviceProfileName": "water-level",
            "deviceName": eui,
            "devEui": eui,
        },
        "devAddr": "00189440",
        "dr": 5,
        "fCnt": index // devices,
        "fPort": 1,
        "data": base64.b64encode(distance_mm.to_bytes(2, "big") + b"\x5a").decode(),
        "rxInfo": [
            {
                "gatewayId": f"0016c001f1{index % 100:06x}",
                "rssi": -70 - index % 50,
                "snr": (index % 30) / 2 - 5,
                "location": {"latitude": 36.69, "longitude": 137.21},
            }
        ],
        "txInfo": {"frequency": 923200000, "modulation": {"lora": {"spreadingFactor": 7}}},
    }
    return f"application/{APP}/device/{eui}/event/up", orjson.dumps(body)


def wait_until(check: Any, timeout_s: float, what: str) -> Any:  # Any: a callable's result
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise SystemExit(f"Timed out waiting for {what}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- roles (separate processes) -------------------------------------------------------


def role_publish(args: argparse.Namespace) -> None:
    """Publish ``count`` uplinks from ``start`` at ``rate``/s (0: as fast as possible)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    started = time.time()
    last = None
    for n in range(args.count):
        if args.rate:
            delay = started + n / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
        topic, body = uplink(args.start + n, args.devices, time.time())
        last = client.publish(topic, body, qos=1)
        while len(client._out_messages) > 5000:  # bound memory when the broker is slower
            time.sleep(0.001)
    if last is not None:
        last.wait_for_publish(120)
    print(json.dumps({"published": args.count, "seconds": time.time() - started}), flush=True)
    client.loop_stop()
    client.disconnect()


def role_subscribe(args: argparse.Namespace) -> None:
    """Bare QoS 1 subscriber: print the times of the first and last of ``count``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: Any, userdata: Any, message: Any) -> None:  # Any: paho types
        if seen["n"] == 0:
            seen["first"] = time.time()
        seen["n"] += 1
        seen["last"] = time.time()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare-subscriber", protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = 1000
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", args.port, clean_start=False, properties=properties)
    client.loop_start()
    if args.count == 0:  # prepare: leave a session with the subscription on the broker
        client.subscribe(f"application/{APP}/device/+/event/+", qos=1)
        time.sleep(1)
        client.disconnect()
        client.loop_stop()
        return
    deadline = time.time() + 600
    while seen["n"] < args.count and time.time() < deadline:
        time.sleep(0.01)
    client.loop_stop()
    print(json.dumps(seen), flush=True)


# -- the parts ----------------------------------------------------------------------------


class Mosquitto:
    """A private broker with persistence in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port(PRIVATE_PORTS)
        config = directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nmax_queued_messages 0\n"
            "max_inflight_messages 0\nuser root\n"
        )
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), 1), 10, "mosquitto")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Server:
    """``cityos serve`` with MQTT ingestion from the private broker."""

    def __init__(self, data_dir: Path, broker_port: int) -> None:
        self.data_dir = data_dir
        self.broker_port = broker_port
        self.port = free_port(SERVER_PORTS)
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "CITYOS_DATA_DIR": str(self.data_dir),
            "CITYOS_PORT": str(self.port),
            "CITYOS_AUTH": "off",
            "CITYOS_LOG_LEVEL": "warning",
            "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{self.broker_port}",
            "CITYOS_MQTT_CLIENT_ID": "cityos-bench",
            "CITYOS_MQTT_CHIRPSTACK_TOPICS": f"application/{APP}/device/+/event/+",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cityos.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / "server.log", "ab"),  # noqa: SIM115 - lives with the process
        )
        wait_until(lambda: self.stats()["mqtt"]["connected"], 60, "server with MQTT")

    def stats(self, histogram: bool = False) -> dict[str, Any]:  # Any: JSON
        params = {"histogram": "1"} if histogram else None
        return dict(httpx.get(self.base + "/ingest/stats", params=params, timeout=10).json())

    def stored(self) -> int:
        return int(self.stats()["process"]["uplinksStored"])

    def kill(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)
        self.process = None


def register_devices(data_dir: Path, devices: int) -> None:
    """Register the gauges directly in the database (before the server starts)."""
    from cityos.broker.changes import ObservedStorage
    from cityos.broker.context import CompiledContext
    from cityos.broker.service import ContextBroker
    from cityos.ingest.profiles import BUILTIN_PROFILES
    from cityos.ingest.registry import DeviceRegistry, RegisteredDevice
    from cityos.storage.sqlite import SqliteStorage

    storage = SqliteStorage(data_dir / "cityos.sqlite3")
    registry = DeviceRegistry(
        ContextBroker(ObservedStorage(storage)), expand=CompiledContext().expand
    )
    profile = BUILTIN_PROFILES["water-level"]
    for start in range(0, devices, 1000):
        registry.register_many(
            RegisteredDevice(
                dev_eui(i),
                f"gauge {i}",
                profile,
                (137.2, 36.7),
                parameters={"mounting_height_m": 5.0},
            )
            for i in range(start, min(start + 1000, devices))
        )
    storage.close()


def publish(port: int, devices: int, start: int, count: int, rate: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "publish",
            "--port",
            str(port),
            "--devices",
            str(devices),
            "--start",
            str(start),
            "--count",
            str(count),
            "--rate",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def measure_commits(
    server: Server, target: int, timeout_s: float, *, from_zero: bool = False
) -> tuple[float, float, int]:
    """Poll the commit count until ``target`` more: (first commit, last commit, count)."""
    base = 0 if from_zero else server.stored()
    first = last = 0.0
    count = base
    deadline = time.monotonic() + timeout_s
    while count < base + target and time.monotonic() < deadline:
        time.sleep(0.02)
        now = time.monotonic()
        current = server.stored()
        if current > count:
            if count == base:
                first = now
            last = now
            count = current
    return first, last, count - base


def percentile(histogram: dict[int, int], q: float) -> int:
    total = sum(histogram.values())
    rank, seen = math.ceil(total * q), 0
    for value, n in sorted(histogram.items()):
        seen += n
        if seen >= rank:
            return value
    return max(histogram)


def raw_mosquitto(port: int, devices: int, count: int) -> float:
    """The bare subscriber's drain rate of ``count`` messages queued for its session."""
    command = [sys.executable, __file__, "--role", "subscribe", "--port", str(port)]
    subprocess.run([*command, "--count", "0"], check=True)
    publish(port, devices, 0, count, 0).wait()
    subscriber = subprocess.run(
        [*command, "--count", str(count)], stdout=subprocess.PIPE, text=True, check=True
    )
    seen = json.loads(subscriber.stdout.strip().splitlines()[-1])
    return float(seen["n"] / max(seen["last"] - seen["first"], 1e-9))


def raw_sqlite(directory: Path, devices: int, count: int) -> float:
    """The same rows as ingestion commits, inserted as plainly as SQLite allows."""
    db = sqlite3.connect(directory / "raw.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE entities (id TEXT PRIMARY KEY, doc BLOB) WITHOUT ROWID")
    db.execute(
        "CREATE TABLE temporal (tpk INTEGER, aid INTEGER, time_ms INTEGER, seq INTEGER, "
        "doc BLOB, value_num REAL, PRIMARY KEY (tpk, aid, time_ms, seq)) WITHOUT ROWID"
    )
    device_doc = b"x" * 1800  # the size of a stored Device entity with its attributes
    target_doc = b"y" * 700
    row_doc = b'{"type":"Property","value":-87.0,"observedAt":"2026-11-24T01:02:03.456Z"}'
    docs = [(f"urn:ngsi-ld:Device:{dev_eui(i)}", device_doc) for i in range(devices)]
    docs += [(f"urn:ngsi-ld:WaterObserved:{dev_eui(i)}", target_doc) for i in range(devices)]
    db.executemany("INSERT INTO entities VALUES (?, ?)", docs)
    started = time.perf_counter()
    seq = 0
    for batch in range(0, count, 500):
        db.execute("BEGIN IMMEDIATE")
        updates, rows = [], []
        for index in range(batch, min(batch + 500, count)):
            eui = dev_eui(index % devices)
            updates.append((device_doc, f"urn:ngsi-ld:Device:{eui}"))
            updates.append((target_doc, f"urn:ngsi-ld:WaterObserved:{eui}"))
            for aid in range(5):
                seq += 1
                rows.append(
                    (
                        index % devices * 2 + (aid == 4),
                        aid,
                        1_700_000_000_000 + index,
                        seq,
                        row_doc,
                        -87.0,
                    )
                )
        db.executemany("UPDATE entities SET doc = ? WHERE id = ?", updates)
        db.executemany("INSERT INTO temporal VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return count / elapsed


def codec_costs(calls: int) -> tuple[float, float]:
    """(JavaScript, Python) microseconds per decode of the demo water-level codec."""
    from cityos.ingest.codecs.javascript import JavaScriptCodec
    from cityos.ingest.profiles import BUILTIN_PROFILES

    source_dir = HERE.parent / "src" / "cityos" / "ingest" / "codecs" / "js"
    javascript = JavaScriptCodec((source_dir / "demo-devices.js").read_text(), name="demo")
    python_codec = BUILTIN_PROFILES["water-level"].codec
    assert python_codec is not None
    payload = (2500).to_bytes(2, "big") + b"\x5a"
    results = []
    for codec in (javascript, python_codec):
        codec.decode_uplink(payload, 1, "2026-11-24T01:02:03.456Z")
        started = time.perf_counter()
        for _ in range(calls):
            codec.decode_uplink(payload, 1, "2026-11-24T01:02:03.456Z")
        results.append((time.perf_counter() - started) / calls * 1e6)
    return results[0], results[1]


def count_run(data_dir: Path) -> tuple[int, int]:
    """(dedupe keys, waterLevel history rows) in the database now."""
    db = sqlite3.connect(data_dir / "cityos.sqlite3")
    keys = db.execute("SELECT count(*) FROM ingest_uplink_keys").fetchone()[0]
    (aid,) = db.execute("SELECT aid FROM temporal_attrs WHERE iri LIKE '%waterLevel'").fetchone()
    rows = db.execute("SELECT count(*) FROM temporal WHERE aid = ?", (aid,)).fetchone()[0]
    db.close()
    return int(keys), int(rows)


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", default="main", choices=["main", "publish", "subscribe"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--uplinks", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--kill-seconds", type=float, default=20)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="in-process CPU per uplink")
    parser.add_argument("--cprofile", type=int, default=0, help="with --profile: top N functions")
    args = parser.parse_args()
    if args.role == "publish":
        role_publish(args)
        return
    if args.role == "subscribe":
        role_subscribe(args)
        return
    if args.profile:
        run_profile(args)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    console.print(f"load average before: {load_average()} (cores: {os.cpu_count()})")
    figures: dict[str, Any] = {}  # Any: figures of mixed types
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o755)
        broker_dir = directory / "broker"
        broker_dir.mkdir()
        broker = Mosquitto(broker_dir)
        data_dir = directory / "data"
        data_dir.mkdir()
        try:
            console.print(f"registering {args.devices} devices ...")
            register_devices(data_dir, args.devices)
            server = Server(data_dir, broker.port)
            server.start()
            next_index = 0

            # Warm-up: one uplink per device creates its entities.
            publish(broker.port, args.devices, next_index, args.devices, 0).wait()
            next_index += args.devices
            wait_until(lambda: server.stored() >= args.devices, 600, "warm-up")

            # 1. Throughput: queue for the stopped server, then let it drain.
            server.kill()
            publish(broker.port, args.devices, next_index, args.uplinks, 0).wait()
            next_index += args.uplinks
            server.start()
            first, last, stored = measure_commits(server, args.uplinks, 900, from_zero=True)
            figures["throughput"] = stored / max(last - first, 1e-9)
            console.print(f"throughput: {figures['throughput']:.0f} uplinks/s ({stored} stored)")

            # 2. Latency at a paced rate.
            before = {int(k): v for k, v in server.stats(True)["process"]["lagHistogramMs"].items()}
            count = int(args.rate * args.seconds)
            publisher = publish(broker.port, args.devices, next_index, count, args.rate)
            published = json.loads(publisher.communicate()[0].strip().splitlines()[-1])
            figures["published_rate"] = published["published"] / published["seconds"]
            next_index += count
            wait_until(lambda: server.stored() >= args.uplinks + count, 300, "paced")
            after = {int(k): v for k, v in server.stats(True)["process"]["lagHistogramMs"].items()}
            window = {
                lag: after[lag] - before.get(lag, 0)
                for lag in after
                if after[lag] > before.get(lag, 0)
            }
            figures["p50"] = percentile(window, 0.5)
            figures["p99"] = percentile(window, 0.99)
            figures["max"] = max(window)
            console.print(
                f"latency at {args.rate:.0f}/s: p50 {figures['p50']} ms, p99 {figures['p99']} ms"
                f" (the publisher kept {figures['published_rate']:,.0f}/s)"
            )

            # 6. kill -9 at the paced rate.
            if args.kill_seconds > 0:
                keys_before, rows_before = count_run(data_dir)
                count = int(args.rate * args.kill_seconds)
                publisher = publish(broker.port, args.devices, next_index, count, args.rate)
                time.sleep(args.kill_seconds / 2)
                server.kill(signal.SIGKILL)
                server.start()
                publisher.wait()
                next_index += count
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    if count_run(data_dir)[0] >= keys_before + count:
                        break
                    time.sleep(0.5)
                time.sleep(2)
                keys_after, rows_after = count_run(data_dir)
                figures["kill"] = (count, keys_after - keys_before, rows_after - rows_before)
                if not count == keys_after - keys_before == rows_after - rows_before:
                    log = (data_dir / "server.log").read_text(errors="replace")
                    console.print(f"server log (end):\n{log[-3000:]}")
                    console.print(f"server stats: {server.stats()}")
                console.print(f"kill -9: published, keys, history rows: {figures['kill']}")
            server.kill()

            # 3. and 4. Baselines.
            figures["raw_mosquitto"] = raw_mosquitto(broker.port, args.devices, args.uplinks)
            figures["raw_sqlite"] = raw_sqlite(directory, args.devices, args.uplinks)
            figures["js_us"], figures["py_us"] = codec_costs(20_000)
        finally:
            broker.stop()
    report(args, figures)


def run_profile(args: argparse.Namespace) -> None:
    """Figure 7: CPU per uplink of the server's ingestion, in this process."""
    import asyncio

    from cityos.app import create_app
    from cityos.settings import Settings

    console.print(f"load average before: {load_average()} (cores: {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-profile-") as tmp:
        data_dir = Path(tmp)
        console.print(f"registering {args.devices} devices ...")
        register_devices(data_dir, args.devices)
        settings = Settings(
            data_dir=data_dir, auth="off", ingest_secret="bench", mqtt_url=None, log_level="warning"
        )
        asyncio.run(drive_in_process(create_app(settings), args))
    console.print(f"load average after: {load_average()}")


async def drive_in_process(app: Any, args: argparse.Namespace) -> None:  # Any: the ASGI app
    """Feed the app's intake as the MQTT subscriber would (batches as they come)."""
    import asyncio
    import cProfile
    import pstats

    from cityos.ingest.intake import Submission
    from cityos.ingest.model import RawMessage

    def messages(start: int, count: int) -> list[Any]:  # Any: RawMessage
        # Each device's uplinks are newer than its last (no late-observation path).
        base_s = time.time()
        received_ms = int(base_s * 1000)
        return [
            RawMessage(
                "mqtt", "chirpstack", *uplink(i, args.devices, base_s + i / 1000), None, received_ms
            )
            for i in range(start, start + count)
        ]

    async def drive(raws: list[Any]) -> None:  # Any: RawMessage
        finished = asyncio.Event()
        done = 0

        def acknowledge(outcome: Any) -> None:  # Any: Outcome
            nonlocal done
            done += 1
            if done == len(raws):
                finished.set()

        for raw in raws:
            intake.submit(Submission(raw, acknowledge))
        await finished.wait()

    async with app.router.lifespan_context(app):
        intake = app.state.ingest_intake
        stats = app.state.ingest_stats
        await drive(messages(0, args.devices))  # creates every device's entities
        raws = messages(args.devices, args.uplinks)
        stored_before = stats.uplinks_stored
        profiler = cProfile.Profile() if args.cprofile else None
        wall, cpu = time.perf_counter(), time.process_time()
        loop_cpu = time.thread_time()  # the event-loop thread alone (this thread)
        if profiler is not None:
            profiler.enable()
        await drive(raws)
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        loop_cpu = time.thread_time() - loop_cpu
        stored = stats.uplinks_stored - stored_before
        console.print(
            f"in-process: {args.uplinks} uplinks, {stored} stored, rejected {dict(stats.rejected)}"
        )
        console.print(
            f"CPU {cpu / args.uplinks * 1e6:.1f} us/uplink (event-loop thread"
            f" {loop_cpu / args.uplinks * 1e6:.1f}), wall {wall / args.uplinks * 1e6:.1f}"
            f" us/uplink ({args.uplinks / wall:,.0f} uplinks/s in one process, no MQTT)"
            + (" [under cProfile]" if profiler is not None else "")
        )
        if profiler is not None:
            for order in ("tottime", "cumulative"):
                pstats.Stats(profiler).sort_stats(order).print_stats(args.cprofile)


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:  # Any: figures
    table = Table("figure", "measured", "baseline / target", "ratio")
    throughput = figures["throughput"]
    table.add_row(
        "uplinks/s end to end (committed)",
        f"{throughput:,.0f}",
        f"raw Mosquitto {figures['raw_mosquitto']:,.0f}/s",
        f"{throughput / figures['raw_mosquitto']:.2f} (target >= 0.35)",
    )
    table.add_row(
        "",
        "",
        f"raw SQLite same rows {figures['raw_sqlite']:,.0f}/s",
        f"{throughput / figures['raw_sqlite']:.2f}",
    )
    table.add_row("", "", "target 10,000/s", f"{throughput / 10_000:.2f}")
    table.add_row(
        f"latency at {args.rate:,.0f}/s (publish -> commit)",
        f"p50 {figures['p50']} ms, p99 {figures['p99']} ms, max {figures['max']} ms",
        f"p99 <= 200 ms (published at {figures['published_rate']:,.0f}/s)",
        f"{figures['p99'] / 200:.2f}",
    )
    table.add_row(
        "codec per uplink",
        f"JavaScript (QuickJS) {figures['js_us']:.1f} us",
        f"Python twin {figures['py_us']:.1f} us",
        f"{figures['js_us'] / figures['py_us']:.1f}",
    )
    if "kill" in figures:
        published, keys, rows = figures["kill"]
        verdict = "exactly once" if published == keys == rows else "MISMATCH"
        table.add_row(
            f"kill -9 at {args.rate:,.0f}/s",
            f"published {published}, stored {keys}, history rows {rows}",
            verdict,
            "",
        )
    console.print(table)
    console.print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
