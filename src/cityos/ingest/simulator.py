"""Simulated Toyama sensor traffic, as ChirpStack v4 or TTN v3 would deliver it.

The fleet: the river gauges of ``toyama.json`` (the first five target the official
gauge entities ``urn:ngsi-ld:WaterObserved:toyama-gauge-NN``; more gauges are placed
along the same rivers), rain gauges, snow-melting sprinkler monitors, children's GPS
trackers walking to school and temperature/humidity sensors, spread over the city.
Payloads are encoded for the demo codecs (``codecs.demo_devices``) and wrapped in real
event JSON: rxInfo / rx_metadata from the nearest of 100 simulated gateway sites with
RSSI and SNR from distance, a rising frame counter, a ``deduplicationId`` per uplink.

``--scenario flood`` raises one river (default 神通川) from normal level through its
evacuation-decision and flood-danger thresholds over ``flood_minutes``.

Publishing: MQTT QoS 1 with paho (messages are built before they are sent, then
published in a tight loop with a large in-flight window), or HTTP POSTs with the
shared secret header.
"""

from __future__ import annotations

import base64
import math
import multiprocessing
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cityos.core.timeutil import format_ms
from cityos.demo import load_reference
from cityos.ingest.codecs import demo_devices as demo
from cityos.ingest.profiles import BUILTIN_PROFILES
from cityos.ingest.registry import RegisteredDevice

Format = Literal["chirpstack", "ttn"]
CITY_HALL = (137.21361, 36.69583)  # (longitude, latitude)
APPLICATION_ID = "6f1c0e52-3d54-4c55-9a8e-2b9d7c0d5a01"
TENANT_ID = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
TTN_APPLICATION = "toyama-sensors"
TTN_TENANT = "toyama"
GATEWAY_SITES = 100
# Share of each kind in a fleet (after the official gauges).
KIND_SHARES = (
    ("water-level", 0.10),
    ("rain-gauge", 0.10),
    ("sprinkler", 0.25),
    ("gps-tracker", 0.30),
    ("temperature-humidity", 0.20),
    ("snow-depth", 0.05),
)
KIND_CODES = {kind: code for code, (kind, _) in enumerate(KIND_SHARES, start=1)}
F_PORTS = {
    "water-level": 1,
    "rain-gauge": 2,
    "snow-depth": 3,
    "sprinkler": 4,
    "gps-tracker": 5,
    "temperature-humidity": 6,
}
# AS923 uplink channels (Japan).
FREQUENCIES_HZ = (923_200_000, 923_400_000, 922_200_000, 922_400_000, 922_600_000)


@dataclass
class SimulatedDevice:
    """One simulated device and its running state."""

    dev_eui: str
    kind: str
    name: str
    location: tuple[float, float]
    parameters: dict[str, Any] = field(default_factory=dict)  # Any: numbers or text
    target_entity_id: str | None = None
    river: str | None = None
    normal_level_m: float = 1.0
    f_cnt: int = 0
    tips: int = 0
    battery_pct: int = 100
    route: tuple[tuple[float, float], tuple[float, float]] | None = None

    def registration(self) -> RegisteredDevice:
        """What ``cityos simulate --register`` writes to the registry."""
        return RegisteredDevice(
            dev_eui=self.dev_eui,
            name=self.name,
            profile=BUILTIN_PROFILES[self.kind],
            location=self.location,
            owner="toyama-city",
            tags=("simulated", self.kind),
            parameters=self.parameters,
            target_entity_id=self.target_entity_id,
        )


@dataclass(frozen=True)
class Gateway:
    gateway_id: str
    longitude: float
    latitude: float


@dataclass
class FloodScenario:
    """Raise ``river`` linearly from its gauges' normal level to 0.5 m over the
    flood-danger level in ``minutes``, starting at ``started_at`` (monotonic s)."""

    river: str
    minutes: float = 5.0
    started_at: float = field(default_factory=time.monotonic)

    def level_m(self, device: SimulatedDevice, now: float) -> float:
        danger = float(device.parameters.get("flood_danger_m", device.normal_level_m * 3))
        progress = min(1.0, max(0.0, (now - self.started_at) / (self.minutes * 60)))
        return device.normal_level_m + progress * (danger + 0.5 - device.normal_level_m)


def build_fleet(count: int, *, seed: int = 7) -> list[SimulatedDevice]:
    """``count`` devices: the official gauges first, then the kinds in their shares."""
    rng = random.Random(seed)
    gauges = load_reference("toyama.json")["river_gauges"]
    fleet: list[SimulatedDevice] = []
    for number, gauge in enumerate(gauges[:count], start=1):
        fleet.append(_gauge(number, gauge, (gauge["lon"], gauge["lat"]), official=True))
    names = [kind for kind, _ in KIND_SHARES]
    weights = [share for _, share in KIND_SHARES]
    while len(fleet) < count:
        kind = rng.choices(names, weights)[0]
        serial = len(fleet) + 1
        if kind == "water-level":
            gauge = gauges[serial % len(gauges)]
            spot = (
                gauge["lon"] + rng.uniform(-0.03, 0.03),
                gauge["lat"] + rng.uniform(-0.03, 0.03),
            )
            fleet.append(_gauge(serial, gauge, spot, official=False))
            continue
        spot = (CITY_HALL[0] + rng.uniform(-0.12, 0.12), CITY_HALL[1] + rng.uniform(-0.08, 0.06))
        device = SimulatedDevice(
            dev_eui=_dev_eui(kind, serial),
            kind=kind,
            name=f"{kind} {serial:05d}",
            location=spot,
            battery_pct=rng.randint(30, 100),
        )
        if kind == "gps-tracker":
            school = (spot[0] + rng.uniform(-0.01, 0.01), spot[1] + rng.uniform(-0.01, 0.01))
            device.route = (spot, school)
        fleet.append(device)
    return fleet


def _gauge(
    serial: int, gauge: dict[str, Any], spot: tuple[float, float], *, official: bool
) -> SimulatedDevice:
    evacuation = float(gauge["evacuation_decision_m"])
    danger = float(gauge["flood_danger_m"])
    return SimulatedDevice(
        dev_eui=_dev_eui("water-level", serial),
        kind="water-level",
        name=f"{gauge['river']} {gauge['station']}" + ("" if official else f" #{serial}"),
        location=spot,
        # The sensor hangs 3 m above the flood-danger level (a bridge girder).
        parameters={
            "mounting_height_m": round(danger + 3.0, 2),
            "flood_danger_m": danger,
            "evacuation_decision_m": evacuation,
        },
        target_entity_id=f"urn:ngsi-ld:WaterObserved:toyama-gauge-{serial:02d}"
        if official
        else None,
        river=gauge["river"],
        normal_level_m=round(evacuation * 0.35, 2),
    )


def _dev_eui(kind: str, serial: int) -> str:
    return f"70b3d57ed0{KIND_CODES[kind]:02x}{serial:04x}"


def gateway_sites(count: int = GATEWAY_SITES, *, seed: int = 11) -> list[Gateway]:
    """Gateway sites on a jittered grid over the city (Toyama has about 100)."""
    rng = random.Random(seed)
    side = math.ceil(math.sqrt(count))
    sites = []
    for number in range(count):
        row, column = divmod(number, side)
        sites.append(
            Gateway(
                gateway_id=f"a840411f{number:08x}",
                longitude=CITY_HALL[0] - 0.15 + 0.3 * column / side + rng.uniform(-0.01, 0.01),
                latitude=CITY_HALL[1] - 0.12 + 0.2 * row / side + rng.uniform(-0.01, 0.01),
            )
        )
    return sites


class _Transmission(NamedTuple):
    """What both network formats say about one uplink, worked out once (a tuple: one is
    built per simulated uplink, and a frozen dataclass costs five times more)."""

    data_b64: str
    time_iso: str
    heard: list[tuple[Gateway, float]]  # (gateway, distance km), nearest first
    spreading_factor: int
    frequency_hz: int
    f_port: int


class TrafficBuilder:
    """Builds (address, body) of each simulated uplink, device after device."""

    def __init__(
        self,
        fleet: list[SimulatedDevice],
        *,
        network: Format = "chirpstack",
        flood: FloodScenario | None = None,
        seed: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.network = network
        self.flood = flood
        self._rng = random.Random(seed)
        self._clock = clock
        sites = gateway_sites()
        self._hearing = {device.dev_eui: _nearest(device.location, sites) for device in fleet}

    def messages(self) -> Iterator[tuple[str, bytes]]:
        """Endless round-robin over the fleet."""
        while True:
            for device in self.fleet:
                yield self.message(device)

    def message(self, device: SimulatedDevice) -> tuple[str, bytes]:
        """The next uplink of ``device`` as (MQTT topic, JSON body)."""
        now_s = self._clock()
        payload = self._payload(device, now_s)
        time_iso = format_ms(int(now_s * 1000))
        heard = self._hearing[device.dev_eui][: self._rng.randint(1, 3)]
        # The nearest gateway's distance sets the data rate, as ADR would: SF7..SF10.
        spreading_factor = 7 + min(3, int(heard[0][1] / 2.5))
        frequency_hz = FREQUENCIES_HZ[device.f_cnt % len(FREQUENCIES_HZ)]
        data_b64 = base64.b64encode(payload).decode()
        # Positional: keyword construction of a NamedTuple costs four times more.
        transmission = _Transmission(
            data_b64, time_iso, heard, spreading_factor, frequency_hz, F_PORTS[device.kind]
        )
        if self.network == "chirpstack":
            message = self._chirpstack(device, transmission)
        else:
            message = self._ttn(device, transmission)
        device.f_cnt += 1
        return message

    def _payload(self, device: SimulatedDevice, now_s: float) -> bytes:
        rng = self._rng
        if rng.random() < 0.01:
            device.battery_pct = max(1, device.battery_pct - 1)
        battery = device.battery_pct
        kind = device.kind
        if kind == "water-level":
            level = device.normal_level_m + rng.uniform(-0.03, 0.03)
            if self.flood is not None and device.river == self.flood.river:
                level = self.flood.level_m(device, time.monotonic())
            distance = max(0.0, device.parameters["mounting_height_m"] - level)
            return demo.encode_water_level(distance, battery)
        if kind == "rain-gauge":
            rain = rng.choice((0.0, 0.0, 0.5, 1.0, 2.5)) * (4 if self.flood else 1)
            device.tips += round(rain / 0.5)
            return demo.encode_rain_gauge(device.tips, rain, battery)
        if kind == "snow-depth":
            return demo.encode_snow_depth(rng.uniform(0.1, 0.6), rng.uniform(-4, 2), battery)
        if kind == "sprinkler":
            running = rng.random() < 0.7
            flow = rng.uniform(80, 160) if running else 0.0
            return demo.encode_sprinkler(
                running, rng.random() < 0.01, flow, rng.uniform(10, 14), battery
            )
        if kind == "gps-tracker":
            start, school = device.route or (device.location, device.location)
            phase = (now_s / 1800 + int(device.dev_eui[-4:], 16) / 97) % 1.0  # 30-min walk
            lon = start[0] + (school[0] - start[0]) * phase
            lat = start[1] + (school[1] - start[1]) * phase
            return demo.encode_gps_tracker(lat, lon, rng.random() < 0.001, battery)
        return demo.encode_temperature_humidity(rng.uniform(-2, 30), rng.uniform(30, 95), battery)

    def _chirpstack(self, device: SimulatedDevice, sent: _Transmission) -> tuple[str, bytes]:
        rx_info = [
            {
                "gatewayId": gateway.gateway_id,
                "uplinkId": self._rng.getrandbits(32),
                "rssi": _rssi(distance_km),
                "snr": _snr(distance_km),
                "location": {"latitude": gateway.latitude, "longitude": gateway.longitude},
                "metadata": {"region_config_id": "as923", "region_common_name": "AS923"},
            }
            for gateway, distance_km in sent.heard
        ]
        body: dict[str, Any] = {  # Any: event JSON
            "deduplicationId": str(uuid.uuid4()),
            "time": sent.time_iso,
            "deviceInfo": {
                "tenantId": TENANT_ID,
                "tenantName": "Toyama City",
                "applicationId": APPLICATION_ID,
                "applicationName": "cityos demo",
                "deviceProfileName": device.kind,
                "deviceName": device.name,
                "devEui": device.dev_eui,
            },
            "devAddr": device.dev_eui[-8:],
            "adr": True,
            "dr": 12 - sent.spreading_factor,
            "fPort": sent.f_port,
            "data": sent.data_b64,
            "rxInfo": rx_info,
            "txInfo": {
                "frequency": sent.frequency_hz,
                "modulation": {
                    "lora": {
                        "bandwidth": 125000,
                        "spreadingFactor": sent.spreading_factor,
                        "codeRate": "CR_4_5",
                    }
                },
            },
        }
        if device.f_cnt:  # the protobuf JSON mapping omits zero values
            body["fCnt"] = device.f_cnt
        topic = f"application/{APPLICATION_ID}/device/{device.dev_eui}/event/up"
        return topic, orjson.dumps(body)

    def _ttn(self, device: SimulatedDevice, sent: _Transmission) -> tuple[str, bytes]:
        time_iso = sent.time_iso
        device_id = f"eui-{device.dev_eui}"
        uplink: dict[str, Any] = {  # Any: message JSON
            "f_port": sent.f_port,
            "frm_payload": sent.data_b64,
            "rx_metadata": [
                {
                    "gateway_ids": {
                        "gateway_id": f"toyama-gw-{gateway.gateway_id[-3:]}",
                        "eui": gateway.gateway_id.upper(),
                    },
                    "time": time_iso,
                    "rssi": _rssi(distance_km),
                    "channel_rssi": _rssi(distance_km),
                    "snr": _snr(distance_km),
                    "location": {
                        "latitude": gateway.latitude,
                        "longitude": gateway.longitude,
                        "source": "SOURCE_REGISTRY",
                    },
                }
                for gateway, distance_km in sent.heard
            ],
            "settings": {
                "data_rate": {
                    "lora": {
                        "bandwidth": 125000,
                        "spreading_factor": sent.spreading_factor,
                        "coding_rate": "4/5",
                    }
                },
                "frequency": str(sent.frequency_hz),
            },
            "received_at": time_iso,
        }
        if device.f_cnt:
            uplink["f_cnt"] = device.f_cnt
        body = {
            "end_device_ids": {
                "device_id": device_id,
                "application_ids": {"application_id": TTN_APPLICATION},
                "dev_eui": device.dev_eui.upper(),
                "dev_addr": device.dev_eui[-8:].upper(),
            },
            "received_at": time_iso,
            "uplink_message": uplink,
        }
        topic = f"v3/{TTN_APPLICATION}@{TTN_TENANT}/devices/{device_id}/up"
        return topic, orjson.dumps(body)


def _nearest(spot: tuple[float, float], sites: list[Gateway]) -> list[tuple[Gateway, float]]:
    def distance_km(gateway: Gateway) -> float:
        dx = (gateway.longitude - spot[0]) * 111.32 * math.cos(math.radians(spot[1]))
        dy = (gateway.latitude - spot[1]) * 110.57
        return math.hypot(dx, dy)

    return sorted(((g, distance_km(g)) for g in sites), key=lambda pair: pair[1])[:3]


def _rssi(distance_km: float) -> int:
    # Log-distance path loss, roughly what urban AS923 gateways report.
    return round(-60 - 25 * math.log10(max(distance_km, 0.05) / 0.05))


def _snr(distance_km: float) -> float:
    return round(max(-15.0, 10.0 - 4.0 * distance_km), 1)


# -- publishing -----------------------------------------------------------------------


class MqttPublisher:
    """QoS 1 publishing to a broker; ``close()`` waits until every message is acknowledged.

    The network loop runs in the publishing thread (``loop(0)`` every
    ``LOOP_EVERY`` messages) instead of paho's background thread: the two threads
    would hand the GIL back and forth on every message, which halves the rate.
    """

    LOOP_EVERY = 100

    def __init__(self, url: str, *, client_id: str | None = None, max_inflight: int = 2000) -> None:
        parts = urlsplit(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"cityos-sim-{uuid.uuid4().hex[:8]}",
        )
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        # 0 = paho does not limit (its limit rescans the whole outgoing queue on every
        # acknowledgement, quadratic at high rates); publish() keeps its own window.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.max_inflight = max_inflight
        self.sent = 0
        self.acknowledged = 0
        self.client.on_publish = self._on_publish
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise ConnectionError(f"MQTT broker {url} did not accept the connection")
            self.client.loop(0.05)

    def _on_publish(self, *args: Any) -> None:  # Any: paho's callback arguments
        self.acknowledged += 1

    def publish(self, address: str, body: bytes) -> None:
        """Queue one QoS 1 message (waits while the in-flight window is full)."""
        self.client.publish(address, body, qos=1)
        self.sent += 1
        if self.sent % self.LOOP_EVERY == 0:
            self.client.loop(0)
            while self.sent - self.acknowledged > self.max_inflight:
                self.client.loop(0.01)

    def wait(self, seconds: float) -> None:
        """Pause publishing while serving the connection (acknowledgements, keep-alive)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.client.loop(min(left, 0.5))

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait for the outstanding acknowledgements, then disconnect."""
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < self.sent and time.monotonic() < deadline:
            self.client.loop(0.01)
        self.client.disconnect()


class HttpPublisher:
    """POSTs each message to a ChirpStack (``?event=up`` added) or TTN endpoint."""

    def __init__(self, url: str, network: Format, *, secret: str | None = None) -> None:
        self.url = url
        self.network = network
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Ingest-Secret"] = secret
        self.http = httpx.Client(headers=headers, timeout=10)
        self.sent = 0
        self.acknowledged = 0
        self.failed = 0

    def publish(self, address: str, body: bytes) -> None:
        params = {"event": "up"} if self.network == "chirpstack" else None
        try:
            response = self.http.post(self.url, content=body, params=params)
        except httpx.TransportError as error:
            raise ConnectionError(f"{self.url}: {error}") from None
        self.sent += 1
        if response.is_success:
            self.acknowledged += 1
        else:
            self.failed += 1

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self, timeout_s: float = 0.0) -> None:
        self.http.close()


Publisher = MqttPublisher | HttpPublisher


def open_publisher(url: str, network: Format, *, secret: str | None = None) -> Publisher:
    """A publisher for ``mqtt://host:port`` or an ``http(s)://`` endpoint URL."""
    scheme = urlsplit(url).scheme
    if scheme in ("mqtt", "tcp"):
        return MqttPublisher(url)
    if scheme in ("http", "https"):
        return HttpPublisher(url, network, secret=secret)
    raise ValueError(f"Unsupported target {url!r}: use mqtt://host:port or http(s)://...")


@dataclass
class SimulationReport:
    sent: int
    acknowledged: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def run(
    builder: TrafficBuilder,
    publisher: Publisher,
    *,
    rate: float,
    duration_s: float | None = None,
    count: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Publish at ``rate`` uplinks/s (0 = as fast as possible) until ``duration_s`` or
    ``count`` messages; return what was sent and acknowledged."""
    started = time.monotonic()
    sent = 0
    for address, body in builder.messages():
        if count is not None and sent >= count:
            break
        now = time.monotonic()
        if duration_s is not None and now - started >= duration_s:
            break
        if rate > 0:
            due = started + sent / rate
            if due > now:
                publisher.wait(due - now)
        publisher.publish(address, body)
        sent += 1
        if on_progress is not None and sent % 100 == 0:
            on_progress(sent)
    publisher.close()
    return SimulationReport(sent, publisher.acknowledged, time.monotonic() - started)


def _publish_share(
    url: str,
    messages: list[tuple[str, bytes]],
    ready: Any,  # Any: a multiprocessing Barrier (its type is not importable for typing)
    results: Any,  # Any: a multiprocessing Queue
) -> None:
    publisher = MqttPublisher(url)
    ready.wait()
    for address, body in messages:
        publisher.publish(address, body)
    publisher.close(timeout_s=600)
    results.put(publisher.acknowledged)


def publish_in_parallel(
    url: str, messages: list[tuple[str, bytes]], *, processes: int = 2
) -> SimulationReport:
    """Publish ``messages`` over MQTT QoS 1 from ``processes`` processes at once (one
    client each, messages dealt round-robin); the time runs from the moment every client
    is connected until the last acknowledgement. One paho client is bound to one core
    by the GIL; benchmarks that must saturate a broker use this."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_publish_share, args=(url, messages[n::processes], ready, results))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.monotonic()
    acknowledged = sum(results.get(timeout=900) for _ in workers)
    seconds = time.monotonic() - started
    for worker in workers:
        worker.join(30)
    return SimulationReport(len(messages), acknowledged, seconds)


def pre_encode(builder: TrafficBuilder, count: int) -> list[tuple[str, bytes]]:
    """``count`` messages built ahead (benchmarks publish them in a tight loop)."""
    messages = builder.messages()
    return [next(messages) for _ in range(count)]
