"""The connection pool of the state that several processes share in PostgreSQL.

API keys, hosted @contexts and subscriptions with their outbox (``postgres_keys``,
``postgres_documents``, ``postgres_subscriptions``) are few, small statements next to
the entity traffic, so they share one small pool of their own instead of competing for
the entity pool of :class:`~cityos.storage.postgres.PostgresStorage` (whose size is
tuned for entity writes). Their tables come from the same migrations.
"""

from __future__ import annotations

from typing import Any

import psycopg

from cityos.storage.migrations import SchemaOutOfDateError, latest_version
from cityos.storage.postgres import schema_version
from cityos.storage.postgres_pool import ReconnectingPool, connection_options

Connection = psycopg.Connection[tuple[Any, ...]]  # Any: column values of any SQL type
StatePool = ReconnectingPool


def open_state_pool(url: str, *, size: int = 3) -> StatePool:
    """An autocommit pool on ``url``; ``SchemaOutOfDateError`` if the schema is too old.

    A database that cannot be reached raises ``psycopg.OperationalError``. Later, while
    the database is away, the pool raises ``DatabaseUnavailable`` (503) at once, as the
    entity pool does (see ``postgres_pool``).
    """
    with psycopg.connect(url, autocommit=True, **connection_options()) as conn:
        current, needed = schema_version(conn), latest_version("postgres")
    if current < needed:
        raise SchemaOutOfDateError(
            f"The database schema is at version {current}; this cityos needs version "
            f"{needed}. Run `cityos db upgrade --database ...` first."
        )
    return ReconnectingPool(
        url, min_size=1, max_size=size, kwargs={"autocommit": True}, name="cityos-state"
    )
