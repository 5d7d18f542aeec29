"""The ingestion tables (:mod:`cityos.storage.ingest_tables`) in memory: a mixin of
:class:`cityos.storage.memory.MemoryStorage`, whose transactions snapshot
:attr:`MemoryIngestTables._ingest` with the entities (a rollback restores both)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cityos.storage.ingest_tables import DeadLetter, DeadLetterFilter, GatewayHour


@dataclass
class IngestState:
    """Everything the memory backend keeps for ingestion (copied by transactions)."""

    keys: dict[str, int] = field(default_factory=dict)
    letters: dict[int, DeadLetter] = field(default_factory=dict)
    next_letter_id: int = 1
    hours: dict[tuple[str, int], GatewayHour] = field(default_factory=dict)


class MemoryIngestTables:
    """Ingestion tables in dicts (see :class:`IngestState`)."""

    _ingest: IngestState

    def known_uplink_keys(self, keys: list[str]) -> set[str]:
        return {key for key in keys if key in self._ingest.keys}

    def claim_uplink_keys(self, keys: list[str], now_ms: int) -> set[str]:
        fresh = set(keys) - self._ingest.keys.keys()
        for key in fresh:
            self._ingest.keys[key] = now_ms
        return fresh

    def expire_uplink_keys(self, before_ms: int) -> int:
        old = [key for key, stored_ms in self._ingest.keys.items() if stored_ms < before_ms]
        for key in old:
            del self._ingest.keys[key]
        return len(old)

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        state = self._ingest
        for letter in letters:
            last = letter.last_attempt_ms or letter.received_ms
            existing = next(
                (
                    stored
                    for stored in state.letters.values()
                    if letter.dedup_key is not None and stored.dedup_key == letter.dedup_key
                ),
                None,
            )
            if existing is not None:
                state.letters[existing.id] = dataclasses.replace(
                    existing,
                    reason=letter.reason,
                    detail=letter.detail,
                    body=letter.body,
                    body_size=letter.body_size,
                    truncated=letter.truncated,
                    attempts=existing.attempts + 1,
                    last_attempt_ms=last,
                )
                continue
            stored = dataclasses.replace(
                letter,
                id=state.next_letter_id,
                last_attempt_ms=last,
            )
            state.letters[stored.id] = stored
            state.next_letter_id += 1

    def list_dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        found = [
            letter
            for letter in self._ingest.letters.values()
            if (which.reason is None or letter.reason == which.reason)
            and (which.dev_eui is None or letter.dev_eui == which.dev_eui.lower())
            and (which.since_ms is None or letter.last_attempt_ms >= which.since_ms)
            and (which.ids is None or letter.id in which.ids)
        ]
        found.sort(key=lambda letter: letter.id, reverse=True)
        return found[: which.limit]

    def expire_dead_letters(self, before_ms: int) -> int:
        old = [i for i, x in self._ingest.letters.items() if x.last_attempt_ms < before_ms]
        return self.remove_dead_letters(old)

    def remove_dead_letters(self, ids: list[int]) -> int:
        return sum(self._ingest.letters.pop(i, None) is not None for i in set(ids))

    def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self._ingest.letters.values():
            counts[letter.reason] = counts.get(letter.reason, 0) + 1
        return counts

    def add_gateway_hours(self, hours: list[GatewayHour]) -> None:
        for hour in hours:
            key = (hour.gateway_id, hour.hour_ms)
            stored = self._ingest.hours.setdefault(key, GatewayHour(*key))
            stored.merge(hour)

    def gateway_hours(self, since_ms: int | None = None) -> list[GatewayHour]:
        return [
            dataclasses.replace(
                hour, rssi_counts=dict(hour.rssi_counts), snr_counts=dict(hour.snr_counts)
            )
            for key, hour in sorted(self._ingest.hours.items())
            if since_ms is None or hour.hour_ms >= since_ms
        ]

    def changed_elsewhere(self) -> bool:
        return False  # only this process sees the dicts

    def claim_duty(self, name: str) -> bool:
        return True
