"""API keys, stored hashed, each bound to an organisation and a role.

Keys are 256-bit random tokens, so a single SHA-256 is enough to store them safely
(no password-stretching needed: there is nothing to brute-force). A key is shown once,
when created; only its hash and a short prefix for identification are kept.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cityos.core.errors import BadRequestData
from cityos.core.timeutil import now_iso

Role = Literal["admin", "operator", "company", "public"]
ROLES: tuple[Role, ...] = ("admin", "operator", "company", "public")
KEY_PREFIX = "cok_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an organisation with a role (or anonymous)."""

    org: str
    role: Role | Literal["anonymous"]
    key_id: str | None = None

    @property
    def can_write(self) -> bool:
        """Writes need a key with a role above ``public``."""
        return self.role in ("admin", "operator", "company")


ANONYMOUS = Principal(org="", role="anonymous")


@dataclass(frozen=True)
class StoredKey:
    """One row of a key store as ``cityos db copy`` moves it: the hash, never the key."""

    key_id: str
    key_hash: str
    org: str
    role: str
    created_at: str
    revoked: bool


class KeyStore(Protocol):
    """API keys: created once, verified on every request, revoked by id.

    ``verify`` is on the request path and may answer from a cache; a revocation made
    by another process (or the CLI) takes effect there within the store's cache time.
    """

    def create(self, org: str, role: str) -> tuple[str, Principal]:
        """Create a key; return the plain key (shown once) and its principal.

        ``BadRequestData`` for an unknown role or an empty organisation."""
        ...

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by its id; ``False`` when there is no such key."""
        ...

    def verify(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` otherwise."""
        ...

    def list_keys(self) -> list[dict[str, object]]:
        """Key metadata in creation order (never the key or its hash)."""
        ...

    def export_keys(self) -> list[StoredKey]:
        """Every key row, hashes included, in creation order (for ``db copy``)."""
        ...

    def import_keys(self, keys: list[StoredKey]) -> None:
        """Add key rows as exported (replacing rows with the same id)."""
        ...

    def close(self) -> None:
        """Release the connection(s)."""
        ...


def new_key(org: str, role: str) -> tuple[str, StoredKey]:
    """A fresh random key and the row that stores it; ``BadRequestData`` on bad input."""
    if role not in ROLES:
        raise BadRequestData(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not org:
        raise BadRequestData("A key needs an organisation")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    return key, StoredKey(key_id, hash_key(key), org, role, now_iso(), False)


def hash_key(key: str) -> str:
    """What a store keeps of a key (see the module notes on why SHA-256 is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_metadata(keys: list[StoredKey]) -> list[dict[str, object]]:
    """What ``list_keys`` shows of stored keys: never the key or its hash."""
    return [
        {
            "key_id": k.key_id,
            "org": k.org,
            "role": k.role,
            "created_at": k.created_at,
            "revoked": k.revoked,
        }
        for k in keys
    ]


def as_principal(stored: StoredKey) -> Principal:
    """The principal a stored key stands for."""
    role: Role = stored.role  # type: ignore[assignment]  # stores accept ROLES only
    return Principal(org=stored.org, role=role, key_id=stored.key_id)


class PrincipalCache:
    """Answers of ``verify`` by key hash, each trusted for ``ttl_s`` seconds.

    ``verify`` runs on every request with a key; the cache spares the database. A key
    can be revoked by another process (or ``cityos keys revoke`` while the server runs),
    which this process does not hear about, so an answer expires after ``ttl_s``: a
    revocation takes effect everywhere within that time.
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, digest: str, load: Callable[[str], Principal | None]) -> Principal | None:
        """The cached answer for ``digest``, or ``load(digest)`` (then cached)."""
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = load(digest)
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[digest] = (now + self._ttl_s, principal)
        return principal

    def clear(self) -> None:
        """Forget every answer (after a change made by this process)."""
        with self._lock:
            self._entries.clear()


class SqliteKeyStore:
    """API keys in a table of the SQLite database (its own connection)."""

    def __init__(self, path: Path, *, cache_s: float = 5.0) -> None:
        """Open (creating) the key table in ``path``; answers are cached ``cache_s``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE "
            "NOT NULL, org TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL, "
            "revoked INTEGER NOT NULL DEFAULT 0)"
        )
        self._cache = PrincipalCache(cache_s)
        self._lock = threading.Lock()

    def create(self, org: str, role: str) -> tuple[str, Principal]:
        """Create a key; return the plain key (shown once) and its principal."""
        key, stored = new_key(org, role)
        self.import_keys([stored])
        return key, as_principal(stored)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by its id; ``False`` when there is no such key."""
        with self._lock:
            cursor = self._db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
            self._cache.clear()
        return cursor.rowcount > 0

    def verify(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` otherwise."""
        return self._cache.get_or_load(hash_key(key), self._load)

    def _load(self, digest: str) -> Principal | None:
        row = self._db.execute(
            "SELECT key_id, org, role FROM api_keys WHERE key_hash = ? AND revoked = 0", (digest,)
        ).fetchone()
        return None if row is None else Principal(org=row[1], role=row[2], key_id=row[0])

    def list_keys(self) -> list[dict[str, object]]:
        """Key metadata (never the key or its hash)."""
        return key_metadata(self.export_keys())

    def export_keys(self) -> list[StoredKey]:
        rows = self._db.execute(
            "SELECT key_id, key_hash, org, role, created_at, revoked FROM api_keys "
            "ORDER BY created_at, rowid"
        )
        return [StoredKey(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def import_keys(self, keys: list[StoredKey]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO api_keys "
                "(key_id, key_hash, org, role, created_at, revoked) VALUES (?, ?, ?, ?, ?, ?)",
                [(k.key_id, k.key_hash, k.org, k.role, k.created_at, int(k.revoked)) for k in keys],
            )
            self._cache.clear()

    def close(self) -> None:
        self._db.close()
