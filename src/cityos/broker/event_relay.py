"""Live events across processes: committed changes relayed through PostgreSQL NOTIFY.

With several API processes on one PostgreSQL database, a change committed by any of
them must reach the ``GET /events`` streams of all of them, once. The
:class:`EventRelay` is the ``ObservedStorage`` listener that turns each committed
change into a compact notice on a :class:`~cityos.storage.postgres_events.NoticeChannel`,
and the receiver that turns every notice (its own process's included) back into an
event of the local :class:`~cityos.broker.event_stream.EventHub`. Because every process
reads the one notification queue, every hub sees the same events in the same order
under the same ids, ``<sender>.<n>``: a client may reconnect to any process.

Notice format (text, under PostgreSQL's 8,000-byte limit), four lines::

    <sender>.<n>
    {"t": tenant, "i": entity id, "k": "c"|"u"|"d", "o": committed at, ...}
    <entity before, compact JSON, or empty>
    <entity after, compact JSON, or empty>

A change too large to carry both documents drops the one before (the header then names
the entity's types, ``y``, and the changed attributes, ``c``); one too large for the
document after as well drops that too and receivers read the entity as it is now
(``f``: fetch). The receiving side of a change too large even for that gets a reset.

Delivery guarantees: notices are sent after the commit, from a queue, so a process
that dies in the instant between its commit and the send takes that event with it
(the write itself is safe). Two processes writing the same entity in the same
millisecond may have their events delivered in the other order. Replay across
processes is exact for what the receiving process still buffers (see event_stream).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable

import orjson

from cityos.broker.changes import EntityChange
from cityos.broker.event_stream import EventHub, RelayedChange
from cityos.broker.model import StoredEntity
from cityos.broker.subscriptions import summarise_change
from cityos.core.errors import CityosError
from cityos.core.timeutil import now_iso
from cityos.storage.postgres_events import GAP_NOTICE, MAX_NOTICE_BYTES, NoticeChannel

log = logging.getLogger(__name__)

CHANNEL = "cityos_events"

EntityFetch = Callable[[str, str], StoredEntity | None]


class EventRelay:
    """Relays committed changes between the processes of one database (module docstring).

    ``fetch(tenant, entity_id)`` reads an entity as now stored, for notices that were
    too large to carry it.
    """

    def __init__(
        self, hub: EventHub, url: str, fetch: EntityFetch, *, channel: str = CHANNEL
    ) -> None:
        self.hub = hub
        self.fetch = fetch
        self.sender = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._last_sent = 0
        self._received: dict[str, int] = {}
        """The highest ``n`` received from each sender."""
        self.channel = NoticeChannel(url, channel, on_notice=self.receive, on_gap=hub.discontinuity)

    async def start(self) -> None:
        """Start listening (returns once the listener is in place)."""
        await self.channel.start()

    async def stop(self) -> None:
        """Send what is queued and stop."""
        await self.channel.stop()

    # ------------------------------------------------------------------ sending

    def on_changes(self, changes: list[EntityChange]) -> None:
        """``ObservedStorage`` listener: send a notice per committed change."""
        occurred_at = now_iso()
        for change in changes:
            number = next(self._counter)
            notice = encode_notice(f"{self.sender}.{number}", change, occurred_at)
            if notice is None:
                self.channel.send(GAP_NOTICE)
            else:
                self.channel.send(notice)
                self._last_sent = number

    # ---------------------------------------------------------------- receiving

    def receive(self, notice: str) -> None:
        """Channel callback: hand a notice to the hub as an event (loop thread)."""
        event_id = notice.partition("\n")[0]
        sender, _, number = event_id.rpartition(".")
        if number.isdigit():
            self._received[sender] = max(self._received.get(sender, 0), int(number))
        change = decode_notice(notice, self.fetch)
        if change is not None:
            self.hub.publish_relayed(change)

    async def settle(self, last_event_id: str | None, timeout_s: float = 1.0) -> None:
        """Wait (up to ``timeout_s``) until the events a new stream should know of are here:
        every change this process committed so far (a client that writes and then opens a
        stream sees its write), and the event ``last_event_id`` when it comes from a
        sender whose later notices have not arrived yet (a client that moved from another
        process an instant after that one sent it)."""
        wanted = {self.sender: self._last_sent}
        if last_event_id:
            sender, _, number = last_event_id.strip().rpartition(".")
            if sender and number.isdigit():
                wanted[sender] = max(wanted.get(sender, 0), int(number))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(self._received.get(s, 0) < n for s, n in wanted.items()):
            if asyncio.get_running_loop().time() >= deadline or not self.channel.listening:
                return
            await asyncio.sleep(0.005)


def encode_notice(event_id: str, change: EntityChange, occurred_at: str) -> str | None:
    """The notice of a change (module docstring), or ``None`` when even its shortest
    form is over the limit."""
    kind = "c" if change.before is None else "d" if change.after is None else "u"
    header: dict[str, object] = {
        "t": change.tenant,
        "i": change.entity_id,
        "k": kind,
        "o": occurred_at,
    }
    before = _json(change.before)
    after = _json(change.after)
    notice = _notice(event_id, header, before, after)
    if _fits(notice):
        return notice
    assert change.before is not None or change.after is not None
    document = change.before if change.before is not None else change.after
    assert document is not None
    header["y"] = document.get("type", [])
    if change.before is not None and change.after is not None:
        summary = summarise_change(change)
        header["c"] = sorted(
            {iri for iri, _ in summary.created | summary.updated | summary.deleted}
        )
    notice = _notice(event_id, header, "", after)
    if _fits(notice):
        return notice
    header["f"] = 1
    notice = _notice(event_id, header, "", "")
    if _fits(notice):
        return notice
    log.warning("The change of %s is too large to relay; streams get a reset", change.entity_id)
    return None


def decode_notice(notice: str, fetch: EntityFetch) -> RelayedChange | None:
    """The change a notice describes, or ``None`` when there is nothing to deliver (the
    entity a too-large notice named is gone by now, or cannot be read)."""
    event_id, header_json, before, after = notice.split("\n", 3)
    header = orjson.loads(header_json)
    tenant, entity_id, kind = header["t"], header["i"], header["k"]
    before_json = before.encode() if before else None
    after_json = after.encode() if after else None
    partial = kind != "c" and before_json is None
    if partial:
        before_json = orjson.dumps({"id": entity_id, "type": header["y"], "attrs": {}})
    if kind != "d" and after_json is None:
        try:
            current = fetch(tenant, entity_id)
        except CityosError as error:
            log.warning("Cannot read %s for a relayed event: %s", entity_id, error.detail)
            return None
        if current is None:
            return None
        after_json = orjson.dumps(current)
    changed = header.get("c")
    return RelayedChange(
        event_id,
        tenant,
        entity_id,
        before_json,
        after_json,
        header["o"],
        before_partial=partial,
        changed_attrs=frozenset(changed) if changed is not None else None,
    )


def _json(entity: StoredEntity | None) -> str:
    return "" if entity is None else orjson.dumps(entity).decode()


def _notice(event_id: str, header: dict[str, object], before: str, after: str) -> str:
    return f"{event_id}\n{orjson.dumps(header).decode()}\n{before}\n{after}"


def _fits(notice: str) -> bool:
    # Characters are at most 4 bytes: skip encoding when even that cannot overflow.
    return len(notice) * 4 <= MAX_NOTICE_BYTES or len(notice.encode()) <= MAX_NOTICE_BYTES
