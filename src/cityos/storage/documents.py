"""Small persistent tables of JSON documents by key, for state kept beside the entities.

Used for things that are few and rarely written (hosted @contexts, for example): the
owner keeps its working copy in memory and writes through to one of these. With several
processes on one PostgreSQL (``postgres_documents``), another process may have written
a document this one has not loaded: owners look a key up with :meth:`DocumentTable.get`
when their copy misses it.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import orjson


class DocumentTable(Protocol):
    """Documents by key; writes are durable when the call returns."""

    def put(self, key: str, document: dict[str, Any]) -> None:
        """Insert or replace the document under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the document under ``key`` (no error when absent)."""
        ...

    def get(self, key: str) -> dict[str, Any] | None:
        """The document under ``key``, or ``None``."""
        ...

    def load_all(self) -> list[dict[str, Any]]:
        """Every document, in insertion order."""
        ...

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``(key, document)``, in insertion order (for ``db copy``)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class SqliteDocumentTable:
    """A ``DocumentTable`` as one table of a SQLite database file (its own connection)."""

    def __init__(self, path: Path, table: str) -> None:
        if not table.isidentifier():
            raise ValueError(f"Not a table name: {table!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._table = table
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY, "
            "key TEXT UNIQUE NOT NULL, doc BLOB NOT NULL)"
        )
        self._lock = threading.Lock()

    def put(self, key: str, document: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO {self._table} (key, doc) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
                (key, orjson.dumps(document)),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {self._table} WHERE key = ?", (key,))

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT doc FROM {self._table} WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def load_all(self) -> list[dict[str, Any]]:
        return [document for _, document in self.items()]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute(f"SELECT key, doc FROM {self._table} ORDER BY seq")
        return [(key, orjson.loads(doc)) for key, doc in rows]

    def close(self) -> None:
        self._db.close()
