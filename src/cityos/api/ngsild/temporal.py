"""Routes of ``/temporal/entities``: the NGSI-LD temporal API (§6.18-6.22).

Each route checks its parameters (unknown ones are 400 InvalidRequest), negotiates the
response type (JSON or JSON-LD; GeoJSON has no temporal form, so it is 406) and
translates into ``TemporalBroker`` calls.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from cityos.api.auth import check_public_read
from cityos.api.ngsild.batch import query_from_body
from cityos.api.ngsild.common import (
    check_params,
    context_of,
    negotiate,
    ngsi_response,
    read_body,
    split_list,
    strip_context,
    tenant_of,
)
from cityos.api.ngsild.entities import GEO_PARAMS
from cityos.api.ngsild.params import bool_param, entity_query, options_of, render_options
from cityos.broker.context import CompiledContext
from cityos.broker.entities import check_attribute_name, check_entity_id, is_uri
from cityos.broker.representation import RenderOptions
from cityos.broker.temporal import (
    TemporalBroker,
    TemporalEntityData,
    TemporalFormat,
    TemporalPage,
    TemporalQuery,
    TemporalRange,
    parse_aggregation,
    parse_temporal_query,
    render_temporal_entity,
)
from cityos.core.errors import BadRequestData, InvalidRequest, MethodNotAllowed, ResourceNotFound

router = APIRouter()

TEMPORAL_PATH = "/ngsi-ld/v1/temporal/entities/"
TEMPORAL_PARAMS = frozenset(
    {
        "timerel",
        "timeAt",
        "endTimeAt",
        "timeproperty",
        "lastN",
        "attrs",
        "options",
        "format",
        "aggrMethods",
        "aggrPeriodDuration",
        "datasetId",
        "pick",
        "omit",
        "lang",
        "local",
    }
)
RETRIEVE_PARAMS = TEMPORAL_PARAMS | frozenset({"type"})
QUERY_PARAMS = (
    TEMPORAL_PARAMS
    | GEO_PARAMS
    | frozenset(
        {"id", "idPattern", "type", "q", "csf", "scopeQ", "limit", "offset", "count", "orderBy"}
    )
)
_FORMATS = ("normalized", "temporalValues", "aggregatedValues")


def temporal_of(request: Request) -> TemporalBroker:
    """The app's ``TemporalBroker``."""
    temporal: TemporalBroker = request.app.state.temporal
    return temporal


def _temporal_format(params: QueryParams) -> TemporalFormat:
    """``format`` wins over the formats in ``options``; aggregation parameters are checked
    only when the aggregated form is asked for."""
    options = options_of(params)
    if "format" in params:
        if params["format"] not in _FORMATS:
            raise InvalidRequest(f"Unknown temporal format: {params['format']!r}")
        name = params["format"]
    elif "aggregatedValues" in options:
        name = "aggregatedValues"
    elif "temporalValues" in options:
        name = "temporalValues"
    else:
        name = "normalized"
    if name != "aggregatedValues":
        return TemporalFormat(name)
    aggregation = parse_aggregation(params.get("aggrMethods"), params.get("aggrPeriodDuration"))
    return TemporalFormat(name, aggregation)


def _temporal_query(params: QueryParams) -> TemporalQuery:
    return parse_temporal_query(
        params.get("timerel"),
        params.get("timeAt"),
        params.get("endTimeAt"),
        params.get("timeproperty"),
        params.get("lastN"),
    )


def _render_options(params: QueryParams, ctx: CompiledContext) -> RenderOptions:
    # ``format`` takes temporal values here, which the entity render options refuse.
    plain = QueryParams([(k, v) for k, v in params.multi_items() if k != "format"])
    options = {o for o in options_of(params) if o not in ("temporalValues", "aggregatedValues")}
    items = [(k, v) for k, v in plain.multi_items() if k != "options"]
    if options:
        items.append(("options", ",".join(sorted(options))))
    return render_options(QueryParams(items), ctx)


def _dataset_ids(params: QueryParams) -> frozenset[str] | None:
    ids = split_list(params.get("datasetId"))
    return frozenset(ids) if ids else None


def _render(
    data: TemporalEntityData,
    ctx: CompiledContext,
    options: RenderOptions,
    fmt: TemporalFormat,
    query: TemporalQuery,
) -> dict[str, Any]:
    return render_temporal_entity(
        data.entity_id,
        data.types,
        data.rows,
        ctx.compact,
        options,
        fmt,
        query,
        data.emptied,
        data.aggregated,
    )


def _cut_response(
    data: Any,  # Any: JSON value
    ctx: CompiledContext,
    media_type: str,
    cut: TemporalRange | None,
    headers: dict[str, str] | None = None,
) -> Response:
    """200, or 206 Partial Content with ``Content-Range`` when temporal pagination cut."""
    if cut is None:
        return ngsi_response(data, ctx, media_type, headers=headers)
    headers = {**(headers or {}), "Content-Range": cut.content_range()}
    return ngsi_response(data, ctx, media_type, status=206, headers=headers)


@router.post("/temporal/entities", status_code=201)
async def create_temporal_entity(request: Request) -> Response:
    """Create a temporal entity (201) or add instances to an existing one (204)."""
    check_params(request, frozenset({"local"}))
    body = await read_body(request)
    if not isinstance(body.data, dict):
        raise InvalidRequest("The body must be a JSON object")
    ctx = await context_of(request, body)
    data = strip_context(body.data)
    created = temporal_of(request).create_or_append(tenant_of(request), data, ctx.expand)
    if not created:
        return Response(status_code=204)
    return Response(status_code=201, headers={"Location": TEMPORAL_PATH + str(data.get("id"))})


@router.get("/temporal/entities")
async def query_temporal_entities(request: Request) -> Response:
    """Query the temporal evolution of entities (§6.18.3.1)."""
    check_params(request, QUERY_PARAMS)
    media_type = negotiate(request)
    ctx = await context_of(request)
    params = request.query_params
    if not any(key in params for key in ("type", "attrs", "q", "georel")) and not bool_param(
        params, "local"
    ):
        raise BadRequestData("Give at least one of type, attrs, q, georel or local=true")
    fmt = _temporal_format(params)
    query = _temporal_query(params)
    options = _render_options(params, ctx)
    selection = entity_query(
        params, ctx, default_limit=request.app.state.settings.default_page_limit
    )
    selector_types = selection.selectors[0].types if selection.selectors else None
    check_public_read(request, selector_types.type_names() if selector_types else ())
    page = temporal_of(request).query(
        tenant_of(request), selection, query, _dataset_ids(params), aggregation=fmt.aggregation
    )
    return _query_response(page, ctx, options, fmt, query, media_type)


def _query_response(
    page: TemporalPage,
    ctx: CompiledContext,
    options: RenderOptions,
    fmt: TemporalFormat,
    query: TemporalQuery,
    media_type: str,
) -> Response:
    rendered = [_render(item, ctx, options, fmt, query) for item in page.entities]
    if options.pick is not None or options.omit is not None:
        rendered = [r for r in rendered if r]
    headers = {"NGSILD-Results-Count": str(page.total)} if page.total is not None else None
    return _cut_response(rendered, ctx, media_type, page.cut, headers)


@router.post("/temporal/entityOperations/query")
async def query_temporal_entities_post(request: Request) -> Response:
    """Query the temporal evolution of entities with a Query object (§6.24 for temporal):
    ``entities``, ``attrs``, ``q``, ``geoQ`` and ``temporalQ`` in the body."""
    check_params(request, frozenset({"limit", "offset", "count", "options", "format", "local"}))
    media_type = negotiate(request)
    body = await read_body(request)
    ctx = await context_of(request, body)
    data = strip_context(body.data)
    if not isinstance(data, dict) or data.get("type") != "Query":
        raise BadRequestData("The body must be a Query object with type 'Query'")
    temporal_q = data.get("temporalQ") or {}
    if not isinstance(temporal_q, dict):
        raise BadRequestData("temporalQ must be an object")
    items = [(k, v) for k, v in request.query_params.multi_items()]
    for key in ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN"):
        if key in temporal_q:
            items.append((key, str(temporal_q[key])))
    for key in ("aggrMethods", "aggrPeriodDuration"):
        if key in data:
            value = data[key]
            items.append((key, ",".join(value) if isinstance(value, list) else str(value)))
    if isinstance(data.get("attrs"), list):
        items.append(("attrs", ",".join(str(a) for a in data["attrs"])))
    params = QueryParams(items)
    selection = query_from_body(data, ctx, request)
    fmt = _temporal_format(params)
    query = _temporal_query(params)
    options = _render_options(params, ctx)
    page = temporal_of(request).query(
        tenant_of(request), selection, query, _dataset_ids(params), aggregation=fmt.aggregation
    )
    return _query_response(page, ctx, options, fmt, query, media_type)


@router.get("/temporal/entities/{entity_id:path}")
async def retrieve_temporal_entity(request: Request, entity_id: str) -> Response:
    """Retrieve the temporal evolution of an entity (§6.19.3.1)."""
    check_params(request, RETRIEVE_PARAMS)
    media_type = negotiate(request)
    check_entity_id(entity_id)
    ctx = await context_of(request)
    params = request.query_params
    fmt = _temporal_format(params)
    query = _temporal_query(params)
    options = _render_options(params, ctx)
    data, cut = temporal_of(request).retrieve(
        tenant_of(request),
        entity_id,
        options.attrs,
        query,
        _dataset_ids(params),
        aggregation=fmt.aggregation,
    )
    check_public_read(request, data.types, any_public=True)
    rendered = _render(data, ctx, options, fmt, query)
    if not rendered:
        raise ResourceNotFound(f"Entity {entity_id} has no member left after pick and omit")
    return _cut_response(rendered, ctx, media_type, cut)


@router.delete("/temporal/entities/{entity_id:path}/attrs//{instance_id:path}")
async def instance_attribute_missing(
    request: Request, entity_id: str, instance_id: str
) -> Response:
    """An instance path with an empty attribute name is bad request data."""
    raise BadRequestData("The attribute name is missing from the path")


@router.patch("/temporal/entities/{entity_id:path}/attrs//{instance_id:path}")
async def instance_patch_attribute_missing(
    request: Request, entity_id: str, instance_id: str
) -> Response:
    """PATCH with an empty attribute name is 405: with the empty segment dropped the path
    reads as an attribute path (``/attrs/{attrId}``), which takes only DELETE (ETSI
    016_02_06), whereas DELETE there stays a malformed instance path (400, 017_02_05)."""
    raise MethodNotAllowed("PATCH needs an attribute name and an instance id after /attrs/")


def _check_instance_id(instance_id: str) -> None:
    if not is_uri(instance_id):
        raise BadRequestData(f"instanceId must be a URI: {instance_id!r}")


@router.delete("/temporal/entities/{entity_id:path}/attrs/{attr_name}/{instance_id:path}")
async def delete_attribute_instance(
    request: Request, entity_id: str, attr_name: str, instance_id: str
) -> Response:
    """Delete one instance of an attribute's history (§6.22.3.2)."""
    check_params(request, frozenset({"local"}))
    check_entity_id(entity_id)
    check_attribute_name(attr_name)
    _check_instance_id(instance_id)
    ctx = await context_of(request)
    temporal_of(request).delete_instance(
        tenant_of(request), entity_id, ctx.expand(attr_name), instance_id
    )
    return Response(status_code=204)


@router.patch("/temporal/entities/{entity_id:path}/attrs/{attr_name}/{instance_id:path}")
async def modify_attribute_instance(
    request: Request, entity_id: str, attr_name: str, instance_id: str
) -> Response:
    """Modify one instance of an attribute's history (§6.22.3.1)."""
    check_params(request, frozenset({"local"}))
    check_entity_id(entity_id)
    check_attribute_name(attr_name)
    _check_instance_id(instance_id)
    body = await read_body(request, allow_merge_patch=True)
    ctx = await context_of(request, body)
    temporal_of(request).modify_instance(
        tenant_of(request), entity_id, attr_name, instance_id, strip_context(body.data), ctx.expand
    )
    return Response(status_code=204)


@router.delete("/temporal/entities/{entity_id:path}/attrs/{attr_name}")
async def delete_temporal_attribute(request: Request, entity_id: str, attr_name: str) -> Response:
    """Delete an attribute's history (§6.21.3.1): default instance, a datasetId, or all."""
    check_params(request, frozenset({"datasetId", "deleteAll", "local"}))
    check_entity_id(entity_id)
    check_attribute_name(attr_name)
    ctx = await context_of(request)
    params = request.query_params
    temporal_of(request).delete_attribute(
        tenant_of(request),
        entity_id,
        ctx.expand(attr_name),
        dataset_id=params.get("datasetId") or None,
        delete_all=bool_param(params, "deleteAll"),
    )
    return Response(status_code=204)


@router.post("/temporal/entities/{entity_id:path}/attrs")
async def append_temporal_attributes(request: Request, entity_id: str) -> Response:
    """Add attribute instances to a temporal entity (§6.20.3.1)."""
    check_params(request, frozenset({"local"}))
    check_entity_id(entity_id)
    body = await read_body(request)
    if not isinstance(body.data, dict):
        raise InvalidRequest("The body must be a JSON object")
    ctx = await context_of(request, body)
    temporal_of(request).append_attributes(
        tenant_of(request), entity_id, strip_context(body.data), ctx.expand
    )
    return Response(status_code=204)


@router.delete("/temporal/entities/{entity_id:path}")
async def delete_temporal_entity(request: Request, entity_id: str) -> Response:
    """Delete the temporal representation of an entity (§6.19.3.2)."""
    check_params(request, frozenset({"local"}))
    check_entity_id(entity_id)
    temporal_of(request).delete_entity(tenant_of(request), entity_id)
    return Response(status_code=204)
