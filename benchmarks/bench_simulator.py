"""Simulator publishing rate to Mosquitto (QoS 1), against raw paho in the same run.

Messages (ChirpStack uplink JSON from 10,000 simulated Toyama devices) are built
first; then ``MqttPublisher`` publishes them in a tight loop and the time until the
last PUBACK is measured, once from one process and once split over ``--processes``
publisher processes (``publish_in_parallel``). The baseline is the plainest QoS 1 loop paho allows
(``loop_start`` thread, default settings) on the same messages. Topics get a unique
prefix so no cityos subscriber sees them.

    .venv/bin/python benchmarks/bench_simulator.py --messages 100000
    .venv/bin/python benchmarks/bench_simulator.py --broker mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from cityos.ingest.simulator import (
    MqttPublisher,
    TrafficBuilder,
    build_fleet,
    pre_encode,
    publish_in_parallel,
)


def bare_paho_rate(url: str, messages: list[tuple[str, bytes]]) -> float:
    parts = urlsplit(url)
    done = threading.Event()
    acknowledged = [0]

    def on_publish(*args: object) -> None:
        acknowledged[0] += 1
        if acknowledged[0] == len(messages):
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:6]}"
    )
    client.on_publish = on_publish
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    started = time.perf_counter()
    for topic, body in messages:
        client.publish(topic, body, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return acknowledged[0] / elapsed


def publisher_rate(url: str, messages: list[tuple[str, bytes]]) -> float:
    publisher = MqttPublisher(url)
    started = time.perf_counter()
    for topic, body in messages:
        publisher.publish(topic, body)
    publisher.close(timeout_s=600)
    return publisher.acknowledged / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="parallel publishers")
    args = parser.parse_args()
    console = Console()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with console.status("Building messages / メッセージ生成中"):
        built = pre_encode(TrafficBuilder(build_fleet(args.devices)), args.messages)
    messages = [(f"{prefix}/{topic}", body) for topic, body in built]
    size = sum(len(body) for _, body in messages) / len(messages)
    ours = publisher_rate(args.broker, messages)
    parallel = publish_in_parallel(args.broker, messages, processes=args.processes)
    bare = bare_paho_rate(args.broker, messages[: min(len(messages), 20_000)])
    console.print(
        f"cityos simulate publisher: {ours:,.0f} msg/s QoS 1 acknowledged "
        f"({args.messages:,} messages, {size:.0f} B average)"
    )
    console.print(
        f"{args.processes} publisher processes: {parallel.rate:,.0f} msg/s "
        f"({parallel.acknowledged:,} acknowledged)"
    )
    console.print(f"bare paho loop_start (baseline, ≤20,000 messages): {bare:,.0f} msg/s")
    console.print(f"ratio: {ours / bare:.2f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
