"""Counters of one ingesting process (``GET /ingest/stats``, ``cityos ingest stats``).

They count since the process started; what outlives a restart (dead letters per
reason) is read from storage by the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
    batches: int = 0
    batch_failures: int = 0
    largest_batch: int = 0
    last_commit_ms: int | None = None

    def as_json(self) -> dict[str, Any]:  # Any: JSON document
        """The counters as a JSON object (camelCase keys, like the rest of the API)."""
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
