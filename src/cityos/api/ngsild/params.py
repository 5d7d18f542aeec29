"""Parsing the NGSI-LD query parameters shared by several routes into broker objects."""

from __future__ import annotations

import re

from starlette.datastructures import QueryParams

from cityos.api.ngsild.common import split_list
from cityos.broker.context import CompiledContext
from cityos.broker.geoquery import parse_geo_query
from cityos.broker.query_language import parse_q, parse_scope_q, parse_type_selector
from cityos.broker.representation import Format, RenderOptions
from cityos.broker.service import EntityQuery, EntitySelector
from cityos.core.errors import BadRequestData

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
    """The ``options`` parameter as a set; unknown options are a 400."""
    options = set(split_list(params.get("options")) or [])
    unknown = options - _KNOWN_OPTIONS
    if unknown:
        raise BadRequestData(f"Unknown options: {', '.join(sorted(unknown))}")
    return options


def render_options(params: QueryParams, ctx: CompiledContext) -> RenderOptions:
    """Format, sysAttrs, projection and language from query parameters."""
    options = options_of(params)
    formats = {_FORMATS[o] for o in options if o in _FORMATS}
    if "format" in params:
        if params["format"] not in _FORMATS:
            raise BadRequestData(f"Unknown format: {params['format']!r}")
        formats = {_FORMATS[params["format"]]}
    if len(formats - {"normalized"}) > 1:
        raise BadRequestData("Choose one of keyValues and concise")
    chosen: Format = next(iter(formats - {"normalized"}), "normalized")
    return RenderOptions(
        format=chosen,
        sys_attrs="sysAttrs" in options,
        attrs=_expanded(params.get("attrs"), ctx),
        pick=_members(params.get("pick"), ctx),
        omit=_members(params.get("omit"), ctx),
        lang=params.get("lang"),
        dataset_ids=frozenset(split_list(params.get("datasetId")) or []) or None,
    )


def _expanded(value: str | None, ctx: CompiledContext) -> frozenset[str] | None:
    names = split_list(value)
    return None if names is None else frozenset(ctx.expand(n) for n in names)


def _members(value: str | None, ctx: CompiledContext) -> frozenset[str] | None:
    names = split_list(value)
    if names is None:
        return None
    return frozenset(n if n in ("id", "type", "scope") else ctx.expand(n) for n in names)


def entity_query(params: QueryParams, ctx: CompiledContext, *, default_limit: int) -> EntityQuery:
    """Build an ``EntityQuery`` from the query parameters of GET /entities."""
    ids = split_list(params.get("id"))
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
        attrs=_expanded(params.get("attrs"), ctx),
        q=q,
        scope_q=scope_q,
        geo=geo,
        geo_attr=ctx.expand(geo.geoproperty) if geo is not None else None,
        limit=int_param(params, "limit", default_limit, minimum=0),
        offset=int_param(params, "offset", 0, minimum=0),
        count=bool_param(params, "count"),
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
