"""Which stores hold the state beside the entities: SQLite files or shared PostgreSQL.

An installation on SQLite keeps API keys, hosted @contexts and subscriptions with their
outbox in files next to its database (one process). An installation on PostgreSQL keeps
them in that database, so every process of the installation shares them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from cityos.storage.documents import DocumentTable, SqliteDocumentTable
from cityos.storage.keys import KeyStore, SqliteKeyStore
from cityos.storage.postgres import is_postgres_url
from cityos.storage.postgres_state import StatePool, open_state_pool
from cityos.storage.subscriptions import SqliteSubscriptionStore, SubscriptionStore

CONTEXTS_TABLE = "jsonld_contexts"
"""The document kind (SQLite table) of hosted, implicitly created and cached @contexts."""


@dataclass
class StateStores:
    """The stores of one process; :meth:`close` releases them all."""

    keys: KeyStore
    contexts: DocumentTable
    subscriptions: SubscriptionStore
    pool: StatePool | None = None
    """The PostgreSQL pool they share (``None`` on SQLite)."""

    @property
    def shared(self) -> bool:
        """True when other processes may use the same state (PostgreSQL)."""
        return self.pool is not None

    def close(self) -> None:
        """Close every store, then the pool."""
        for store in (self.subscriptions, self.keys, self.contexts):
            with contextlib.suppress(Exception):
                store.close()
        if self.pool is not None:
            self.pool.close()


def sqlite_key_path(sqlite_path: Path) -> Path:
    """The file of the API keys of the SQLite installation at ``sqlite_path``."""
    return sqlite_path.with_name("keys.sqlite3")


def sqlite_subscription_path(sqlite_path: Path) -> Path:
    """The file of the subscriptions and outbox of the SQLite installation."""
    return sqlite_path.with_name("subscriptions.sqlite3")


def open_state_stores(
    database: str | None, sqlite_path: Path, *, lease_s: float = 10.0, key_cache_s: float = 5.0
) -> StateStores:
    """The stores of the installation whose database is ``database`` (a PostgreSQL URL)
    or, when that is not a PostgreSQL URL, the SQLite file ``sqlite_path``.

    ``lease_s`` is how long a PostgreSQL process's outbox rows stay its own without a
    renewal (see ``postgres_subscriptions``); ``key_cache_s`` how long an API key's
    verification is trusted before the store is asked again (a revocation by another
    process or the CLI takes effect within that time)."""
    if is_postgres_url(database):
        assert database is not None
        from cityos.storage.postgres_documents import PostgresDocumentTable
        from cityos.storage.postgres_keys import PostgresKeyStore
        from cityos.storage.postgres_subscriptions import PostgresSubscriptionStore

        pool = open_state_pool(database)
        try:
            return StateStores(
                keys=PostgresKeyStore(pool, cache_s=key_cache_s),
                contexts=PostgresDocumentTable(pool, CONTEXTS_TABLE),
                subscriptions=PostgresSubscriptionStore(pool, database, lease_s=lease_s),
                pool=pool,
            )
        except BaseException:
            pool.close()
            raise
    return StateStores(
        keys=SqliteKeyStore(sqlite_key_path(sqlite_path), cache_s=key_cache_s),
        contexts=SqliteDocumentTable(sqlite_path, CONTEXTS_TABLE),
        subscriptions=SqliteSubscriptionStore(sqlite_subscription_path(sqlite_path)),
    )


def open_key_store(database: str | None, sqlite_path: Path | None = None) -> KeyStore:
    """Only the API keys of an installation (the ``cityos keys`` commands): of the
    PostgreSQL ``database``, else of the SQLite installation at ``sqlite_path``. Closing
    the store releases everything it opened."""
    if is_postgres_url(database):
        assert database is not None
        from cityos.storage.postgres_keys import PostgresKeyStore

        return PostgresKeyStore(open_state_pool(database, size=1), owns_pool=True)
    if sqlite_path is None:
        raise ValueError("A SQLite installation needs its path")
    return SqliteKeyStore(sqlite_key_path(sqlite_path))
