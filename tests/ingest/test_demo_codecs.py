"""Our own codecs: the demo devices (Python and JavaScript agree) and Cayenne LPP."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest

from cityos.ingest.codecs import demo_devices as demo
from cityos.ingest.codecs.cayenne_lpp import CAYENNE_LPP_CODEC
from cityos.ingest.codecs.javascript import JavaScriptCodec
from cityos.ingest.model import IngestError

RECV_TIME = "2026-11-24T01:02:03.456Z"

VECTORS: list[tuple[str, int, bytes, dict[str, Any]]] = [
    (
        "water-level",
        1,
        demo.encode_water_level(2.345, 80),
        {"distance_m": 2.345, "battery_pct": 80},
    ),
    (
        "rain-gauge",
        2,
        demo.encode_rain_gauge(70000, 12.3, 5),
        {"tips": 4464, "precipitation_mm": 12.3, "battery_pct": 5},
    ),
    (
        "snow-depth",
        3,
        demo.encode_snow_depth(0.42, -3.5, 90),
        {"snow_depth_m": 0.42, "temperature_c": -3.5, "battery_pct": 90},
    ),
    (
        "sprinkler",
        4,
        demo.encode_sprinkler(True, False, 120.5, 11.2, 77),
        {
            "pump_on": True,
            "fault": False,
            "flow_l_min": 120.5,
            "water_temperature_c": 11.2,
            "battery_pct": 77,
        },
    ),
    (
        "gps-tracker",
        5,
        demo.encode_gps_tracker(36.695123, 137.213456, True, 50),
        {"latitude": 36.695123, "longitude": 137.213456, "sos": True, "battery_pct": 50},
    ),
    (
        "temperature-humidity",
        6,
        demo.encode_temperature_humidity(-1.5, 63.5, 99),
        {"temperature_c": -1.5, "humidity_pct": 63.5, "battery_pct": 99},
    ),
]


@pytest.fixture(scope="module")
def demo_js() -> JavaScriptCodec:
    source = resources.files("cityos.ingest.codecs").joinpath("js/demo-devices.js").read_text()
    return JavaScriptCodec(source, name="demo-devices.js")


@pytest.mark.parametrize(("kind", "f_port", "payload", "expected"), VECTORS)
def test_python_codec_decodes_what_the_encoder_wrote(
    kind: str, f_port: int, payload: bytes, expected: dict[str, Any]
) -> None:
    assert demo.PYTHON_CODECS[kind].decode_uplink(payload, f_port, RECV_TIME).data == expected


@pytest.mark.parametrize(("kind", "f_port", "payload", "expected"), VECTORS)
def test_javascript_codec_agrees(
    demo_js: JavaScriptCodec, kind: str, f_port: int, payload: bytes, expected: dict[str, Any]
) -> None:
    assert demo_js.decode_uplink(payload, f_port, RECV_TIME).data == expected


@pytest.mark.parametrize("kind", sorted(demo.PYTHON_CODECS))
def test_wrong_fport_is_unknown_fport(kind: str) -> None:
    with pytest.raises(IngestError) as caught:
        demo.PYTHON_CODECS[kind].decode_uplink(b"\x00", 99, RECV_TIME)
    assert caught.value.reason == "unknown-fport"


def test_wrong_length_is_a_codec_error(demo_js: JavaScriptCodec) -> None:
    with pytest.raises(IngestError) as caught:
        demo_js.decode_uplink(b"\x00", 1, RECV_TIME)
    assert (caught.value.reason, caught.value.detail) == (
        "codec-error",
        "demo-devices.js: payload must be 3 bytes, got 1",
    )


# Examples from the Cayenne LPP documentation (docs.mydevices.com, "Cayenne Low Power Payload").
@pytest.mark.parametrize(
    ("hex_payload", "expected"),
    [
        ("03670110056700FF", {"temperature_3": 27.2, "temperature_5": 25.5}),
        ("0167FFD7", {"temperature_1": -4.1}),
        ("067104D2FB2E0000", {"accelerometer_6": {"x": 1.234, "y": -1.234, "z": 0.0}}),
        (
            "018806765FF2960A0003E8",
            {"gps_1": {"latitude": 42.3519, "longitude": -87.9094, "altitude": 10.0}},
        ),
    ],
)
def test_cayenne_documented_examples(hex_payload: str, expected: dict[str, Any]) -> None:
    assert (
        CAYENNE_LPP_CODEC.decode_uplink(bytes.fromhex(hex_payload), 1, RECV_TIME).data == expected
    )


def test_cayenne_every_type() -> None:
    payload = bytes.fromhex(
        "0100 01"  # digital input 1
        "0201 00"  # digital output 0
        "0302 FF38"  # analog input -2.0
        "0403 0064"  # analog output 1.0
        "0565 0190"  # illuminance 400 lux
        "0666 01"  # presence 1
        "0767 00FA"  # temperature 25.0
        "0868 61"  # humidity 48.5
        "0973 2748"  # barometer 1005.6
        "0A86 0064FF9C0000".replace(" ", "")  # gyrometer 1.0, -1.0, 0.0
    )
    assert CAYENNE_LPP_CODEC.decode_uplink(payload, 1, RECV_TIME).data == {
        "digital_input_1": 1,
        "digital_output_2": 0,
        "analog_input_3": -2.0,
        "analog_output_4": 1.0,
        "illuminance_5": 400,
        "presence_6": 1,
        "temperature_7": 25.0,
        "humidity_8": 48.5,
        "barometer_9": 1005.6,
        "gyrometer_10": {"x": 1.0, "y": -1.0, "z": 0.0},
    }


@pytest.mark.parametrize(
    ("hex_payload", "detail"),
    [
        ("0199", "unknown Cayenne LPP type 153"),
        ("0167FF", "truncated temperature"),
        ("01", "truncated record header"),
    ],
)
def test_cayenne_bad_payload(hex_payload: str, detail: str) -> None:
    with pytest.raises(IngestError) as caught:
        CAYENNE_LPP_CODEC.decode_uplink(bytes.fromhex(hex_payload), 1, RECV_TIME)
    assert caught.value.reason == "codec-error"
    assert detail in caught.value.detail
