"""ChirpStack v4 integration events (MQTT and HTTP integrations) to network events.

Where the event name comes from: the MQTT topic
``application/{application_id}/device/{dev_eui}/event/{event}``, or the HTTP
integration's ``?event=`` query value (the transport passes ``/path?event=up`` as the
address). Bodies are the protobuf JSON mapping (camelCase; a field at its default value
is absent: no ``fCnt`` means 0, no ``adr`` means false) or, with ``marshaler=protobuf``,
the binary protobuf message (``application/octet-stream`` / ``application/x-protobuf``),
which :mod:`.chirpstack_protobuf` turns into the same JSON mapping first.

``status.batteryLevel`` is a percentage in ChirpStack; :class:`StatusReport` wants 0..1.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from cityos.ingest.model import (
    GatewayReception,
    IngestError,
    NetworkEvent,
    OtherEvent,
    RawMessage,
    StatusReport,
    Uplink,
)
from cityos.ingest.networks import chirpstack_protobuf
from cityos.ingest.networks.fields import (
    as_list,
    as_object,
    decode_base64,
    event_time,
    gateway_reception,
    load_json_object,
    normalize_dev_eui,
    optional_int,
    optional_number,
    optional_object,
    optional_text,
    window_dedup_key,
)

EVENTS = ("up", "status", "join", "ack", "txack", "log", "location", "integration")
PROTOBUF_CONTENT_TYPES = ("application/octet-stream", "application/x-protobuf")


def parse(raw: RawMessage) -> list[NetworkEvent]:
    """The events in one ChirpStack message (always one); raises :class:`IngestError`."""
    event, topic_dev_eui = _address_parts(raw.address)
    if event not in EVENTS:
        raise IngestError("invalid-message", f"Unknown ChirpStack event {event!r}")
    if _is_protobuf(raw.content_type):
        body = chirpstack_protobuf.to_json_mapping(event, raw.body)
    else:
        body = load_json_object(raw.body)
    device_info = as_object(body.get("deviceInfo"), "deviceInfo")
    dev_eui = normalize_dev_eui(device_info.get("devEui", topic_dev_eui), "deviceInfo.devEui")
    if topic_dev_eui is not None and topic_dev_eui.lower() != dev_eui:
        raise IngestError(
            "invalid-message", f"Topic DevEUI {topic_dev_eui} differs from body DevEUI {dev_eui}"
        )
    observed_at, time_ms = event_time(body.get("time"), "time", raw.received_at_ms)
    if event == "up":
        return [_uplink(body, device_info, dev_eui, observed_at, time_ms)]
    if event == "status":
        return [_status(body, dev_eui, observed_at)]
    details = {key: value for key, value in body.items() if key not in ("deviceInfo", "time")}
    return [OtherEvent("chirpstack", dev_eui, observed_at, event, details)]


def _address_parts(address: str) -> tuple[str, str | None]:
    """(event name, DevEUI from the MQTT topic or ``None``) of a transport address."""
    if address.startswith("application/"):
        parts = address.split("/")
        if len(parts) != 6 or parts[2] != "device" or parts[4] != "event":
            raise IngestError("invalid-message", f"Not a ChirpStack event topic: {address}")
        return parts[5], parts[3]
    events = parse_qs(urlsplit(address).query).get("event")
    if not events:
        raise IngestError("invalid-message", f"No ?event= in ChirpStack address {address}")
    return events[0], None


def _is_protobuf(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() in PROTOBUF_CONTENT_TYPES


def _uplink(
    body: dict[str, Any],  # Any: JSON values
    device_info: dict[str, Any],  # Any: JSON values
    dev_eui: str,
    observed_at: str,
    time_ms: int,
) -> Uplink:
    f_cnt = optional_int(body.get("fCnt"), "fCnt", default=0)
    dedup_id = body.get("deduplicationId")
    if dedup_id is not None and not isinstance(dedup_id, str):
        raise IngestError("invalid-message", "deduplicationId is not a string")
    network_decoded = optional_object(body.get("object"), "object")
    tx_info = as_object(body.get("txInfo"), "txInfo")
    lora = as_object(
        as_object(tx_info.get("modulation"), "txInfo.modulation").get("lora"),
        "txInfo.modulation.lora",
    )
    return Uplink(
        network="chirpstack",
        dev_eui=dev_eui,
        observed_at=observed_at,
        dedup_key=dedup_id or window_dedup_key(dev_eui, f_cnt, time_ms),
        f_port=optional_int(body.get("fPort"), "fPort", default=0),
        f_cnt=f_cnt,
        payload=decode_base64(body.get("data"), "data"),
        network_decoded=network_decoded,
        receptions=tuple(
            _reception(as_object(item, "rxInfo[]"))
            for item in as_list(body.get("rxInfo"), "rxInfo")
        ),
        spreading_factor=optional_int(lora.get("spreadingFactor"), "spreadingFactor"),
        frequency_hz=optional_int(tx_info.get("frequency"), "txInfo.frequency"),
        device_name=optional_text(device_info.get("deviceName")),
        application_id=optional_text(device_info.get("applicationId")),
    )


def _reception(rx_info: dict[str, Any]) -> GatewayReception:  # Any: JSON values
    gateway_id = rx_info.get("gatewayId")
    if not isinstance(gateway_id, str) or not gateway_id:
        raise IngestError("invalid-message", "rxInfo[].gatewayId is missing")
    return gateway_reception(gateway_id.lower(), rx_info, "rxInfo[]")


def _status(body: dict[str, Any], dev_eui: str, observed_at: str) -> StatusReport:  # Any: JSON
    external = body.get("externalPowerSource") is True
    unavailable = body.get("batteryLevelUnavailable") is True
    percent = optional_number(body.get("batteryLevel", 0), "batteryLevel")
    return StatusReport(
        network="chirpstack",
        dev_eui=dev_eui,
        observed_at=observed_at,
        battery_level=None if external or unavailable or percent is None else percent / 100,
        margin_db=optional_number(body.get("margin", 0), "margin"),
        external_power=external,
    )
