"""API-key authentication as a pure ASGI middleware, and the read-permission check.

Writes need a key (``X-API-Key`` or ``Authorization: Bearer``) of a writing role.
Reads without a key are allowed only for entity types the city marks public
(``Settings.public_types``); the entity routes check that with :func:`check_public_read`.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.api.problems import problem_response
from cityos.core.errors import Forbidden, Unauthorized
from cityos.storage.keys import ANONYMOUS, KeyStore, Principal

# The ingestion endpoints authenticate with their shared secret (see cityos.api.ingest).
_OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/redoc", "/ingest/chirpstack", "/ingest/ttn")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_POST_PATHS = frozenset({"/ngsi-ld/v1/entityOperations/query"})


def _key_of(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            if text.lower().startswith("bearer "):
                return str(text[7:]).strip()
    return None


class ApiKeyMiddleware:
    """Attach the caller's ``Principal`` to ``scope['state']``; refuse unauthenticated writes."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal: Principal = ANONYMOUS
        key = _key_of(scope)
        if key is not None:
            found = self.keys.verify(key)
            if found is None:
                await problem_response(Unauthorized("The API key is not valid"))(
                    scope, receive, send
                )
                return
            principal = found
        path: str = scope["path"]
        if (
            scope["method"] not in _READ_METHODS
            and path not in _READ_POST_PATHS
            and not path.startswith(_OPEN_PATHS)
            and not principal.can_write
        ):
            error = (
                Unauthorized("Writes need an API key (X-API-Key or Authorization: Bearer)")
                if principal is ANONYMOUS
                else Forbidden(f"The role {principal.role} cannot write")
            )
            await problem_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal | None:
    """The caller, or ``None`` when authentication is off."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def check_public_read(
    request: Request, type_iris: Iterable[str], *, any_public: bool = False
) -> None:
    """Refuse an anonymous read of non-public types (no-op with a key or with auth off).

    For a query every requested type must be public; for one entity (``any_public``) one
    of its types being public is enough.
    """
    principal = principal_of(request)
    if principal is None or principal.role != "anonymous":
        return
    public: frozenset[str] = request.app.state.public_type_iris
    wanted = set(type_iris)
    allowed = bool(wanted & public) if any_public else bool(wanted) and wanted <= public
    if not allowed:
        raise Unauthorized(
            "Reading these entities needs an API key; anonymous reads are limited to the "
            "public entity types"
        )
