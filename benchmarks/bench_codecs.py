"""Per-uplink payload codec cost: JavaScript (QuickJS) vs Python vs a native baseline.

Each codec decodes the same pre-built uplinks (the six demo device kinds, round-robin)
through the ``Codec`` interface the pipeline uses. The baseline, measured in the same
run, is the bare ``struct.unpack`` of the same bytes with no codec machinery: what a
hand-written decoder costs at least. Also measured: a real Device Repository codec
(Decentlab DL-MBX ultrasonic distance, MIT licence, tests/ingest/fixtures/codecs), and
the alternative way of passing bytes into QuickJS (a hex string decoded in JavaScript,
instead of one JSON string parsed by the engine), so the choice stays measured.

    .venv/bin/python benchmarks/bench_codecs.py            # 50,000 uplinks per codec
    .venv/bin/python benchmarks/bench_codecs.py --uplinks 200000
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import orjson
import quickjs
from rich.console import Console
from rich.table import Table

from cityos.ingest.codecs import demo_devices as demo
from cityos.ingest.codecs.cayenne_lpp import CAYENNE_LPP_CODEC
from cityos.ingest.codecs.javascript import JavaScriptCodec

RECV_TIME = "2026-11-24T01:02:03.456Z"
FORMATS = {1: ">HB", 2: ">HHB", 3: ">HhB", 4: ">BHhB", 5: ">iiBB", 6: ">hBB"}
VENDOR_CODEC = Path(__file__).parent.parent / "tests/ingest/fixtures/codecs/decentlab-dl-mbx.js"


def demo_uplinks(count: int) -> list[tuple[int, bytes]]:
    samples = [
        (1, demo.encode_water_level(2.345, 80)),
        (2, demo.encode_rain_gauge(7, 1.5, 90)),
        (3, demo.encode_snow_depth(0.42, -3.5, 90)),
        (4, demo.encode_sprinkler(True, False, 120.5, 11.2, 77)),
        (5, demo.encode_gps_tracker(36.695, 137.213, False, 50)),
        (6, demo.encode_temperature_humidity(21.5, 63.5, 99)),
    ]
    return [samples[i % len(samples)] for i in range(count)]


def per_call_us(decode: Callable[[int, bytes], object], uplinks: list[tuple[int, bytes]]) -> float:
    """Best of three rounds (the machine is shared: the minimum is the least disturbed)."""
    for f_port, payload in uplinks[:1000]:  # warm up
        decode(f_port, payload)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for f_port, payload in uplinks:
            decode(f_port, payload)
        best = min(best, time.perf_counter() - started)
    return best / len(uplinks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--uplinks", type=int, default=50_000)
    args = parser.parse_args()
    uplinks = demo_uplinks(args.uplinks)

    js_source = resources.files("cityos.ingest.codecs").joinpath("js/demo-devices.js").read_text()
    js = JavaScriptCodec(js_source, name="demo-devices.js")
    python = demo.PYTHON_CODECS

    def python_decode(f_port: int, payload: bytes) -> object:
        kind = (
            "water-level",
            "rain-gauge",
            "snow-depth",
            "sprinkler",
            "gps-tracker",
            "temperature-humidity",
        )[f_port - 1]
        return python[kind].decode_uplink(payload, f_port, RECV_TIME)

    # The input crossing alone, both ways, in one context with the codec's limits: one
    # JSON string parsed by the engine (used) vs bytes as a hex string (not used).
    context = quickjs.Context()
    context.set_time_limit(0.05)
    context.set_memory_limit(16 * 1024 * 1024)
    context.eval(js_source)
    context.eval(
        "function jsonEntry(document) { var input = JSON.parse(document);"
        " input.recvTime = new Date(input.recvTime);"
        " return JSON.stringify(decodeUplink(input)); }"
        "function hexEntry(hex, fPort, recvTime) {"
        " var bytes = new Array(hex.length >> 1);"
        " for (var i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);"
        " return JSON.stringify(decodeUplink({bytes: bytes, fPort: fPort,"
        " recvTime: new Date(recvTime)})); }"
    )
    json_entry = context.get("jsonEntry")
    hex_entry = context.get("hexEntry")

    def js_json_input(f_port: int, payload: bytes) -> object:
        document = orjson.dumps({"bytes": list(payload), "fPort": f_port, "recvTime": RECV_TIME})
        return orjson.loads(json_entry(document.decode()))

    def js_hex_input(f_port: int, payload: bytes) -> object:
        return orjson.loads(hex_entry(payload.hex(), f_port, RECV_TIME))

    mbx = JavaScriptCodec(VENDOR_CODEC.read_text(), name="dl-mbx")
    mbx_payload = bytes.fromhex("02012f000304d200010bb1")
    lpp_payload = bytes.fromhex("03670110056700FF018806765FF2960A0003E8")

    results = [
        (
            "native baseline (struct.unpack)",
            per_call_us(lambda p, b: struct.unpack(FORMATS[p], b), uplinks),
        ),
        ("Python codec (demo devices)", per_call_us(python_decode, uplinks)),
        (
            "JavaScript codec (demo devices, QuickJS)",
            per_call_us(lambda p, b: js.decode_uplink(b, p, RECV_TIME), uplinks),
        ),
        (
            "  engine call only, input as one JSON string (used)",
            per_call_us(js_json_input, uplinks),
        ),
        (
            "  engine call only, bytes as a hex string (not used)",
            per_call_us(js_hex_input, uplinks),
        ),
        (
            "JavaScript vendor codec (Decentlab DL-MBX)",
            per_call_us(lambda p, b: mbx.decode_uplink(mbx_payload, 1, RECV_TIME), uplinks),
        ),
        (
            "Cayenne LPP (Python, 3 channels)",
            per_call_us(
                lambda p, b: CAYENNE_LPP_CODEC.decode_uplink(lpp_payload, 1, RECV_TIME), uplinks
            ),
        ),
    ]
    baseline = results[0][1]
    table = Table("codec", "µs / uplink", "uplinks/s (1 core)", "× baseline")
    for name, micros in results:
        table.add_row(name, f"{micros:.2f}", f"{1e6 / micros:,.0f}", f"{micros / baseline:.1f}")
    console = Console()
    console.print(table)
    console.print(f"{args.uplinks:,} uplinks per codec; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
