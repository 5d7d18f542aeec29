"""Profiles from JSON files: a real Device Repository codec mapped onto a river gauge."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityos.ingest.model import Uplink
from cityos.ingest.profile_files import load_profiles, read_profile
from cityos.ingest.registry import RegisteredDevice

PROFILES = Path(__file__).parent / "fixtures" / "profiles"
OBSERVED_AT = "2026-11-24T01:02:03.456Z"


def test_vendor_codec_profile_maps_the_examples_vector() -> None:
    profile = load_profiles(PROFILES)["decentlab-dl-mbx"]
    device = RegisteredDevice(
        "0004a30b00000001", "DL-MBX", profile, parameters={"mounting_height_m": 4.0}
    )
    # "Example 1" of the codec's own vectors: distance 1234 mm, battery 2.993 V.
    payload = bytes.fromhex("02012f000304d200010bb1")
    uplink = Uplink("ttn", device.dev_eui, OBSERVED_AT, "k", 1, 9, payload)
    writes = profile.measurements(device, uplink, profile.decode(uplink))
    assert [(w.entity_id, w.attributes) for w in writes] == [
        (
            "urn:ngsi-ld:WaterObserved:0004a30b00000001",
            {
                "waterLevel": {
                    "type": "Property",
                    "value": 2.766,
                    "observedAt": OBSERVED_AT,
                    "unitCode": "MTR",
                }
            },
        ),
        (
            "urn:ngsi-ld:Device:0004a30b00000001",
            {
                "batteryVoltage": {
                    "type": "Property",
                    "value": 2.993,
                    "observedAt": OBSERVED_AT,
                    "unitCode": "VLT",
                }
            },
        ),
    ]


def test_built_in_profiles_stay_available() -> None:
    assert {"cayenne-lpp", "water-level"} <= set(load_profiles(PROFILES))


@pytest.mark.parametrize(
    "content",
    [
        "{",
        '{"name": "x"}',
        '{"name": "x", "codec": {"python": "y"}, "expected_interval_s": 1,'
        ' "entity_type": "T", "mappings": []}',
        '{"name": "x", "codec": {"network": true}, "expected_interval_s": 1,'
        ' "entity_type": "T", "mappings": [{"attribute": "a", "expression": "b ** 2"}]}',
    ],
)
def test_invalid_profile_file_is_refused_with_its_name(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"broken\.json"):
        read_profile(path)
