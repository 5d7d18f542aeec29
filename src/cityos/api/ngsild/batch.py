"""Routes of ``/entityOperations`` (create, upsert, update, delete, merge, query) and purge."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from cityos.api.auth import check_public_read
from cityos.api.ngsild.common import (
    GEO_JSON,
    JSON_LD,
    broker_of,
    check_params,
    context_of,
    entity_expander,
    link_context_url,
    negotiate,
    ngsi_response,
    read_body,
    split_list,
    strip_context,
    tenant_of,
)
from cityos.api.ngsild.entities import geojson_response, linked_entities, render_entities
from cityos.api.ngsild.params import (
    bool_param,
    compile_id_pattern,
    entity_query,
    int_param,
    join_request,
    options_of,
    render_options,
)
from cityos.api.problems import problem_details
from cityos.broker.context import CompiledContext
from cityos.broker.entities import ExpandTerm
from cityos.broker.geoquery import parse_geo_query
from cityos.broker.join import JoinRequest
from cityos.broker.ordering import parse_order_by
from cityos.broker.query_language import parse_q, parse_scope_q, parse_type_selector
from cityos.broker.representation import RenderOptions
from cityos.broker.service import BatchResult, EntityQuery, EntitySelector
from cityos.core.errors import BadRequestData, CityosError
from cityos.core.jsonio import dumps

router = APIRouter()

PURGE_PARAMS = frozenset(
    {"type", "attrs", "id", "idPattern", "q", "csf", "scopeQ", "local", "keep", "drop"}
    | {"georel", "geometry", "coordinates", "geoproperty"}
)


BatchItems = list[tuple[Any, ExpandTerm]]
ItemErrors = list[tuple[str, CityosError]]


async def _batch_items(request: Request) -> tuple[BatchItems, ItemErrors]:
    """The entities of a batch body, each with the expander of its own @context.

    The whole request fails (400) for a body that is not a non-empty array, or for a JSON-LD
    body that comes with a Link @context. An entity whose own @context contradicts the
    Content-Type (one in a JSON body, none in a JSON-LD body) fails alone (NGSI-LD 6.3.5),
    reported in the returned errors.
    """
    body = await read_body(request, allow_merge_patch=True)
    if not isinstance(body.data, list):
        raise BadRequestData("A batch body must be a JSON array")
    if not body.data:
        raise BadRequestData("A batch body must not be an empty array")
    items: BatchItems = []
    errors: ItemErrors = []
    if body.media_type != JSON_LD:
        ctx = await context_of(request)
        for item in body.data:
            if isinstance(item, dict) and "@context" in item:
                errors.append(
                    (
                        _payload_id(item),
                        BadRequestData("A JSON body must not carry @context; use the Link header"),
                    )
                )
            else:
                items.append((item, ctx.expand))
        return items, errors
    if link_context_url(request) is not None:
        raise BadRequestData("A JSON-LD body must not come with a Link @context header")
    for item in body.data:
        if not isinstance(item, dict) or "@context" not in item:
            errors.append(
                (
                    _payload_id(item),
                    BadRequestData("Every entity of a JSON-LD batch must carry an @context"),
                )
            )
            continue
        items.append((strip_context(item), await entity_expander(request, item["@context"])))
    return items, errors


def _payload_id(item: object) -> str:
    raw = item.get("id", item.get("@id")) if isinstance(item, dict) else None
    return raw if isinstance(raw, str) else ""


def _batch_response(result: BatchResult, *, success_status: int, body_on_success: bool) -> Response:
    if result.errors:
        data = {
            "success": result.success,
            "errors": [
                {"entityId": entity_id, "error": problem_details(error)}
                for entity_id, error in result.errors
            ],
        }
        return Response(dumps(data), status_code=207, media_type="application/json")
    if body_on_success:
        return Response(
            dumps(result.success), status_code=success_status, media_type="application/json"
        )
    return Response(status_code=success_status)


@router.post("/entityOperations/create")
async def batch_create(request: Request) -> Response:
    """Create many entities: 201 with their ids, or 207 with a BatchOperationResult."""
    items, errors = await _batch_items(request)
    result = broker_of(request).batch_create(tenant_of(request), items)
    result.errors.extend(errors)
    return _batch_response(result, success_status=201, body_on_success=True)


@router.post("/entityOperations/upsert")
async def batch_upsert(request: Request) -> Response:
    """Create or replace (``options=update``: update) many entities."""
    options = options_of(request.query_params)
    if {"replace", "update"} <= options:
        raise BadRequestData("Choose one of options=replace and options=update")
    items, errors = await _batch_items(request)
    result = broker_of(request).batch_upsert(
        tenant_of(request), items, replace="update" not in options
    )
    result.errors.extend(errors)
    if result.errors:
        return _batch_response(result, success_status=207, body_on_success=False)
    if result.created:
        return Response(dumps(result.created), status_code=201, media_type="application/json")
    return Response(status_code=204)


@router.post("/entityOperations/update")
async def batch_update(request: Request) -> Response:
    """Append attributes to many existing entities."""
    options = options_of(request.query_params)
    items, errors = await _batch_items(request)
    result = broker_of(request).batch_update(
        tenant_of(request), items, no_overwrite="noOverwrite" in options
    )
    result.errors.extend(errors)
    return _batch_response(result, success_status=204, body_on_success=False)


@router.post("/entityOperations/merge")
async def batch_merge(request: Request) -> Response:
    """Merge-patch many existing entities."""
    items, errors = await _batch_items(request)
    result = broker_of(request).batch_merge(tenant_of(request), items)
    result.errors.extend(errors)
    return _batch_response(result, success_status=204, body_on_success=False)


@router.post("/entityOperations/delete")
async def batch_delete(request: Request) -> Response:
    """Delete many entities by id."""
    body = await read_body(request)
    if not isinstance(body.data, list):
        raise BadRequestData("A batch delete body must be a JSON array of entity ids")
    if not body.data:
        raise BadRequestData("A batch delete body must not be an empty array")
    result = broker_of(request).batch_delete(tenant_of(request), body.data)
    return _batch_response(result, success_status=204, body_on_success=False)


PURGE_SELECTORS = ("type", "id", "idPattern", "q", "scopeQ", "georel")


@router.delete("/entities")
async def purge_entities(request: Request) -> Response:
    """Purge entities (NGSI-LD 5.6.21): delete every entity matching the query parameters,
    or with ``drop`` / ``keep`` only remove (all but) the listed attributes from them.
    ``local=true`` alone addresses every entity of this broker."""
    check_params(request, PURGE_PARAMS)
    params = request.query_params
    if not any(key in params for key in PURGE_SELECTORS) and not bool_param(params, "local"):
        raise BadRequestData(
            "Purging needs at least one of type, id, idPattern, q, scopeQ, georel or local=true"
        )
    if "keep" in params and "drop" in params:
        raise BadRequestData("Give at most one of keep and drop")
    ctx = await context_of(request)
    query = entity_query(params, ctx, default_limit=1)
    keep = split_list(params.get("keep"))
    drop = split_list(params.get("drop"))
    broker_of(request).purge_entities(
        tenant_of(request),
        query,
        keep=frozenset(ctx.expand(name) for name in keep) if keep is not None else None,
        drop=frozenset(ctx.expand(name) for name in drop) if drop is not None else None,
    )
    return Response(status_code=204)


POST_QUERY_PARAMS = frozenset(
    {
        "limit",
        "offset",
        "count",
        "options",
        "format",
        "local",
        "attrs",
        "pick",
        "omit",
        "lang",
        "datasetId",
        "join",
        "joinLevel",
        "geometryProperty",
        "orderBy",
    }
)


@router.post("/entityOperations/query")
async def query_post(request: Request) -> Response:
    """Query entities with a Query object in the body (NGSI-LD 5.7.2 over POST).

    The body's ``attrs``, ``pick``, ``omit``, ``lang``, ``datasetId``, ``join``,
    ``joinLevel`` and ``geometryProperty`` take precedence over the same query parameters.
    """
    check_params(request, POST_QUERY_PARAMS)
    media_type = negotiate(request, geo=True)
    body = await read_body(request)
    ctx = await context_of(request, body)
    data = strip_context(body.data)
    if not isinstance(data, dict) or data.get("type") != "Query":
        raise BadRequestData("The body must be a Query object with type 'Query'")
    query = query_from_body(data, ctx, request)
    options = _body_render_options(data, request, ctx)
    join = _body_join(data, request)
    check_public_read(
        request,
        set().union(*(s.types.type_names() for s in query.selectors if s.types is not None))
        if query.selectors and all(s.types is not None for s in query.selectors)
        else (),
    )
    broker = broker_of(request)
    tenant = tenant_of(request)
    result = broker.query_entities(tenant, query)
    rendered = render_entities(result.entities, ctx, options, join, linked_entities(broker, tenant))
    headers = {}
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    if media_type == GEO_JSON:
        geometry_property = data.get(
            "geometryProperty", request.query_params.get("geometryProperty")
        )
        if geometry_property is not None and not isinstance(geometry_property, str):
            raise BadRequestData("geometryProperty must be a string")
        return geojson_response(geometry_property, rendered, ctx, options, headers)
    return ngsi_response(rendered, ctx, media_type, headers=headers)


def _body_params(data: dict[str, Any], request: Request, names: tuple[str, ...]) -> QueryParams:
    """Query parameters overlaid with the same members of a Query body (lists joined by ',')."""
    merged = dict(request.query_params)
    for name in names:
        if name not in data:
            continue
        value = data[name]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadRequestData(f"{name} must be a string or a list of strings")
        merged[name] = value
    return QueryParams(merged)


def _body_render_options(
    data: dict[str, Any], request: Request, ctx: CompiledContext
) -> RenderOptions:
    params = _body_params(data, request, ("attrs", "pick", "omit", "lang", "datasetId"))
    return render_options(params, ctx)


def _body_join(data: dict[str, Any], request: Request) -> JoinRequest | None:
    return join_request(_body_params(data, request, ("join", "joinLevel")))


def query_from_body(data: dict[str, Any], ctx: CompiledContext, request: Request) -> EntityQuery:
    selectors: list[EntitySelector] = []
    for raw in data.get("entities") or []:
        if not isinstance(raw, dict):
            raise BadRequestData("entities must be a list of EntitySelector objects")
        ids = raw.get("id")
        selectors.append(
            EntitySelector(
                ids=frozenset(ids if isinstance(ids, list) else [ids]) if ids else None,
                id_pattern=compile_id_pattern(raw.get("idPattern")),
                types=parse_type_selector(raw["type"]).expand(ctx.expand)
                if "type" in raw
                else None,
            )
        )
    geo_q = data.get("geoQ")
    geo = None
    if geo_q is not None:
        if not isinstance(geo_q, dict):
            raise BadRequestData("geoQ must be an object")
        coordinates = geo_q.get("coordinates")
        geo = parse_geo_query(
            geo_q.get("georel"),
            geo_q.get("geometry"),
            coordinates if coordinates is not None else None,
            geo_q.get("geoproperty"),
        )
    attrs = data.get("attrs")
    if attrs is not None and (
        not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs)
    ):
        raise BadRequestData("attrs must be a list of attribute names")
    if not selectors and attrs is None and "q" not in data and geo is None:
        raise BadRequestData("Give at least one of entities, attrs, q or geoQ")
    params = request.query_params
    return EntityQuery(
        selectors=tuple(selectors),
        attrs=frozenset(ctx.expand(a) for a in attrs) if attrs else None,
        q=parse_q(data["q"]).expand(ctx.expand) if "q" in data else None,
        scope_q=parse_scope_q(data["scopeQ"]) if "scopeQ" in data else None,
        geo=geo,
        geo_attr=ctx.expand(geo.geoproperty) if geo is not None else None,
        limit=int_param(params, "limit", request.app.state.settings.default_page_limit, minimum=0),
        offset=int_param(params, "offset", 0, minimum=0),
        count=bool_param(params, "count"),
        order_by=parse_order_by(params["orderBy"]).expand(ctx.expand)
        if "orderBy" in params
        else None,
    )


__all__ = ["router", "split_list"]
