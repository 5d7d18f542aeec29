"""The platform's timestamps: UTC, milliseconds, 'Z'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cityos.core.timeutil import is_datetime, now_iso, parse_datetime


def test_now_iso_is_utc_with_milliseconds_and_close_to_the_clock() -> None:
    before = datetime.now(UTC)
    stamp = now_iso()
    after = datetime.now(UTC)
    assert is_datetime(stamp)
    assert len(stamp) == len("2026-11-24T10:00:00.000Z")
    moment = parse_datetime(stamp)
    assert before - timedelta(milliseconds=1) <= moment <= after


def test_now_iso_never_goes_backwards_across_calls() -> None:
    stamps = [now_iso() for _ in range(2000)]
    assert stamps == sorted(stamps)
