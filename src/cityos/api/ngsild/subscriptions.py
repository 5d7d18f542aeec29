"""Routes of ``/subscriptions`` (NGSI-LD 5.8): create, retrieve, query, update, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cityos.api.ngsild.common import (
    JSON_LD,
    check_params,
    context_of,
    link_header,
    negotiate,
    ngsi_response,
    read_body,
    strip_context,
    tenant_of,
)
from cityos.api.ngsild.params import bool_param, int_param, options_of
from cityos.broker.context import CompiledContext, ContextResolver
from cityos.broker.subscription_service import SubscriptionService
from cityos.broker.subscriptions import check_context_uri
from cityos.core.errors import InvalidRequest, TooManyResults
from cityos.core.timeutil import now_utc

router = APIRouter()

SUBSCRIPTIONS_PATH = "/ngsi-ld/v1/subscriptions"


def service_of(request: Request) -> SubscriptionService:
    """The app's ``SubscriptionService``."""
    service: SubscriptionService = request.app.state.subscriptions
    return service


async def _object_and_context(
    request: Request, *, allow_merge_patch: bool = False
) -> tuple[dict[str, Any], CompiledContext]:
    body = await read_body(request, allow_merge_patch=allow_merge_patch)
    if not isinstance(body.data, dict):
        raise InvalidRequest("The body must be a JSON object")
    ctx = await context_of(request, body)
    data = strip_context(body.data)
    assert isinstance(data, dict)
    return data, ctx


async def _jsonld_context(request: Request, data: dict[str, Any]) -> CompiledContext | None:
    """The compiled ``jsonldContext`` of a subscription, fetched now so that a context
    that cannot be retrieved is refused at once (503), not at notification time."""
    if data.get("jsonldContext") is None:
        return None
    resolver: ContextResolver = request.app.state.context_resolver
    return await resolver.resolve(check_context_uri(data["jsonldContext"]))


def _is_single_url(value: Any) -> bool:  # Any: an @context value
    return isinstance(value, str) or (
        isinstance(value, list) and len(value) == 1 and isinstance(value[0], str)
    )


@router.post("/subscriptions", status_code=201)
async def create_subscription(request: Request) -> Response:
    """Create a subscription; 201 with its Location.

    A subscription written with an inline or multi-part @context gets the URL of the
    ImplicitlyCreated copy of that context as its ``jsonldContext``.
    """
    check_params(request, frozenset({"local"}))
    data, ctx = await _object_and_context(request)
    given = await _jsonld_context(request, data)
    if given is not None:
        notify_ctx, jsonld_context, notify_context = (
            given,
            data["jsonldContext"],
            data["jsonldContext"],
        )
    else:
        notify_ctx, notify_context = ctx, None
        jsonld_context = None if _is_single_url(ctx.context_value) else ctx.link_url
    sub_id = service_of(request).create(
        tenant_of(request), data, ctx, notify_ctx, jsonld_context, notify_context
    )
    return Response(status_code=201, headers={"Location": f"{SUBSCRIPTIONS_PATH}/{sub_id}"})


@router.get("/subscriptions")
async def query_subscriptions(request: Request) -> Response:
    """List the tenant's subscriptions with ``limit``/``offset`` paging and prev/next Links."""
    check_params(request, frozenset({"limit", "offset", "count", "local", "options"}))
    media_type = negotiate(request)
    ctx = await context_of(request)
    params = request.query_params
    sys_attrs = "sysAttrs" in options_of(params)
    settings = request.app.state.settings
    limit = int_param(params, "limit", settings.default_page_limit, minimum=0)
    offset = int_param(params, "offset", 0, minimum=0)
    if limit > settings.max_page_limit:
        raise TooManyResults(f"limit must be at most {settings.max_page_limit}")
    count = bool_param(params, "count")
    subs = service_of(request).query(tenant_of(request))
    now = now_utc()
    page = [s.render(ctx, now, sys_attrs=sys_attrs) for s in subs[offset : offset + limit]]
    links = []
    if offset > 0 and limit > 0:
        links.append(_page_link(max(0, offset - limit), limit, "prev"))
    if limit > 0 and offset + limit < len(subs):
        links.append(_page_link(offset + limit, limit, "next"))
    headers: dict[str, str] = {}
    if count:
        headers["NGSILD-Results-Count"] = str(len(subs))
    if media_type != JSON_LD:
        links.insert(0, link_header(ctx))
    response = ngsi_response(page, ctx, media_type, headers=headers)
    if links:
        response.headers["Link"] = ",".join(links)
    return response


def _page_link(offset: int, limit: int, rel: str) -> str:
    return f'<{SUBSCRIPTIONS_PATH}?limit={limit}&offset={offset}>;rel="{rel}";type="{JSON_LD}"'


@router.get("/subscriptions/{sub_id:path}")
async def retrieve_subscription(request: Request, sub_id: str) -> Response:
    """Retrieve a subscription with its notification status."""
    check_params(request, frozenset({"local", "options"}))
    media_type = negotiate(request)
    sys_attrs = "sysAttrs" in options_of(request.query_params)
    ctx = await context_of(request)
    sub = service_of(request).retrieve(tenant_of(request), sub_id)
    return ngsi_response(sub.render(ctx, now_utc(), sys_attrs=sys_attrs), ctx, media_type)


@router.patch("/subscriptions/{sub_id:path}", status_code=204)
async def update_subscription(request: Request, sub_id: str) -> Response:
    """Update a subscription with a fragment; 204."""
    check_params(request, frozenset({"local"}))
    service = service_of(request)
    tenant = tenant_of(request)
    data, ctx = await _object_and_context(request, allow_merge_patch=True)
    notify_ctx = await _jsonld_context(request, data)
    service.update(tenant, sub_id, data, ctx, notify_ctx)
    return Response(status_code=204)


@router.delete("/subscriptions/{sub_id:path}", status_code=204)
async def delete_subscription(request: Request, sub_id: str) -> Response:
    """Delete a subscription; 204."""
    check_params(request, frozenset({"local"}))
    service_of(request).delete(tenant_of(request), sub_id)
    return Response(status_code=204)
