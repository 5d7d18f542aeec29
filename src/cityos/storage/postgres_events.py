"""A PostgreSQL LISTEN/NOTIFY channel that carries short text notices between processes.

Every process that opens a :class:`NoticeChannel` on the same database and channel
name receives every notice sent by any of them, its own included, **in the same
order**: PostgreSQL queues notifications in commit order and every listener reads the
one queue. The broker builds on that order (``cityos.broker.event_relay``).

Two dedicated connections, outside the storage pool:

- the *sender* drains a queue of notices filled by :meth:`NoticeChannel.send` (callable
  from any thread) and sends what has accumulated with one ``pg_notify`` statement, at
  most one statement per ``gather_s`` (20 ms), so a steady stream of writes costs one
  round trip per batch rather than per write; a lone change goes out at once. On
  failure it reconnects and sends again: a notice is never dropped for a passing
  outage. Only when more than ``max_pending`` notices wait (a long outage) are the
  oldest dropped, and a *gap* notice goes out once the database is back so that every
  listener knows something went missing.
- the *listener* ``LISTEN``\\ s and hands each notice to ``on_notice`` on the event loop.
  When its connection fails it reconnects every ``reconnect_delay_s``; notices sent
  while it was away are lost to it (PostgreSQL keeps none for absent listeners), so
  after reconnecting it calls ``on_gap``.

A notice must be shorter than PostgreSQL's 8,000-byte payload limit (:data:`MAX_NOTICE_BYTES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from cityos.storage.postgres_pool import connection_options

log = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 7_999
"""The longest notice PostgreSQL accepts (payloads must be shorter than 8,000 bytes)."""

GAP_NOTICE = "!gap"
"""Sent after a sender had to drop notices; listeners get ``on_gap`` for it."""

_SEND_BATCH = 256

_SEPARATOR = "\x1e"
"""Joins a batch of notices into one parameter; :meth:`NoticeChannel.send` refuses a
notice containing it (JSON text never does: control characters are escaped in it)."""

_NOTIFY_JOINED = "SELECT pg_notify(%s, n) FROM unnest(string_to_array(%s, E'\\x1e')) AS n"

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]  # Any: column values


class NoticeChannel:
    """Send and receive notices on one LISTEN/NOTIFY channel (see module docstring).

    ``on_notice(text)`` and ``on_gap(reason)`` run on the event loop of :meth:`start`.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        on_notice: Callable[[str], None],
        on_gap: Callable[[str], None],
        reconnect_delay_s: float = 0.5,
        max_pending: int = 10_000,
        gather_s: float = 0.02,
    ) -> None:
        self.url = url
        self.channel = channel
        self.on_notice = on_notice
        self.on_gap = on_gap
        self.reconnect_delay_s = reconnect_delay_s
        self.max_pending = max_pending
        self.gather_s = gather_s
        self._pending: deque[str] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.listening = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start listening and sending; returns once the listener is in place (or after
        a few seconds, when the database is away: it keeps trying in the background)."""
        self._loop = asyncio.get_running_loop()
        if self._pending:
            self._wake.set()
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"listen {self.channel}"),
            asyncio.create_task(self._send_forever(), name=f"notify {self.channel}"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 5.0)

    async def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Send what is still queued (for up to ``flush_timeout_s``), then close."""
        deadline = asyncio.get_running_loop().time() + flush_timeout_s
        while self._pending and asyncio.get_running_loop().time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ------------------------------------------------------------------- sending

    def send(self, notice: str) -> None:
        """Queue a notice for every listener (any thread; never blocks, never raises for
        an outage)."""
        # A character is at most 4 bytes: most notices need no encoding to be checked.
        if len(notice) * 4 > MAX_NOTICE_BYTES and len(notice.encode()) > MAX_NOTICE_BYTES:
            raise ValueError(f"A notice must be at most {MAX_NOTICE_BYTES} bytes")
        if _SEPARATOR in notice:
            raise ValueError("A notice may not contain the character U+001E")
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self._enqueue, notice)
        else:
            self._enqueue(notice)

    def _enqueue(self, notice: str) -> None:
        self._pending.append(notice)
        if len(self._pending) > self.max_pending:
            self._pending.popleft()
            self._dropped += 1
        self._wake.set()

    async def _send_forever(self) -> None:
        conn: AsyncConnection | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending or self._dropped:
                    try:
                        if conn is None or conn.closed:
                            conn = await self._connect()
                        await self._send_pending(conn)
                        # Let the next notices gather for a moment: under a steady write
                        # load one statement (and one wake-up of every listener) then
                        # carries many, instead of one round trip per write.
                        await asyncio.sleep(self.gather_s)
                    except psycopg.Error as error:
                        log.warning("Cannot send event notices (%s); retrying", error)
                        if conn is not None:
                            await conn.close()
                        conn = None
                        await asyncio.sleep(self.reconnect_delay_s)
        finally:
            if conn is not None:
                await conn.close()

    async def _send_pending(self, conn: AsyncConnection) -> None:
        if self._dropped:
            log.warning("%d event notices were dropped during an outage", self._dropped)
            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, GAP_NOTICE))
            self._dropped = 0
        while self._pending:
            batch = [self._pending[i] for i in range(min(_SEND_BATCH, len(self._pending)))]
            # One statement, one transaction: the notices are delivered together and in
            # this order (unnest yields its elements in order). They travel as one text
            # joined by a separator no notice contains: a text[] parameter would be
            # quoted element by element in Python, which cost more than the write itself.
            await conn.execute(_NOTIFY_JOINED, (self.channel, _SEPARATOR.join(batch)))
            for _ in batch:
                self._pending.popleft()

    # ----------------------------------------------------------------- listening

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                conn = await self._connect()
            except psycopg.Error as error:
                log.debug("Cannot listen for event notices yet: %s", error)
                lost = True
                await asyncio.sleep(self.reconnect_delay_s)
                continue
            try:
                await conn.execute(f'LISTEN "{self.channel}"')
                self.listening = True
                self._listening.set()
                if lost:
                    log.warning("Listening for event notices again; some may have been missed")
                    _call(self.on_gap, "The connection to the database was lost for a while")
                async for notify in conn.notifies():
                    if notify.payload == GAP_NOTICE:
                        _call(self.on_gap, "Another server process had to drop change notices")
                    else:
                        _call(self.on_notice, notify.payload)
            except psycopg.Error as error:
                log.warning("Lost the event notice connection (%s); reconnecting", error)
            finally:
                self.listening = False
                lost = True
                await conn.close()
            await asyncio.sleep(self.reconnect_delay_s)

    async def _connect(self) -> AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, **connection_options()
        )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _call(callback: Callable[[str], None], text: str) -> None:
    """Run a receiver callback; one that fails is logged and never stops the listener."""
    try:
        callback(text)
    except Exception:
        log.exception("Event notice receiver %r failed", callback)
