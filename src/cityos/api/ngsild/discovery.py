"""Routes of ``/types`` and ``/attributes``: what entity types and attributes exist."""

from __future__ import annotations

import uuid
from collections import defaultdict

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cityos.api.auth import check_public_read
from cityos.api.ngsild.common import (
    broker_of,
    check_params,
    context_of,
    negotiate,
    ngsi_response,
    tenant_of,
)
from cityos.api.ngsild.params import bool_param
from cityos.core.errors import ResourceNotFound
from cityos.storage.base import AttributeUsage

router = APIRouter()

LIST_PARAMS = frozenset({"details", "local"})
ITEM_PARAMS = frozenset({"local"})


def _usage(request: Request) -> list[AttributeUsage]:
    check_public_read(request, ())
    broker = broker_of(request)
    tenant = tenant_of(request)
    broker.check_tenant(tenant)
    return broker.storage.attribute_usage(tenant)


@router.get("/types")
async def list_types(request: Request) -> Response:
    """EntityTypeList, or with ``details=true`` one EntityType per type."""
    check_params(request, LIST_PARAMS)
    media_type = negotiate(request)
    ctx = await context_of(request)
    check_public_read(request, ())
    broker = broker_of(request)
    tenant = tenant_of(request)
    broker.check_tenant(tenant)
    type_iris = sorted(broker.storage.type_counts(tenant))
    if bool_param(request.query_params, "details"):
        attrs_by_type: dict[str, set[str]] = defaultdict(set)
        for row in broker.storage.attribute_usage(tenant):
            attrs_by_type[row.type_iri].add(row.attr_iri)
        data: object = [
            {
                "id": type_iri,
                "type": "EntityType",
                "typeName": ctx.compact(type_iri),
                "attributeNames": sorted(ctx.compact(a) for a in attrs_by_type[type_iri]),
            }
            for type_iri in type_iris
        ]
    else:
        data = {
            "id": f"urn:ngsi-ld:EntityTypeList:{uuid.uuid4()}",
            "type": "EntityTypeList",
            "typeList": [ctx.compact(t) for t in type_iris],
        }
    return ngsi_response(data, ctx, media_type)


@router.get("/types/{type_name:path}")
async def retrieve_type(request: Request, type_name: str) -> Response:
    """EntityTypeInfo: how many entities and which attributes of which kinds."""
    check_params(request, ITEM_PARAMS)
    media_type = negotiate(request)
    ctx = await context_of(request)
    type_iri = ctx.expand(type_name)
    check_public_read(request, ())
    broker = broker_of(request)
    tenant = tenant_of(request)
    broker.check_tenant(tenant)
    count = broker.storage.type_counts(tenant).get(type_iri, 0)
    if count == 0:
        raise ResourceNotFound(f"No entity of type {type_name}")
    kinds: dict[str, set[str]] = defaultdict(set)
    for row in broker.storage.attribute_usage(tenant):
        if row.type_iri == type_iri:
            kinds[row.attr_iri].add(row.kind)
    data = {
        "id": type_iri,
        "type": "EntityTypeInfo",
        "typeName": ctx.compact(type_iri),
        "entityCount": count,
        "attributeDetails": [
            {
                "id": attr_iri,
                "type": "Attribute",
                "attributeName": ctx.compact(attr_iri),
                "attributeTypes": sorted(kinds[attr_iri]),
            }
            for attr_iri in sorted(kinds)
        ],
    }
    return ngsi_response(data, ctx, media_type)


def _attribute_details(rows: list[AttributeUsage]) -> dict[str, dict[str, object]]:
    details: dict[str, dict[str, object]] = {}
    counts: dict[str, int] = defaultdict(int)
    kinds: dict[str, set[str]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        counts[row.attr_iri] += row.entity_count
        kinds[row.attr_iri].add(row.kind)
        types[row.attr_iri].add(row.type_iri)
    for attr_iri in sorted(counts):
        details[attr_iri] = {
            "count": counts[attr_iri],
            "kinds": sorted(kinds[attr_iri]),
            "types": sorted(types[attr_iri]),
        }
    return details


@router.get("/attributes")
async def list_attributes(request: Request) -> Response:
    """AttributeList, or with ``details=true`` one Attribute object per attribute.

    The detailed list names each attribute and the entity types that have it; counts
    and attribute kinds are left to retrieving one attribute (``/attributes/{attr}``).
    """
    check_params(request, LIST_PARAMS)
    media_type = negotiate(request)
    ctx = await context_of(request)
    details = _attribute_details(_usage(request))
    if bool_param(request.query_params, "details"):
        data: object = [
            _attribute_summary(attr_iri, info, ctx.compact) for attr_iri, info in details.items()
        ]
    else:
        data = {
            "id": f"urn:ngsi-ld:AttributeList:{uuid.uuid4()}",
            "type": "AttributeList",
            "attributeList": [ctx.compact(a) for a in details],
        }
    return ngsi_response(data, ctx, media_type)


@router.get("/attributes/{attr_name:path}")
async def retrieve_attribute(request: Request, attr_name: str) -> Response:
    """One Attribute: how many entities have it, of which kinds and types."""
    check_params(request, ITEM_PARAMS)
    media_type = negotiate(request)
    ctx = await context_of(request)
    attr_iri = ctx.expand(attr_name)
    details = _attribute_details(_usage(request))
    if attr_iri not in details:
        raise ResourceNotFound(f"No entity has attribute {attr_name}")
    return ngsi_response(
        _attribute_object(attr_iri, details[attr_iri], ctx.compact), ctx, media_type
    )


def _attribute_object(attr_iri: str, info: dict[str, object], compact: object) -> dict[str, object]:
    assert callable(compact)
    types = info["types"]
    assert isinstance(types, list)
    return {
        "id": attr_iri,
        "type": "Attribute",
        "attributeName": compact(attr_iri),
        "attributeCount": info["count"],
        "attributeTypes": info["kinds"],
        "typeNames": [compact(t) for t in types],
    }


def _attribute_summary(
    attr_iri: str, info: dict[str, object], compact: object
) -> dict[str, object]:
    full = _attribute_object(attr_iri, info, compact)
    del full["attributeCount"], full["attributeTypes"]
    return full
