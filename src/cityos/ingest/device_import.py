"""Bulk device import from CSV: a plain CSV or The Things Stack's semicolon CSV.

Plain CSV (comma-separated, header required)::

    dev_eui,name,profile,lat,lon[,owner,tags,target,<parameter>...]

``tags`` are separated by ``|``; ``target`` is the measurement entity id (e.g.
``urn:ngsi-ld:WaterObserved:toyama-gauge-01``); any other column is a device parameter
(a number when it reads as one), e.g. ``mounting_height_m``.

The Things Stack CSV (semicolon-separated; its documented columns ``id``, ``dev_eui``,
``join_eui``, ``name``, ``app_key``, ...): it has no profile or location, so rows take
the ``--profile`` given on the command line unless the file adds ``profile``, ``lat``,
``lon`` (or any column above: unknown columns are allowed in that format). Its LoRaWAN
columns (keys, versions, frequency plan, Device Repository ids) are ignored: keys stay
with the network server and are never stored here.

Every row is checked (DevEUI, profile, coordinates, the profile's required parameters,
duplicates); bad rows are reported with their line number and the others imported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cityos.ingest.profiles import DeviceProfile
from cityos.ingest.registry import DeviceRegistry, RegisteredDevice

TTS_COLUMNS = frozenset(
    {
        "id",
        "join_eui",
        "app_eui",
        "frequency_plan_id",
        "lorawan_version",
        "lorawan_phy_version",
        "app_key",
        "nwk_key",
        "brand_id",
        "model_id",
        "firmware_version",
        "hardware_version",
        "band_id",
    }
)
"""The Things Stack's LoRaWAN columns: read for nothing but ``id`` (a name fallback)."""
_COLUMNS = frozenset({"dev_eui", "name", "profile", "lat", "lon", "owner", "tags", "target"})
_DEV_EUI_RE = re.compile(r"^[0-9a-fA-F]{16}$")
BATCH_SIZE = 500


@dataclass(frozen=True)
class RowError:
    """Why one CSV row was not imported (``line`` counts the header as line 1)."""

    line: int
    dev_eui: str
    message: str


@dataclass
class ImportReport:
    """How an import went."""

    imported: int = 0
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0


class CsvFormatError(ValueError):
    """The file is not a CSV this command reads (no header, no ``dev_eui`` column)."""


def read_devices(
    text: str, profiles: Mapping[str, DeviceProfile], *, default_profile: str | None = None
) -> tuple[list[tuple[int, RegisteredDevice]], list[RowError]]:
    """Parse and check every row: (line, device) of the good rows, errors of the others."""
    first_line = text.lstrip("\ufeff").split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter=delimiter)
    header = [name.strip() for name in reader.fieldnames or []]
    if "dev_eui" not in header:
        raise CsvFormatError("No dev_eui column in the header / ヘッダーに dev_eui 列がありません")
    reader.fieldnames = header
    devices: list[tuple[int, RegisteredDevice]] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        values = {key: (value or "").strip() for key, value in row.items() if key is not None}
        if None in row:
            errors.append(RowError(line, values.get("dev_eui", ""), "more fields than the header"))
            continue
        try:
            device = _device(values, profiles, default_profile)
        except ValueError as error:
            errors.append(RowError(line, values.get("dev_eui", ""), str(error)))
            continue
        if device.dev_eui in seen:
            errors.append(
                RowError(line, device.dev_eui, f"duplicate of line {seen[device.dev_eui]}")
            )
            continue
        seen[device.dev_eui] = line
        devices.append((line, device))
    return devices, errors


def _device(
    values: dict[str, str], profiles: Mapping[str, DeviceProfile], default_profile: str | None
) -> RegisteredDevice:
    dev_eui = values.get("dev_eui", "")
    if not _DEV_EUI_RE.match(dev_eui):
        raise ValueError(f"dev_eui {dev_eui!r} is not 16 hex digits")
    profile_name = values.get("profile") or default_profile
    if not profile_name:
        raise ValueError("no profile (add a profile column or use --profile)")
    profile = profiles.get(profile_name)
    if profile is None:
        raise ValueError(f"unknown profile {profile_name!r} (see `cityos devices profiles`)")
    location = _location(values.get("lat", ""), values.get("lon", ""))
    parameters = {
        key: _parameter(value)
        for key, value in values.items()
        if key not in _COLUMNS and key not in TTS_COLUMNS and value
    }
    missing = [name for name in profile.parameters if name not in parameters]
    if missing:
        raise ValueError(f"profile {profile_name} needs column(s) {', '.join(missing)}")
    target = values.get("target") or None
    if target is not None and not target.startswith("urn:"):
        raise ValueError(f"target {target!r} is not an entity id (urn:...)")
    tags = tuple(tag.strip() for tag in values.get("tags", "").split("|") if tag.strip())
    return RegisteredDevice(
        dev_eui=dev_eui.lower(),
        name=values.get("name") or values.get("id") or dev_eui.lower(),
        profile=profile,
        location=location,
        owner=values.get("owner") or None,
        tags=tags,
        parameters=parameters,
        target_entity_id=target,
    )


def _location(lat: str, lon: str) -> tuple[float, float] | None:
    if not lat and not lon:
        return None
    try:
        latitude, longitude = float(lat), float(lon)
    except ValueError:
        raise ValueError(f"lat/lon {lat!r}, {lon!r} are not numbers") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"lat/lon {lat}, {lon} are outside WGS 84")
    return (longitude, latitude)


def _parameter(text: str) -> Any:  # Any: a number or the text
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def import_devices(
    registry: DeviceRegistry,
    text: str,
    *,
    default_profile: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Check every row and register the good ones in batches; ``on_progress(done,
    total)`` after each batch. Raises :class:`CsvFormatError` for an unreadable file."""
    devices, errors = read_devices(text, registry.profiles, default_profile=default_profile)
    report = ImportReport(errors=errors, rows=len(devices) + len(errors))
    lines = {device.dev_eui: line for line, device in devices}
    for batch in _batches([device for _, device in devices], BATCH_SIZE):
        refused = dict(registry.register_many(batch))
        for device in batch:
            if device.dev_eui in refused:
                error = refused[device.dev_eui]
                report.errors.append(RowError(lines[device.dev_eui], device.dev_eui, error.detail))
            else:
                report.imported += 1
        if on_progress is not None:
            on_progress(report.imported + len(report.errors), report.rows)
    report.errors.sort(key=lambda error: error.line)
    return report


def _batches(items: list[RegisteredDevice], size: int) -> Iterable[list[RegisteredDevice]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
