"""Request and response plumbing shared by the NGSI-LD routes.

Content negotiation, @context resolution (Link header or body), tenant header, body
limits and the JSON / JSON-LD / GeoJSON response forms live here so that routes only
translate parameters into ``ContextBroker`` calls.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.broker.context import CompiledContext, ContextResolver
from cityos.broker.entities import ExpandTerm
from cityos.broker.service import ContextBroker
from cityos.core.errors import (
    BadRequestData,
    InvalidRequest,
    LdContextNotAvailable,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from cityos.core.jsonio import dumps, loads

JSON = "application/json"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
TENANT_HEADER = "NGSILD-Tenant"

_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


@dataclass
class Body:
    """A parsed request body with the media type it came as."""

    data: Any
    media_type: str


def broker_of(request: Request) -> ContextBroker:
    """The app's ``ContextBroker``."""
    broker: ContextBroker = request.app.state.broker
    return broker


_Result = TypeVar("_Result")


async def run_read(request: Request, read: Callable[[], _Result]) -> _Result:
    """Run a read-only broker call. With a backend that waits on a database server
    (``app.state.read_executor`` set, PostgreSQL), it runs on a worker thread, so that
    the event loop serves other requests while the server works; otherwise inline.
    Writes stay on the event loop: the broker's read-modify-write relies on it."""
    executor: Executor | None = request.app.state.read_executor
    if executor is None:
        return read()
    return await asyncio.get_running_loop().run_in_executor(executor, read)


async def read_ahead(request: Request, tenant: str, entity_id: str) -> None:
    """Before a write of one entity: let the storage read it without blocking the event
    loop (PostgreSQL, see ``cityos.storage.postgres_read_ahead``); nothing elsewhere.
    The broker call must follow at once, with no ``await`` in between."""
    reader: Callable[[str, str], Awaitable[None]] | None = getattr(
        request.app.state, "read_ahead", None
    )
    if reader is not None:
        await reader(tenant, entity_id)


def tenant_of(request: Request) -> str:
    """The tenant named by the ``NGSILD-Tenant`` header ('' = default tenant)."""
    return check_tenant_name(request.headers.get(TENANT_HEADER, ""))


def check_tenant_name(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name ('' = default tenant); 400 otherwise."""
    if tenant and not re.match(r"^[A-Za-z0-9_\-.:/]{1,256}$", tenant):
        raise BadRequestData(f"Invalid tenant name: {tenant!r}")
    return tenant


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


async def read_body(request: Request, *, allow_merge_patch: bool = False) -> Body:
    """Read and parse a JSON body, enforcing the size limit and the content types."""
    content_type = _media_type(request.headers.get("content-type", ""))
    allowed = {JSON, JSON_LD} | ({MERGE_PATCH} if allow_merge_patch else set())
    if content_type not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'} is not supported; use "
            + " or ".join(sorted(allowed))
        )
    limit: int = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is over the limit of {limit} bytes")
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is over the limit of {limit} bytes")
    if not raw.strip():
        raise InvalidRequest("The request body is empty")
    return Body(loads(raw), content_type)


def link_context_url(request: Request) -> str | None:
    """The @context URL of the request's ``Link`` header, if it has one."""
    header = request.headers.get("link")
    if not header:
        return None
    for match in _LINK_RE.finditer(header):
        url, params = match.group(1), match.group(2)
        if CONTEXT_REL in params:
            if not url:
                raise BadRequestData("The Link header has an empty @context URL")
            return url
    raise BadRequestData("The Link header does not name a JSON-LD @context")


async def context_of(request: Request, body: Body | None = None) -> CompiledContext:
    """Resolve the request's @context: from the body for JSON-LD, else the Link header.

    JSON-LD bodies must carry ``@context`` and no Link context; JSON bodies must not carry
    ``@context`` (NGSI-LD 6.3.5).
    """
    resolver: ContextResolver = request.app.state.context_resolver
    if body is not None and body.media_type == JSON_LD:
        if request.headers.get("link") and link_context_url(request):
            raise BadRequestData("A JSON-LD body must not come with a Link @context header")
        contexts = _body_contexts(body.data)
        if contexts is None:
            raise BadRequestData("A JSON-LD body must carry an @context")
        return await resolver.resolve(contexts)
    if body is not None and _body_contexts(body.data) is not None:
        raise BadRequestData("A JSON body must not carry @context; use the Link header")
    return await resolver.resolve(link_context_url(request))


async def entity_expander(request: Request, context_value: Any) -> ExpandTerm:
    """The expander of one entity's own @context in a JSON-LD batch.

    A batch reports failures per entity (NGSI-LD 5.6.7: 207 with a
    BatchOperationResult), so a @context that cannot be retrieved or is not valid
    must fail only its own entity: the returned expander then raises that error on
    first use, inside the broker's per-entity error handling.
    """
    resolver: ContextResolver = request.app.state.context_resolver
    try:
        return (await resolver.resolve(context_value)).expand
    except (LdContextNotAvailable, InvalidRequest) as error:
        failure = error

        def unusable(term: str) -> str:
            raise failure

        return unusable


def _body_contexts(data: Any) -> Any:  # Any: JSON value
    if isinstance(data, dict):
        return data.get("@context")
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and "@context" in item:
                return item["@context"]
    return None


def strip_context(data: Any) -> Any:  # Any: JSON value
    """The body without its @context member(s)."""
    if isinstance(data, dict) and "@context" in data:
        return {k: v for k, v in data.items() if k != "@context"}
    if isinstance(data, list):
        return [strip_context(item) for item in data]
    return data


def negotiate(request: Request, *, geo: bool = False) -> str:
    """Choose the response media type from the ``Accept`` header; 406 if none fits."""
    header = request.headers.get("accept", "")
    if not header.strip():
        return JSON
    offers = [JSON, JSON_LD] + ([GEO_JSON] if geo else [])
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        quality = 1.0
        for param in pieces[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0 and media:
            ranked.append((-quality, position, media))
    for _, _, media in sorted(ranked):
        if media in offers:
            return media
        if media in ("*/*", "application/*"):
            return JSON
    raise NotAcceptable(f"None of the accepted media types can be produced: {header}")


def link_header(ctx: CompiledContext) -> str:
    """A ``Link`` header value pointing at the context of a response."""
    return f'<{ctx.link_url}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'


def ngsi_response(
    data: Any,  # Any: JSON value
    ctx: CompiledContext,
    media_type: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """Respond with entity data: JSON-LD carries @context inline, JSON in a Link header."""
    out_headers = dict(headers or {})
    if media_type == JSON_LD:
        if isinstance(data, dict):
            data = {**data, "@context": ctx.context_value}
        elif isinstance(data, list):
            data = [
                {**item, "@context": ctx.context_value} if isinstance(item, dict) else item
                for item in data
            ]
    else:
        out_headers["Link"] = link_header(ctx)
    return Response(dumps(data), status_code=status, media_type=media_type, headers=out_headers)


def check_params(request: Request, allowed: frozenset[str]) -> None:
    """Refuse query parameters the operation does not define (NGSI-LD: 400 InvalidRequest)."""
    if not request.scope.get("query_string"):
        return  # most writes carry none; parsing an empty query string still costs
    unknown = [name for name in request.query_params if name not in allowed]
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(sorted(set(unknown)))}")


class TrailingSlashMiddleware:
    """Route ``/ngsi-ld/v1/entities/`` like ``/ngsi-ld/v1/entities`` (no redirect).

    NGSI-LD clients (the ETSI suite among them) add trailing slashes; a 307 redirect
    would lose POST bodies in many clients, so the path is rewritten in place.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if (
                path.startswith(self.prefix)
                and path.endswith("/")
                and len(path) > len(self.prefix) + 1
            ):
                scope = dict(scope)
                scope["path"] = path[:-1]
                raw = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.endswith(b"/"):
                    scope["raw_path"] = raw[:-1]
        await self.app(scope, receive, send)


def split_list(value: str | None) -> list[str] | None:
    """A comma-separated query parameter as a list (``None`` when absent)."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise BadRequestData(f"Empty item in list parameter: {value!r}")
    return items
