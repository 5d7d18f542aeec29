"""Device profiles defined in JSON files, next to the built-in ones.

One file per profile, ``<directory>/<name>.json``::

    {
      "name": "decentlab-dl-mbx",
      "description": "Decentlab DL-MBX ultrasonic distance sensor",
      "codec": {"javascript": "dl-mbx.js"},          # or {"network": true}
      "expected_interval_s": 600,
      "entity_type": "WaterObserved",
      "parameters": ["mounting_height_m"],
      "mappings": [
        {"attribute": "waterLevel", "expression": "mounting_height_m - distance.value / 1000",
         "unit_code": "MTR"},
        {"attribute": "batteryVoltage", "expression": "battery_voltage.value",
         "unit_code": "VLT", "on_device": true}
      ],
      "controlled_property": ["waterLevel"],
      "device_category": ["sensor"]
    }

``javascript`` names a codec file relative to the profile (a TTN Device Repository
codec, unmodified); ``"network": true`` uses what the network server decoded. A file
that does not describe a valid profile raises ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from cityos.ingest.codecs.javascript import JavaScriptCodec
from cityos.ingest.profiles import BUILTIN_PROFILES, AttributeMapping, DeviceProfile


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    """The built-in profiles plus every ``*.json`` profile in ``directory`` (a file may
    replace a built-in profile of the same name)."""
    profiles = dict(BUILTIN_PROFILES)
    for path in sorted(directory.glob("*.json")):
        profile = read_profile(path)
        profiles[profile.name] = profile
    return profiles


def read_profile(path: Path) -> DeviceProfile:
    """One profile file (see the module docstring)."""
    try:
        spec = orjson.loads(path.read_bytes())
        return _profile(spec, path.parent)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Profile file {path} is not valid: {error}") from None


def _profile(spec: Mapping[str, Any], base: Path) -> DeviceProfile:  # Any: JSON
    codec_spec = spec["codec"]
    name = str(spec["name"])
    codec = None
    use_network_decoded = False
    if codec_spec.get("network") is True:
        use_network_decoded = True
    elif "javascript" in codec_spec:
        source = (base / str(codec_spec["javascript"])).read_text(encoding="utf-8")
        codec = JavaScriptCodec(source, name=name)
    else:
        raise ValueError('codec must be {"javascript": "<file>"} or {"network": true}')
    return DeviceProfile(
        name=name,
        codec=codec,
        expected_interval_s=float(spec["expected_interval_s"]),
        entity_type=str(spec["entity_type"]),
        mappings=tuple(
            AttributeMapping(
                attribute=str(item["attribute"]),
                expression=str(item["expression"]),
                unit_code=item.get("unit_code"),
                on_device=bool(item.get("on_device", False)),
            )
            for item in spec["mappings"]
        ),
        use_network_decoded=use_network_decoded,
        parameters=tuple(spec.get("parameters", ())),
        controlled_property=tuple(spec.get("controlled_property", ())),
        device_category=tuple(spec.get("device_category", ("sensor",))),
        description=str(spec.get("description", "")),
    )
