"""The @context store of NGSI-LD clause 5.13 ("@context source management").

The broker keeps every @context document it knows, of three kinds:

- ``Hosted``: posted by a client to ``POST /jsonldContexts``; the broker serves it.
- ``Cached``: a remote @context the broker fetched (or read from the pre-seeded
  map) because a request named its URL; the core context is listed as Cached too.
- ``ImplicitlyCreated``: made by the broker for a request whose @context was an
  inline object or a list, so that it can be referenced by one URL (``Link`` header,
  a subscription's ``jsonldContext``).

Hosted and ImplicitlyCreated contexts are served at
``{base}/ngsi-ld/v1/jsonldContexts/{localId}``; that URL is their ``url``.

The store is consulted on the request path (every context resolution looks a URL
up and counts a hit), so its interface is synchronous and must be a dict lookup.
A persistent implementation keeps an in-memory mirror and writes behind; the
``ContextStore`` protocol is what such an implementation has to provide.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from cityos.core.timeutil import format_datetime
from cityos.storage.documents import DocumentTable

ContextKind = Literal["Hosted", "Cached", "ImplicitlyCreated"]
CONTEXT_KINDS: frozenset[str] = frozenset({"Hosted", "Cached", "ImplicitlyCreated"})

CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
"""The canonical URL of the bundled core context (the version this broker implements)."""

CORE_CONTEXT_ID = "ngsi-ld-core-context"
"""The local id under which the core context is listed."""

JSONLD_CONTEXTS_PATH = "/ngsi-ld/v1/jsonldContexts/"
"""Path prefix under which Hosted and ImplicitlyCreated contexts are served."""

# Any published core context version, with or without a version suffix. They are
# all answered with the bundled file: the broker implements one version of the
# core vocabulary, and fetching it from etsi.org on the request path would make
# every broker depend on that site.
_CORE_URL_RE = re.compile(
    r"^https?://uri\.etsi\.org/ngsi-ld/v1(?:\.\d+)*/ngsi-ld-core-context(?:-v\d+(?:\.\d+)*)?\.jsonld$"
)

# A URL naming one of our own hosted contexts, whatever host name the client used.
_HOSTED_URL_RE = re.compile(r"/ngsi-ld/v1/jsonldContexts/([^/?#]+)$")


def is_core_context_url(url: str) -> bool:
    """True for any URL of a published NGSI-LD core context (any version)."""
    return _CORE_URL_RE.match(url) is not None


@dataclass(slots=True)
class StoredContext:
    """One @context known to the broker.

    ``body`` is the value of the document's ``@context`` member (an object, a URL
    or a list); the served document is ``{"@context": body}``. Times are epoch
    seconds so that counting a hit on the request path does not format a date.
    """

    local_id: str
    url: str
    kind: ContextKind
    body: Any
    created_at: float = field(default_factory=time.time)
    last_usage: float | None = None
    number_of_hits: int = 0
    extra_info: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The JSON-LD document served for this context."""
        return {"@context": self.body}

    def details(self) -> dict[str, Any]:
        """The ``details=true`` representation (clause 5.13.3 / 5.13.4)."""
        out: dict[str, Any] = {
            "URL": self.url,
            "localId": self.local_id,
            "kind": self.kind,
            "createdAt": _iso(self.created_at),
            "numberOfHits": self.number_of_hits,
        }
        if self.last_usage is not None:
            out["lastUsage"] = _iso(self.last_usage)
        if self.extra_info is not None:
            out["extraInfo"] = self.extra_info
        return out


def _iso(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC))


class ContextStore(Protocol):
    """What the resolver and the ``/jsonldContexts`` API need from a context store."""

    def add(self, entry: StoredContext) -> None:
        """Insert or replace ``entry`` (keyed by its local id and by its URL)."""

    def get(self, key: str) -> StoredContext | None:
        """Find a context by local id, by URL (also URL-encoded), or any core URL."""

    def get_by_url(self, url: str) -> StoredContext | None:
        """Find a context by its exact URL, a core URL, or a URL of one of our hosted paths."""

    def remove(self, local_id: str) -> StoredContext | None:
        """Remove a context; return it, or ``None`` if it was not there."""

    def entries(self, kind: ContextKind | None = None) -> list[StoredContext]:
        """All contexts in insertion order, optionally only those of one kind."""

    def record_hit(self, local_id: str) -> None:
        """Count one use of a context and set its ``lastUsage`` (cheap: request path)."""


class InMemoryContextStore:
    """A ``ContextStore`` in process memory; the core context entry is always present."""

    def __init__(self, core_body: Any) -> None:
        """Create the store holding the core context (``core_body`` is its @context value)."""
        self._by_id: dict[str, StoredContext] = {}
        self._id_by_url: dict[str, str] = {}
        self.add(
            StoredContext(
                local_id=CORE_CONTEXT_ID, url=CORE_CONTEXT_URL, kind="Cached", body=core_body
            )
        )

    def add(self, entry: StoredContext) -> None:
        """Insert or replace ``entry``."""
        old = self._by_id.get(entry.local_id)
        if old is not None:
            self._id_by_url.pop(old.url, None)
        self._by_id[entry.local_id] = entry
        self._id_by_url[entry.url] = entry.local_id

    def get(self, key: str) -> StoredContext | None:
        """Find by local id, then by URL (decoding a percent-encoded URL once)."""
        entry = self._by_id.get(key)
        if entry is not None:
            return entry
        entry = self.get_by_url(key)
        if entry is None and "%" in key:
            entry = self.get_by_url(unquote(key))
        return entry

    def get_by_url(self, url: str) -> StoredContext | None:
        """Find by exact URL, any core context URL, or the path of a hosted context."""
        local_id = self._id_by_url.get(url)
        if local_id is not None:
            return self._by_id.get(local_id)
        if is_core_context_url(url):
            return self._by_id.get(CORE_CONTEXT_ID)
        # A hosted context can be named with any host name the client reaches us by.
        match = _HOSTED_URL_RE.search(url)
        if match is not None:
            entry = self._by_id.get(unquote(match.group(1)))
            if entry is not None and entry.kind != "Cached":
                return entry
        return None

    def remove(self, local_id: str) -> StoredContext | None:
        """Remove and return the entry with ``local_id``."""
        entry = self._by_id.pop(local_id, None)
        if entry is not None and self._id_by_url.get(entry.url) == local_id:
            del self._id_by_url[entry.url]
        return entry

    def entries(self, kind: ContextKind | None = None) -> list[StoredContext]:
        """All entries (insertion order), optionally filtered by kind."""
        return [e for e in self._by_id.values() if kind is None or e.kind == kind]

    def record_hit(self, local_id: str) -> None:
        """Count a use of ``local_id`` (ignored if it was deleted meanwhile)."""
        entry = self._by_id.get(local_id)
        if entry is not None:
            entry.number_of_hits += 1
            entry.last_usage = time.time()

    def __iter__(self) -> Iterator[StoredContext]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


class PersistentContextStore(InMemoryContextStore):
    """An ``InMemoryContextStore`` that writes through to a ``DocumentTable``.

    Hosted, implicitly created and cached contexts survive a restart, so URLs the broker
    handed out keep working and cached remote contexts stay available offline. Reads stay
    dict lookups; hit counters are kept in memory only (they change on every request).

    With a ``shared`` table (several processes on one PostgreSQL), a context another
    process created is found by looking its local id up in the table when the memory
    copy misses it, and :meth:`reload` (run periodically) brings deletions and changes
    of the other processes in.
    """

    def __init__(self, core_body: Any, table: DocumentTable, *, shared: bool = False) -> None:
        """Load every stored context from ``table`` after the core context."""
        self._table: DocumentTable | None = None
        self._shared = shared
        super().__init__(core_body)
        for document in table.load_all():
            super().add(StoredContext(**document))
        self._table = table

    def add(self, entry: StoredContext) -> None:
        """Insert or replace ``entry`` and persist it (the core context is never stored)."""
        super().add(entry)
        if self._table is not None and entry.local_id != CORE_CONTEXT_ID:
            self._table.put(entry.local_id, asdict(entry))

    def remove(self, local_id: str) -> StoredContext | None:
        """Remove ``local_id`` from memory and from the table."""
        entry = super().remove(local_id)
        if self._shared and entry is None:
            entry = self._load(local_id)
        if entry is not None and self._table is not None:
            self._table.delete(local_id)
        return entry

    def get(self, key: str) -> StoredContext | None:
        """As :meth:`InMemoryContextStore.get`, then (shared tables) the table by local id."""
        entry = super().get(key)
        if entry is None and self._shared:
            entry = self._load(key)
        return entry

    def get_by_url(self, url: str) -> StoredContext | None:
        """As :meth:`InMemoryContextStore.get_by_url`, then (shared tables) a hosted path's
        local id in the table."""
        entry = super().get_by_url(url)
        if entry is None and self._shared:
            match = _HOSTED_URL_RE.search(url)
            if match is not None:
                found = self._load(unquote(match.group(1)))
                if found is not None and found.kind != "Cached":
                    entry = found
        return entry

    def reload(self) -> None:
        """Make the memory copy equal to the table (keeping this process's hit counts)."""
        if self._table is None:
            return
        stored = {doc["local_id"]: StoredContext(**doc) for doc in self._table.load_all()}
        for entry in self.entries():
            if entry.local_id != CORE_CONTEXT_ID and entry.local_id not in stored:
                super().remove(entry.local_id)
        for local_id, entry in stored.items():
            known = self._by_id.get(local_id)
            if known is not None:
                entry.number_of_hits, entry.last_usage = known.number_of_hits, known.last_usage
            super().add(entry)

    def _load(self, local_id: str) -> StoredContext | None:
        """The table's entry ``local_id``, kept in memory from now on; ``None`` if absent."""
        if self._table is None or local_id == CORE_CONTEXT_ID:
            return None
        document = self._table.get(local_id)
        if document is None:
            return None
        entry = StoredContext(**document)
        super().add(entry)
        return entry
