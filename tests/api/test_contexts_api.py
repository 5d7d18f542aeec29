"""The /jsonldContexts router behind a real uvicorn server on loopback, driven with httpx."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from cityos.api.ngsild.contexts import router
from cityos.broker.context import ContextResolver
from cityos.core.errors import CityosError
from cityos.settings import Settings
from tests.conftest import ContextServer, start_server

MINIMAL = {
    "@context": {
        "A1": "urn:ngsi-ld:attributes:A1",
        "A2": "urn:ngsi-ld:attributes:A2",
        "A3": "urn:ngsi-ld:attributes:A3",
    }
}
DETAIL_KEYS = {
    "URL",
    "localId",
    "kind",
    "createdAt",
    "lastUsage",
    "numberOfHits",
    "extraInfo",
    "body",
    "expiresAt",
}
CORE_V16 = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld"
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def build_app(resolver: ContextResolver) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await resolver.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.settings = resolver.settings
    app.state.context_resolver = resolver
    app.state.context_store = resolver.store
    app.include_router(router, prefix="/ngsi-ld/v1")

    @app.exception_handler(CityosError)
    async def problem(_: Request, exc: CityosError) -> Response:
        body = {
            "type": f"https://uri.etsi.org/ngsi-ld/errors/{type(exc).__name__}",
            "title": exc.title,
            "detail": exc.detail,
        }
        return Response(orjson.dumps(body), exc.status, media_type="application/json")

    # Test-only: resolve a @context in the server's loop, as an entity request would.
    @app.post("/test/resolve")
    async def resolve(request: Request) -> Response:
        value = orjson.loads(await request.body())
        compiled = await resolver.resolve(value)
        out = {"link": compiled.link_url, "A1": compiled.expand("A1")}
        return Response(orjson.dumps(out), media_type="application/json")

    return app


@dataclass
class Broker:
    base: str
    client: httpx.Client
    resolver: ContextResolver

    @property
    def api(self) -> str:
        return f"{self.base}/ngsi-ld/v1/jsonldContexts"

    def add(self, body: Any = MINIMAL) -> str:
        response = self.client.post(self.api, content=orjson.dumps(body), headers=JSON)
        assert response.status_code == 201, response.text
        location: str = response.headers["Location"]
        return location

    def use(self, value: Any) -> dict[str, Any]:
        response = self.client.post(f"{self.base}/test/resolve", content=orjson.dumps(value))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


JSON = {"Content-Type": "application/json"}


@pytest.fixture
def broker() -> Iterator[Broker]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    resolver = ContextResolver(Settings(context_fetch_timeout_s=2.0))
    resolver.base_url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(
        build_app(resolver), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(timeout=10) as client:
            yield Broker(f"http://127.0.0.1:{port}", client, resolver)
    finally:
        server.should_exit = True
        thread.join(10)


def problem_type(response: httpx.Response) -> str:
    kind: str = response.json()["type"]
    return kind.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- add


def test_add_hosted_context_then_serve_it(broker: Broker) -> None:
    response = broker.client.post(broker.api, content=orjson.dumps(MINIMAL), headers=JSON)
    assert response.status_code == 201
    assert response.content == b""
    location = response.headers["Location"]
    assert re.fullmatch(r"/ngsi-ld/v1/jsonldContexts/[0-9a-f]{32}", location)
    local_id = location.rsplit("/", 1)[-1]

    served = broker.client.get(f"{broker.base}{location}")
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "application/json"
    assert served.json() == MINIMAL

    ld = broker.client.get(f"{broker.base}{location}", headers={"Accept": "application/ld+json"})
    assert ld.headers["Content-Type"] == "application/ld+json"

    details = broker.client.get(f"{broker.base}{location}", params={"details": "true"})
    assert details.status_code == 200
    assert details.headers["Content-Type"] == "application/json"
    info = details.json()
    assert set(info) <= DETAIL_KEYS
    assert info["kind"] == "Hosted"
    assert info["localId"] == local_id
    assert info["URL"] == f"{broker.base}{location}"
    assert DATETIME.match(info["createdAt"])
    assert info["numberOfHits"] == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"A1": "urn:a"\n "A2": "urn:b"}', "InvalidRequest"),
        (orjson.dumps({"A1": "urn:ngsi-ld:attributes:A1"}), "InvalidRequest"),
        (orjson.dumps({"@context": {"A1": 5}}), "InvalidRequest"),
        (orjson.dumps({"@context": 5}), "InvalidRequest"),
        (b"[]", "InvalidRequest"),
    ],
)
def test_add_rejects_invalid_bodies(broker: Broker, body: bytes, error: str) -> None:
    response = broker.client.post(broker.api, content=body, headers=JSON)
    assert response.status_code == 400
    assert problem_type(response) == error
    assert broker.client.get(broker.api, params={"kind": "Hosted"}).json() == []


def test_add_requires_a_json_media_type(broker: Broker) -> None:
    response = broker.client.post(
        broker.api, content=orjson.dumps(MINIMAL), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


# -------------------------------------------------------------------------- list


def test_list_filters_by_kind_and_details(broker: Broker) -> None:
    first = broker.add()
    second = broker.add({"@context": {"B1": "urn:ngsi-ld:attributes:B1"}})
    urls = broker.client.get(broker.api).json()
    assert any(u.endswith(first) for u in urls) and any(u.endswith(second) for u in urls)
    hosted = broker.client.get(broker.api, params={"kind": "Hosted", "details": "false"}).json()
    assert sorted(hosted) == sorted(f"{broker.base}{loc}" for loc in (first, second))
    cached = broker.client.get(broker.api, params={"kind": "Cached"}).json()
    assert cached == ["https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"]
    assert broker.client.get(broker.api, params={"kind": "ImplicitlyCreated"}).json() == []
    details = broker.client.get(broker.api, params={"details": "true", "kind": "Hosted"}).json()
    assert {d["kind"] for d in details} == {"Hosted"} and len(details) == 2
    assert all(set(d) <= DETAIL_KEYS for d in details)


@pytest.mark.parametrize(
    "params",
    [{"kind": "other"}, {"details": "other"}, {"details": "true", "kind": "other"}],
)
def test_list_rejects_bad_parameters(broker: Broker, params: dict[str, str]) -> None:
    response = broker.client.get(broker.api, params=params)
    assert response.status_code == 400
    assert problem_type(response) == "BadRequestData"


# ------------------------------------------------------------------ serve/delete


def test_serve_unknown_is_not_found(broker: Broker) -> None:
    response = broker.client.get(f"{broker.api}/wrong_id_context", params={"details": "true"})
    assert response.status_code == 404
    assert problem_type(response) == "ResourceNotFound"


def test_core_context_is_served_for_any_version_and_cannot_be_deleted(broker: Broker) -> None:
    encoded = quote(CORE_V16, safe="")
    served = broker.client.get(f"{broker.api}/{encoded}")
    assert served.status_code == 200
    assert served.json()["@context"]["Property"] == "ngsi-ld:Property"
    details = broker.client.get(f"{broker.api}/{encoded}", params={"details": "true"}).json()
    assert details["kind"] == "Cached"
    for params in ({}, {"reload": "false"}):
        response = broker.client.delete(f"{broker.api}/{encoded}", params=params)
        assert response.status_code == 400
        assert problem_type(response) == "BadRequestData"
    assert (
        broker.client.delete(f"{broker.api}/{encoded}", params={"reload": "true"}).status_code
        == 204
    )
    assert broker.client.get(f"{broker.api}/{encoded}").status_code == 200


def test_delete_hosted(broker: Broker) -> None:
    location = broker.add()
    response = broker.client.delete(f"{broker.base}{location}")
    assert response.status_code == 204 and response.content == b""
    assert broker.client.get(f"{broker.base}{location}").status_code == 404
    assert broker.client.delete(f"{broker.base}{location}").status_code == 404


@pytest.mark.parametrize(
    ("reload", "status", "error"),
    [
        ("true", 400, "BadRequestData"),
        ("false", 404, "ResourceNotFound"),
        (None, 404, "ResourceNotFound"),
        ("xxx", 400, "BadRequestData"),
    ],
)
def test_delete_unknown(broker: Broker, reload: str | None, status: int, error: str) -> None:
    params = {} if reload is None else {"reload": reload}
    response = broker.client.delete(f"{broker.api}/wrong_id_context", params=params)
    assert response.status_code == status
    assert problem_type(response) == error


def test_reload_of_a_hosted_context_is_bad_request(broker: Broker) -> None:
    location = broker.add()
    response = broker.client.delete(f"{broker.base}{location}", params={"reload": "true"})
    assert response.status_code == 400
    assert problem_type(response) == "BadRequestData"
    assert broker.client.get(f"{broker.base}{location}").status_code == 200


# --------------------------------------------------------------- use and kinds


def test_using_a_hosted_context_counts_hits(broker: Broker) -> None:
    location = broker.add()
    # The suite names hosted contexts with the API prefix doubled; still ours.
    used = broker.use(f"{broker.base}/ngsi-ld/v1{location}")
    assert used["A1"] == "urn:ngsi-ld:attributes:A1"
    assert broker.use(f"{broker.base}{location}")["link"] == f"{broker.base}{location}"
    details = broker.client.get(f"{broker.base}{location}", params={"details": "true"}).json()
    assert details["numberOfHits"] == 2
    assert DATETIME.match(details["lastUsage"])


def test_cached_context_lifecycle(broker: Broker, context_server: ContextServer) -> None:
    context_server.routes["/api/v1/context.jsonld"] = (200, orjson.dumps(MINIMAL))
    url = context_server.url("/api/v1/context.jsonld")
    encoded = quote(url, safe="")

    assert broker.use([url])["A1"] == "urn:ngsi-ld:attributes:A1"
    cached = broker.client.get(broker.api, params={"kind": "Cached", "details": "true"}).json()
    entry = next(d for d in cached if d["URL"] == url)
    assert entry["kind"] == "Cached" and entry["numberOfHits"] == 1
    broker.use(url)
    details = broker.client.get(f"{broker.api}/{encoded}", params={"details": "true"}).json()
    assert details["numberOfHits"] == 2
    assert broker.client.get(f"{broker.api}/{encoded}").json() == MINIMAL

    # Reload re-fetches; with the origin gone it is 503 and the entry stays.
    assert (
        broker.client.delete(f"{broker.api}/{encoded}", params={"reload": "true"}).status_code
        == 204
    )
    assert context_server.hits["/api/v1/context.jsonld"] == 2
    del context_server.routes["/api/v1/context.jsonld"]
    failed = broker.client.delete(f"{broker.api}/{encoded}", params={"reload": "true"})
    assert failed.status_code == 503
    assert problem_type(failed) == "LdContextNotAvailable"
    still = broker.client.get(f"{broker.api}/{encoded}", params={"details": "true"})
    assert still.status_code == 200 and still.json()["kind"] == "Cached"

    assert broker.client.delete(f"{broker.api}/{encoded}").status_code == 204
    assert broker.client.get(f"{broker.api}/{encoded}").status_code == 404


def test_hosted_list_of_urls_makes_them_cached(
    broker: Broker, context_server: ContextServer
) -> None:
    context_server.routes["/a.jsonld"] = (200, orjson.dumps(MINIMAL))
    context_server.routes["/b.jsonld"] = (200, orjson.dumps({"@context": {"B1": "urn:b1"}}))
    urls = [context_server.url("/a.jsonld"), context_server.url("/b.jsonld")]
    location = broker.add({"@context": urls})
    assert broker.use(f"{broker.base}{location}")["A1"] == "urn:ngsi-ld:attributes:A1"
    for url in urls:
        details = broker.client.get(
            f"{broker.api}/{quote(url, safe='')}", params={"details": "true"}
        )
        assert details.json()["kind"] == "Cached"


def test_implicitly_created_context(broker: Broker, context_server: ContextServer) -> None:
    context_server.routes["/a.jsonld"] = (200, orjson.dumps(MINIMAL))
    value = [context_server.url("/a.jsonld"), {"X": "urn:x"}]
    link = broker.use(value)["link"]
    listed = broker.client.get(
        broker.api, params={"kind": "ImplicitlyCreated", "details": "true"}
    ).json()
    assert [d["URL"] for d in listed] == [link]
    assert listed[0]["kind"] == "ImplicitlyCreated"
    local_id = link.rsplit("/", 1)[-1]
    assert broker.client.get(f"{broker.api}/{local_id}").json() == {"@context": value}
    # Using the implicit URL is a hit on it.
    assert broker.use(link)["A1"] == "urn:ngsi-ld:attributes:A1"
    details = broker.client.get(f"{broker.api}/{local_id}", params={"details": "true"}).json()
    assert details["numberOfHits"] == 2
    reload = broker.client.delete(f"{broker.api}/{local_id}", params={"reload": "true"})
    assert reload.status_code == 400 and problem_type(reload) == "BadRequestData"
    assert broker.client.delete(f"{broker.api}/{local_id}").status_code == 204
    assert broker.client.get(f"{broker.api}/{local_id}").status_code == 404
    # A new use makes a fresh copy rather than pointing at the deleted one.
    assert broker.use(value)["link"] != link


def test_hosted_context_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth="off")
    first = start_server(settings)
    try:
        created = httpx.post(
            first.base_url + "/ngsi-ld/v1/jsonldContexts",
            json={"@context": {"gauge": "https://example.org/toyama#gauge"}},
        )
    finally:
        first.stop()
    assert created.status_code == 201
    second = start_server(settings)
    try:
        served = httpx.get(second.base_url + created.headers["Location"])
    finally:
        second.stop()
    assert served.status_code == 200
    assert served.json() == {"@context": {"gauge": "https://example.org/toyama#gauge"}}
