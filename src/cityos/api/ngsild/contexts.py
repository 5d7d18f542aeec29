"""``/jsonldContexts``: @context source management (NGSI-LD v1.8 clause 5.13, 6.29-6.31).

Mount ``router`` under ``/ngsi-ld/v1``. The handlers take their collaborators from
the application state, which the app must set at startup::

    app.state.context_resolver = ContextResolver(settings)        # cityos.broker.context
    app.state.context_store = app.state.context_resolver.store    # the same store

Errors are raised as ``cityos.core.errors`` exceptions; the application maps them to
ProblemDetails. What the ETSI test suite expects, and this router does:

- ``POST`` takes ``{"@context": <object | URL | array>}`` (``application/json`` or
  ``application/ld+json``), answers 201 with an empty body and a *relative*
  ``Location: /ngsi-ld/v1/jsonldContexts/{localId}``; a body that is not JSON or has
  no ``@context`` member is 400 InvalidRequest.
- ``GET`` list: URLs, or detail objects with ``details=true``; ``kind`` filters.
  A ``details`` other than true/false or an unknown ``kind`` is 400 BadRequestData.
- ``GET {contextId}``: the document ``{"@context": ...}`` or, with ``details=true``,
  the detail object (keys ``URL``, ``localId``, ``kind``, ``createdAt``,
  ``numberOfHits``, optional ``lastUsage``/``extraInfo``); 404 ResourceNotFound.
  ``contextId`` is a local id or a (percent-encoded) URL. Served as
  ``application/json`` unless the client asks for ``application/ld+json``.
- ``DELETE {contextId}``: 204. ``reload=true`` re-fetches a Cached context (503
  LdContextNotAvailable if that fails, the entry is kept) and is 400 BadRequestData
  for any other kind or an unknown id; deleting the core context without reload is
  400 BadRequestData (with reload it is re-read from the bundled copy).
- Every operation: an unknown query parameter is 400 InvalidRequest; content
  negotiation and body reading are the shared ones of ``common`` (406, 415, 413).
"""

from __future__ import annotations

from typing import cast
from uuid import uuid4

from fastapi import APIRouter, Request, Response

from cityos.api.ngsild.common import JSON, check_params, negotiate, read_body
from cityos.broker.context import ContextResolver, validate_context_value
from cityos.broker.context_store import (
    CONTEXT_KINDS,
    CORE_CONTEXT_ID,
    JSONLD_CONTEXTS_PATH,
    ContextKind,
    ContextStore,
    StoredContext,
)
from cityos.core import jsonio
from cityos.core.errors import (
    BadRequestData,
    InvalidRequest,
    ResourceNotFound,
)

router = APIRouter(tags=["jsonldContexts"])

_NO_PARAMS: frozenset[str] = frozenset()
_LIST_PARAMS = frozenset({"details", "kind"})
_SERVE_PARAMS = frozenset({"details"})
_DELETE_PARAMS = frozenset({"reload"})


def _resolver(request: Request) -> ContextResolver:
    resolver: ContextResolver = request.app.state.context_resolver
    return resolver


def _store(request: Request) -> ContextStore:
    store: ContextStore = request.app.state.context_store
    return store


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter: absent/empty is false; anything but true/false is 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise BadRequestData(f"Query parameter {name} must be true or false, not {raw!r}")


def _json(value: object, media_type: str = JSON, status_code: int = 200) -> Response:
    return Response(content=jsonio.dumps(value), status_code=status_code, media_type=media_type)


def _find(request: Request, context_id: str) -> StoredContext:
    entry = _store(request).get(context_id)
    if entry is None:
        raise ResourceNotFound(f"No @context with id or URL {context_id!r}")
    return entry


@router.post("/jsonldContexts", status_code=201)
async def add_context(request: Request) -> Response:
    """Store a Hosted @context; 201 with its relative ``Location``."""
    check_params(request, _NO_PARAMS)
    body = (await read_body(request)).data
    if not isinstance(body, dict) or "@context" not in body:
        raise InvalidRequest('The body must be a JSON object with an "@context" member')
    value = body["@context"]
    validate_context_value(value)
    local_id = uuid4().hex
    url = _resolver(request).hosted_url(local_id)
    _store(request).add(StoredContext(local_id=local_id, url=url, kind="Hosted", body=value))
    return Response(status_code=201, headers={"Location": f"{JSONLD_CONTEXTS_PATH}{local_id}"})


@router.get("/jsonldContexts")
async def list_contexts(request: Request) -> Response:
    """The URLs of all stored contexts, or their details with ``details=true``."""
    check_params(request, _LIST_PARAMS)
    media_type = negotiate(request)
    details = _flag(request, "details")
    kind_param = request.query_params.get("kind") or None
    if kind_param is not None and kind_param not in CONTEXT_KINDS:
        raise BadRequestData(
            f"kind must be one of {', '.join(sorted(CONTEXT_KINDS))}, not {kind_param!r}"
        )
    kind = cast(ContextKind | None, kind_param)  # checked above
    entries = _store(request).entries(kind)
    if details:
        return _json([entry.details() for entry in entries], media_type)
    return _json([entry.url for entry in entries], media_type)


@router.get("/jsonldContexts/{context_id:path}")
async def serve_context(request: Request, context_id: str) -> Response:
    """The stored @context document, or its details with ``details=true``.

    Served as ``application/json`` unless the client prefers ``application/ld+json``
    (``*/*`` gets JSON, as everywhere in the API); 406 if it accepts neither.
    """
    check_params(request, _SERVE_PARAMS)
    media_type = negotiate(request)
    details = _flag(request, "details")
    entry = _find(request, context_id)
    if details:
        return _json(entry.details(), media_type)
    return _json(entry.document(), media_type)


@router.delete("/jsonldContexts/{context_id:path}", status_code=204)
async def delete_context(request: Request, context_id: str) -> Response:
    """Delete a stored context, or re-fetch a Cached one with ``reload=true``."""
    check_params(request, _DELETE_PARAMS)
    reload = _flag(request, "reload")
    resolver = _resolver(request)
    if reload:
        entry = _store(request).get(context_id)
        if entry is None:
            raise BadRequestData(f"reload=true needs a Cached @context; {context_id!r} is unknown")
        if entry.kind != "Cached":
            raise BadRequestData(f"reload=true applies to Cached @contexts, not {entry.kind}")
        await resolver.reload(entry)
        return Response(status_code=204)
    entry = _find(request, context_id)
    if entry.local_id == CORE_CONTEXT_ID:
        raise BadRequestData("The NGSI-LD core @context cannot be deleted")
    _store(request).remove(entry.local_id)
    resolver.invalidate(entry.local_id)
    return Response(status_code=204)
