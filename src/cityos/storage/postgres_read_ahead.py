"""Reading an entity for a write without blocking the event loop (PostgreSQL).

A write of an entity starts with a read of it (see ``PostgresStorage``), and the broker
is synchronous: on PostgreSQL that read is a round trip during which the event loop
serves no other request. Under a write load the loop spent up to 40 % of its time
waiting there. A route that is about to write one entity first awaits
:meth:`PostgresStorage.read_ahead`, which reads it on an async connection of this
module, so the loop serves other requests meanwhile; the storage's ``get`` then takes
that row instead of reading again (see ``PostgresStorage.get``).

It is the same read, made a moment earlier: nothing may run on the loop between the
read-ahead and the write's ``get`` (the routes call it right before the broker), and a
write of the same entity by this process that started while the read was under way
makes the storage drop it. Like any read for a write, it is only a starting point: the
write is conditional on the row version.

Best effort: when the database fails, nothing is read ahead and the storage reads as
before (and reports an outage as before). Reads wait for one of a few connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from cityos.storage.postgres_pool import connection_options

log = logging.getLogger(__name__)

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]  # Any: column values

Row = tuple[bytes, str]
"""An entity's document and row version (``xmin`` as text)."""

_READ = "SELECT doc, xmin::text FROM entities WHERE tenant = %s AND id = %s"


class AsyncReader:
    """Up to ``size`` async connections reading entity rows on one event loop; a read
    waits for a free one."""

    def __init__(self, url: str, *, size: int = 4) -> None:
        self.url = url
        self.size = size
        self._idle: list[AsyncConnection] = []
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freed: asyncio.Condition | None = None

    async def read(self, tenant: str, entity_id: str) -> tuple[bool, Row | None]:
        """``(True, row)`` with the entity's row (``None`` when it does not exist), or
        ``(False, None)`` when nothing could be read (an error, or a loop other than the
        first one used)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._freed = loop, asyncio.Condition()
        elif self._loop is not loop:
            return False, None
        conn = await self._take()
        if conn is None:
            return False, None
        try:
            cursor = await conn.execute(_READ, (tenant, entity_id))
            found = await cursor.fetchone()
        except psycopg.Error as error:
            log.debug("Read-ahead of %s failed: %s", entity_id, error)
            await self._discard(conn)
            return False, None
        await self._give_back(conn)
        return True, (bytes(found[0]), found[1]) if found is not None else None

    async def close(self) -> None:
        """Close every connection (on the loop they were opened on)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        self._open = 0

    async def _take(self) -> AsyncConnection | None:
        assert self._freed is not None
        async with self._freed:
            await self._freed.wait_for(lambda: bool(self._idle) or self._open < self.size)
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, **connection_options()
            )
        except psycopg.Error as error:
            log.debug("No read-ahead connection: %s", error)
            async with self._freed:
                self._open -= 1
                self._freed.notify()
            return None

    async def _give_back(self, conn: AsyncConnection) -> None:
        assert self._freed is not None
        async with self._freed:
            self._idle.append(conn)
            self._freed.notify()

    async def _discard(self, conn: AsyncConnection) -> None:
        assert self._freed is not None
        async with self._freed:
            self._open -= 1
            self._freed.notify()
        with contextlib.suppress(psycopg.Error):
            await conn.close()
