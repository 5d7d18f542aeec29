"""Radio coverage per gateway: what each uplink's receptions add, and percentiles.

Every stored uplink adds, for each gateway that heard it, one to the gateway's count
of the UTC hour of the uplink and its RSSI (whole dBm) and SNR (half dB) to that
hour's histograms (:class:`~cityos.storage.ingest_tables.GatewayHour`). Histograms keep
the table small (one row per gateway and hour, whatever the traffic) and still give
percentiles to within half a decibel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cityos.ingest.model import GatewayReception
from cityos.storage.ingest_tables import HOUR_MS, GatewayHour, add_counts


class CoverageTally:
    """Receptions of one batch, folded into gateway hours before they are stored."""

    def __init__(self) -> None:
        self._hours: dict[tuple[str, int], GatewayHour] = {}

    def add(self, receptions: Iterable[GatewayReception], time_ms: int) -> None:
        """Count one uplink heard by ``receptions`` at ``time_ms``."""
        hour_ms = time_ms - time_ms % HOUR_MS
        for reception in receptions:
            key = (reception.gateway_id, hour_ms)
            hour = self._hours.get(key)
            if hour is None:
                hour = self._hours[key] = GatewayHour(reception.gateway_id, hour_ms)
            hour.uplinks += 1
            if reception.rssi_dbm is not None:
                rssi = round(reception.rssi_dbm)
                hour.rssi_counts[rssi] = hour.rssi_counts.get(rssi, 0) + 1
            if reception.snr_db is not None:
                snr = round(reception.snr_db * 2)
                hour.snr_counts[snr] = hour.snr_counts.get(snr, 0) + 1

    def hours(self) -> list[GatewayHour]:
        """The tallied gateway hours."""
        return list(self._hours.values())


@dataclass(frozen=True)
class Distribution:
    """Percentiles of a histogram (``None`` without values)."""

    count: int
    minimum: float | None
    p10: float | None
    p50: float | None
    p90: float | None
    maximum: float | None

    def as_json(self) -> dict[str, float | int | None]:
        """As a JSON object."""
        return {
            "count": self.count,
            "min": self.minimum,
            "p10": self.p10,
            "p50": self.p50,
            "p90": self.p90,
            "max": self.maximum,
        }


@dataclass(frozen=True)
class GatewayCoverage:
    """One gateway over a period: uplinks heard, first and last hour, RSSI and SNR."""

    gateway_id: str
    uplinks: int
    first_hour_ms: int
    last_hour_ms: int
    rssi_dbm: Distribution
    snr_db: Distribution


def distribution(counts: dict[int, int], scale: float = 1.0) -> Distribution:
    """Percentiles (nearest rank) of a histogram whose keys are values / ``scale``."""
    total = sum(counts.values())
    if total == 0:
        return Distribution(0, None, None, None, None, None)
    ordered = sorted(counts.items())

    def rank(fraction: float) -> float:
        wanted = max(1, math.ceil(fraction * total))
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= wanted:
                return value / scale
        return ordered[-1][0] / scale

    return Distribution(
        total,
        ordered[0][0] / scale,
        rank(0.1),
        rank(0.5),
        rank(0.9),
        ordered[-1][0] / scale,
    )


def summarize(hours: Iterable[GatewayHour]) -> list[GatewayCoverage]:
    """Per gateway, the hours given added together (ordered by gateway id)."""
    merged: dict[str, GatewayHour] = {}
    spans: dict[str, tuple[int, int]] = {}
    for hour in hours:
        total = merged.setdefault(hour.gateway_id, GatewayHour(hour.gateway_id, hour.hour_ms))
        total.uplinks += hour.uplinks
        add_counts(total.rssi_counts, hour.rssi_counts)
        add_counts(total.snr_counts, hour.snr_counts)
        first, last = spans.get(hour.gateway_id, (hour.hour_ms, hour.hour_ms))
        spans[hour.gateway_id] = (min(first, hour.hour_ms), max(last, hour.hour_ms))
    return [
        GatewayCoverage(
            gateway_id,
            total.uplinks,
            spans[gateway_id][0],
            spans[gateway_id][1],
            distribution(total.rssi_counts),
            distribution(total.snr_counts, scale=2.0),
        )
        for gateway_id, total in sorted(merged.items())
    ]
