"""What sensor ingestion keeps besides entities: uplink keys, dead letters, coverage.

Every backend implements :class:`IngestTables` next to its entity tables (see
``ingest_sqlite``, ``ingest_postgres``, ``ingest_memory``), on the same connection, so
these writes join the caller's :meth:`~cityos.storage.base.Storage.transaction`: the
key of an uplink commits with its entity updates (exactly once), and a dead letter
commits before the message that produced it is acknowledged.

- **Uplink keys** (``ingest_uplink_keys``): the dedupe key of every uplink stored
  (ChirpStack ``deduplicationId``, else DevEUI + fCnt + time window). A key claimed in
  a transaction that rolls back is not claimed.
- **Dead letters** (``ingest_dead_letters``): a message that could not be processed,
  with its reason, transport, address, times and raw body (``None`` when it was not
  kept: senders without the shared secret). Letters that carry an uplink's dedupe key
  are unique by it: the same uplink failing again bumps ``attempts``.
- **Gateway hours** (``ingest_gateway_hours``): per gateway and UTC hour, how many
  uplinks it heard and histograms of RSSI (whole dBm) and SNR (half dB); adding rows
  merges them into what is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from cityos.broker.model import StoredEntity

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that could not be processed. ``id`` is 0 until stored."""

    received_ms: int
    transport: str
    network: str
    address: str
    reason: str
    detail: str
    body: bytes | None
    body_size: int
    content_type: str | None = None
    dev_eui: str | None = None
    dedup_key: str | None = None
    truncated: bool = False
    attempts: int = 1
    last_attempt_ms: int = 0
    id: int = 0

    @property
    def replayable(self) -> bool:
        """True when the whole body was kept, so it can be processed again."""
        return self.body is not None and not self.truncated


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to list; every given field must hold. Newest first."""

    reason: str | None = None
    dev_eui: str | None = None
    since_ms: int | None = None
    ids: tuple[int, ...] | None = None
    limit: int = 100


@dataclass(slots=True)
class GatewayHour:
    """Radio statistics of one gateway in one UTC hour (``hour_ms`` is its start).

    ``rssi_counts`` maps whole dBm to how many receptions; ``snr_counts`` maps half
    decibels (SNR x 2, rounded) to how many receptions.
    """

    gateway_id: str
    hour_ms: int
    uplinks: int = 0
    rssi_counts: dict[int, int] = field(default_factory=dict)
    snr_counts: dict[int, int] = field(default_factory=dict)

    def merge(self, other: GatewayHour) -> None:
        """Add ``other``'s counts (same gateway and hour) to this one."""
        self.uplinks += other.uplinks
        add_counts(self.rssi_counts, other.rssi_counts)
        add_counts(self.snr_counts, other.snr_counts)


def add_counts(target: dict[int, int], extra: Mapping[int, int]) -> None:
    """Add histogram ``extra`` into ``target``."""
    for key, count in extra.items():
        target[key] = target.get(key, 0) + count


def counts_from_json(raw: Mapping[str, int]) -> dict[int, int]:
    """A histogram read back from JSON (whose keys are strings)."""
    return {int(key): int(count) for key, count in raw.items()}


DEAD_LETTER_COLUMNS = (
    "received_ms, transport, network, address, reason, detail, body, body_size, "
    "content_type, dev_eui, dedup_key, truncated, attempts, last_attempt_ms, id"
)
"""The columns backends select for :func:`dead_letter_from_row`, in its order."""


def dead_letter_query(which: DeadLetterFilter, placeholder: str) -> tuple[str, list[object]]:
    """The ``SELECT`` of the letters ``which`` picks, newest first, and its parameters, in
    the driver's ``placeholder`` style (``?`` for sqlite3, ``%s`` for psycopg)."""
    where: list[str] = []
    params: list[object] = []
    if which.reason is not None:
        where.append(f"reason = {placeholder}")
        params.append(which.reason)
    if which.dev_eui is not None:
        where.append(f"dev_eui = {placeholder}")
        params.append(which.dev_eui.lower())
    if which.since_ms is not None:
        where.append(f"last_attempt_ms >= {placeholder}")
        params.append(which.since_ms)
    if which.ids is not None:
        ids = list(which.ids)
        where.append(f"id IN ({', '.join([placeholder] * len(ids))})" if ids else "false")
        params.extend(ids)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    params.append(which.limit)
    return (
        f"SELECT {DEAD_LETTER_COLUMNS} FROM ingest_dead_letters {clause} "
        f"ORDER BY id DESC LIMIT {placeholder}",
        params,
    )


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:  # Any: database column values
    """A letter from a row of :data:`DEAD_LETTER_COLUMNS`."""
    body = row[6]
    return DeadLetter(
        received_ms=int(row[0]),
        transport=row[1],
        network=row[2],
        address=row[3],
        reason=row[4],
        detail=row[5],
        body=None if body is None else bytes(body),
        body_size=int(row[7]),
        content_type=row[8],
        dev_eui=row[9],
        dedup_key=row[10],
        truncated=bool(row[11]),
        attempts=int(row[12]),
        last_attempt_ms=int(row[13]),
        id=int(row[14]),
    )


@runtime_checkable
class IngestTables(Protocol):
    """The ingestion tables of a backend; see the module docstring.

    Methods join the caller's transaction when there is one; otherwise each commits
    on its own.
    """

    def write_many(
        self, tenant: str, changes: list[tuple[StoredEntity | None, StoredEntity]]
    ) -> None:
        """Write entities whose previous documents the caller read in this transaction:
        (``None``, new) inserts, (old, new) replaces ``old`` by ``new``. The same entity may
        appear several times, each pair starting where the previous one ended; each pair
        records the history rows of its own difference, as ``insert``/``update`` would."""
        ...

    def known_uplink_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` are already stored."""
        ...

    def claim_uplink_keys(self, keys: list[str], now_ms: int) -> set[str]:
        """Store the keys not stored yet, dated ``now_ms``; return those (the uplinks to
        write). Duplicates within ``keys`` are claimed once."""
        ...

    def expire_uplink_keys(self, before_ms: int) -> int:
        """Forget keys stored before ``before_ms``; return how many."""
        ...

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Store letters (with their ``attempts``); one whose ``dedup_key`` is stored
        already updates that letter (reason, detail, body, last attempt) and adds one to
        its ``attempts``."""
        ...

    def list_dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        """Stored letters matching ``which``, newest (highest id) first."""
        ...

    def expire_dead_letters(self, before_ms: int) -> int:
        """Delete letters whose last attempt was before ``before_ms``; return how many."""
        ...

    def remove_dead_letters(self, ids: list[int]) -> int:
        """Delete letters by id; return how many existed."""
        ...

    def dead_letter_counts(self) -> dict[str, int]:
        """How many letters are stored, per reason."""
        ...

    def add_gateway_hours(self, hours: list[GatewayHour]) -> None:
        """Merge statistics into the stored ones (adding counts)."""
        ...

    def gateway_hours(self, since_ms: int | None = None) -> list[GatewayHour]:
        """Stored statistics of hours starting at or after ``since_ms`` (all when
        ``None``), ordered by gateway and hour."""
        ...

    def changed_elsewhere(self) -> bool:
        """True when another connection may have committed since the last call (then
        in-process caches of documents must be dropped). Call inside a transaction, so
        that no commit can slip in between the check and the writes."""
        ...

    def claim_duty(self, name: str) -> bool:
        """True when this process holds (or now takes) the duty ``name``: one process
        among those sharing the database runs it (device health). Held until close."""
        ...
