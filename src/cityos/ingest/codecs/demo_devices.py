"""Codecs of the Toyama demo devices (Python), with the encoders the simulator uses.

Byte layouts (all big-endian; ``battery`` is the charge in percent, 0..100):

=====================  =====  ==========================================================
device                 fPort  payload
=====================  =====  ==========================================================
water-level gauge      1      u16 distance sensor→water in mm, u8 battery
(ultrasonic)
rain gauge             2      u16 bucket tips since power-on (wraps), u16 rain in the
(tipping bucket)              interval in 0.1 mm, u8 battery
snow-depth sensor      3      u16 snow depth in mm, i16 air temperature in 0.1 °C,
                              u8 battery
snow-melting           4      u8 flags (bit 0 pump running, bit 1 fault), u16 water flow
sprinkler monitor             in 0.1 L/min, i16 water temperature in 0.1 °C, u8 battery
GPS tracker            5      i32 latitude in 1e-6 °, i32 longitude in 1e-6 °,
                              u8 flags (bit 0 SOS button), u8 battery
temperature/humidity   6      i16 temperature in 0.1 °C, u8 humidity in 0.5 %,
                              u8 battery
=====================  =====  ==========================================================

The same layouts are decoded by the JavaScript versions in ``js/`` (the tests check
that both agree). Another fPort gives ``errors: ["unknown FPort"]`` as the Device
Repository codecs do.
"""

from __future__ import annotations

import struct
from typing import Any

from cityos.ingest.codecs.python import PythonCodec

Result = dict[str, Any]  # Any: TTN result JSON


def _checked(payload: bytes, f_port: int, expected_port: int, size: int) -> str | None:
    if f_port != expected_port:
        return "unknown FPort"
    if len(payload) != size:
        return f"payload must be {size} bytes, got {len(payload)}"
    return None


def decode_water_level(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Ultrasonic water-level gauge: distance from the sensor down to the water."""
    if error := _checked(payload, f_port, 1, 3):
        return {"errors": [error]}
    distance_mm, battery = struct.unpack(">HB", payload)
    return {"data": {"distance_m": distance_mm / 1000, "battery_pct": battery}}


def encode_water_level(distance_m: float, battery_pct: int) -> bytes:
    return struct.pack(">HB", round(distance_m * 1000), battery_pct)


def decode_rain_gauge(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Tipping-bucket rain gauge: rain fallen in the reporting interval."""
    if error := _checked(payload, f_port, 2, 5):
        return {"errors": [error]}
    tips, rain_tenths_mm, battery = struct.unpack(">HHB", payload)
    return {"data": {"tips": tips, "precipitation_mm": rain_tenths_mm / 10, "battery_pct": battery}}


def encode_rain_gauge(tips: int, precipitation_mm: float, battery_pct: int) -> bytes:
    return struct.pack(">HHB", tips % 65536, round(precipitation_mm * 10), battery_pct)


def decode_snow_depth(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Snow-depth sensor with an air thermometer."""
    if error := _checked(payload, f_port, 3, 5):
        return {"errors": [error]}
    depth_mm, temperature_tenths, battery = struct.unpack(">HhB", payload)
    return {
        "data": {
            "snow_depth_m": depth_mm / 1000,
            "temperature_c": temperature_tenths / 10,
            "battery_pct": battery,
        }
    }


def encode_snow_depth(snow_depth_m: float, temperature_c: float, battery_pct: int) -> bytes:
    return struct.pack(">HhB", round(snow_depth_m * 1000), round(temperature_c * 10), battery_pct)


def decode_sprinkler(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Snow-melting sprinkler monitor (消雪装置): pump state, flow and water temperature."""
    if error := _checked(payload, f_port, 4, 6):
        return {"errors": [error]}
    flags, flow_tenths, temperature_tenths, battery = struct.unpack(">BHhB", payload)
    return {
        "data": {
            "pump_on": bool(flags & 1),
            "fault": bool(flags & 2),
            "flow_l_min": flow_tenths / 10,
            "water_temperature_c": temperature_tenths / 10,
            "battery_pct": battery,
        }
    }


def encode_sprinkler(
    pump_on: bool, fault: bool, flow_l_min: float, water_temperature_c: float, battery_pct: int
) -> bytes:
    flags = (1 if pump_on else 0) | (2 if fault else 0)
    return struct.pack(
        ">BHhB", flags, round(flow_l_min * 10), round(water_temperature_c * 10), battery_pct
    )


def decode_gps_tracker(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Children's GPS watch-over tracker (見守り端末)."""
    if error := _checked(payload, f_port, 5, 10):
        return {"errors": [error]}
    latitude, longitude, flags, battery = struct.unpack(">iiBB", payload)
    return {
        "data": {
            "latitude": latitude / 1e6,
            "longitude": longitude / 1e6,
            "sos": bool(flags & 1),
            "battery_pct": battery,
        }
    }


def encode_gps_tracker(latitude: float, longitude: float, sos: bool, battery_pct: int) -> bytes:
    return struct.pack(
        ">iiBB", round(latitude * 1e6), round(longitude * 1e6), 1 if sos else 0, battery_pct
    )


def decode_temperature_humidity(payload: bytes, f_port: int, recv_time: str) -> Result:
    """Environmental temperature/humidity sensor."""
    if error := _checked(payload, f_port, 6, 4):
        return {"errors": [error]}
    temperature_tenths, humidity_halves, battery = struct.unpack(">hBB", payload)
    return {
        "data": {
            "temperature_c": temperature_tenths / 10,
            "humidity_pct": humidity_halves / 2,
            "battery_pct": battery,
        }
    }


def encode_temperature_humidity(
    temperature_c: float, humidity_pct: float, battery_pct: int
) -> bytes:
    return struct.pack(">hBB", round(temperature_c * 10), round(humidity_pct * 2), battery_pct)


PYTHON_CODECS = {
    "water-level": PythonCodec(decode_water_level, name="water-level"),
    "rain-gauge": PythonCodec(decode_rain_gauge, name="rain-gauge"),
    "snow-depth": PythonCodec(decode_snow_depth, name="snow-depth"),
    "sprinkler": PythonCodec(decode_sprinkler, name="sprinkler"),
    "gps-tracker": PythonCodec(decode_gps_tracker, name="gps-tracker"),
    "temperature-humidity": PythonCodec(decode_temperature_humidity, name="temperature-humidity"),
}
"""The demo devices' Python codecs by device kind (the built-in profiles' names)."""
