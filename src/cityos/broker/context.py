"""JSON-LD @context handling without a generic JSON-LD processor on the request path.

INTERFACE (implemented by the context work package):

- ``CompiledContext``: the effective term maps of one @context (the NGSI-LD core
  context always applies last, so core terms cannot be redefined).
    * ``expand(term) -> str``: attribute name or entity type to IRI. Rules: a term
      defined in the context maps to its IRI; ``prefix:suffix`` with a defined prefix
      expands; an absolute IRI (has a scheme, e.g. ``urn:`` / ``http:``) stays;
      anything else is ``@vocab`` + term (core: ``https://uri.etsi.org/ngsi-ld/default-context/``).
    * ``compact(iri) -> str``: the inverse, for output: exact term match first,
      then ``@vocab``-relative, then a compact IRI ``prefix:suffix``, else the IRI.
    * ``context_value``: the JSON value to put as ``@context`` in responses
      (the URL(s)/object(s) the client gave, plus the core context URL).
    * ``link_url``: the URL to put in a ``Link`` header (a single URL; for inline
      contexts the URL of an implicitly created hosted copy).
  Both maps are dicts built once per distinct context and cached.
- ``ContextResolver``: ``await resolve(context_value) -> CompiledContext`` where the
  value is ``None`` (core only), a URL string, an object, or a list of those.
  Remote URLs are fetched once (httpx, timeout from settings) and cached; a
  pre-seeded map URL -> local file is consulted first, so the broker works offline.
  The core context is bundled in the package and never fetched. Failure to get or
  parse a remote context raises ``LdContextNotAvailable``; a context that is not
  a valid JSON-LD context raises ``InvalidRequest``.

How the core context is applied. The published core context is ``@protected``: a
JSON-LD processor refuses to redefine its terms. NGSI-LD clients routinely send
contexts that repeat core terms (copies of the core context inside data-model
contexts), so instead of failing we give protection its *effect*: the core terms
are the starting point (user terms may build on ``ngsi-ld:`` etc.) and are put back
after the user contexts, so ``id``, ``type``, ``value``, ``location``, ``observedAt``,
``Property`` ... always keep their core IRIs, and the core ``@vocab`` is the
default vocabulary, exactly as if the core context were appended last.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import orjson

from cityos.broker.context_store import (
    CORE_CONTEXT_ID,
    CORE_CONTEXT_URL,
    JSONLD_CONTEXTS_PATH,
    ContextStore,
    InMemoryContextStore,
    StoredContext,
    is_core_context_url,
)
from cityos.core.errors import InvalidRequest, LdContextNotAvailable
from cityos.settings import Settings

__all__ = [
    "CORE_CONTEXT_URL",
    "CORE_VOCAB",
    "CompiledContext",
    "ContextResolver",
    "TermDefinition",
    "core_context_body",
    "is_core_context_url",
    "validate_context_value",
]

CORE_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
"""The ``@vocab`` of the core context: where undefined names expand to."""

MAX_NESTING = 10
"""How deep URL contexts may include further URL contexts."""

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
"""Remote @context documents larger than this are refused (a context is a few KB)."""

_MEMO_LIMIT = 10_000
# expand()/compact() results are memoised per compiled context; names come from
# requests, so the memo is capped to keep a stream of random names from growing it.

_CORE_RESOURCE = "data/jsonld/ngsi-ld-core-context-v1.8.jsonld"


@dataclass(frozen=True, slots=True)
class TermDefinition:
    """What a term means: its IRI and, when given, its ``@type`` and ``@container``.

    ``type`` is kept expanded (``@id``, ``@vocab``, ``@json`` stay keywords) because
    the values of ``VocabProperty`` and of ``@type: @vocab`` terms are expanded with
    the same context; ``container`` is informational (``@list``, ``@language`` ...).
    """

    iri: str
    type: str | None = None
    container: str | None = None


@cache
def core_context_body() -> dict[str, Any]:
    """The ``@context`` object of the bundled core context (parsed once)."""
    raw = resources.files("cityos").joinpath(_CORE_RESOURCE).read_bytes()
    body = orjson.loads(raw)["@context"]
    assert isinstance(body, dict)
    return body


@cache
def _core_terms() -> tuple[Mapping[str, TermDefinition], str | None]:
    terms: dict[str, TermDefinition] = {}
    vocab = _apply_local(terms, None, core_context_body())
    return terms, vocab


# --------------------------------------------------------------------------- compile


def _is_absolute(value: str) -> bool:
    """``scheme:rest`` where scheme is an RFC 3986 scheme (so ``a b:c`` is not)."""
    scheme, sep, _ = value.partition(":")
    return bool(sep) and scheme[:1].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)


def _apply_local(
    active: dict[str, TermDefinition], vocab: str | None, local: Mapping[str, Any]
) -> str | None:
    """Process one local context object into ``active`` (in place); return the new @vocab.

    Follows the JSON-LD 1.1 "create term definition" algorithm for what NGSI-LD
    needs: a term's IRI is resolved against the *local* context first (so definitions
    may refer to terms defined beside them, in any order), then the active context.
    """
    if "@import" in local:
        raise InvalidRequest("@import in a @context is not supported")
    if "@vocab" in local:
        raw_vocab = local["@vocab"]
        if raw_vocab is None:
            vocab = None
        elif isinstance(raw_vocab, str) and raw_vocab:
            vocab = _expand_reference(raw_vocab, active, vocab)
            if not _is_absolute(vocab):
                raise InvalidRequest(f"@vocab must be an absolute IRI: {raw_vocab!r}")
        else:
            raise InvalidRequest(f"@vocab must be an IRI or null: {raw_vocab!r}")

    defined: dict[str, bool] = {}

    def define(term: str) -> None:
        state = defined.get(term)
        if state is True:
            return
        if state is False:
            raise InvalidRequest(f"Cyclic IRI mapping for term {term!r} in @context")
        defined[term] = False
        raw = local[term]
        type_: str | None = None
        container: str | None = None
        if raw is None:
            active.pop(term, None)
            defined[term] = True
            return
        if isinstance(raw, str):
            source: str | None = raw
        elif isinstance(raw, dict):
            if "@id" in raw:
                source = raw["@id"]
                if source is not None and not isinstance(source, str):
                    raise InvalidRequest(f"@id of term {term!r} must be a string")
            elif "@reverse" in raw:
                source = raw["@reverse"]
                if not isinstance(source, str):
                    raise InvalidRequest(f"@reverse of term {term!r} must be a string")
            else:
                # No @id: the term itself is the IRI (compact, absolute or vocab-relative).
                source = term
            raw_type = raw.get("@type")
            if raw_type is not None:
                if not isinstance(raw_type, str):
                    raise InvalidRequest(f"@type of term {term!r} must be a string")
                type_ = raw_type if raw_type.startswith("@") else expand_value(raw_type, term)
            raw_container = raw.get("@container")
            if raw_container is not None:
                if isinstance(raw_container, str):
                    container = raw_container
                elif isinstance(raw_container, list) and all(
                    isinstance(c, str) for c in raw_container
                ):
                    container = ",".join(raw_container)
                else:
                    raise InvalidRequest(f"@container of term {term!r} is not valid")
            if "@context" in raw and not isinstance(raw["@context"], dict | list | str):
                raise InvalidRequest(f"Scoped @context of term {term!r} is not valid")
        else:
            raise InvalidRequest(
                f"Definition of term {term!r} must be a string, an object or null, "
                f"not {type(raw).__name__}"
            )
        if source is None:
            # "@id": null decouples the term from any IRI.
            active.pop(term, None)
        else:
            active[term] = TermDefinition(expand_value(source, term), type_, container)
        defined[term] = True

    def expand_value(value: str, term: str) -> str:
        if value.startswith("@"):
            return value
        prefix, sep, suffix = value.partition(":")
        if sep:
            if suffix.startswith("//"):
                return value
            if prefix != term and prefix in local and not prefix.startswith("@"):
                define(prefix)
            prefix_def = active.get(prefix)
            if prefix_def is not None:
                return prefix_def.iri + suffix
            return value
        if value != term and value in local:
            define(value)
        if value != term:
            ref = active.get(value)
            if ref is not None:
                return ref.iri
        if vocab is not None:
            return vocab + value
        raise InvalidRequest(f"Term {term!r} maps to the relative IRI {value!r} and no @vocab")

    for key in local:
        if not isinstance(key, str) or key == "":
            raise InvalidRequest("A @context term must be a non-empty string")
        if key.startswith("@"):
            # @vocab/@import are handled above; @version, @protected, @language ...
            # do not change what a name expands to, so they are accepted and ignored.
            continue
        define(key)
    return vocab


def _expand_reference(value: str, active: Mapping[str, TermDefinition], vocab: str | None) -> str:
    """Expand a value against a finished active context (used for ``@vocab``)."""
    prefix, sep, suffix = value.partition(":")
    if sep:
        prefix_def = active.get(prefix)
        if prefix_def is not None and not suffix.startswith("//"):
            return prefix_def.iri + suffix
        return value
    ref = active.get(value)
    if ref is not None:
        return ref.iri
    return value if vocab is None else vocab + value


def validate_context_value(value: Any) -> None:
    """Check the shape of a @context value without fetching anything.

    Raises ``InvalidRequest`` for anything that is not a URL string, an object of
    valid term definitions, ``null`` inside a list, or a list of those.
    """
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("A @context URL must not be empty")
        return
    if isinstance(value, dict):
        _apply_local(dict(_core_terms()[0]), CORE_VOCAB, value)
        return
    if isinstance(value, list):
        for item in value:
            if item is not None:
                validate_context_value(item)
        return
    raise InvalidRequest(
        f"@context must be a URL, an object or an array, not {type(value).__name__}"
    )


class CompiledContext:
    """The effective term maps of one @context; see the module docstring.

    Build it from the local context objects in order (later definitions win);
    ``None`` in the sequence resets to the core context, as ``null`` does in JSON-LD.
    ``expand``/``compact`` are dict lookups after the first call per name.
    """

    __slots__ = (
        "_compact_memo",
        "_context_value",
        "_expand_memo",
        "_link_factory",
        "_link_url",
        "_prefixes",
        "_reverse",
        "depends_on",
        "terms",
        "vocab",
    )

    def __init__(
        self,
        contexts: Iterable[Mapping[str, Any] | None] = (),
        *,
        context_value: Any = CORE_CONTEXT_URL,
        link_url: str | None = CORE_CONTEXT_URL,
        link_factory: Callable[[], str] | None = None,
        depends_on: Sequence[str] = (),
    ) -> None:
        """Compile ``contexts``.

        ``context_value`` / ``link_url`` are what the resolver says the client used;
        when ``link_url`` is ``None`` it is obtained once from ``link_factory`` on
        first access (the resolver creates an ImplicitlyCreated context there).
        ``depends_on`` lists the local ids of stored contexts this one was built from.
        """
        core_terms, core_vocab = _core_terms()
        terms: dict[str, TermDefinition] = dict(core_terms)
        vocab = core_vocab
        user_defined = False
        for local in contexts:
            if local is None:
                terms = dict(core_terms)
                vocab = core_vocab
                continue
            vocab = _apply_local(terms, vocab, local)
            user_defined = True
        if user_defined:
            # Core terms are protected: put back whatever a user context redefined.
            terms.update(core_terms)
            vocab = core_vocab
        self.terms: Mapping[str, TermDefinition] = terms
        self.vocab: str | None = vocab
        self.depends_on: tuple[str, ...] = tuple(depends_on)
        self._context_value = context_value
        self._link_url = link_url
        self._link_factory = link_factory
        self._expand_memo: dict[str, str] = {t: d.iri for t, d in terms.items()}
        self._compact_memo: dict[str, str] = {}
        self._reverse: dict[str, str] | None = None
        self._prefixes: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ expansion

    def expand(self, term: str) -> str:
        """The IRI of an attribute name or entity type (see the module docstring)."""
        try:
            return self._expand_memo[term]
        except KeyError:
            pass
        iri = self._expand_uncached(term)
        if len(self._expand_memo) < _MEMO_LIMIT:
            self._expand_memo[term] = iri
        return iri

    def _expand_uncached(self, term: str) -> str:
        if term.startswith("@"):
            return term
        prefix, sep, suffix = term.partition(":")
        if sep:
            prefix_def = self.terms.get(prefix)
            if prefix_def is not None and not suffix.startswith("//"):
                return prefix_def.iri + suffix
            return term
        if self.vocab is None:
            return term
        return self.vocab + term

    def term_definition(self, term: str) -> TermDefinition | None:
        """The definition of ``term`` (for its ``@type``), or ``None`` if undefined."""
        return self.terms.get(term)

    # ----------------------------------------------------------------- compaction

    def compact(self, iri: str) -> str:
        """The shortest name for ``iri`` in this context (see the module docstring)."""
        try:
            return self._compact_memo[iri]
        except KeyError:
            pass
        if self._reverse is None:
            self._build_reverse()
        name = self._compact_uncached(iri)
        if len(self._compact_memo) < _MEMO_LIMIT:
            self._compact_memo[iri] = name
        return name

    def _build_reverse(self) -> None:
        reverse: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for term, definition in self.terms.items():
            iri = definition.iri
            if iri.startswith("@"):
                continue
            current = reverse.get(iri)
            # Several terms for one IRI: shortest, then alphabetical - deterministic.
            if current is None or (len(term), term) < (len(current), current):
                reverse[iri] = term
            if ":" not in term and iri[-1:] in ("/", "#", ":", "?", "[", "]", "@"):
                prefixes.append((term, iri))
        # Longest IRI first, then the shorter / alphabetically first term.
        prefixes.sort(key=lambda p: (-len(p[1]), len(p[0]), p[0]))
        self._prefixes = prefixes
        self._reverse = reverse

    def _compact_uncached(self, iri: str) -> str:
        assert self._reverse is not None
        if iri.startswith("@"):
            return iri
        term = self._reverse.get(iri)
        if term is not None:
            return term
        vocab = self.vocab
        if vocab is not None and iri.startswith(vocab):
            suffix = iri[len(vocab) :]
            # The short name must expand back to this IRI, so it can't be a term.
            if suffix and ":" not in suffix and "/" not in suffix and suffix not in self.terms:
                return suffix
        for prefix, prefix_iri in self._prefixes:
            if len(iri) > len(prefix_iri) and iri.startswith(prefix_iri):
                candidate = f"{prefix}:{iri[len(prefix_iri) :]}"
                if candidate not in self.terms:
                    return candidate
        return iri

    # ------------------------------------------------------------------- output

    @property
    def context_value(self) -> Any:
        """The ``@context`` to put in a JSON-LD response body.

        Core only: the core URL (a string). Otherwise exactly the client's value; the
        core context applies implicitly and is not appended.
        """
        return self._context_value

    @property
    def link_url(self) -> str:
        """The URL for a ``Link`` header: the core URL, the client's single URL, or
        the URL of an ImplicitlyCreated copy of an inline or multi-part context."""
        if self._link_url is None:
            assert self._link_factory is not None
            self._link_url = self._link_factory()
        return self._link_url


# --------------------------------------------------------------------------- resolve


def _checked_url(url: str) -> httpx.URL:
    """``url`` parsed for fetching; ``LdContextNotAvailable`` if it has no usable host or port.

    httpx raises ``InvalidURL`` (not an ``HTTPError``) for a malformed port and lets an
    out-of-range one reach the socket layer, so both are refused here.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise LdContextNotAvailable(f"@context {url} is not a valid URL: {exc}") from None
    if not parsed.host or (parsed.port is not None and not 0 < parsed.port < 65536):
        raise LdContextNotAvailable(f"@context {url} is not a valid URL: bad host or port")
    return parsed


class ContextResolver:
    """Turns a request's @context into a ``CompiledContext``; see the module docstring.

    ``store`` is the @context store shared with the ``/jsonldContexts`` API (an
    ``InMemoryContextStore`` by default). ``base_url`` (settable, no trailing slash)
    is where this broker is reachable; ImplicitlyCreated and Hosted contexts get
    URLs under it. Call ``aclose()`` at shutdown to close the HTTP client.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ContextStore | None = None,
        cache_size: int = 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Create a resolver; ``transport`` replaces the network (tests, proxies)."""
        self.settings = settings
        self.store: ContextStore = store or InMemoryContextStore(core_context_body())
        self.base_url = f"http://{settings.host}:{settings.port}"
        self._cache_size = cache_size
        self._cache: OrderedDict[str, CompiledContext] = OrderedDict()
        self._core = CompiledContext()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._implicit_by_key: dict[str, str] = {}
        self._seeded: dict[str, Path] = self._load_cache_map(settings.context_cache_map)

    @staticmethod
    def _load_cache_map(path: Path | None) -> dict[str, Path]:
        if path is None:
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"context_cache_map {path} is not a readable JSON file: {exc}"
            ) from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise ValueError(f"context_cache_map {path} must map URL strings to file paths")
        # Relative paths are relative to the map file, so a map can travel with its files.
        return {url: (path.parent / local).resolve() for url, local in raw.items()}

    @property
    def core(self) -> CompiledContext:
        """The core-only context (what ``resolve(None)`` returns)."""
        return self._core

    def hosted_url(self, local_id: str) -> str:
        """The URL at which the stored context ``local_id`` is served."""
        return f"{self.base_url}{JSONLD_CONTEXTS_PATH}{local_id}"

    async def aclose(self) -> None:
        """Close the HTTP client (if one was opened)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -------------------------------------------------------------- hot path

    async def resolve(self, value: Any) -> CompiledContext:
        """The compiled context for a request's @context value (see class docstring).

        A value seen before is a dict hit; only a new value compiles, and only a URL
        not yet in the store is fetched. Each resolution counts a hit on every
        stored (non-core) context the result was built from.
        """
        if value is None:
            return self._core
        key = value if isinstance(value, str) else orjson.dumps(value).decode()
        compiled = self._cache.get(key)
        if compiled is None:
            if isinstance(value, str) and is_core_context_url(value):
                compiled = self._core
            else:
                compiled = await self._compile(value, key)
            self._cache[key] = compiled
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        record_hit = self.store.record_hit
        for local_id in compiled.depends_on:
            record_hit(local_id)
        implicit = self._implicit_by_key.get(key)
        if implicit is not None:
            record_hit(implicit)
        return compiled

    # ----------------------------------------------------------- compilation

    async def _compile(self, value: Any, key: str) -> CompiledContext:
        validate_context_value(value)
        locals_: list[Mapping[str, Any] | None] = []
        depends: list[str] = []
        await self._flatten(value, (), locals_, depends)
        items = value if isinstance(value, list) else [value]
        # Echo exactly what the client sent: NGSI-LD clients (and the ETSI suite)
        # compare the response @context with the one they gave; the core context
        # applies implicitly and is not appended.
        context_value: Any = value
        urls = [i for i in items if not (isinstance(i, str) and is_core_context_url(i))]
        link_url: str | None = None
        if not urls:
            link_url = CORE_CONTEXT_URL
        elif len(urls) == 1 and isinstance(urls[0], str):
            link_url = urls[0]
        return CompiledContext(
            locals_,
            context_value=context_value,
            link_url=link_url,
            link_factory=None if link_url is not None else lambda: self._implicit_url(value, key),
            depends_on=list(dict.fromkeys(depends)),
        )

    def _implicit_url(self, value: Any, key: str) -> str:
        """Create (once per distinct value) the ImplicitlyCreated copy; return its URL."""
        local_id = self._implicit_by_key.get(key)
        entry = self.store.get(local_id) if local_id is not None else None
        if entry is None:
            local_id = uuid4().hex
            entry = StoredContext(
                local_id=local_id,
                url=self.hosted_url(local_id),
                kind="ImplicitlyCreated",
                body=value,
                # Created because a request used it: that use is its first hit.
                number_of_hits=1,
            )
            entry.last_usage = entry.created_at
            self.store.add(entry)
            self._implicit_by_key[key] = local_id
        return entry.url

    async def _flatten(
        self,
        value: Any,
        chain: tuple[str, ...],
        out: list[Mapping[str, Any] | None],
        depends: list[str],
    ) -> None:
        if isinstance(value, dict):
            out.append(value)
        elif isinstance(value, list):
            for item in value:
                await self._flatten(item, chain, out, depends)
        elif value is None:
            out.append(None)
        elif isinstance(value, str):
            if is_core_context_url(value):
                return  # The core context is always applied anyway.
            if value in chain:
                raise InvalidRequest(f"@context {value} includes itself: {' -> '.join(chain)}")
            if len(chain) >= MAX_NESTING:
                raise InvalidRequest(f"@context {value} is nested more than {MAX_NESTING} deep")
            entry = await self._load(value)
            if entry.local_id != CORE_CONTEXT_ID:
                depends.append(entry.local_id)
            body = entry.body
            try:
                validate_context_value(body)
            except InvalidRequest as exc:
                raise InvalidRequest(f"@context {value} is not valid: {exc.detail}") from None
            await self._flatten(body, (*chain, value), out, depends)
        else:
            raise InvalidRequest(
                f"@context must be a URL, an object or an array, not {type(value).__name__}"
            )

    # --------------------------------------------------------------- loading

    async def _load(self, url: str) -> StoredContext:
        """The stored entry for ``url``: from the store, the seeded map, or the network."""
        entry = self.store.get_by_url(url)
        if entry is not None:
            return entry
        if url.startswith(self.base_url + JSONLD_CONTEXTS_PATH):
            # One of ours that no longer exists; asking ourselves over HTTP won't help.
            raise LdContextNotAvailable(f"@context {url} does not exist on this broker")
        pending = self._inflight.get(url)
        if pending is not None:
            body = await asyncio.shield(pending)
        else:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._inflight[url] = future
            try:
                body = await self._retrieve(url)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                future.set_exception(exc)
                future.exception()  # Mark retrieved: waiters are optional.
                raise
            else:
                future.set_result(body)
            finally:
                del self._inflight[url]
        entry = self.store.get_by_url(url)
        if entry is None:
            # No extraInfo: where a pre-seeded copy lives is a server file path, which
            # is no business of clients (and the listing is public).
            entry = StoredContext(local_id=uuid4().hex, url=url, kind="Cached", body=body)
            self.store.add(entry)
        return entry

    async def reload(self, entry: StoredContext) -> None:
        """Re-read a Cached context from its origin and forget what was compiled from it.

        The core context is re-read from the bundled file. On failure the entry is
        kept unchanged and ``LdContextNotAvailable`` is raised.
        """
        if entry.local_id == CORE_CONTEXT_ID:
            core_context_body.cache_clear()
            entry.body = core_context_body()
        else:
            entry.body = await self._retrieve(entry.url)
            self.store.add(entry)
        self.invalidate(entry.local_id)

    def invalidate(self, local_id: str) -> None:
        """Drop compiled contexts built from the stored context ``local_id``."""
        stale = [
            key
            for key, compiled in self._cache.items()
            if local_id in compiled.depends_on or self._implicit_by_key.get(key) == local_id
        ]
        for key in stale:
            del self._cache[key]
        for key in [k for k, v in self._implicit_by_key.items() if v == local_id]:
            del self._implicit_by_key[key]

    async def _retrieve(self, url: str) -> Any:
        """The ``@context`` member of the document at ``url`` (seeded file or HTTP GET)."""
        source = self._seeded.get(url)
        if source is not None:
            try:
                raw = await asyncio.to_thread(source.read_bytes)
            except OSError as exc:
                raise LdContextNotAvailable(
                    f"@context {url}: pre-seeded file {source} is not readable ({exc})"
                ) from None
        else:
            raw = await self._fetch(url)
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise LdContextNotAvailable(f"@context {url} is not a JSON document") from None
        if not isinstance(document, dict) or "@context" not in document:
            raise LdContextNotAvailable(
                f"@context {url} is not a JSON-LD context document (no @context member)"
            )
        return document["@context"]

    async def _fetch(self, url: str) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise LdContextNotAvailable(f"@context {url} is not an http(s) URL")
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.context_fetch_timeout_s,
                follow_redirects=True,
                headers={"Accept": "application/ld+json, application/json"},
                transport=self._transport,
            )
        try:
            response = await self._client.get(_checked_url(url))
        except httpx.HTTPError as exc:
            raise LdContextNotAvailable(
                f"@context {url} could not be retrieved: {type(exc).__name__} {exc}".rstrip()
            ) from None
        if not response.is_success:
            raise LdContextNotAvailable(
                f"@context {url} could not be retrieved: HTTP {response.status_code}"
            )
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise LdContextNotAvailable(f"@context {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        return response.content
