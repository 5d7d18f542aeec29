"""Shared fixtures: a real cityos server on loopback (on SQLite and on PostgreSQL), scratch
PostgreSQL databases, and a loopback server of JSON-LD documents.

PostgreSQL comes from ``CITYOS_TEST_POSTGRES`` (a server URL; default: the local server
as user postgres). Each test run creates its own databases, ``cityos_test_<random>``,
and drops them at the end, so parallel runs never collide. Without a usable server
(or without PostGIS) the PostgreSQL tests fail when ``CI=true`` and are skipped, with
the reason, otherwise.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn

from cityos.app import create_app
from cityos.settings import Settings
from cityos.storage.postgres import create_database, drop_database

DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

NGSI = "/ngsi-ld/v1"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A server started by :func:`start_server`; ``stop()`` shuts it down."""

    base_url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(settings: Settings) -> RunningServer:
    """Start uvicorn with ``create_app(settings)`` in a thread; return when /health answers."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="asyncio",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return RunningServer(base_url, settings, server, thread)
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("cityos test server did not start")


def _postgres_problem(server_url: str) -> str | None:
    """Why ``server_url`` cannot host the tests (no server, no PostGIS), or ``None``."""
    try:
        with psycopg.connect(server_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'"
            ).fetchone()
    except psycopg.Error as error:
        return f"PostgreSQL at {server_url} is not usable: {error}".strip()
    if row is None:
        return (
            f"PostGIS is not installed on the PostgreSQL server at {server_url} "
            "(apt-get install -y postgresql-15-postgis-3)"
        )
    return None


@pytest.fixture(scope="session")
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """A factory of empty databases on the test PostgreSQL server, all dropped at the end."""
    server_url = os.environ.get("CITYOS_TEST_POSTGRES", DEFAULT_TEST_POSTGRES)
    problem = _postgres_problem(server_url)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}; CI needs PostgreSQL with PostGIS", pytrace=False)
        pytest.skip(problem)
    created: list[str] = []

    def new_database() -> str:
        name = f"cityos_test_{uuid.uuid4().hex[:12]}"
        created.append(name)
        return create_database(server_url, name)

    yield new_database
    for name in created:
        drop_database(server_url, name)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server per backend with auth off, shared by the API tests (they use unique ids).

    Every test that uses it runs once on SQLite and once on PostgreSQL.
    """
    data_dir: Path = tmp_path_factory.mktemp(f"cityos-data-{request.param}")
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("new_postgres_database")()
    running = start_server(
        Settings(
            data_dir=data_dir,
            database=database,
            upgrade_on_start=True,
            auth="off",
            max_body_bytes=200_000,
            temporal_instance_limit=10,
        )
    )
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    """An HTTP client for the shared server, with the NGSI-LD base path."""
    with httpx.Client(base_url=server.base_url + NGSI, timeout=10) as http:
        yield http


@pytest.fixture
def uid() -> str:
    """A unique suffix so tests sharing a server never collide."""
    return uuid.uuid4().hex[:12]


@dataclass
class ContextServer:
    """Serves ``routes[path] = (status, body bytes)`` and counts requests per path."""

    base: str = ""
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    accept_headers: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
def context_server() -> Iterator[ContextServer]:
    state = ContextServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            state.accept_headers.append(self.headers.get("Accept", ""))
            status, body = state.routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Type", "application/ld+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
