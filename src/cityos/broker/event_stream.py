"""The live event stream behind ``GET /events``: one hub, a replay buffer, bounded streams.

Flow: :meth:`EventHub.on_changes` is an ``ObservedStorage`` listener. For each
committed change it numbers an :class:`EntityEvent`, appends it to the replay buffer
and hands it to every open :class:`EventStream` whose :class:`StreamFilter` matches.
It never renders or serialises anything: each stream's own task does that, at its
own pace, so a thousand browsers cost the write path one comparison each.

Event ids. In one process (SQLite, or no cross-process relay) ids are
``<boot>-<seq>``: ``seq`` increases by one per change in this process and ``boot``
names the process (its start time in hex milliseconds). The buffer is in memory, so a
persisted sequence would buy nothing: after a restart the events it numbered are gone
either way. The boot part lets a restarted process (or another worker behind a load
balancer) recognise an id it cannot replay from and answer with a reset instead of
silently skipping events.

With several processes on PostgreSQL, ``cityos.broker.event_relay`` feeds the hub
instead (:meth:`EventHub.publish_relayed`): every process receives every change, its
own included, in the one order PostgreSQL delivers them, and the ids
(``<sender>.<n>``) are the same in every process. An id handed out by one process
therefore replays exactly in any other that still buffers it. ``ready`` carries the id
of the newest buffered event (or, when there is none yet, a ``<boot>-<seq>`` position
that only this process understands).

Replay (``Last-Event-ID``) is exact while the buffer still holds every event after
the given id; once one of them was evicted (too many events or too old), or the
process may have missed events since (:meth:`EventHub.discontinuity`: the relay lost
its database connection for a while), the stream starts with a reset: the client must
re-read the current state. Open streams get the same ``reset`` at a discontinuity.

Slow consumers: each stream has a bounded queue. When it is full the stream is
dropped from the hub at once (the broker does no more work for it) and told to
reconnect; reconnecting with its last id replays what it missed from the buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import orjson

from cityos.broker.changes import EntityChange
from cityos.broker.model import StoredEntity, instance_value
from cityos.broker.service import EntitySelector
from cityos.broker.subscriptions import summarise_change
from cityos.core.errors import ServiceUnavailable
from cityos.core.geo import BBox, bbox, bboxes_intersect
from cityos.core.timeutil import now_iso

ChangeKind = Literal["entityCreated", "entityUpdated", "entityDeleted"]
EventName = Literal["entityCreated", "entityUpdated", "entityDeleted", "entityLeft"]


class TooManyStreams(ServiceUnavailable):
    """The cap on concurrent event streams is reached; the client may retry later."""


@dataclass(frozen=True)
class RelayedChange:
    """A change committed by some process, as the cross-process relay delivers it.

    ``before_partial``: the document before was too large to relay, ``before_json`` is
    only its id and types (see :meth:`StreamFilter.event_name`), and ``changed_attrs``
    names the attributes the change touched.
    """

    event_id: str
    tenant: str
    entity_id: str
    before_json: bytes | None
    after_json: bytes | None
    occurred_at: str
    before_partial: bool = False
    changed_attrs: frozenset[str] | None = None


@dataclass(eq=False)
class EntityEvent:
    """One committed entity change, numbered in this process (see module docstring).

    ``seq`` is the position in this process's buffer; ``event_id`` is the wire id.
    The entity before and after are kept as orjson bytes, not dicts: the replay buffer
    holds thousands of events, and a decoded entity costs several times its JSON size.
    """

    seq: int
    event_id: str
    tenant: str
    entity_id: str
    before_json: bytes | None
    after_json: bytes | None
    monotonic_s: float
    occurred_at: str
    """When the change was committed (ISO 8601 UTC); a deletion reports it as ``deletedAt``."""
    before_partial: bool = False
    known_changed_attrs: frozenset[str] | None = None

    @classmethod
    def of(
        cls, seq: int, event_id: str, change: EntityChange, monotonic_s: float, occurred_at: str
    ) -> EntityEvent:
        """Number a committed change, keeping its documents in compact form."""
        return cls(
            seq,
            event_id,
            change.tenant,
            change.entity_id,
            _compact_json(change.before),
            _compact_json(change.after),
            monotonic_s,
            occurred_at,
        )

    @property
    def change(self) -> EntityChange:
        """The change with its documents decoded (a fresh copy on every access)."""
        return EntityChange(
            self.tenant,
            self.entity_id,
            None if self.before_json is None else orjson.loads(self.before_json),
            None if self.after_json is None else orjson.loads(self.after_json),
        )

    @property
    def kind(self) -> ChangeKind:
        """Which of creation, update, deletion the change was."""
        if self.before_json is None:
            return "entityCreated"
        if self.after_json is None:
            return "entityDeleted"
        return "entityUpdated"

    @cached_property
    def changed_attrs(self) -> frozenset[str]:
        """Attribute IRIs with an instance created, updated or deleted (computed once,
        only when a stream with ``attrs`` asks)."""
        if self.known_changed_attrs is not None:
            return self.known_changed_attrs
        summary = summarise_change(self.change)
        return frozenset(iri for iri, _ in summary.created | summary.updated | summary.deleted)


def _compact_json(entity: StoredEntity | None) -> bytes | None:
    """The entity as JSON bytes of exactly its length.

    orjson hands back its working buffer (about 4 KiB for a small entity); copying it
    keeps a 10,000-event buffer at ~10 MB instead of ~80 MB.
    """
    return None if entity is None else bytes(memoryview(orjson.dumps(entity)))


@dataclass(frozen=True)
class StreamFilter:
    """What one stream wants: a tenant, an entity selector, a bounding box, attributes.

    ``selector`` is the ``EntitySelector`` of entity queries and subscriptions (ids,
    idPattern, type expression). ``bbox`` keeps entities whose ``geo_attr`` bounding box
    intersects it (edges count); entities without that GeoProperty never match it.
    ``watched`` (the stream's ``attrs``) keeps only updates that touch those attributes.
    """

    tenant: str
    selector: EntitySelector = field(default_factory=EntitySelector)
    bbox: BBox | None = None
    geo_attr: str = "https://uri.etsi.org/ngsi-ld/location"
    watched: frozenset[str] | None = None

    def matches_entity(self, entity: StoredEntity | None) -> bool:
        """True when the entity (one state of it) passes the selector and the box."""
        if entity is None or not self.selector.matches(entity):
            return False
        if self.bbox is None:
            return True
        for instance in entity.get("attrs", {}).get(self.geo_attr, []):
            try:
                if bboxes_intersect(bbox(instance_value(instance)), self.bbox):
                    return True
            except (KeyError, TypeError, ValueError, IndexError):
                # A stored value that is not a usable geometry simply does not match.
                continue
        return False

    def event_name(self, event: EntityEvent) -> EventName | None:
        """The event this stream gets for a change, or ``None`` when it is not concerned.

        An update is judged on both states so that a map learns about entities that
        move into its box (``entityUpdated``) and out of it (``entityLeft``). When only
        the id and types of the state before are known (a relayed change too large to
        carry it), that state counts as inside the box: a map may be told that an entity
        it never showed left, never left unaware of one that did.
        """
        if event.tenant != self.tenant:
            return None
        change = event.change
        if event.before_partial:
            was = change.before is not None and self.selector.matches(change.before)
        else:
            was = self.matches_entity(change.before)
        now = self.matches_entity(change.after)
        if change.before is None:
            return "entityCreated" if now else None
        if change.after is None:
            return "entityDeleted" if was else None
        if was and not now:
            return "entityLeft"
        if not now:
            return None
        if was and self.watched is not None and self.watched.isdisjoint(event.changed_attrs):
            return None
        return "entityUpdated"


@dataclass(frozen=True)
class StreamReset:
    """Queued for open streams at a discontinuity: the client must re-read the state."""

    reason: str


StreamItem = tuple[EventName, EntityEvent] | StreamReset


@dataclass(frozen=True)
class StreamStart:
    """How a stream begins: replayed events, or a reset when replay is impossible."""

    replay: list[tuple[EventName, EntityEvent]]
    reset_reason: str | None
    head_id: str
    """The id of the newest event when the stream opened (the position after replay)."""


class EventStream:
    """One client's stream: a bounded queue the hub fills and the HTTP task drains."""

    def __init__(self, hub: EventHub, stream_filter: StreamFilter, start: StreamStart) -> None:
        self.hub = hub
        self.filter = stream_filter
        self.start = start
        self.overflowed = False
        self.closed = False
        self._queue: deque[StreamItem] = deque()
        self._wake = asyncio.Event()

    def offer(self, item: StreamItem) -> None:
        """Queue an event or a reset; on overflow drop this stream from the hub (see
        module docstring)."""
        if len(self._queue) >= self.hub.queue_limit:
            self.overflowed = True
            self._queue.clear()
            self.hub.close_stream(self)
        else:
            self._queue.append(item)
        self._wake.set()

    def end(self) -> None:
        """End the stream from the server side (shutdown)."""
        self.closed = True
        self._wake.set()

    async def next_batch(self, timeout_s: float) -> list[StreamItem]:
        """The queued events, waiting up to ``timeout_s`` for one; ``[]`` on timeout or
        when the stream has ended (check ``overflowed`` / ``closed``)."""
        if not self._queue and not self.overflowed and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout_s)
            except TimeoutError:
                return []
        batch = list(self._queue)
        self._queue.clear()
        return batch


class EventHub:
    """Numbers committed changes, keeps the replay buffer and feeds the open streams.

    All state is touched on the event-loop thread: :meth:`on_changes` called from
    another thread re-schedules itself onto the loop given to :meth:`bind`.
    """

    def __init__(
        self,
        *,
        buffer_size: int = 10_000,
        buffer_age_s: float = 600.0,
        queue_limit: int = 1000,
        max_streams: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer_size = buffer_size
        self.buffer_age_s = buffer_age_s
        self.queue_limit = queue_limit
        self.max_streams = max_streams
        self.boot = format(time.time_ns() // 1_000_000, "x")
        self._clock = clock
        self._seq = itertools.count(1)
        self._head = 0
        self._evicted_through = 0
        self._buffer: deque[EntityEvent] = deque()
        self._evicted_id = ""
        self._relayed_seqs: dict[str, int] = {}
        """Buffer position of each relayed event by its id (local ids are positions)."""
        self._streams: set[EventStream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----------------------------------------------------------------- lifecycle

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop that owns the streams (app lifespan start)."""
        self._loop = loop

    def close(self) -> None:
        """End every open stream (app lifespan end)."""
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()

    @property
    def stream_count(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    def event_id(self, seq: int) -> str:
        """The position id of event ``seq`` of this process (the wire id of local events)."""
        return f"{self.boot}-{seq}"

    def head_id(self) -> str:
        """The id of the newest event: its own id while buffered, else its position."""
        if self._buffer:
            return self._buffer[-1].event_id
        return self.event_id(self._head)

    # ------------------------------------------------------------------ publishing

    def on_changes(self, changes: list[EntityChange]) -> None:
        """``ObservedStorage`` listener: number, buffer and dispatch the changes."""
        loop = self._loop
        if loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self.publish, changes)
                return
        self.publish(changes)

    def publish(self, changes: list[EntityChange]) -> None:
        """Number, buffer and dispatch changes (on the loop thread)."""
        now = self._clock()
        occurred_at = now_iso()
        for change in changes:
            seq = next(self._seq)
            self._dispatch(EntityEvent.of(seq, self.event_id(seq), change, now, occurred_at))
        self._evict(now)

    def publish_relayed(self, change: RelayedChange) -> None:
        """Buffer and dispatch a change delivered by the cross-process relay (loop thread)."""
        now = self._clock()
        seq = next(self._seq)
        self._relayed_seqs[change.event_id] = seq
        self._dispatch(
            EntityEvent(
                seq,
                change.event_id,
                change.tenant,
                change.entity_id,
                change.before_json,
                change.after_json,
                now,
                change.occurred_at,
                change.before_partial,
                change.changed_attrs,
            )
        )
        self._evict(now)

    def discontinuity(self, reason: str) -> None:
        """Events may have been missed (loop thread): forget the buffer, so no replay
        spans the gap, and send every open stream a reset."""
        self._buffer.clear()
        self._relayed_seqs.clear()
        # The gap takes a position of its own, so that the position a client got just
        # before it (its ``ready`` id) is refused like every older one.
        self._head = next(self._seq)
        self._evicted_through = self._head
        self._evicted_id = ""
        for stream in list(self._streams):
            stream.offer(StreamReset(reason))

    def _dispatch(self, event: EntityEvent) -> None:
        self._head = event.seq
        self._buffer.append(event)
        for stream in list(self._streams):
            name = stream.filter.event_name(event)
            if name is not None:
                stream.offer((name, event))

    def _evict(self, now: float) -> None:
        oldest_kept = now - self.buffer_age_s
        while self._buffer and (
            len(self._buffer) > self.buffer_size or self._buffer[0].monotonic_s < oldest_kept
        ):
            evicted = self._buffer.popleft()
            self._evicted_through = evicted.seq
            # A client that saw exactly the last evicted event misses nothing buffered.
            self._evicted_id = evicted.event_id
            if self._relayed_seqs:
                self._relayed_seqs.pop(evicted.event_id, None)

    # ------------------------------------------------------------------- streams

    def open_stream(self, stream_filter: StreamFilter, last_event_id: str | None) -> EventStream:
        """Register a stream, with the events it missed after ``last_event_id``.

        Registering and taking the replay happen without yielding to the loop, so no
        event falls between replay and live delivery. Raises ``TooManyStreams`` at the
        cap.
        """
        if len(self._streams) >= self.max_streams:
            raise TooManyStreams(
                f"The server already serves {self.max_streams} event streams; retry later"
            )
        self._evict(self._clock())
        stream = EventStream(self, stream_filter, self._start(stream_filter, last_event_id))
        self._streams.add(stream)
        return stream

    def close_stream(self, stream: EventStream) -> None:
        """Forget a stream (client gone, overflow); idempotent."""
        self._streams.discard(stream)

    def position_of(self, event_id: str) -> int | None:
        """The buffer position an id names here (a relayed id, or a position of this
        process), or ``None`` when this process cannot place it."""
        seq = self._relayed_seqs.get(event_id)
        if seq is not None:
            return seq
        if event_id == self._evicted_id:
            return self._evicted_through
        boot, _, seq_text = event_id.rpartition("-")
        if boot != self.boot or not seq_text.isdigit() or int(seq_text) > self._head:
            return None
        return int(seq_text)

    def _start(self, stream_filter: StreamFilter, last_event_id: str | None) -> StreamStart:
        head_id = self.head_id()
        if last_event_id is None or not last_event_id.strip():
            return StreamStart([], None, head_id)
        last = self.position_of(last_event_id.strip())
        if last is None:
            return StreamStart(
                [],
                "The event id is not from this server process or no longer buffered; "
                "re-read the state",
                head_id,
            )
        if last < self._evicted_through:
            return StreamStart(
                [],
                "Events after this id are no longer buffered; re-read the state",
                head_id,
            )
        # Buffered seqs are contiguous, so the first one to replay sits at a known index.
        first = self._buffer[0].seq if self._buffer else self._head + 1
        replay: list[tuple[EventName, EntityEvent]] = []
        for index in range(max(last + 1 - first, 0), len(self._buffer)):
            event = self._buffer[index]
            name = stream_filter.event_name(event)
            if name is not None:
                replay.append((name, event))
        return StreamStart(replay, None, head_id)
