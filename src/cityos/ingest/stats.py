"""Counters of one ingesting process (``GET /ingest/stats``, ``cityos ingest stats``).

They count since the process started; what outlives a restart (dead letters per
reason) is read from storage by the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_LAG_MS = 3_600_000


@dataclass
class IngestStats:
    """Messages and events seen, and what became of them."""

    received: Counter[str] = field(default_factory=Counter)
    """Messages per transport (``mqtt``, ``http``, ``replay``)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Messages per reject reason (each one kept as a dead letter)."""
    uplinks_stored: int = 0
    uplinks_duplicate: int = 0
    status_events: int = 0
    other_events: Counter[str] = field(default_factory=Counter)
    lag_ms: Counter[int] = field(default_factory=Counter)
    """Stored uplinks by lag: commit time minus the uplink's network time, whole ms
    (capped at one hour). On one clock with the network server, it is the end-to-end
    latency; otherwise it includes the clock difference."""
    batches: int = 0
    batch_failures: int = 0
    largest_batch: int = 0
    last_commit_ms: int | None = None

    def note_lags(self, commit_ms: int, observed_ms: list[int]) -> None:
        """Count the lag of uplinks committed at ``commit_ms``."""
        lags = self.lag_ms
        for time_ms in observed_ms:
            lags[min(max(commit_ms - time_ms, 0), MAX_LAG_MS)] += 1

    def lag_percentiles(self) -> dict[str, int | None]:
        """p50, p90, p99 and max of :attr:`lag_ms` (``None`` before the first uplink)."""
        total = sum(self.lag_ms.values())
        result: dict[str, int | None] = dict.fromkeys(("p50", "p90", "p99", "max"))
        if not total:
            return result
        wanted = {
            name: math.ceil(total * q) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        seen = 0
        for lag, count in sorted(self.lag_ms.items()):
            seen += count
            for name, rank in wanted.items():
                if result[name] is None and seen >= rank:
                    result[name] = lag
        result["max"] = max(self.lag_ms)
        return result

    def as_json(self, *, histogram: bool = False) -> dict[str, Any]:  # Any: JSON document
        """The counters as a JSON object (camelCase keys, like the rest of the API);
        ``histogram`` adds the whole lag histogram (``lagHistogramMs``)."""
        body = self._counters()
        body["lagMs"] = self.lag_percentiles()
        if histogram:
            body["lagHistogramMs"] = {str(lag): n for lag, n in sorted(self.lag_ms.items())}
        return body

    def _counters(self) -> dict[str, Any]:  # Any: JSON document
        return {
            "received": dict(self.received),
            "rejected": dict(self.rejected),
            "uplinksStored": self.uplinks_stored,
            "uplinksDuplicate": self.uplinks_duplicate,
            "statusEvents": self.status_events,
            "otherEvents": dict(self.other_events),
            "batches": self.batches,
            "batchFailures": self.batch_failures,
            "largestBatch": self.largest_batch,
            "lastCommitMs": self.last_commit_ms,
        }
