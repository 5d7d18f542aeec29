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
before (and reports an outage as before).

Reads are gathered: while one query is under way, the reads asked for meanwhile wait
and then go out together as one query (the way a data loader batches). Under load one
round trip then serves several requests, which spares the interpreter the per-query
cost of the driver as much as the database its per-statement work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from cityos.storage.pg_arrays import array_literal
from cityos.storage.postgres_pool import connection_options

log = logging.getLogger(__name__)

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]  # Any: column values

Row = tuple[bytes, str]
"""An entity's document and row version (``xmin`` as text)."""

Outcome = tuple[bool, Row | None]
"""``(True, row or None when the entity does not exist)``, or ``(False, None)`` when
nothing could be read."""

_READ_MANY = (
    "SELECT e.tenant, e.id, e.doc, e.xmin::text FROM entities e "
    "JOIN unnest(%s::text[], %s::text[]) AS k(tenant, id) "
    "ON e.tenant = k.tenant AND e.id = k.id"
)
_MAX_BATCH = 256


class AsyncReader:
    """Reads entity rows on one event loop through one async connection, gathering the
    reads asked for while a query is under way into the next query."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: AsyncConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[tuple[str, str], asyncio.Future[Outcome]]] = []
        self._task: asyncio.Task[None] | None = None
        """Reads what waits, batch after batch, until nothing does."""

    async def read(self, tenant: str, entity_id: str) -> Outcome:
        """The entity's row, read now or with the reads gathered with it (see
        :data:`Outcome`); ``(False, None)`` also on a loop other than the first used."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            return False, None
        outcome: asyncio.Future[Outcome] = loop.create_future()
        self._waiting.append(((tenant, entity_id), outcome))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._read_waiting())
        return await outcome

    async def close(self) -> None:
        """Close the connection (on the loop it was opened on)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _read_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[:_MAX_BATCH]
            del self._waiting[:_MAX_BATCH]
            outcomes = await self._read_many([key for key, _ in batch])
            for key, outcome in batch:
                if not outcome.done():
                    outcome.set_result(outcomes.get(key, (False, None)))

    async def _read_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Outcome]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, **connection_options()
                )
            tenants = array_literal([tenant for tenant, _ in keys])
            ids = array_literal([entity for _, entity in keys])
            cursor = await self._conn.execute(_READ_MANY, (tenants, ids))
            rows = await cursor.fetchall()
        except psycopg.Error as error:
            log.debug("Read-ahead of %d entities failed: %s", len(keys), error)
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            return {}
        found: dict[tuple[str, str], Outcome] = {key: (True, None) for key in keys}
        for tenant, entity_id, doc, version in rows:
            found[(tenant, entity_id)] = (True, (bytes(doc), version))
        return found
