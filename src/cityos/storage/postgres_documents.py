"""Small JSON document tables (hosted @contexts, ...) in PostgreSQL, shared by processes.

All kinds live in one ``documents`` table, keyed by ``(kind, key)``: ``kind`` is the
name the SQLite implementation uses as its table name, so both hold the same data under
the same names. Documents are orjson bytes, as everywhere else in cityos.
"""

from __future__ import annotations

from typing import Any

import orjson

from cityos.storage.postgres_state import StatePool


class PostgresDocumentTable:
    """A :class:`~cityos.storage.documents.DocumentTable` of one ``kind`` of document."""

    def __init__(self, pool: StatePool, kind: str) -> None:
        self._pool = pool
        self._kind = kind

    def put(self, key: str, document: dict[str, Any]) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO documents (kind, key, doc) VALUES (%s, %s, %s) "
                "ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc",
                (self._kind, key, orjson.dumps(document)),
            )

    def delete(self, key: str) -> None:
        with self._pool.connection() as conn:
            conn.execute("DELETE FROM documents WHERE kind = %s AND key = %s", (self._kind, key))

    def get(self, key: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT doc FROM documents WHERE kind = %s AND key = %s", (self._kind, key)
            ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def load_all(self) -> list[dict[str, Any]]:
        return [document for _, document in self.items()]

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key, doc FROM documents WHERE kind = %s ORDER BY seq", (self._kind,)
            ).fetchall()
        return [(key, orjson.loads(doc)) for key, doc in rows]

    def close(self) -> None:
        """Nothing to release: the pool belongs to whoever opened it."""
