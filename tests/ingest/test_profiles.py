"""Device profiles: mapping expressions and the entity writes of decoded uplinks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cityos.ingest.codecs import demo_devices as demo
from cityos.ingest.model import DecodedUplink, EntityWrite, IngestError, Uplink
from cityos.ingest.profiles import (
    BUILTIN_PROFILES,
    AttributeMapping,
    DeviceProfile,
    compile_expression,
)
from cityos.ingest.registry import RegisteredDevice

DEV_EUI = "70b3d57ed0000001"
OBSERVED_AT = "2026-11-24T01:02:03.456Z"
GAUGE_ID = "urn:ngsi-ld:WaterObserved:toyama-gauge-01"


def uplink(f_port: int, payload: bytes, network_decoded: dict[str, Any] | None = None) -> Uplink:
    return Uplink("chirpstack", DEV_EUI, OBSERVED_AT, "k", f_port, 7, payload, network_decoded)


def device(profile: str, **changes: Any) -> RegisteredDevice:
    fields: dict[str, Any] = {
        "dev_eui": DEV_EUI,
        "name": "test device",
        "profile": BUILTIN_PROFILES[profile],
    }
    fields.update(changes)
    return RegisteredDevice(**fields)


def writes_of(registered: RegisteredDevice, message: Uplink) -> list[EntityWrite]:
    profile = registered.profile
    return profile.measurements(registered, message, profile.decode(message))


def test_water_level_is_mounting_height_minus_distance() -> None:
    gauge = device("water-level", parameters={"mounting_height_m": 5.0}, target_entity_id=GAUGE_ID)
    writes = writes_of(gauge, uplink(1, demo.encode_water_level(3.2, 88)))
    assert writes == [
        EntityWrite(
            GAUGE_ID,
            "WaterObserved",
            {
                "waterLevel": {
                    "type": "Property",
                    "value": 1.8,
                    "observedAt": OBSERVED_AT,
                    "unitCode": "MTR",
                }
            },
        ),
        EntityWrite(
            f"urn:ngsi-ld:Device:{DEV_EUI}",
            "Device",
            {
                "batteryLevel": {
                    "type": "Property",
                    "value": 0.88,
                    "observedAt": OBSERVED_AT,
                    "unitCode": "C62",
                }
            },
        ),
    ]


def test_default_target_is_type_and_dev_eui() -> None:
    writes = writes_of(device("rain-gauge"), uplink(2, demo.encode_rain_gauge(3, 1.5, 90)))
    assert writes[0].entity_id == f"urn:ngsi-ld:WeatherObserved:{DEV_EUI}"
    assert writes[0].attributes["precipitation"]["unitCode"] == "MMT"


def test_missing_device_parameter_is_a_mapping_error() -> None:
    with pytest.raises(IngestError) as caught:
        writes_of(device("water-level"), uplink(1, demo.encode_water_level(3.2, 88)))
    assert caught.value.reason == "mapping-error"
    assert "mounting_height_m" in caught.value.detail


def test_gps_tracker_moves_its_own_device_entity() -> None:
    writes = writes_of(
        device("gps-tracker"), uplink(5, demo.encode_gps_tracker(36.7, 137.2, False, 40))
    )
    assert len(writes) == 1
    assert writes[0].entity_id == f"urn:ngsi-ld:Device:{DEV_EUI}"
    assert writes[0].attributes["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [137.2, 36.7]},
        "observedAt": OBSERVED_AT,
    }


def test_cayenne_profile_writes_channels_to_the_device_entity() -> None:
    payload = bytes.fromhex("03670110018806765FF2960A0003E8")
    writes = writes_of(device("cayenne-lpp"), uplink(1, payload))
    assert [(w.entity_id, sorted(w.attributes)) for w in writes] == [
        (f"urn:ngsi-ld:Device:{DEV_EUI}", ["gps_1", "temperature_3"])
    ]
    assert writes[0].attributes["temperature_3"]["unitCode"] == "CEL"
    assert writes[0].attributes["gps_1"]["value"]["coordinates"] == [-87.9094, 42.3519]


def test_network_decoded_profile_uses_the_network_servers_object() -> None:
    profile = BUILTIN_PROFILES["temperature-humidity"]
    variant = replace(profile, name="th-network", codec=None, use_network_decoded=True)
    message = uplink(6, b"", {"temperature_c": 21.5, "humidity_pct": 40})
    assert variant.decode(message) == DecodedUplink({"temperature_c": 21.5, "humidity_pct": 40})


def test_network_decoded_profile_without_object_is_a_codec_error() -> None:
    variant = replace(BUILTIN_PROFILES["rain-gauge"], codec=None, use_network_decoded=True)
    with pytest.raises(IngestError) as caught:
        variant.decode(uplink(2, b"\x00"))
    assert caught.value.reason == "codec-error"


@pytest.mark.parametrize(
    ("expression", "data", "params", "expected"),
    [
        ("a", {"a": "text"}, {}, "text"),
        ("h - d", {"d": 1.25}, {"h": 4}, 2.75),
        ("-(a * 2) / 4 + 1", {"a": 3}, {}, -0.5),
        ("distance.value / 1000", {"distance": {"value": 1234}}, {}, 1.234),
        (
            "point(lon, lat)",
            {"lon": 137.2, "lat": 36.7},
            {},
            {"type": "Point", "coordinates": [137.2, 36.7]},
        ),
    ],
)
def test_expression_values(
    expression: str, data: dict[str, Any], params: dict[str, Any], expected: Any
) -> None:
    assert compile_expression(expression)(data, params) == expected


@pytest.mark.parametrize(
    ("expression", "data"),
    [
        ("a - 1", {"a": "x"}),
        ("a / b", {"a": 1, "b": 0}),
        ("a + 1", {"a": True}),
        ("point(a, a)", {"a": 500}),
    ],
)
def test_expression_bad_operands_are_mapping_errors(expression: str, data: dict[str, Any]) -> None:
    with pytest.raises(IngestError) as caught:
        compile_expression(expression)(data, {})
    assert caught.value.reason == "mapping-error"


@pytest.mark.parametrize("expression", ["__import__('os')", "a ** 2", "a if a else b", "[a]"])
def test_expression_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError, match="Not allowed"):
        compile_expression(expression)


def test_partial_payload_skips_absent_fields() -> None:
    profile = DeviceProfile(
        name="partial",
        codec=None,
        expected_interval_s=60,
        entity_type="DeviceMeasurement",
        mappings=(
            AttributeMapping("numValue", "distance.value"),
            AttributeMapping("v", "battery_voltage.value", "VLT"),
        ),
        use_network_decoded=True,
    )
    registered = RegisteredDevice(DEV_EUI, "x", profile)
    message = uplink(1, b"", {"battery_voltage": {"value": 2.993}})
    writes = profile.measurements(registered, message, profile.decode(message))
    assert list(writes[0].attributes) == ["v"]
