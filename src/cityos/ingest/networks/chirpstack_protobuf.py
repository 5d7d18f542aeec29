"""ChirpStack's binary protobuf integration events (HTTP integration with
``marshaler=protobuf``), read into the same protobuf JSON mapping as the JSON marshaler.

Why our own descriptors instead of the ``chirpstack-api`` package: that package pulls in
grpcio, google-api-core, google-auth, requests and cryptography (about twenty
distributions) to read a handful of messages. The protobuf binary format carries field
numbers, not names, so a subset of ``integration.proto`` (the fields we read, with
ChirpStack's field numbers and types; unknown fields are skipped by the parser) decodes
real ChirpStack bodies exactly. The tests check this against bodies encoded by the
official package (see tests/ingest/fixtures/README.md).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.message import DecodeError

from cityos.ingest.model import IngestError

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _UINT32, _INT32 = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_UINT32, _F.TYPE_INT32
_FLOAT, _DOUBLE, _BYTES, _MESSAGE = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_BYTES, _F.TYPE_MESSAGE
_ENUM = _F.TYPE_ENUM
_PACKAGE = "cityos.chirpstack"
_TIMESTAMP = ".google.protobuf.Timestamp"
_STRUCT = ".google.protobuf.Struct"
_DURATION = ".google.protobuf.Duration"

# message name -> [(field number, name, type, message type or "", repeated)];
# numbers and types from chirpstack/api/proto/{integration,gw,common}/*.proto (v4).
_MESSAGES: dict[str, list[tuple[int, str, int, str, bool]]] = {
    "DeviceInfo": [
        (1, "tenant_id", _STRING, "", False),
        (2, "tenant_name", _STRING, "", False),
        (3, "application_id", _STRING, "", False),
        (4, "application_name", _STRING, "", False),
        (5, "device_profile_id", _STRING, "", False),
        (6, "device_profile_name", _STRING, "", False),
        (7, "device_name", _STRING, "", False),
        (8, "dev_eui", _STRING, "", False),
        (9, "tags", _MESSAGE, "StringMapEntry", True),
    ],
    "Location": [
        (1, "latitude", _DOUBLE, "", False),
        (2, "longitude", _DOUBLE, "", False),
        (3, "altitude", _DOUBLE, "", False),
    ],
    "UplinkRxInfo": [
        (1, "gateway_id", _STRING, "", False),
        (2, "uplink_id", _UINT32, "", False),
        (6, "rssi", _INT32, "", False),
        (7, "snr", _FLOAT, "", False),
        (12, "location", _MESSAGE, "Location", False),
    ],
    "LoraModulationInfo": [
        (1, "bandwidth", _UINT32, "", False),
        (2, "spreading_factor", _UINT32, "", False),
        (3, "code_rate_legacy", _STRING, "", False),
        (4, "polarization_inversion", _BOOL, "", False),
        (5, "code_rate", _ENUM, "CodeRate", False),
        (6, "preamble", _UINT32, "", False),
        (7, "no_crc", _BOOL, "", False),
    ],
    "Modulation": [(3, "lora", _MESSAGE, "LoraModulationInfo", False)],
    "UplinkTxInfo": [
        (1, "frequency", _UINT32, "", False),
        (2, "modulation", _MESSAGE, "Modulation", False),
    ],
    "DownlinkTxInfo": [
        (1, "frequency", _UINT32, "", False),
        (2, "power", _INT32, "", False),
        (3, "modulation", _MESSAGE, "Modulation", False),
        (4, "board", _UINT32, "", False),
        (5, "antenna", _UINT32, "", False),
        (6, "timing", _MESSAGE, "Timing", False),
        (7, "context", _BYTES, "", False),
    ],
    # A oneof in gw.proto; as plain fields the parser and the JSON mapping read it alike.
    "Timing": [
        (1, "immediately", _MESSAGE, "ImmediatelyTimingInfo", False),
        (2, "delay", _MESSAGE, "DelayTimingInfo", False),
        (3, "gps_epoch", _MESSAGE, "GPSEpochTimingInfo", False),
    ],
    "ImmediatelyTimingInfo": [],
    "DelayTimingInfo": [(1, "delay", _MESSAGE, _DURATION, False)],
    "GPSEpochTimingInfo": [(1, "time_since_gps_epoch", _MESSAGE, _DURATION, False)],
    "UplinkEvent": [
        (1, "deduplication_id", _STRING, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (4, "dev_addr", _STRING, "", False),
        (5, "adr", _BOOL, "", False),
        (6, "dr", _UINT32, "", False),
        (7, "f_cnt", _UINT32, "", False),
        (8, "f_port", _UINT32, "", False),
        (9, "confirmed", _BOOL, "", False),
        (10, "data", _BYTES, "", False),
        (11, "object", _MESSAGE, _STRUCT, False),
        (12, "rx_info", _MESSAGE, "UplinkRxInfo", True),
        (13, "tx_info", _MESSAGE, "UplinkTxInfo", False),
    ],
    "StatusEvent": [
        (1, "deduplication_id", _STRING, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (5, "margin", _INT32, "", False),
        (6, "external_power_source", _BOOL, "", False),
        (7, "battery_level_unavailable", _BOOL, "", False),
        (8, "battery_level", _FLOAT, "", False),
    ],
    "JoinEvent": [
        (1, "deduplication_id", _STRING, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (4, "dev_addr", _STRING, "", False),
    ],
    "AckEvent": [
        (1, "deduplication_id", _STRING, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (4, "queue_item_id", _STRING, "", False),
        (5, "acknowledged", _BOOL, "", False),
        (6, "f_cnt_down", _UINT32, "", False),
    ],
    "TxAckEvent": [
        (1, "downlink_id", _UINT32, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (4, "queue_item_id", _STRING, "", False),
        (5, "f_cnt_down", _UINT32, "", False),
        (6, "gateway_id", _STRING, "", False),
        (7, "tx_info", _MESSAGE, "DownlinkTxInfo", False),
    ],
    "LogEvent": [
        (1, "time", _MESSAGE, _TIMESTAMP, False),
        (2, "device_info", _MESSAGE, "DeviceInfo", False),
        (3, "level", _ENUM, "LogLevel", False),
        (4, "code", _ENUM, "LogCode", False),
        (5, "description", _STRING, "", False),
        (6, "context", _MESSAGE, "StringMapEntry", True),
    ],
    "LocationEvent": [
        (1, "deduplication_id", _STRING, "", False),
        (2, "time", _MESSAGE, _TIMESTAMP, False),
        (3, "device_info", _MESSAGE, "DeviceInfo", False),
        (4, "location", _MESSAGE, "Location", False),
    ],
}

_ENUMS = {
    "CodeRate": [
        "CR_UNDEFINED",
        "CR_4_5",
        "CR_4_6",
        "CR_4_7",
        "CR_4_8",
        "CR_3_8",
        "CR_2_6",
        "CR_1_4",
        "CR_1_6",
        "CR_5_6",
        "CR_LI_4_5",
        "CR_LI_4_6",
        "CR_LI_4_8",
    ],
    "LogLevel": ["INFO", "WARNING", "ERROR"],
    "LogCode": [
        "UNKNOWN",
        "DOWNLINK_PAYLOAD_SIZE",
        "UPLINK_CODEC",
        "DOWNLINK_CODEC",
        "OTAA",
        "UPLINK_F_CNT_RESET",
        "UPLINK_MIC",
        "UPLINK_F_CNT_RETRANSMISSION",
        "DOWNLINK_GATEWAY",
        "RELAY_NEW_END_DEVICE",
        "F_CNT_DOWN",
        "EXPIRED",
    ],
}
"""Enum values in number order (ChirpStack numbers them 0, 1, 2, ...)."""

EVENT_MESSAGES = {
    "up": "UplinkEvent",
    "status": "StatusEvent",
    "join": "JoinEvent",
    "ack": "AckEvent",
    "txack": "TxAckEvent",
    "log": "LogEvent",
    "location": "LocationEvent",
}
"""Events ChirpStack can send as protobuf (``integration`` events come as JSON only here:
the chirpstack-api package does not define their message)."""


def to_json_mapping(event: str, body: bytes) -> dict[str, Any]:  # Any: JSON values
    """The protobuf JSON mapping of a binary ChirpStack event (``invalid-json`` if the
    body is not that message)."""
    if event not in EVENT_MESSAGES:
        raise IngestError("invalid-message", f"ChirpStack {event!r} events are read as JSON only")
    message = _message_classes()[EVENT_MESSAGES[event]]()
    try:
        message.ParseFromString(body)
    except DecodeError as error:
        raise IngestError(
            "invalid-json", f"Body is not a protobuf {event} event: {error}"
        ) from None
    mapping: dict[str, Any] = json_format.MessageToDict(message)
    return mapping


@cache
def _message_classes() -> dict[str, Any]:  # Any: generated protobuf message classes
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(duration_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="cityos/chirpstack_integration.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/duration.proto",
        ],
    )
    for enum_name, values in _ENUMS.items():
        enum = file.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    entry = file.message_type.add(name="StringMapEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL, json_name="key")
    entry.field.add(
        name="value", number=2, type=_STRING, label=_F.LABEL_OPTIONAL, json_name="value"
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for number, field_name, field_type, type_name, repeated in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                type=field_type,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
                json_name=_camel(field_name),
            )
            if type_name:
                field.type_name = type_name if type_name.startswith(".") else _qualified(type_name)
    # Map entries must be nested in the message that uses them (protobuf's rule).
    _nest_map_entries(file)
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


def _nest_map_entries(file: descriptor_pb2.FileDescriptorProto) -> None:
    shared = next(m for m in file.message_type if m.name == "StringMapEntry")
    for message in file.message_type:
        for field in message.field:
            if field.type_name == _qualified("StringMapEntry"):
                nested_name = f"{_camel(field.name).capitalize()}Entry"
                nested = message.nested_type.add()
                nested.CopyFrom(shared)
                nested.name = nested_name
                field.type_name = f"{_qualified(message.name)}.{nested_name}"
    file.message_type.remove(shared)


def _qualified(name: str) -> str:
    return f".{_PACKAGE}.{name}"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)
