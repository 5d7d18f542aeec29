"""The ingestion pipeline: raw messages to entity updates, a batch per transaction.

For a batch of :class:`~cityos.ingest.model.RawMessage` (whatever arrived together over
MQTT and HTTP)::

    parse (network adapter) -> drop uplinks already stored (dedupe keys)
      -> registry lookup -> decode (codec) -> measurements (profile)
      -> ONE transaction: claim dedupe keys, write entities (ObservationWriter through
         the broker's ObservedStorage: subscriptions, /events and history see them),
         dead letters, gateway statistics
      -> the caller acknowledges each message (PUBACK, HTTP 2xx) after that commit.

A message that cannot be processed becomes a dead letter with its reason, in the same
transaction; nothing is dropped, nothing raises out of :meth:`Pipeline.process` but a
storage failure (then nothing of the batch was committed and nothing may be
acknowledged). When the batch write itself fails on one message's data, the batch is
written again message by message so that only that message becomes a dead letter.

Each uplink updates its device's ``Device`` entity (``urn:ngsi-ld:Device:{deveui}``):
``rssi``/``snr`` of the best gateway, ``dateLastValueReported``, ``deviceState``
("ok"); the profile's measurements update their target entities and the Device's own
decoded fields (``batteryLevel``, a GPS tracker's ``location``), all with
``observedAt`` = the uplink time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cityos.broker.bulk_write import ObservationWriter
from cityos.core.errors import CityosError
from cityos.core.timeutil import datetime_ms, now_iso
from cityos.ingest.coverage import CoverageTally
from cityos.ingest.deadletters import dead_letter
from cityos.ingest.model import (
    DecodedUplink,
    EntityWrite,
    GatewayReception,
    IngestError,
    NetworkEvent,
    OtherEvent,
    RawMessage,
    StatusReport,
    Uplink,
    device_entity_id,
)
from cityos.ingest.stats import IngestStats
from cityos.storage.base import Storage
from cityos.storage.ingest_tables import DeadLetter, IngestTables

log = logging.getLogger(__name__)

DEVICE_TYPE = "Device"


class DeviceProfile(Protocol):
    """What the pipeline needs of a device profile (the registry's, see ingest-decode)."""

    def decode(self, uplink: Uplink) -> DecodedUplink: ...

    def measurements(
        self, device: Any, uplink: Uplink, decoded: DecodedUplink
    ) -> list[EntityWrite]: ...  # Any: the registry's device record


class RegisteredDevice(Protocol):
    """A device of the registry, as the pipeline uses it."""

    @property
    def profile(self) -> DeviceProfile: ...


class DeviceRegistry(Protocol):
    """The device registry, as the pipeline uses it."""

    def lookup(self, dev_eui: str) -> RegisteredDevice | None: ...

    def note_gateways(self, receptions: Sequence[GatewayReception], time: str) -> None: ...


ParseEvent = Callable[[RawMessage], list[NetworkEvent]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: ``stored`` (at least one uplink or event written),
    ``duplicate`` (every uplink in it was stored before), ``ignored`` (events that carry
    nothing to store), or ``rejected`` (kept as a dead letter with ``reason``)."""

    status: str
    reason: str | None = None
    detail: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the message needs no action from its sender."""
        return self.status != "rejected"


STORED = Outcome("stored")
DUPLICATE = Outcome("duplicate")
IGNORED = Outcome("ignored")


@dataclass(slots=True)
class _Work:
    """One message on its way through a batch."""

    raw: RawMessage
    replaying: DeadLetter | None = None
    error: IngestError | None = None
    uplink_for_error: Uplink | None = None
    dev_eui_for_error: str | None = None
    body_size: int | None = None
    uplinks: list[Uplink] = field(default_factory=list)
    statuses: list[StatusReport] = field(default_factory=list)
    others: int = 0
    writes: list[list[EntityWrite]] = field(default_factory=list)
    stored_uplinks: list[Uplink] = field(default_factory=list)
    duplicates: int = 0
    raced: int = 0
    """Uplinks another worker stored between the dedupe read and this commit."""

    def reject(self, error: IngestError, *, uplink: Uplink | None = None) -> None:
        if self.error is None:
            self.error, self.uplink_for_error = error, uplink


@dataclass(frozen=True)
class PipelineLimits:
    """``max_body_bytes``: larger messages are refused (``oversize``)."""

    max_body_bytes: int = 65_536


class Pipeline:
    """Turns batches of raw messages into committed entity updates (see the module doc)."""

    def __init__(
        self,
        *,
        storage: Storage,
        tables: IngestTables,
        writer: ObservationWriter,
        registry: DeviceRegistry,
        parse: ParseEvent,
        stats: IngestStats | None = None,
        limits: PipelineLimits | None = None,
        clock_ms: Callable[[], int] | None = None,
        after_commit: Callable[[set[str], str], None] | None = None,
    ) -> None:
        """``after_commit(dev_euis, observed_at)`` is told, after each commit, which
        devices had uplinks stored and the latest uplink time among them."""
        self.storage = storage
        self._after_commit = after_commit
        self.tables = tables
        self.writer = writer
        self.registry = registry
        self.parse = parse
        self.stats = stats or IngestStats()
        self.limits = limits or PipelineLimits()
        self._clock_ms = clock_ms or (lambda: datetime_ms(now_iso()))

    # -- entry points -------------------------------------------------------------------

    def process(
        self,
        messages: Sequence[RawMessage],
        *,
        refused: Sequence[IngestError | None] | None = None,
        announced_sizes: Sequence[int | None] | None = None,
    ) -> list[Outcome]:
        """Process a batch in one transaction; one outcome per message, in order.

        ``refused[i]``, when given, is a reason the transport already refused message
        ``i`` for (``unauthorized``, ``oversize``): it is only kept as a dead letter.
        ``announced_sizes[i]`` is the body size the sender announced, when the transport
        did not read all of it. Raises only when storage fails (nothing committed).
        """
        work = [_Work(raw) for raw in messages]
        for index, item in enumerate(work):
            if refused is not None and refused[index] is not None:
                item.error = refused[index]
            if announced_sizes is not None:
                item.body_size = announced_sizes[index]
            self.stats.received[item.raw.transport] += 1
        return self._run(work)

    def replay(
        self, letters: Sequence[DeadLetter], messages: Sequence[RawMessage]
    ) -> list[Outcome]:
        """Run dead letters again: a success (or a duplicate) removes the letter, a failure
        replaces it with the new reason and one more attempt."""
        work = [_Work(raw, replaying=letter) for letter, raw in zip(letters, messages, strict=True)]
        self.stats.received["replay"] += len(work)
        return self._run(work)

    # -- the batch ------------------------------------------------------------------------

    def _run(self, work: list[_Work]) -> list[Outcome]:
        for item in work:
            if item.error is None:
                self._parse(item)
        self._drop_known_uplinks(work)
        for item in work:
            if item.error is None:
                self._decode(item)
        try:
            self._commit(work)
        except (CityosError, IngestError, ValueError, TypeError, KeyError) as error:
            # One message's data broke the batch write: write one message at a time, so
            # that only the culprit becomes a dead letter.
            log.warning("Batch write failed (%s); writing its messages one by one", error)
            self.stats.batch_failures += 1
            for item in work:
                self._commit_alone(item)
        commit_ms = self._clock_ms()
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(work))
        self.stats.last_commit_ms = commit_ms
        self.stats.note_lags(
            commit_ms,
            [datetime_ms(u.observed_at) for item in work for u in item.stored_uplinks],
        )
        return [self._outcome(item) for item in work]

    def _parse(self, item: _Work) -> None:
        raw = item.raw
        size = max(len(raw.body), item.body_size or 0)
        if size > self.limits.max_body_bytes:
            item.error = IngestError(
                "oversize", f"The body has {size} bytes; the limit is {self.limits.max_body_bytes}"
            )
            return
        try:
            events = self.parse(raw)
        except IngestError as error:
            item.error = error
            return
        except Exception as error:  # an adapter must never take the worker down
            log.exception("Network adapter failed on a message from %s", raw.address)
            item.error = IngestError("invalid-message", f"The adapter failed: {error!r}")
            return
        for event in events:
            if isinstance(event, Uplink):
                item.uplinks.append(event)
            elif isinstance(event, StatusReport):
                item.statuses.append(event)
            elif isinstance(event, OtherEvent):
                item.others += 1
                self.stats.other_events[event.kind] += 1

    def _drop_known_uplinks(self, work: list[_Work]) -> None:
        """Leave out uplinks stored before (read only: the claim in the transaction is
        what counts) and the second copy of an uplink within the batch. Skipping them
        before decoding saves the codec run of every redelivery."""
        keys = [u.dedup_key for item in work if item.error is None for u in item.uplinks]
        if not keys:
            return
        known = self.tables.known_uplink_keys(keys)
        seen: set[str] = set()
        for item in work:
            if item.error is not None:
                continue
            fresh: list[Uplink] = []
            for uplink in item.uplinks:
                if uplink.dedup_key in known or uplink.dedup_key in seen:
                    item.duplicates += 1
                else:
                    seen.add(uplink.dedup_key)
                    fresh.append(uplink)
            item.uplinks = fresh

    def _decode(self, item: _Work) -> None:
        for uplink in item.uplinks:
            device = self.registry.lookup(uplink.dev_eui)
            if device is None:
                item.reject(
                    IngestError("unknown-device", f"No device {uplink.dev_eui} in the registry"),
                    uplink=uplink,
                )
                return
            try:
                decoded = device.profile.decode(uplink)
                writes = device.profile.measurements(device, uplink, decoded)
            except IngestError as error:
                item.reject(error, uplink=uplink)
                return
            except Exception as error:  # a codec or profile bug must not stop the worker
                log.exception("Decoding an uplink of %s failed", uplink.dev_eui)
                item.reject(
                    IngestError("codec-error", f"Decoding failed: {error!r}"), uplink=uplink
                )
                return
            item.writes.append(merge_writes([device_update(device, uplink, decoded), *writes]))
        for status in item.statuses:
            if self.registry.lookup(status.dev_eui) is None:
                item.dev_eui_for_error = status.dev_eui
                item.reject(
                    IngestError("unknown-device", f"No device {status.dev_eui} in the registry")
                )
                return

    def _commit(self, work: list[_Work]) -> None:
        """The batch's one transaction (see the module docstring)."""
        now = now_iso()
        now_ms = self._clock_ms()
        letters: list[DeadLetter] = []
        replayed: list[int] = []
        tally = CoverageTally()
        with self.storage.transaction():
            keys = [u.dedup_key for item in work if item.error is None for u in item.uplinks]
            claimed = self.tables.claim_uplink_keys(keys, now_ms) if keys else set()
            updates: list[EntityWrite] = []
            for item in work:
                item.stored_uplinks, item.raced = [], 0
                if item.error is None:
                    for uplink, writes in zip(item.uplinks, item.writes, strict=True):
                        if uplink.dedup_key not in claimed:
                            item.raced += 1
                            continue
                        item.stored_uplinks.append(uplink)
                        updates.extend(writes)
                        tally.add(uplink.receptions, datetime_ms(uplink.observed_at))
                    updates.extend(status_update(status) for status in item.statuses)
                if item.replaying is not None:
                    replayed.append(item.replaying.id)
                if item.error is not None:
                    letters.append(self._letter(item, now_ms))
            if updates:
                self.writer.write(updates, now)
            if replayed:
                self.tables.remove_dead_letters(replayed)
            if letters:
                self.tables.add_dead_letters(letters)
            hours = tally.hours()
            if hours:
                self.tables.add_gateway_hours(hours)
        self._note_gateways(work)

    def _commit_alone(self, item: _Work) -> None:
        """Commit one message of a failed batch; if its data fails the write too, it
        becomes a ``mapping-error`` dead letter."""
        try:
            self._commit([item])
        except (CityosError, IngestError, ValueError, TypeError, KeyError) as error:
            item.stored_uplinks = []
            item.error = IngestError("mapping-error", f"The entity write failed: {error}")
            self._commit([item])

    def _letter(self, item: _Work, now_ms: int) -> DeadLetter:
        assert item.error is not None
        previous = item.replaying
        return dead_letter(
            item.raw,
            item.error,
            now_ms=now_ms,
            max_body_bytes=self.limits.max_body_bytes,
            uplink=item.uplink_for_error,
            dev_eui=item.dev_eui_for_error,
            attempts=1 if previous is None else previous.attempts + 1,
            body_size=item.body_size,
        )

    def _note_gateways(self, work: list[_Work]) -> None:
        devices: set[str] = set()
        latest = ""
        for item in work:
            for uplink in item.stored_uplinks:
                devices.add(uplink.dev_eui)
                latest = max(latest, uplink.observed_at)
                if uplink.receptions:
                    try:
                        self.registry.note_gateways(uplink.receptions, uplink.observed_at)
                    except Exception:
                        log.exception("Recording the gateways of an uplink failed")
        if self._after_commit is not None:
            try:
                self._after_commit(devices, latest)
            except Exception:
                log.exception("After-commit work of a batch failed")

    def _outcome(self, item: _Work) -> Outcome:
        stats = self.stats
        if item.error is not None:
            stats.rejected[item.error.reason] += 1
            return Outcome("rejected", item.error.reason, item.error.detail)
        stats.uplinks_stored += len(item.stored_uplinks)
        stats.uplinks_duplicate += item.duplicates + item.raced
        stats.status_events += len(item.statuses)
        if item.stored_uplinks or item.statuses:
            return STORED
        if item.duplicates or item.raced:
            return DUPLICATE
        return IGNORED


# -- the Device entity ---------------------------------------------------------------------

_RSSI_UNIT = "DBM"  # UN/CEFACT Rec 20: decibel-milliwatts
_SNR_UNIT = "2N"  # UN/CEFACT Rec 20: decibel


def best_reception(receptions: Sequence[GatewayReception]) -> GatewayReception | None:
    """The gateway that heard the uplink best (highest RSSI, then SNR)."""
    heard = [r for r in receptions if r.rssi_dbm is not None or r.snr_db is not None]
    if not heard:
        return None
    return max(
        heard,
        key=lambda r: (
            r.rssi_dbm if r.rssi_dbm is not None else -1e9,
            r.snr_db if r.snr_db is not None else -1e9,
        ),
    )


def device_update(device: Any, uplink: Uplink, decoded: DecodedUplink) -> EntityWrite:
    """The ``Device`` entity's attributes an uplink sets (see the module docstring).

    ``device`` is the registry's record (Any: not read today; the registry writes the
    Device's name and fixed position, the profile its decoded battery and position).
    """
    at = uplink.observed_at
    attrs: dict[str, dict[str, Any]] = {
        "dateLastValueReported": {"type": "Property", "value": at, "observedAt": at},
        "deviceState": {"type": "Property", "value": "ok"},
    }
    best = best_reception(uplink.receptions)
    if best is not None and best.rssi_dbm is not None:
        attrs["rssi"] = {
            "type": "Property",
            "value": best.rssi_dbm,
            "unitCode": _RSSI_UNIT,
            "observedAt": at,
        }
    if best is not None and best.snr_db is not None:
        attrs["snr"] = {
            "type": "Property",
            "value": best.snr_db,
            "unitCode": _SNR_UNIT,
            "observedAt": at,
        }
    return EntityWrite(device_entity_id(uplink.dev_eui), DEVICE_TYPE, attrs)


def merge_writes(writes: list[EntityWrite]) -> list[EntityWrite]:
    """One write per entity (in first-seen order): the writes of ONE uplink to the same
    entity (radio fields and decoded battery on the Device) are one update, one
    history step. Later attributes win."""
    merged: dict[str, EntityWrite] = {}
    for write in writes:
        first = merged.get(write.entity_id)
        if first is None:
            merged[write.entity_id] = write
        else:
            attributes = {**first.attributes, **write.attributes}
            merged[write.entity_id] = EntityWrite(first.entity_id, first.entity_type, attributes)
    return list(merged.values())


def status_update(status: StatusReport) -> EntityWrite:
    """The ``Device`` attributes a status event sets: ``batteryLevel`` (-1 when the
    network server could not tell, as the Smart Data Model says) and ``deviceState``."""
    level = status.battery_level
    value = -1.0 if level is None and not status.external_power else level
    attrs: dict[str, dict[str, Any]] = {}
    if value is not None:
        attrs["batteryLevel"] = {
            "type": "Property",
            "value": value,
            "observedAt": status.observed_at,
        }
    attrs["deviceState"] = {"type": "Property", "value": "ok"}
    return EntityWrite(device_entity_id(status.dev_eui), DEVICE_TYPE, attrs)
