"""``GET /events``: entity changes as server-sent events (HTML Living Standard, 9.2).

The route only translates: query parameters become a ``StreamFilter`` and render
options, the ``EventHub`` does the rest, and this module frames what it hands over.

Wire format of one stream::

    retry: 3000                      (reconnection delay hint, first)
    event: reset                     (when Last-Event-ID cannot be replayed; also
                                      mid-stream when events may have been missed)
    event: entityCreated|entityUpdated|entityDeleted|entityLeft
    id: <boot>-<seq> (one process) or <sender>.<n> (several, on PostgreSQL)
    data: <the entity, rendered like GET /entities renders it>
    event: ready                     (after any replay: position of the stream)
    : keep-alive                     (a comment every heartbeat interval when idle)
    event: overflow                  (the client read too slowly; the stream ends)

Browsers' ``EventSource`` cannot send headers, so the tenant and the @context may
also come as ``tenant=`` and ``context=`` parameters. API keys may not: a key in a URL
ends up in proxy logs and browser history, so ``key=`` is refused and non-public
types need ``X-API-Key`` (a fetch-based SSE client, or a server-side proxy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cityos.api.auth import check_public_read
from cityos.api.ngsild.common import (
    check_params,
    check_tenant_name,
    link_context_url,
    link_header,
    split_list,
    tenant_of,
)
from cityos.api.ngsild.params import compile_id_pattern, render_options
from cityos.api.problems import problem_response
from cityos.broker.context import CompiledContext, ContextResolver
from cityos.broker.entities import check_entity_id
from cityos.broker.event_relay import EventRelay
from cityos.broker.event_stream import (
    EntityEvent,
    EventHub,
    EventName,
    EventStream,
    StreamFilter,
    StreamReset,
    TooManyStreams,
)
from cityos.broker.query_language import parse_type_selector
from cityos.broker.representation import RenderOptions, render_entity
from cityos.broker.service import EntitySelector
from cityos.core.errors import BadRequestData
from cityos.core.geo import BBox
from cityos.core.jsonio import dumps
from cityos.settings import Settings

router = APIRouter()

EVENT_PARAMS = frozenset(
    {
        "type",
        "id",
        "idPattern",
        "bbox",
        "geoproperty",
        "attrs",
        "options",
        "format",
        "lang",
        "datasetId",
        "tenant",
        "context",
        "lastEventId",
    }
)
_KEY_PARAMS = ("key", "apiKey", "api_key", "apikey", "token", "access_token")


@router.get("/events")
async def stream_events(request: Request) -> Response:
    """Stream entity changes of one tenant as server-sent events (see module docstring).

    Filters: ``type`` (NGSI-LD type selector), ``id`` (comma-separated), ``idPattern``,
    ``bbox=minLon,minLat,maxLon,maxLat`` on ``geoproperty`` (default ``location``).
    ``attrs`` limits the payload and keeps only updates touching those attributes;
    ``options=keyValues|concise|sysAttrs`` and ``lang`` shape it as in entity queries.
    ``Last-Event-ID`` (or ``lastEventId=``) replays missed events. Anonymous callers
    must name only public types; 503 with ``Retry-After`` at the stream cap.
    """
    params = request.query_params
    given_keys = [name for name in _KEY_PARAMS if name in params]
    if given_keys:
        raise BadRequestData(
            "API keys are not accepted in the URL (they leak into logs and browser "
            "history); send the X-API-Key header instead"
        )
    check_params(request, EVENT_PARAMS)
    ctx = await _context(request)
    options = render_options(params, ctx)
    stream_filter = _stream_filter(request, ctx, watched=options.attrs)
    types = stream_filter.selector.types
    check_public_read(request, types.type_names() if types is not None else ())
    hub: EventHub = request.app.state.events
    last_event_id = request.headers.get("last-event-id") or params.get("lastEventId")
    relay: EventRelay | None = request.app.state.event_relay
    if relay is not None:
        await relay.settle(last_event_id)
    try:
        stream = hub.open_stream(stream_filter, last_event_id)
    except TooManyStreams as exc:
        return problem_response(exc, {"Retry-After": "30"})
    settings: Settings = request.app.state.settings
    return StreamingResponse(
        _frames(stream, ctx, options, settings),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            # nginx buffers proxied responses by default, which would hold events back.
            "X-Accel-Buffering": "no",
            "Link": link_header(ctx),
        },
    )


async def _context(request: Request) -> CompiledContext:
    resolver: ContextResolver = request.app.state.context_resolver
    header_url = link_context_url(request)
    param_url = request.query_params.get("context")
    if header_url is not None and param_url is not None:
        raise BadRequestData("Give the @context either in the Link header or as context=")
    return await resolver.resolve(header_url or param_url)


def _stream_filter(
    request: Request, ctx: CompiledContext, *, watched: frozenset[str] | None
) -> StreamFilter:
    params = request.query_params
    tenant = tenant_of(request)
    if "tenant" in params:
        named = check_tenant_name(params["tenant"])
        if tenant and named != tenant:
            raise BadRequestData("The tenant= parameter and the NGSILD-Tenant header differ")
        tenant = named
    ids = split_list(params.get("id"))
    for entity_id in ids or ():
        check_entity_id(entity_id)
    types = parse_type_selector(params["type"]).expand(ctx.expand) if "type" in params else None
    selector = EntitySelector(
        ids=frozenset(ids) if ids is not None else None,
        id_pattern=compile_id_pattern(params.get("idPattern")),
        types=types,
    )
    return StreamFilter(
        tenant=tenant,
        selector=selector,
        bbox=parse_bbox(params["bbox"]) if "bbox" in params else None,
        geo_attr=ctx.expand(params.get("geoproperty", "location")),
        watched=watched,
    )


def parse_bbox(text: str) -> BBox:
    """``minLon,minLat,maxLon,maxLat`` in WGS 84 / JGD2011 degrees; 400 when malformed.

    Boxes across the antimeridian (minLon > maxLon) are refused rather than guessed at.
    """
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4 or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise BadRequestData(f"bbox must be minLon,minLat,maxLon,maxLat: {text!r}")
    min_lon, min_lat, max_lon, max_lat = values
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise BadRequestData(
            f"bbox needs -180 <= minLon <= maxLon <= 180 and -90 <= minLat <= maxLat <= 90: "
            f"{text!r}"
        )
    return (min_lon, min_lat, max_lon, max_lat)


def frame(name: str, event_id: str | None, data: Any) -> str:  # Any: JSON value
    """One server-sent event; the JSON is on one line, as ``data:`` lines must be."""
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {name}\n{id_line}data: {dumps(data).decode()}\n\n"


def event_data(
    name: EventName, event: EntityEvent, ctx: CompiledContext, options: RenderOptions
) -> dict[str, Any]:
    """The ``data`` of an entity event: the entity as now stored, or for a deletion
    ``{id, type, deletedAt}`` as in NGSI-LD notifications."""
    change = event.change
    if name == "entityDeleted":
        assert change.before is not None
        types = [ctx.compact(t) for t in change.before.get("type", [])]
        return {
            "id": change.entity_id,
            "type": types[0] if len(types) == 1 else types,
            "deletedAt": event.occurred_at,
        }
    assert change.after is not None
    return render_entity(change.after, ctx.compact, options)


async def _frames(
    stream: EventStream, ctx: CompiledContext, options: RenderOptions, settings: Settings
) -> AsyncIterator[str]:
    hub = stream.hub
    start = stream.start
    try:
        yield f"retry: {settings.events_retry_ms}\n\n"
        if start.reset_reason is not None:
            yield frame("reset", None, {"reason": start.reset_reason})
        for name, event in start.replay:
            yield frame(name, event.event_id, event_data(name, event, ctx, options))
        yield frame(
            "ready", start.head_id, {"lastEventId": start.head_id, "replayed": len(start.replay)}
        )
        while True:
            batch = await stream.next_batch(settings.events_heartbeat_s)
            if batch:
                yield "".join(
                    frame("reset", None, {"reason": item.reason})
                    if isinstance(item, StreamReset)
                    else frame(item[0], item[1].event_id, event_data(*item, ctx, options))
                    for item in batch
                )
            elif stream.overflowed:
                # No id: the client keeps its last delivered id and replays from there.
                yield frame(
                    "overflow",
                    None,
                    {"reason": "The client read too slowly; reconnect to replay what it missed"},
                )
                return
            elif stream.closed:
                return
            else:
                yield ": keep-alive\n\n"
    finally:
        hub.close_stream(stream)
