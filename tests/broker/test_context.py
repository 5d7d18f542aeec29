"""CompiledContext expansion/compaction and ContextResolver loading, caching and errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.broker.context import (
    CORE_CONTEXT_URL,
    CORE_VOCAB,
    CompiledContext,
    ContextResolver,
    validate_context_value,
)
from cityos.core.errors import InvalidRequest, LdContextNotAvailable
from cityos.settings import Settings
from tests.conftest import ContextServer

NGSI = "https://uri.etsi.org/ngsi-ld/"
T = TypeVar("T")


def run(factory: Callable[[ContextResolver], Awaitable[T]], **settings: Any) -> T:
    """Run ``factory(resolver)`` in a fresh loop and close the resolver afterwards."""

    async def main() -> T:
        resolver = ContextResolver(Settings(**settings))
        try:
            return await factory(resolver)
        finally:
            await resolver.aclose()

    return asyncio.run(main())


def no_network() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected network access to {request.url}")

    return httpx.MockTransport(handler)


def offline_resolver(**settings: Any) -> ContextResolver:
    return ContextResolver(Settings(**settings), transport=no_network())


# ------------------------------------------------------------------ core terms


def test_core_terms_expand_to_their_core_iris() -> None:
    core = CompiledContext()
    assert core.expand("id") == "@id"
    assert core.expand("type") == "@type"
    assert core.expand("value") == NGSI + "hasValue"
    assert core.expand("location") == NGSI + "location"
    assert core.expand("observedAt") == NGSI + "observedAt"
    assert core.expand("Property") == NGSI + "Property"
    assert core.expand("createdAt") == NGSI + "createdAt"
    assert core.expand("coordinates") == "https://purl.org/geojson/vocab#coordinates"


def test_unknown_names_use_the_core_vocab_and_absolute_iris_stay() -> None:
    core = CompiledContext()
    assert core.vocab == CORE_VOCAB
    assert core.expand("temperature") == CORE_VOCAB + "temperature"
    assert core.expand("urn:ngsi-ld:Sensor:1") == "urn:ngsi-ld:Sensor:1"
    assert core.expand("https://schema.org/name") == "https://schema.org/name"
    assert core.expand("@id") == "@id"
    assert core.expand("ngsi-ld:foo") == NGSI + "foo"


def test_core_compaction() -> None:
    core = CompiledContext()
    assert core.compact(NGSI + "location") == "location"
    assert core.compact(NGSI + "hasValue") == "value"
    assert core.compact(CORE_VOCAB + "temperature") == "temperature"
    assert core.compact(NGSI + "somethingElse") == "ngsi-ld:somethingElse"
    assert core.compact("http://example.org/x") == "http://example.org/x"
    assert core.compact("@type") == "@type"
    # "location" names the core IRI, so the vocab IRI must not compact to it.
    assert core.compact(CORE_VOCAB + "location") != "location"
    assert core.expand(core.compact(CORE_VOCAB + "location")) == CORE_VOCAB + "location"


def test_term_definitions_keep_type_information() -> None:
    core = CompiledContext()
    definition = core.term_definition("objectType")
    assert definition is not None and definition.type == "@vocab"
    created = core.term_definition("createdAt")
    assert created is not None and created.type == NGSI + "DateTime"


# ------------------------------------------------------------------ user terms


def test_user_terms_prefixes_and_term_references() -> None:
    ctx = CompiledContext(
        [
            {
                # Defined after its use: resolution is order independent within a context.
                "name": "schema:name",
                "schema": "https://schema.org/",
                "Building": {"@id": "https://example.org/Building", "@type": "@id"},
                "alias": "Building",
                "category": {"@type": "@vocab"},  # no @id: vocab-relative
            }
        ]
    )
    assert ctx.expand("name") == "https://schema.org/name"
    assert ctx.expand("schema:address") == "https://schema.org/address"
    assert ctx.expand("Building") == "https://example.org/Building"
    assert ctx.expand("alias") == "https://example.org/Building"
    assert ctx.expand("category") == CORE_VOCAB + "category"
    # Two terms for one IRI: the shorter wins, deterministically.
    assert ctx.compact("https://example.org/Building") == "alias"
    assert ctx.compact("https://schema.org/name") == "name"
    assert ctx.compact("https://schema.org/givenName") == "schema:givenName"


def test_compaction_ties_break_alphabetically() -> None:
    ctx = CompiledContext(
        [{"bb": "http://x.org/a", "ab": "http://x.org/a", "abc": "http://x.org/a"}]
    )
    assert ctx.compact("http://x.org/a") == "ab"


def test_longest_prefix_wins_for_compact_iris() -> None:
    ctx = CompiledContext([{"ex": "http://x.org/", "exv": "http://x.org/vocab/"}])
    assert ctx.compact("http://x.org/vocab/speed") == "exv:speed"
    assert ctx.compact("http://x.org/other") == "ex:other"


def test_later_contexts_win_and_keep_earlier_expansions() -> None:
    ctx = CompiledContext(
        [
            {"p": "http://one.org/", "a": "p:a", "b": "http://one.org/b"},
            [{"b": "http://two.org/b"}][0],
            {"p": "http://three.org/"},
        ]
    )
    assert ctx.expand("b") == "http://two.org/b"
    # "a" was expanded with the "p" active when it was defined.
    assert ctx.expand("a") == "http://one.org/a"
    assert ctx.expand("p:z") == "http://three.org/z"


def test_core_terms_are_protected() -> None:
    ctx = CompiledContext(
        [
            {
                "location": "http://evil.org/location",
                "type": "http://evil.org/type",
                "@vocab": "http://v/",
            }
        ]
    )
    assert ctx.expand("location") == NGSI + "location"
    assert ctx.expand("type") == "@type"
    assert ctx.vocab == CORE_VOCAB
    assert ctx.expand("speed") == CORE_VOCAB + "speed"


def test_null_resets_to_the_core_context() -> None:
    ctx = CompiledContext([{"speed": "http://x.org/speed"}, None, {"a": "http://x.org/a"}])
    assert ctx.expand("speed") == CORE_VOCAB + "speed"
    assert ctx.expand("a") == "http://x.org/a"


@pytest.mark.parametrize(
    "value",
    [
        42,
        True,
        {"a": 5},
        {"a": {"@id": 5}},
        {"a": "b", "b": "a"},  # cyclic IRI mapping
        {"a": "relative"} | {"@vocab": None},
        [{"ok": "http://x/"}, 3.5],
        {"@vocab": 7},
    ],
)
def test_invalid_contexts_are_invalid_requests(value: Any) -> None:
    with pytest.raises(InvalidRequest):
        validate_context_value(value)


@given(
    st.one_of(
        st.sampled_from(
            ["location", "speed", "name", "schema:x", "ex:y/z", "urn:a:b", "ngsi-ld:q"]
        ),
        st.text(alphabet="abcXYZ:/#-_.09", min_size=1, max_size=12),
    )
)
def test_compact_inverts_expand(name: str) -> None:
    ctx = CompiledContext(
        [{"schema": "https://schema.org/", "ex": "http://x.org/", "name": "schema:name"}]
    )
    iri = ctx.expand(name)
    assert ctx.expand(ctx.compact(iri)) == iri


def test_expand_and_compact_are_memoised() -> None:
    ctx = CompiledContext()
    assert ctx.expand("speed") is ctx.expand("speed")
    iri = CORE_VOCAB + "speed"
    assert ctx.compact(iri) == "speed"
    assert iri in ctx._compact_memo and "speed" in ctx._expand_memo


# ------------------------------------------------------------------ resolver


def test_resolve_none_and_core_urls_never_touch_the_network() -> None:
    async def go(_: ContextResolver) -> None:
        resolver = offline_resolver()
        core = await resolver.resolve(None)
        assert core.context_value == CORE_CONTEXT_URL
        assert core.link_url == CORE_CONTEXT_URL
        for version in ("", "-v1.3", "-v1.6", "-v1.8", "-v1.9"):
            url = f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context{version}.jsonld"
            assert await resolver.resolve(url) is core
        assert await resolver.resolve(None) is core
        await resolver.aclose()

    run(go)


def test_preseeded_map_is_served_from_disk(tmp_path: Path) -> None:
    (tmp_path / "ctx.jsonld").write_text(
        json.dumps({"@context": {"speed": "http://x.org/speed"}}), encoding="utf-8"
    )
    mapping = tmp_path / "map.json"
    url = "https://contexts.example.org/city.jsonld"
    mapping.write_text(json.dumps({url: "ctx.jsonld"}), encoding="utf-8")

    async def go(_: ContextResolver) -> None:
        resolver = offline_resolver(context_cache_map=mapping)
        ctx = await resolver.resolve(url)
        assert ctx.expand("speed") == "http://x.org/speed"
        assert ctx.link_url == url
        assert ctx.context_value == url
        entry = resolver.store.get_by_url(url)
        assert entry is not None and entry.kind == "Cached"
        # The listing is public: it must not reveal where the copy lives on the server.
        assert str(tmp_path) not in json.dumps(entry.details())
        await resolver.aclose()

    run(go)


def test_remote_context_is_fetched_once_and_cached(context_server: ContextServer) -> None:
    context_server.routes["/ctx.jsonld"] = (
        200,
        orjson.dumps({"@context": {"A1": "urn:ngsi-ld:attributes:A1"}}),
    )
    url = context_server.url("/ctx.jsonld")

    async def go(resolver: ContextResolver) -> None:
        first = await resolver.resolve(url)
        second = await resolver.resolve(url)
        assert first is second
        assert first.expand("A1") == "urn:ngsi-ld:attributes:A1"
        entry = resolver.store.get(url)
        assert entry is not None and entry.kind == "Cached"
        assert entry.number_of_hits == 2
        # A list naming the same URL reuses the stored document.
        listed = await resolver.resolve([url, CORE_CONTEXT_URL])
        assert listed.link_url == url

    run(go)
    assert context_server.hits["/ctx.jsonld"] == 1
    assert "application/ld+json" in context_server.accept_headers[0]


def test_concurrent_resolutions_fetch_once(context_server: ContextServer) -> None:
    context_server.routes["/c.jsonld"] = (200, orjson.dumps({"@context": {"x": "http://x/"}}))
    url = context_server.url("/c.jsonld")

    async def go(resolver: ContextResolver) -> None:
        results = await asyncio.gather(*(resolver.resolve(url) for _ in range(5)))
        assert all(r.expand("x") == "http://x/" for r in results)

    run(go)
    assert context_server.hits["/c.jsonld"] == 1


def test_nested_urls_are_resolved_and_cycles_rejected(context_server: ContextServer) -> None:
    inner = context_server.url("/inner.jsonld")
    context_server.routes["/inner.jsonld"] = (200, orjson.dumps({"@context": {"b": "http://x/b"}}))
    context_server.routes["/outer.jsonld"] = (
        200,
        orjson.dumps({"@context": [inner, {"a": "http://x/a"}]}),
    )
    context_server.routes["/loop1.jsonld"] = (
        200,
        orjson.dumps({"@context": [context_server.url("/loop2.jsonld")]}),
    )
    context_server.routes["/loop2.jsonld"] = (
        200,
        orjson.dumps({"@context": context_server.url("/loop1.jsonld")}),
    )

    async def go(resolver: ContextResolver) -> None:
        ctx = await resolver.resolve(context_server.url("/outer.jsonld"))
        assert ctx.expand("a") == "http://x/a"
        assert ctx.expand("b") == "http://x/b"
        with pytest.raises(InvalidRequest, match="includes itself"):
            await resolver.resolve(context_server.url("/loop1.jsonld"))

    run(go)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/missing.jsonld", 404, b"nope"),
        ("/broken.jsonld", 200, b"{not json"),
        ("/nocontext.jsonld", 200, b'{"terms": {}}'),
        ("/array.jsonld", 200, b"[1, 2]"),
        ("/error.jsonld", 500, b"{}"),
    ],
)
def test_unavailable_remote_contexts(
    context_server: ContextServer, path: str, status: int, body: bytes
) -> None:
    if path != "/missing.jsonld":
        context_server.routes[path] = (status, body)
    url = context_server.url(path)

    async def go(resolver: ContextResolver) -> None:
        with pytest.raises(LdContextNotAvailable) as info:
            await resolver.resolve(url)
        assert url in info.value.detail
        assert resolver.store.get_by_url(url) is None

    run(go)


def test_unreachable_url_is_not_available() -> None:
    url = f"http://127.0.0.1:{free_port()}/ctx.jsonld"

    async def go(resolver: ContextResolver) -> None:
        with pytest.raises(LdContextNotAvailable, match="could not be retrieved"):
            await resolver.resolve([url])

    run(go, context_fetch_timeout_s=2.0)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8087http://127.0.0.1:8087/ctx.jsonld",
        "http://127.0.0.1:99999/ctx.jsonld",
    ],
)
def test_malformed_urls_are_not_available(url: str) -> None:
    async def go(resolver: ContextResolver) -> None:
        with pytest.raises(LdContextNotAvailable, match="not a valid URL"):
            await resolver.resolve(url)
        assert resolver.store.get_by_url(url) is None

    run(go)


def test_remote_context_with_invalid_definitions_is_invalid(context_server: ContextServer) -> None:
    context_server.routes["/num.jsonld"] = (200, b'{"@context": 12}')
    context_server.routes["/term.jsonld"] = (200, b'{"@context": {"a": 12}}')

    async def go(resolver: ContextResolver) -> None:
        for path in ("/num.jsonld", "/term.jsonld"):
            with pytest.raises(InvalidRequest):
                await resolver.resolve(context_server.url(path))

    run(go)


def test_inline_contexts_get_an_implicitly_created_copy() -> None:
    async def go(_: ContextResolver) -> None:
        resolver = offline_resolver()
        resolver.base_url = "http://broker.test"
        inline = {"speed": "http://x.org/speed"}
        ctx = await resolver.resolve(inline)
        assert ctx.context_value == inline
        url = ctx.link_url
        assert url.startswith("http://broker.test/ngsi-ld/v1/jsonldContexts/")
        assert ctx.link_url == url  # created once
        entry = resolver.store.get_by_url(url)
        assert entry is not None and entry.kind == "ImplicitlyCreated"
        assert entry.document() == {"@context": inline}
        assert entry.number_of_hits == 1
        again = await resolver.resolve(inline)
        assert again is ctx and entry.number_of_hits == 2
        # The implicit copy can itself be used by URL, without network.
        by_url = await resolver.resolve(url)
        assert by_url.expand("speed") == "http://x.org/speed"
        assert by_url.link_url == url
        # A list that already names the core context is echoed as given.
        given = ["https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld", inline]
        listed = await resolver.resolve(given)
        assert listed.context_value == given
        await resolver.aclose()

    run(go)


def test_invalidate_forgets_compiled_contexts(context_server: ContextServer) -> None:
    context_server.routes["/v.jsonld"] = (200, orjson.dumps({"@context": {"a": "http://x/1"}}))
    url = context_server.url("/v.jsonld")

    async def go(resolver: ContextResolver) -> None:
        assert (await resolver.resolve(url)).expand("a") == "http://x/1"
        entry = resolver.store.get(url)
        assert entry is not None
        resolver.store.remove(entry.local_id)
        resolver.invalidate(entry.local_id)
        context_server.routes["/v.jsonld"] = (200, orjson.dumps({"@context": {"a": "http://x/2"}}))
        assert (await resolver.resolve(url)).expand("a") == "http://x/2"

    run(go)
    assert context_server.hits["/v.jsonld"] == 2


def test_lru_is_bounded() -> None:
    async def go(_: ContextResolver) -> None:
        resolver = ContextResolver(Settings(), cache_size=3, transport=no_network())
        for i in range(10):
            await resolver.resolve({"t": f"http://x.org/{i}"})
        assert len(resolver._cache) == 3
        await resolver.aclose()

    run(go)
