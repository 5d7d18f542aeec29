"""Time handling: every timestamp the platform writes is UTC ISO 8601 with milliseconds and 'Z'."""

from __future__ import annotations

import re
import time as time_module
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from cityos.core.errors import BadRequestData

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def format_datetime(moment: datetime) -> str:
    """Format as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_formatted_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current UTC time formatted like :func:`format_datetime`.

    Every write stamps ``modifiedAt``, so the date-and-seconds prefix is formatted once
    per second and reused; only the milliseconds are formatted per call.
    """
    global _formatted_second
    now = time_module.time()
    second = int(now)
    if second != _formatted_second[0]:
        _formatted_second = (
            second,
            time_module.strftime("%Y-%m-%dT%H:%M:%S.", time_module.gmtime(second)),
        )
    return f"{_formatted_second[1]}{int((now - second) * 1000):03d}Z"


def parse_datetime(text: str, *, field: str = "DateTime") -> datetime:
    """Parse an ISO 8601 date-time with a time zone; raise ``BadRequestData`` otherwise.

    A missing zone is an error: the platform never guesses local time.
    """
    if not isinstance(text, str) or not _DATETIME_RE.match(text):
        raise BadRequestData(f"{field} must be an ISO 8601 date-time with a time zone: {text!r}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequestData(f"{field} is not a valid date-time: {text!r} ({exc})") from None


@lru_cache(maxsize=16_384)
def datetime_ms(text: str) -> int:
    """Unix milliseconds of an ISO 8601 date-time (a missing zone is read as UTC).

    For timestamps already validated on the way in; raises ``BadRequestData`` otherwise.
    Remembers recent answers: sensor ingestion asks for the same ``observedAt`` of an
    uplink once per history row, coverage hour and latency count.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestData(f"Not an ISO 8601 date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def format_ms(time_ms: int) -> str:
    """Format Unix milliseconds like :func:`format_datetime` (without a datetime object:
    temporal aggregation formats thousands of period bounds per response)."""
    seconds, millis = divmod(time_ms, 1000)
    return (
        time_module.strftime("%Y-%m-%dT%H:%M:%S", time_module.gmtime(seconds)) + f".{millis:03d}Z"
    )


def is_datetime(text: str) -> bool:
    """True when ``text`` is an ISO 8601 date-time with a zone (the ``DateTime`` type)."""
    if not _DATETIME_RE.match(text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def is_date(text: str) -> bool:
    """True when ``text`` is an ISO 8601 calendar date ``YYYY-MM-DD``."""
    if len(text) != 10:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def is_time(text: str) -> bool:
    """True when ``text`` is an ISO 8601 time of day ``HH:MM:SS[.fff][Z]``."""
    if not re.match(r"^\d{2}:\d{2}:\d{2}(\.\d+)?Z?$", text):
        return False
    try:
        time.fromisoformat(text.rstrip("Z"))
    except ValueError:
        return False
    return True
