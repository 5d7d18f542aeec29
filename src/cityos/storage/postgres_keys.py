"""API keys in PostgreSQL, shared by every process of an installation.

``verify`` answers from a :class:`~cityos.storage.keys.PrincipalCache`: a revocation
by another process (or ``cityos keys revoke``) takes effect within ``cache_s`` seconds.
"""

from __future__ import annotations

from cityos.storage.keys import (
    Principal,
    PrincipalCache,
    StoredKey,
    as_principal,
    hash_key,
    key_metadata,
    new_key,
)
from cityos.storage.postgres_state import StatePool


class PostgresKeyStore:
    """A :class:`~cityos.storage.keys.KeyStore` on the ``api_keys`` table."""

    def __init__(self, pool: StatePool, *, cache_s: float = 5.0, owns_pool: bool = False) -> None:
        """Use ``pool``; with ``owns_pool`` :meth:`close` closes it too."""
        self._pool = pool
        self._owns_pool = owns_pool
        self._cache = PrincipalCache(cache_s)

    def create(self, org: str, role: str) -> tuple[str, Principal]:
        key, stored = new_key(org, role)
        self.import_keys([stored])
        return key, as_principal(stored)

    def revoke(self, key_id: str) -> bool:
        with self._pool.connection() as conn:
            cursor = conn.execute("UPDATE api_keys SET revoked = true WHERE key_id = %s", (key_id,))
        self._cache.clear()
        return cursor.rowcount > 0

    def verify(self, key: str) -> Principal | None:
        return self._cache.get_or_load(hash_key(key), self._load)

    def _load(self, digest: str) -> Principal | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT key_id, org, role FROM api_keys WHERE key_hash = %s AND NOT revoked",
                (digest,),
            ).fetchone()
        if row is None:
            return None
        return as_principal(StoredKey(row[0], digest, row[1], row[2], "", False))

    def list_keys(self) -> list[dict[str, object]]:
        return key_metadata(self.export_keys())

    def export_keys(self) -> list[StoredKey]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, key_hash, org, role, created_at, revoked FROM api_keys "
                "ORDER BY created_at, key_id"
            ).fetchall()
        return [StoredKey(*row) for row in rows]

    def import_keys(self, keys: list[StoredKey]) -> None:
        if not keys:
            return
        with self._pool.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO api_keys (key_id, key_hash, org, role, created_at, revoked) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key_id) DO UPDATE SET "
                "key_hash = excluded.key_hash, org = excluded.org, role = excluded.role, "
                "created_at = excluded.created_at, revoked = excluded.revoked",
                [(k.key_id, k.key_hash, k.org, k.role, k.created_at, k.revoked) for k in keys],
            )
        self._cache.clear()

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()
