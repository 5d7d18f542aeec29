"""The ingestion seam: the shapes that pass between transports, network adapters,
codecs, the device registry and the pipeline.

Flow (each arrow is one module's job; a new network or transport touches one file)::

    transport (MQTT / HTTP)  --RawMessage-->  network adapter (chirpstack / ttn)
      --NetworkEvent (Uplink | StatusReport | OtherEvent)-->  pipeline
      pipeline: registry.lookup(dev_eui) -> RegisteredDevice
                device.profile.decode(uplink)        -> DecodedUplink
                device.profile.measurements(device, uplink, decoded) -> [EntityWrite]
                broker write (batched, one transaction) + dedupe key + dead letters

Anything that cannot be processed raises :class:`IngestError` with a stable
``reason`` code; the pipeline keeps the raw message in the dead-letter store with
that reason (nothing is dropped silently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Network = Literal["chirpstack", "ttn"]
Transport = Literal["mqtt", "http", "replay"]

# Stable reason codes of rejected messages (dead-letter ``reason`` column, counters).
REJECT_REASONS = (
    "invalid-json",  # body is not JSON (or not the protobuf it claims to be)
    "invalid-message",  # JSON but not the network's event shape (missing devEui, ...)
    "bad-base64",  # payload field is not valid base64
    "unknown-device",  # DevEUI not in the registry
    "unknown-fport",  # the device's codec/profile does not handle this fPort
    "codec-error",  # codec threw, or returned ``errors``
    "codec-timeout",  # codec exceeded its time or memory limit
    "mapping-error",  # decoded data does not fit the profile's attribute mapping
    "unauthorized",  # wrong or missing shared secret (HTTP)
    "oversize",  # body over the configured limit
)


class IngestError(Exception):
    """A message that cannot be turned into entity updates.

    ``reason`` is one of :data:`REJECT_REASONS`; ``detail`` is a sentence for the
    operator (shown by ``cityos ingest dead-letters``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"Unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as a transport received it, before any parsing.

    ``address`` is the MQTT topic, or for HTTP the path plus the ``event`` query
    value (``/ingest/chirpstack?event=up``). ``received_at_ms`` is our clock.
    """

    transport: Transport
    network: Network
    address: str
    body: bytes
    content_type: str | None
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class GatewayReception:
    """How one gateway heard an uplink (coverage analysis keeps these)."""

    gateway_id: str
    rssi_dbm: float | None = None
    snr_db: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude_m: float | None = None


@dataclass(frozen=True, slots=True)
class Uplink:
    """A data uplink in network-independent form.

    ``dev_eui`` is 16 lower-case hex digits. ``observed_at`` is the network server's
    receive time in ISO 8601 UTC with milliseconds (``2026-11-24T01:02:03.456Z``); it
    becomes ``observedAt`` of every attribute written. ``dedup_key`` identifies the
    uplink across redeliveries and transports: ChirpStack's ``deduplicationId`` when
    present, else ``{dev_eui}:{f_cnt}:{observed time rounded to the dedupe window}``.
    ``network_decoded`` is the object the network server already decoded (ChirpStack
    ``object``, TTN ``decoded_payload``), or ``None``.
    """

    network: Network
    dev_eui: str
    observed_at: str
    dedup_key: str
    f_port: int | None
    f_cnt: int | None
    payload: bytes
    network_decoded: dict[str, Any] | None = None
    receptions: tuple[GatewayReception, ...] = ()
    spreading_factor: int | None = None
    frequency_hz: int | None = None
    device_name: str | None = None
    application_id: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A device status event (ChirpStack ``status``): battery and link margin.

    ``battery_level`` is a fraction 0..1 (``None`` when unknown or externally powered).
    """

    network: Network
    dev_eui: str
    observed_at: str
    battery_level: float | None
    margin_db: float | None = None
    external_power: bool = False


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other network event (join, ack, txack, log, location): kept for the device's
    state and history, not decoded. ``kind`` is the event name (``join``, ``ack``, ...)."""

    network: Network
    dev_eui: str
    observed_at: str
    kind: str
    details: dict[str, Any] = field(default_factory=dict)


NetworkEvent = Uplink | StatusReport | OtherEvent


@dataclass(frozen=True, slots=True)
class DecodedUplink:
    """What a codec made of an uplink's bytes (TTN ``decodeUplink`` result without errors)."""

    data: dict[str, Any]
    warnings: tuple[str, ...] = ()


class Codec(Protocol):
    """TTN Device Repository contract: ``decodeUplink({bytes, fPort, recvTime})``.

    Returns the decoded data; raises :class:`IngestError` (``codec-error``,
    ``codec-timeout`` or ``unknown-fport``) when the codec throws, times out, runs out
    of memory or returns ``errors``. Safe to call from one thread at a time.
    """

    def decode_uplink(self, payload: bytes, f_port: int, recv_time: str) -> DecodedUplink: ...


@dataclass(frozen=True, slots=True)
class EntityWrite:
    """Attributes to write to one entity, in NGSI-LD normalized form.

    Attribute names are short terms (core @context plus the Smart Data Models terms the
    profile uses); the writer expands them. Each attribute carries ``observedAt`` (and
    ``unitCode`` where known). The entity is created with ``entity_type`` when it does
    not exist yet.
    """

    entity_id: str
    entity_type: str
    attributes: dict[str, dict[str, Any]]


def device_entity_id(dev_eui: str) -> str:
    """The id of a device's ``Device`` entity (an interface users rely on)."""
    return f"urn:ngsi-ld:Device:{dev_eui.lower()}"
