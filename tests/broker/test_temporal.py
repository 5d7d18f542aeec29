"""Temporal query semantics: durations, parameter checks and aggregation arithmetic."""

from __future__ import annotations

import statistics

import pytest

from cityos.broker.temporal import (
    aggregate,
    parse_aggregation,
    parse_duration_ms,
    parse_temporal_query,
)
from cityos.core.errors import BadRequestData

SAMPLES = [3.5, 1.0, 7.25, 7.25, -2.0, 10.0]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("PT1H", 3_600_000),
        ("P1D", 86_400_000),
        ("PT0.5S", 500),
        ("P1W", 604_800_000),
        ("P1Y", 365 * 86_400_000),
        ("P1DT1M", 86_460_000),
    ],
)
def test_iso_8601_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["P", "PT", "1H", "PT1X", "P1DT", "hour"])
def test_bad_durations_are_bad_request_data(text: str) -> None:
    with pytest.raises(BadRequestData):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("totalCount", len(SAMPLES)),
        ("distinctCount", len(set(SAMPLES))),
        ("sum", sum(SAMPLES)),
        ("avg", statistics.fmean(SAMPLES)),
        ("min", min(SAMPLES)),
        ("max", max(SAMPLES)),
        ("stddev", statistics.stdev(SAMPLES)),
        ("sumsq", sum(v * v for v in SAMPLES)),
    ],
)
def test_aggregation_matches_python_statistics(method: str, expected: float) -> None:
    assert aggregate(method, SAMPLES) == pytest.approx(expected)


def test_counts_include_non_numbers_and_numeric_methods_skip_them() -> None:
    assert aggregate("totalCount", [1, "a", None]) == 3
    assert aggregate("avg", ["a", "b"]) is None
    assert aggregate("max", ["a", "b"]) == "b"


@pytest.mark.parametrize(
    ("timerel", "time_at", "end_time_at", "last_n"),
    [
        ("after", None, None, None),
        ("between", "2020-01-01T00:00:00Z", None, None),
        ("during", "2020-01-01T00:00:00Z", None, None),
        (None, "2020-01-01T00:00:00Z", None, None),
        ("before", "yesterday", None, None),
        ("between", "2020-01-02T00:00:00Z", "2020-01-01T00:00:00Z", None),
        (None, None, None, "0"),
        (None, None, None, "x"),
    ],
)
def test_bad_temporal_parameters(
    timerel: str | None, time_at: str | None, end_time_at: str | None, last_n: str | None
) -> None:
    with pytest.raises(BadRequestData):
        parse_temporal_query(timerel, time_at, end_time_at, None, last_n)


def test_unknown_aggregation_method_is_bad_request_data() -> None:
    with pytest.raises(BadRequestData):
        parse_aggregation("avg,median", "PT1H")
