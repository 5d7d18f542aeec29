"""Routes of ``/entities``: create, retrieve, query, replace, merge, delete, attributes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cityos.api.auth import check_public_read
from cityos.api.ngsild.common import (
    GEO_JSON,
    broker_of,
    check_params,
    context_of,
    negotiate,
    ngsi_response,
    read_ahead,
    read_body,
    run_read,
    strip_context,
    tenant_of,
)
from cityos.api.ngsild.params import (
    bool_param,
    entity_query,
    join_request,
    options_of,
    render_options,
)
from cityos.broker.context import CompiledContext
from cityos.broker.entities import check_attribute_name, check_entity_id
from cityos.broker.join import FetchEntities, JoinRequest, render_joined
from cityos.broker.model import StoredEntity
from cityos.broker.query_language import parse_type_selector
from cityos.broker.representation import (
    RenderOptions,
    render_entity,
    to_geojson_feature,
)
from cityos.broker.service import ContextBroker, EntityQuery, EntitySelector, UpdateResult
from cityos.core.errors import (
    BadRequestData,
    InvalidRequest,
    MethodNotAllowed,
    ResourceNotFound,
)
from cityos.core.jsonio import dumps

router = APIRouter()

GEO_PARAMS = frozenset({"georel", "geometry", "coordinates", "geoproperty"})
RENDER_PARAMS = frozenset(
    {
        "attrs",
        "pick",
        "omit",
        "options",
        "format",
        "lang",
        "geometryProperty",
        "datasetId",
        "join",
        "joinLevel",
        "local",
        "containedBy",
        "entityMap",
        "expandValues",
        "via",
    }
)
QUERY_PARAMS = (
    RENDER_PARAMS
    | GEO_PARAMS
    | frozenset(
        {
            "id",
            "idPattern",
            "type",
            "q",
            "csf",
            "scopeQ",
            "limit",
            "offset",
            "count",
            "orderBy",
            "collect",
        }
    )
)
RETRIEVE_PARAMS = RENDER_PARAMS | frozenset({"type"})
NO_PARAMS: frozenset[str] = frozenset({"local"})

ENTITY_PATH = "/ngsi-ld/v1/entities/"


def _object_body(data: Any) -> dict[str, Any]:  # Any: JSON value
    """The body of a single-entity write: anything but a JSON object is not a valid
    request at all (InvalidRequest), checked before its @context is looked at."""
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object")
    return data


async def _object_body_and_context(
    request: Request, *, allow_merge_patch: bool = False
) -> tuple[dict[str, Any], CompiledContext]:
    body = await read_body(request, allow_merge_patch=allow_merge_patch)
    _object_body(body.data)
    ctx = await context_of(request, body)
    return _object_body(strip_context(body.data)), ctx


@router.post("/entities", status_code=201)
async def create_entity(request: Request) -> Response:
    """Create an entity; 201 with its Location."""
    check_params(request, NO_PARAMS)
    data, ctx = await _object_body_and_context(request)
    entity_id = broker_of(request).create_entity(tenant_of(request), data, ctx.expand)
    return Response(status_code=201, headers={"Location": ENTITY_PATH + entity_id})


@router.get("/entities")
async def query_entities(request: Request) -> Response:
    """Query entities with type, id, idPattern, attrs, q, geo-query and scopeQ."""
    check_params(request, QUERY_PARAMS)
    media_type = negotiate(request, geo=True)
    ctx = await context_of(request)
    params = request.query_params
    if not any(key in params for key in ("type", "attrs", "q", "georel")) and not bool_param(
        params, "local"
    ):
        raise BadRequestData("Give at least one of type, attrs, q, georel or local=true")
    broker = broker_of(request)
    query = entity_query(params, ctx, default_limit=request.app.state.settings.default_page_limit)
    options = render_options(params, ctx)
    join = join_request(params)
    selector_types = query.selectors[0].types if query.selectors else None
    check_public_read(request, selector_types.type_names() if selector_types else ())
    if query.limit == 0 and not query.count:
        raise BadRequestData("limit=0 is only allowed together with count=true")
    tenant = tenant_of(request)
    result = await run_read(request, lambda: broker.query_entities(tenant, query))
    rendered = render_entities(result.entities, ctx, options, join, linked_entities(broker, tenant))
    headers = {}
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    if media_type == GEO_JSON:
        return geojson_response(params.get("geometryProperty"), rendered, ctx, options, headers)
    return ngsi_response(rendered, ctx, media_type, headers=headers)


def render_entities(
    entities: list[StoredEntity],
    ctx: CompiledContext,
    options: RenderOptions,
    join: JoinRequest | None,
    fetch: FetchEntities,
) -> list[dict[str, Any]]:
    """Render query results; entities left empty by pick/omit are left out."""
    if join is not None:
        return render_joined(entities, ctx.compact, options, join, fetch)
    rendered = [render_entity(e, ctx.compact, options) for e in entities]
    if options.pick is not None or options.omit is not None:
        rendered = [r for r in rendered if r]
    return rendered


def linked_entities(broker: ContextBroker, tenant: str) -> FetchEntities:
    """Look up the targets of Relationships by id, a page of ``max_limit`` at a time."""

    def fetch(ids: set[str]) -> dict[str, StoredEntity]:
        found: dict[str, StoredEntity] = {}
        ordered = sorted(ids)
        for start in range(0, len(ordered), broker.max_limit):
            chunk = frozenset(ordered[start : start + broker.max_limit])
            query = EntityQuery(selectors=(EntitySelector(ids=chunk),), limit=len(chunk))
            for entity in broker.query_entities(tenant, query).entities:
                found[entity["id"]] = entity
        return found

    return fetch


def geojson_response(
    geometry_property: str | None,
    rendered: list[dict[str, Any]] | dict[str, Any],
    ctx: CompiledContext,
    options: RenderOptions,
    headers: dict[str, str],
) -> Response:
    """A Feature (one entity) or FeatureCollection, with the ``@context`` of the request."""
    name = geometry_property or "location"
    key_values = options.format == "keyValues"
    if isinstance(rendered, dict):
        data: dict[str, Any] = to_geojson_feature(rendered, name, key_values)
    else:
        data = {
            "type": "FeatureCollection",
            "features": [to_geojson_feature(r, name, key_values) for r in rendered],
        }
    data["@context"] = ctx.context_value
    return Response(dumps(data), media_type=GEO_JSON, headers=headers)


@router.put("/entities")
@router.patch("/entities")
async def entity_id_missing(request: Request) -> Response:
    """PUT or PATCH without an entity id (``/entities/``) is bad request data, not a 405."""
    raise BadRequestData("The entity id is missing from the path")


@router.delete("/entities/{entity_id:path}/attrs")
@router.get("/entities/{entity_id:path}/attrs")
async def attribute_name_missing(request: Request, entity_id: str) -> Response:
    """``/entities/{id}/attrs/`` with no attribute name: the method is not allowed there."""
    raise MethodNotAllowed(f"{request.method} needs an attribute name after /attrs/")


@router.get("/entities/{entity_id:path}")
async def retrieve_entity(request: Request, entity_id: str) -> Response:
    """Retrieve one entity in the requested representation.

    404 when it does not exist, is not of the given ``type``, has none of the ``attrs``
    asked for, or has no member left after ``pick``/``omit``.
    """
    check_params(request, RETRIEVE_PARAMS)
    check_entity_id(entity_id)
    media_type = negotiate(request, geo=True)
    ctx = await context_of(request)
    params = request.query_params
    options = render_options(params, ctx)
    join = join_request(params)
    broker = broker_of(request)
    tenant = tenant_of(request)
    entity = broker.retrieve_entity(tenant, entity_id)
    check_public_read(request, entity["type"], any_public=True)
    if "type" in params and not (
        parse_type_selector(params["type"]).expand(ctx.expand).matches(entity["type"])
    ):
        raise ResourceNotFound(f"Entity {entity_id} is not of type {params['type']}")
    if options.attrs is not None and options.attrs.isdisjoint(entity.get("attrs", {})):
        raise ResourceNotFound(f"Entity {entity_id} has none of the attributes {params['attrs']}")
    rendered_list = render_entities([entity], ctx, options, join, linked_entities(broker, tenant))
    if not rendered_list:
        raise ResourceNotFound(f"Entity {entity_id} has no member left after pick and omit")
    # join=flat answers with the entity and its linked entities; alone, it is the entity.
    rendered: list[dict[str, Any]] | dict[str, Any] = (
        rendered_list if len(rendered_list) > 1 else rendered_list[0]
    )
    if media_type == GEO_JSON:
        return geojson_response(params.get("geometryProperty"), rendered, ctx, options, {})
    return ngsi_response(rendered, ctx, media_type)


@router.delete("/entities/{entity_id:path}/attrs/{attr_name}", status_code=204)
async def delete_attribute(request: Request, entity_id: str, attr_name: str) -> Response:
    """Delete an attribute (default instance, one datasetId, or all with deleteAll)."""
    check_params(request, frozenset({"datasetId", "deleteAll", "local"}))
    check_entity_id(entity_id)
    check_attribute_name(attr_name)
    ctx = await context_of(request)
    params = request.query_params
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    broker_of(request).delete_attribute(
        tenant,
        entity_id,
        ctx.expand(attr_name),
        dataset_id=params.get("datasetId"),
        delete_all=bool_param(params, "deleteAll"),
    )
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}/attrs/{attr_name}", status_code=204)
async def partial_update_attribute(request: Request, entity_id: str, attr_name: str) -> Response:
    """Partially update one attribute: merge the fragment into the instance."""
    check_params(request, NO_PARAMS)
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request, allow_merge_patch=True)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    broker_of(request).partial_update_attribute(tenant, entity_id, attr_name, data, ctx.expand)
    return Response(status_code=204)


@router.put("/entities/{entity_id:path}/attrs/{attr_name}", status_code=204)
async def replace_attribute(request: Request, entity_id: str, attr_name: str) -> Response:
    """Replace one attribute."""
    check_params(request, NO_PARAMS)
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    broker_of(request).replace_attribute(tenant, entity_id, attr_name, data, ctx.expand)
    return Response(status_code=204)


@router.post("/entities/{entity_id:path}/attrs", status_code=204)
async def append_attributes(request: Request, entity_id: str) -> Response:
    """Append attributes; 207 with an UpdateResult when some were not appended."""
    check_params(request, frozenset({"options", "local"}))
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request)
    no_overwrite = "noOverwrite" in options_of(request.query_params)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    result = broker_of(request).append_attributes(
        tenant, entity_id, data, ctx.expand, no_overwrite=no_overwrite
    )
    return _update_response(result, ctx)


@router.patch("/entities/{entity_id:path}/attrs", status_code=204)
async def update_attributes(request: Request, entity_id: str) -> Response:
    """Update existing attributes; 207 with an UpdateResult when some did not exist."""
    check_params(request, frozenset({"options", "local"}))
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request, allow_merge_patch=True)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    result = broker_of(request).update_attributes(tenant, entity_id, data, ctx.expand)
    return _update_response(result, ctx)


def _update_response(result: UpdateResult, ctx: CompiledContext) -> Response:
    if not result.not_updated:
        return Response(status_code=204)
    data = {
        "updated": [ctx.compact(iri) for iri in result.updated],
        "notUpdated": [
            {"attributeName": ctx.compact(iri), "reason": reason}
            for iri, reason in result.not_updated
        ],
    }
    return Response(dumps(data), status_code=207, media_type="application/json")


@router.patch("/entities/{entity_id:path}", status_code=204)
async def merge_entity(request: Request, entity_id: str) -> Response:
    """Merge-patch an entity."""
    check_params(request, frozenset({"options", "local"}))
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request, allow_merge_patch=True)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    broker_of(request).merge_entity(tenant, entity_id, data, ctx.expand)
    return Response(status_code=204)


@router.put("/entities/{entity_id:path}", status_code=204)
async def replace_entity(request: Request, entity_id: str) -> Response:
    """Replace an entity."""
    check_params(request, frozenset({"options", "local"}))
    check_entity_id(entity_id)
    data, ctx = await _object_body_and_context(request)
    tenant = tenant_of(request)
    await read_ahead(request, tenant, entity_id)
    broker_of(request).replace_entity(tenant, entity_id, data, ctx.expand)
    return Response(status_code=204)


@router.delete("/entities/{entity_id:path}", status_code=204)
async def delete_entity(request: Request, entity_id: str) -> Response:
    """Delete an entity."""
    check_params(request, frozenset({"type", "local"}))
    check_entity_id(entity_id)
    broker_of(request).delete_entity(tenant_of(request), entity_id)
    return Response(status_code=204)
