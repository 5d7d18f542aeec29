"""Reading the pieces every network format shares: the JSON body, base64 payloads,
DevEUIs, timestamps, the dedupe key and a gateway's radio metadata. All failures raise
:class:`IngestError`."""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cityos.core.timeutil import format_ms
from cityos.ingest.model import GatewayReception, IngestError

DEDUP_WINDOW_MS = 60_000
"""Without a network-assigned id, an uplink is identified by DevEUI, frame counter and
the network server's receive time rounded down to this window. Redeliveries of one
uplink carry the very same receive time (it is part of the message), so they always
share a key; a frame counter reused more than a minute later (after a re-join, the
counter restarts at 0) is a new uplink."""

_DEV_EUI_RE = re.compile(r"^[0-9a-fA-F]{16}$")
# Network servers write nanoseconds (ChirpStack, TTN); Python parses at most microseconds.
_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def load_json_object(body: bytes) -> dict[str, Any]:  # Any: JSON values
    """The body as a JSON object; ``invalid-json`` / ``invalid-message`` otherwise."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise IngestError("invalid-json", f"Body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise IngestError("invalid-message", "Body is JSON but not an object")
    return document


def decode_base64(text: object, field: str) -> bytes:
    """Standard base64 (padding required, as both network servers write it)."""
    if text is None:
        return b""
    if not isinstance(text, str):
        raise IngestError("bad-base64", f"{field} is not a base64 string")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as error:
        raise IngestError("bad-base64", f"{field} is not valid base64: {error}") from None


def normalize_dev_eui(value: object, field: str) -> str:
    """16 hex digits in lower case; ``invalid-message`` otherwise."""
    if not isinstance(value, str) or not _DEV_EUI_RE.match(value):
        raise IngestError("invalid-message", f"{field} is not a 16-digit hex DevEUI: {value!r}")
    return value.lower()


def parse_time_ms(value: object, field: str) -> int:
    """Unix milliseconds of an RFC 3339 time with up to nanoseconds and a zone."""
    return _parse_time(value, field)[1]


def event_time(value: object, field: str, fallback_ms: int) -> tuple[str, int]:
    """(ISO 8601 with milliseconds, Unix ms) of an event; our receive time when absent."""
    if value is None:
        return format_ms(fallback_ms), fallback_ms
    return _parse_time(value, field)


_utc_seconds: dict[str, tuple[int, str]] = {}
"""``YYYY-MM-DDTHH:MM:SS`` of UTC times seen lately: (Unix seconds, the text as
:func:`format_ms` writes it). Uplinks of one second share it; parsing and formatting a
date costs more than the rest of the time's handling."""
_UTC_SECONDS_KEPT = 4096


def _parse_time(value: object, field: str) -> tuple[str, int]:
    """(ISO 8601 with milliseconds as :func:`format_ms` writes it, Unix ms) of an RFC 3339
    time with up to nanoseconds and a zone."""
    match = _TIME_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise IngestError("invalid-message", f"{field} is not an RFC 3339 time: {value!r}")
    seconds, fraction, zone = match.groups()
    if zone == "Z" and (fraction is None or fraction.isascii()):
        known = _utc_seconds.get(seconds)
        if known is None:
            whole_ms = _moment_ms(seconds, "", "+00:00", value, field)
            known = (whole_ms // 1000, format_ms(whole_ms).removesuffix(".000Z"))
            if len(_utc_seconds) >= _UTC_SECONDS_KEPT:
                _utc_seconds.clear()
            _utc_seconds[seconds] = known
        millis = int(fraction[:3].ljust(3, "0")) if fraction else 0
        return f"{known[1]}.{millis:03d}Z", known[0] * 1000 + millis
    time_ms = _moment_ms(seconds, fraction or "", zone, value, field)
    return format_ms(time_ms), time_ms


def _moment_ms(seconds: str, fraction: str, zone: str, value: object, field: str) -> int:
    micros = fraction.ljust(6, "0")[:6]
    try:
        moment = datetime.fromisoformat(f"{seconds}.{micros}{zone}")
    except ValueError:
        raise IngestError("invalid-message", f"{field} is not a valid time: {value!r}") from None
    return (moment - _EPOCH) // _ONE_MS


def window_dedup_key(dev_eui: str, f_cnt: int | None, time_ms: int) -> str:
    """The dedupe key of an uplink without a network-assigned id (see DEDUP_WINDOW_MS)."""
    return f"{dev_eui}:{f_cnt}:{time_ms - time_ms % DEDUP_WINDOW_MS}"


def optional_number(value: object, field: str) -> float | None:
    """A JSON number, or ``None`` when absent; ``invalid-message`` for other types."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IngestError("invalid-message", f"{field} is not a number: {value!r}")
    return float(value)


def optional_int(value: object, field: str, *, default: int | None = None) -> int | None:
    """A JSON integer (or a decimal string: 64-bit values in the protobuf JSON mapping)."""
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise IngestError("invalid-message", f"{field} is not an integer: {value!r}")
    return value


def as_object(value: object, field: str) -> dict[str, Any]:  # Any: JSON values
    """A nested JSON object, ``{}`` when absent; ``invalid-message`` for other types."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IngestError("invalid-message", f"{field} is not an object")
    return value


def as_list(value: object, field: str) -> list[Any]:  # Any: JSON values
    """A nested JSON array, ``[]`` when absent; ``invalid-message`` for other types."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise IngestError("invalid-message", f"{field} is not an array")
    return value


def optional_object(value: object, field: str) -> dict[str, Any] | None:  # Any: JSON values
    """A nested JSON object, ``None`` when absent; ``invalid-message`` for other types."""
    if value is not None and not isinstance(value, dict):
        raise IngestError("invalid-message", f"{field} is not a JSON object")
    return value


def optional_text(value: object) -> str | None:
    """A non-empty string, else ``None``: names are informative only, so a wrong type is
    not worth refusing the message for."""
    return value if isinstance(value, str) and value else None


def gateway_reception(
    gateway_id: str,
    metadata: dict[str, Any],  # Any: JSON values
    field: str,
) -> GatewayReception:
    """One gateway's reception from its radio metadata, which both network servers write
    as ``rssi``, ``snr`` and ``location.{latitude,longitude,altitude}`` with zero values
    omitted. ``field`` is where the metadata sits in the message, for error messages."""
    location = as_object(metadata.get("location"), f"{field}.location")
    return GatewayReception(
        gateway_id=gateway_id,
        rssi_dbm=optional_number(metadata.get("rssi", 0), f"{field}.rssi"),
        snr_db=optional_number(metadata.get("snr", 0), f"{field}.snr"),
        # An absent location is unknown; inside a present one, absent means 0 (default).
        latitude=optional_number(location.get("latitude", 0), "latitude") if location else None,
        longitude=optional_number(location.get("longitude", 0), "longitude") if location else None,
        altitude_m=optional_number(location.get("altitude", 0), "altitude") if location else None,
    )
