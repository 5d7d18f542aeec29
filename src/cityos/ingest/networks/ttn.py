"""The Things Stack (TTN) v3 application messages (MQTT and webhooks) to network events.

MQTT topics are ``v3/{application id}@{tenant id}/devices/{device id}/{event}`` (``up``,
``join``, ``down/ack``, ...); a webhook posts the same JSON. The kind of message is read
from the body (``uplink_message``, ``join_accept``, ``downlink_ack``, ...), so both
transports need nothing else. Fields at their zero value are omitted by TTN (no
``f_cnt`` means 0). ``end_device_ids.dev_eui`` is upper case; ``settings.frequency`` is a
decimal string. TTN assigns no deduplication id: the dedupe key is DevEUI + ``f_cnt`` +
the network server's receive time in a window (see ``fields.DEDUP_WINDOW_MS``).
"""

from __future__ import annotations

from typing import Any

from cityos.ingest.model import (
    GatewayReception,
    IngestError,
    NetworkEvent,
    OtherEvent,
    RawMessage,
    Uplink,
)
from cityos.ingest.networks.fields import (
    as_list,
    as_object,
    decode_base64,
    event_time,
    gateway_reception,
    load_json_object,
    normalize_dev_eui,
    optional_int,
    optional_object,
    optional_text,
    window_dedup_key,
)

# Body keys of the non-uplink messages and the event kind they become.
OTHER_MESSAGES = {
    "join_accept": "join",
    "downlink_ack": "ack",
    "downlink_nack": "nack",
    "downlink_sent": "txack",
    "downlink_queued": "downlink_queued",
    "downlink_queue_invalidated": "downlink_queue_invalidated",
    "downlink_failed": "downlink_failed",
    "location_solved": "location",
    "service_data": "service_data",
    "uplink_normalized": "uplink_normalized",
}


def parse(raw: RawMessage) -> list[NetworkEvent]:
    """The events in one TTN message (always one); raises :class:`IngestError`."""
    body = load_json_object(raw.body)
    ids = as_object(body.get("end_device_ids"), "end_device_ids")
    if "dev_eui" not in ids:
        raise IngestError("invalid-message", "end_device_ids.dev_eui is missing")
    dev_eui = normalize_dev_eui(ids["dev_eui"], "end_device_ids.dev_eui")
    if "uplink_message" in body:
        return [_uplink(body, ids, dev_eui, raw.received_at_ms)]
    for key, kind in OTHER_MESSAGES.items():
        if key in body:
            details = as_object(body[key], key)
            observed_at, _ = event_time(
                details.get("received_at", body.get("received_at")),
                "received_at",
                raw.received_at_ms,
            )
            return [OtherEvent("ttn", dev_eui, observed_at, kind, details)]
    raise IngestError("invalid-message", "No known TTN message in the body")


def _uplink(
    body: dict[str, Any],  # Any: JSON values
    ids: dict[str, Any],  # Any: JSON values
    dev_eui: str,
    fallback_ms: int,
) -> Uplink:
    message = as_object(body["uplink_message"], "uplink_message")
    observed_at, time_ms = event_time(
        message.get("received_at", body.get("received_at")), "received_at", fallback_ms
    )
    f_cnt = optional_int(message.get("f_cnt"), "f_cnt", default=0)
    decoded = optional_object(message.get("decoded_payload"), "decoded_payload")
    settings = as_object(message.get("settings"), "settings")
    lora = as_object(
        as_object(settings.get("data_rate"), "settings.data_rate").get("lora"),
        "settings.data_rate.lora",
    )
    application = as_object(ids.get("application_ids"), "end_device_ids.application_ids")
    return Uplink(
        network="ttn",
        dev_eui=dev_eui,
        observed_at=observed_at,
        dedup_key=window_dedup_key(dev_eui, f_cnt, time_ms),
        f_port=optional_int(message.get("f_port"), "f_port", default=0),
        f_cnt=f_cnt,
        payload=decode_base64(message.get("frm_payload"), "frm_payload"),
        network_decoded=decoded,
        receptions=tuple(
            _reception(as_object(item, "rx_metadata[]"))
            for item in as_list(message.get("rx_metadata"), "rx_metadata")
        ),
        spreading_factor=optional_int(lora.get("spreading_factor"), "spreading_factor"),
        frequency_hz=optional_int(settings.get("frequency"), "settings.frequency"),
        device_name=optional_text(ids.get("device_id")),
        application_id=optional_text(application.get("application_id")),
    )


def _reception(metadata: dict[str, Any]) -> GatewayReception:  # Any: JSON values
    gateway_ids = as_object(metadata.get("gateway_ids"), "rx_metadata[].gateway_ids")
    gateway_id = gateway_ids.get("gateway_id")
    if not isinstance(gateway_id, str) or not gateway_id:
        raise IngestError("invalid-message", "rx_metadata[].gateway_ids.gateway_id is missing")
    return gateway_reception(gateway_id, metadata, "rx_metadata[]")
