"""Cayenne Low Power Payload (LPP) decoder.

A payload is a sequence of ``channel (1 byte), type (1 byte), value`` records. The type
table is Cayenne's (IPSO Smart Object id − 3200), values big-endian. Each record becomes
``data["{name}_{channel}"]``: a number, or an object for the multi-value types
(accelerometer and gyrometer ``{x, y, z}``, GPS ``{latitude, longitude, altitude}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cityos.ingest.codecs.python import PythonCodec


@dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type: name, value size in bytes, scale of each field, signedness,
    the UN/CEFACT unit code of its values (``None``: no unit), and field names for
    multi-value types."""

    name: str
    size: int
    scale: float
    signed: bool
    unit_code: str | None
    fields: tuple[str, ...] = ()


LPP_TYPES: dict[int, LppType] = {
    0: LppType("digital_input", 1, 1, False, None),
    1: LppType("digital_output", 1, 1, False, None),
    2: LppType("analog_input", 2, 0.01, True, None),
    3: LppType("analog_output", 2, 0.01, True, None),
    101: LppType("illuminance", 2, 1, False, "LUX"),
    102: LppType("presence", 1, 1, False, None),
    103: LppType("temperature", 2, 0.1, True, "CEL"),
    104: LppType("humidity", 1, 0.5, False, "P1"),
    113: LppType("accelerometer", 6, 0.001, True, "K40", ("x", "y", "z")),  # K40: g_n
    115: LppType("barometer", 2, 0.1, False, "A97"),  # A97: hectopascal
    134: LppType("gyrometer", 6, 0.01, True, "E96", ("x", "y", "z")),  # E96: degree/second
    136: LppType("gps", 9, 0, True, None, ("latitude", "longitude", "altitude")),
}
"""Cayenne LPP data types by type byte."""

_GPS_SCALES = (0.0001, 0.0001, 0.01)


def decode_cayenne_lpp(payload: bytes, f_port: int, recv_time: str) -> dict[str, Any]:
    """Decode every record; an unknown type or a truncated record is an error (the rest
    of the payload cannot be framed without knowing the size)."""
    data: dict[str, Any] = {}  # Any: numbers or {x, y, z} / GPS objects
    position = 0
    while position < len(payload):
        if position + 2 > len(payload):
            return {"errors": [f"truncated record header at byte {position}"]}
        channel, type_byte = payload[position], payload[position + 1]
        lpp = LPP_TYPES.get(type_byte)
        if lpp is None:
            return {"errors": [f"unknown Cayenne LPP type {type_byte} at byte {position + 1}"]}
        start = position + 2
        end = start + lpp.size
        if end > len(payload):
            return {"errors": [f"truncated {lpp.name} value on channel {channel}"]}
        data[f"{lpp.name}_{channel}"] = _value(lpp, payload[start:end])
        position = end
    return {"data": data}


def _value(lpp: LppType, raw: bytes) -> Any:  # Any: a number or an object of numbers
    if lpp.name == "gps":
        parts = (int.from_bytes(raw[i : i + 3], "big", signed=True) for i in (0, 3, 6))
        return {
            name: round(value * scale, 6)
            for name, value, scale in zip(lpp.fields, parts, _GPS_SCALES, strict=True)
        }
    if lpp.fields:
        width = lpp.size // len(lpp.fields)
        return {
            name: round(
                int.from_bytes(raw[i * width : (i + 1) * width], "big", signed=lpp.signed)
                * lpp.scale,
                6,
            )
            for i, name in enumerate(lpp.fields)
        }
    number = int.from_bytes(raw, "big", signed=lpp.signed)
    return number if lpp.scale == 1 else round(number * lpp.scale, 6)


def unit_code_of(data_key: str) -> str | None:
    """The UN/CEFACT unit of a decoded key such as ``temperature_3``."""
    name = data_key.rsplit("_", 1)[0]
    return next((t.unit_code for t in LPP_TYPES.values() if t.name == name), None)


CAYENNE_LPP_CODEC = PythonCodec(decode_cayenne_lpp, name="cayenne-lpp")
