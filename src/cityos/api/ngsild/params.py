"""Parsing the NGSI-LD query parameters shared by several routes into broker objects."""

from __future__ import annotations

import re

from starlette.datastructures import QueryParams

from cityos.api.ngsild.common import split_list
from cityos.broker.context import CompiledContext
from cityos.broker.entities import check_entity_id
from cityos.broker.geoquery import parse_geo_query
from cityos.broker.join import JoinRequest
from cityos.broker.ordering import parse_order_by
from cityos.broker.projection import (
    CORE_MEMBERS,
    Projection,
    check_pick_and_omit,
    parse_projection,
)
from cityos.broker.query_language import parse_q, parse_scope_q, parse_type_selector
from cityos.broker.representation import Format, RenderOptions
from cityos.broker.service import EntityQuery, EntitySelector
from cityos.core.errors import BadRequestData, InvalidRequest

_FORMATS: dict[str, Format] = {
    "keyValues": "keyValues",
    "simplified": "keyValues",
    "concise": "concise",
    "normalized": "normalized",
}
_KNOWN_OPTIONS = frozenset(
    {
        "keyValues",
        "simplified",
        "concise",
        "normalized",
        "sysAttrs",
        "noOverwrite",
        "replace",
        "update",
        "temporalValues",
        "aggregatedValues",
    }
)


def options_of(params: QueryParams) -> set[str]:
    """The ``options`` parameter as a set; unknown options are an InvalidRequest (400)."""
    try:
        options = set(split_list(params.get("options")) or [])
    except BadRequestData as exc:
        raise InvalidRequest(exc.detail) from None
    unknown = options - _KNOWN_OPTIONS
    if unknown:
        raise InvalidRequest(f"Unknown options: {', '.join(sorted(unknown))}")
    return options


def render_options(params: QueryParams, ctx: CompiledContext) -> RenderOptions:
    """Format, sysAttrs, projection and language from query parameters.

    ``format`` wins over a format given in ``options``. ``pick``/``omit`` may not come
    with ``attrs``, nor name the same member (400).
    """
    options = options_of(params)
    formats = {_FORMATS[o] for o in options if o in _FORMATS}
    if "format" in params:
        if params["format"] not in _FORMATS:
            raise InvalidRequest(f"Unknown format: {params['format']!r}")
        formats = {_FORMATS[params["format"]]}
    if len(formats - {"normalized"}) > 1:
        raise BadRequestData("Choose one of keyValues and concise")
    chosen: Format = next(iter(formats - {"normalized"}), "normalized")
    pick = _projection(params, "pick", ctx)
    omit = _projection(params, "omit", ctx)
    if (pick is not None or omit is not None) and "attrs" in params:
        raise BadRequestData("pick and omit cannot be combined with attrs")
    check_pick_and_omit(pick, omit)
    return RenderOptions(
        format=chosen,
        sys_attrs="sysAttrs" in options,
        attrs=attribute_names(params.get("attrs"), ctx),
        pick=pick,
        omit=omit,
        lang=params.get("lang"),
        dataset_ids=frozenset(split_list(params.get("datasetId")) or []) or None,
    )


def _projection(params: QueryParams, name: str, ctx: CompiledContext) -> Projection | None:
    text = params.get(name)
    if text is None:
        return None
    return parse_projection(text, parameter=name).expand(ctx.expand)


def join_request(params: QueryParams) -> JoinRequest | None:
    """``join=inline|flat`` with ``joinLevel`` (default 1); ``None`` for no join or ``@none``."""
    mode = params.get("join")
    level = int_param(params, "joinLevel", 1, minimum=1)
    if mode is None or mode == "@none":
        return None
    if mode not in ("inline", "flat"):
        raise BadRequestData(f"join must be inline, flat or @none: {mode!r}")
    return JoinRequest(mode="inline" if mode == "inline" else "flat", level=level)


def attribute_names(value: str | None, ctx: CompiledContext) -> frozenset[str] | None:
    """``attrs`` as expanded IRIs; ``id``, ``type`` and other core members are not attributes."""
    names = split_list(value)
    if names is None:
        return None
    core = [n for n in names if n in CORE_MEMBERS]
    if core:
        raise BadRequestData(f"attrs names attributes, not {', '.join(core)}")
    return frozenset(ctx.expand(n) for n in names)


def entity_query(params: QueryParams, ctx: CompiledContext, *, default_limit: int) -> EntityQuery:
    """Build an ``EntityQuery`` from the query parameters of GET /entities."""
    ids = split_list(params.get("id"))
    for entity_id in ids or ():
        check_entity_id(entity_id)
    types = None
    if "type" in params:
        types = parse_type_selector(params["type"]).expand(ctx.expand)
    q = parse_q(params["q"]).expand(ctx.expand) if "q" in params else None
    scope_q = parse_scope_q(params["scopeQ"]) if "scopeQ" in params else None
    geo = parse_geo_query(
        params.get("georel"),
        params.get("geometry"),
        params.get("coordinates"),
        params.get("geoproperty"),
    )
    id_pattern = compile_id_pattern(params.get("idPattern"))
    selector = EntitySelector(
        ids=frozenset(ids) if ids is not None else None, id_pattern=id_pattern, types=types
    )
    return EntityQuery(
        selectors=(selector,),
        attrs=attribute_names(params.get("attrs"), ctx),
        q=q,
        scope_q=scope_q,
        geo=geo,
        geo_attr=ctx.expand(geo.geoproperty) if geo is not None else None,
        limit=int_param(params, "limit", default_limit, minimum=0),
        offset=int_param(params, "offset", 0, minimum=0),
        count=bool_param(params, "count"),
        order_by=parse_order_by(params["orderBy"]).expand(ctx.expand)
        if "orderBy" in params
        else None,
    )


def compile_id_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """Compile ``idPattern``; a bad regular expression is a 400."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise BadRequestData(f"Invalid idPattern {pattern!r}: {exc}") from None


def int_param(params: QueryParams, name: str, default: int, *, minimum: int) -> int:
    """An integer query parameter with a lower bound."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestData(f"{name} must be an integer: {raw!r}") from None
    if value < minimum:
        raise BadRequestData(f"{name} must be at least {minimum}: {raw!r}")
    return value


def bool_param(params: QueryParams, name: str) -> bool:
    """A boolean query parameter ``true``/``false``."""
    raw = params.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise BadRequestData(f"{name} must be true or false: {raw!r}")
