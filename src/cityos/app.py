"""``create_app(settings)``: the ASGI application with every part wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from cityos import __version__
from cityos.api import events
from cityos.api import ingest as ingest_routes
from cityos.api.auth import ApiKeyMiddleware
from cityos.api.commits import AcknowledgeAfterCommit
from cityos.api.ngsild import batch, contexts, discovery, entities, subscriptions, temporal
from cityos.api.ngsild.common import TrailingSlashMiddleware
from cityos.api.problems import (
    handle_cityos_error,
    handle_unexpected_error,
    problem_response,
)
from cityos.broker.changes import ObservedStorage
from cityos.broker.context import ContextResolver, core_context_body
from cityos.broker.context_store import PersistentContextStore
from cityos.broker.event_relay import EventRelay
from cityos.broker.event_stream import EventHub
from cityos.broker.notifier import DeliveryPolicy, Notifier
from cityos.broker.service import ContextBroker
from cityos.broker.subscription_service import SubscriptionService
from cityos.broker.subscriptions import SubscriptionRegistry
from cityos.broker.temporal import TemporalBroker, retention_from_settings
from cityos.core import errors
from cityos.core.timeutil import datetime_ms, now_iso
from cityos.ingest.registry import DeviceRegistry
from cityos.ingest.runtime import IngestRuntime
from cityos.settings import Settings
from cityos.storage import postgres, sqlite
from cityos.storage.base import TemporalStorage
from cityos.storage.ingest_tables import IngestTables
from cityos.storage.postgres import PostgresStorage, is_postgres_url
from cityos.storage.postgres_pool import DatabaseUnavailable
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.state_stores import open_state_stores

log = logging.getLogger(__name__)

NGSI_LD_PREFIX = "/ngsi-ld/v1"


def open_storage(settings: Settings) -> TemporalStorage:
    """The storage backend the settings name (SQLite unless a PostgreSQL URL is given).

    A PostgreSQL schema is upgraded only with ``settings.upgrade_on_start``; otherwise
    an out-of-date one raises ``SchemaOutOfDateError`` (see :class:`PostgresStorage`).
    """
    if is_postgres_url(settings.database):
        assert settings.database is not None
        return PostgresStorage(settings.database, upgrade=settings.upgrade_on_start)
    return SqliteStorage(settings.sqlite_path)


def upgrade_database(settings: Settings) -> tuple[int, list[int]]:
    """Apply the pending schema migrations of the configured database.

    Returns the version reached and the versions applied now (empty when up to date).
    """
    if is_postgres_url(settings.database):
        assert settings.database is not None
        with psycopg.connect(settings.database, autocommit=True) as conn:
            applied = postgres.upgrade_schema(conn)
            return postgres.schema_version(conn), applied
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(settings.sqlite_path, isolation_level=None)
    try:
        applied = sqlite.upgrade_schema(db)
        return sqlite.schema_version(db), applied
    finally:
        db.close()


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return problem_response(errors.ResourceNotFound(f"No such resource: {request.url.path}"))
    if exc.status_code == 405:
        return problem_response(
            errors.MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}"
            ),
            {"Allow": _allowed_methods(request)},
        )
    generic = errors.CityosError(str(exc.detail))
    generic.status = exc.status_code
    return problem_response(generic)


_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405 (RFC 9110): every method some route takes on the path.

    Starlette's own header names only the first route that matched the path, and
    FastAPI makes one route per method, so each method is tried against the router.
    """
    allowed = [
        method
        for method in _HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def run_retention(
    temporal: TemporalBroker, retention_ms: dict[str, int], interval_s: float
) -> None:
    """Delete expired history every ``interval_s`` until cancelled (app lifespan task).

    Runs on the event-loop thread like every other storage call: the deletes are range
    deletes on the clustered key, and one transaction per run keeps them short.
    """
    while True:
        try:
            removed = temporal.expire(retention_ms, datetime_ms(now_iso()))
            if removed:
                log.info("Retention deleted %d history rows", removed)
        except Exception:
            log.exception("Retention run failed")
        await asyncio.sleep(interval_s)


async def run_every(job: Callable[[], None], interval_s: float) -> None:
    """Run ``job`` every ``interval_s`` until cancelled, on the event-loop thread (it
    changes state that requests read, so it must be short)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            job()
        except Exception:
            log.exception("Periodic %s failed", getattr(job, "__qualname__", job))


async def _start_ingestion(
    app: FastAPI,
    settings: Settings,
    store: TemporalStorage,
    observed: ObservedStorage,
    expand: Callable[[str], str],
) -> IngestRuntime | None:
    """Start sensor ingestion (HTTP endpoints, MQTT when ``CITYOS_MQTT_URL`` is set,
    device health) when the storage backend has the ingestion tables."""
    if not isinstance(store, IngestTables):
        log.warning("Storage %r has no ingestion tables: ingestion is off", store)
        return None
    registry = DeviceRegistry(app.state.broker, tenant=settings.ingest_tenant, expand=expand)
    registry.load()
    observed.add_listener(registry.on_changes)
    runtime = IngestRuntime(
        settings,
        storage=observed,
        backend=store,
        tables=store,
        broker=app.state.broker,
        registry=registry,
        expand=expand,
    )
    await runtime.start()
    app.state.ingest_registry = registry
    app.state.ingest_intake = runtime.intake
    app.state.ingest_stats = runtime.stats
    app.state.ingest_tables = store
    app.state.ingest_mqtt_status = runtime.mqtt_status
    app.state.ingest = runtime
    return runtime


def create_app(
    settings: Settings | None = None, *, storage: TemporalStorage | None = None
) -> FastAPI:
    """Build the application. ``storage`` overrides the backend named by the settings."""
    settings = settings or Settings()
    store = storage or open_storage(settings)
    state = open_state_stores(
        settings.database, settings.sqlite_path, lease_s=settings.notification_lease_s
    )
    keys = state.keys
    context_store = PersistentContextStore(core_context_body(), state.contexts, shared=state.shared)
    resolver = ContextResolver(settings, store=context_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        core = await resolver.resolve(None)
        await subscription_service.load(resolver.resolve)
        await notifier.start()
        shared_tasks = []
        if state.shared:
            shared_tasks = [
                asyncio.create_task(
                    subscription_service.follow(resolver.resolve, settings.state_resync_s)
                ),
                asyncio.create_task(run_every(context_store.reload, settings.state_resync_s)),
            ]
        event_hub.bind(asyncio.get_running_loop())
        if event_relay is not None:
            await event_relay.start()
        app.state.public_type_iris = frozenset(core.expand(t) for t in settings.public_types)
        retention_task = None
        if settings.retention:
            retention_ms = retention_from_settings(settings.retention, core.expand)
            retention_task = asyncio.create_task(
                run_retention(app.state.temporal, retention_ms, settings.retention_interval_s)
            )
        ingest = await _start_ingestion(app, settings, store, observed, core.expand)
        if settings.auth == "off":
            log.warning(
                "Authentication is OFF (CITYOS_AUTH=off): anyone can write. "
                "Use this only for local development."
            )
        yield
        if ingest is not None:
            await ingest.stop()
        for task in [*shared_tasks, *([retention_task] if retention_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await notifier.stop()
        if event_relay is not None:
            await event_relay.stop()
        if read_executor is not None:
            read_executor.shutdown()
        event_hub.close()
        if isinstance(store, PostgresStorage):
            await store.close_async()
        store.close()
        state.close()

    app = FastAPI(
        redirect_slashes=False,
        title="cityos",
        version=__version__,
        description="City data platform (都市OS): NGSI-LD context broker and city services.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Queries on PostgreSQL run on worker threads (see api.ngsild.common.run_read); they
    # take 3 of the storage's pool connections (see PostgresStorage).
    read_executor = (
        ThreadPoolExecutor(max_workers=3, thread_name_prefix="cityos-read")
        if isinstance(store, PostgresStorage)
        else None
    )
    app.state.read_executor = read_executor
    observed = ObservedStorage(store)
    app.state.storage = observed
    app.state.broker = ContextBroker(observed, max_limit=settings.max_page_limit)
    app.state.temporal = TemporalBroker(
        app.state.broker, store, instance_limit=settings.temporal_instance_limit
    )
    registry = SubscriptionRegistry()
    notifier = Notifier(
        state.subscriptions,
        registry,
        app.state.broker,
        DeliveryPolicy(coordination_interval_s=settings.notification_lease_s / 4),
    )
    subscription_service = SubscriptionService(state.subscriptions, registry, notifier)
    observed.add_listener(notifier.on_changes)
    event_hub = EventHub(
        buffer_size=settings.events_buffer_size,
        buffer_age_s=settings.events_buffer_age_s,
        queue_limit=settings.events_queue_limit,
        max_streams=settings.events_max_streams,
    )
    # Several processes share a PostgreSQL database: its NOTIFY carries every change to
    # every process's streams. Otherwise the hub hears this process's changes directly.
    event_relay = None
    if is_postgres_url(settings.database) and isinstance(store, PostgresStorage):
        assert settings.database is not None
        event_relay = EventRelay(event_hub, settings.database, fetch=store.get)
        observed.add_listener(event_relay.on_changes)
    else:
        observed.add_listener(event_hub.on_changes)
    app.state.events = event_hub
    app.state.read_ahead = store.read_ahead if isinstance(store, PostgresStorage) else None
    app.state.event_relay = event_relay
    app.state.subscriptions = subscription_service
    app.state.context_resolver = resolver
    app.state.context_store = resolver.store
    app.state.keys = keys
    app.state.public_type_iris = frozenset(settings.public_types)

    app.add_exception_handler(errors.CityosError, handle_cityos_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, handle_unexpected_error)

    @app.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        """200 ``{"status": "ok", "database": "ok"}`` once the server is ready and its
        database answers; 503 with ``"database": "unavailable"`` while it does not, so
        that a load balancer takes this process out of rotation."""
        if isinstance(store, PostgresStorage) and not await asyncio.to_thread(
            store.database_reachable
        ):
            return JSONResponse(
                {"status": "unavailable", "database": "unavailable"},
                status_code=503,
                headers={"Retry-After": str(DatabaseUnavailable.retry_after_s)},
            )
        return JSONResponse({"status": "ok", "database": "ok"})

    for module in (entities, batch, discovery, contexts, subscriptions, temporal):
        app.include_router(module.router, prefix=NGSI_LD_PREFIX, tags=["NGSI-LD"])
    app.include_router(events.router, tags=["events"])
    app.include_router(ingest_routes.router)
    if isinstance(store, PostgresStorage):
        # Writes commit in groups; each response waits for its own (api.commits).
        app.add_middleware(AcknowledgeAfterCommit)
    if settings.auth == "on":
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(TrailingSlashMiddleware, prefix=NGSI_LD_PREFIX)
    return app


def app_from_environment() -> FastAPI:
    """The application with settings from the environment: the factory that
    ``cityos serve --workers N`` hands to each uvicorn worker process."""
    return create_app(Settings())
