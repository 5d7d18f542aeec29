"""Mapping ``cityos.core.errors`` to NGSI-LD ProblemDetails (RFC 7807 with NGSI-LD types).

Other standards' adapters (Open311, CKAN) add their own mappers next to this one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from cityos.core import errors
from cityos.core.jsonio import dumps

log = logging.getLogger(__name__)

NGSI_LD_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"

_TYPE_BY_CLASS: dict[type[errors.CityosError], str] = {
    errors.BadRequestData: "BadRequestData",
    errors.InvalidRequest: "InvalidRequest",
    errors.ResourceNotFound: "ResourceNotFound",
    errors.AlreadyExists: "AlreadyExists",
    errors.OperationNotSupported: "OperationNotSupported",
    errors.LdContextNotAvailable: "LdContextNotAvailable",
    errors.TooManyResults: "TooManyResults",
    errors.NotAcceptable: "NotAcceptable",
    errors.UnsupportedMediaType: "UnsupportedMediaType",
    errors.PayloadTooLarge: "RequestEntityTooLarge",
    errors.Unauthorized: "Unauthorized",
    errors.Forbidden: "Forbidden",
    errors.ServiceUnavailable: "ServiceUnavailable",
    errors.MethodNotAllowed: "MethodNotAllowed",
}


def problem_type(error: errors.CityosError) -> str:
    """The NGSI-LD error type URI of an error (nearest class in its hierarchy)."""
    if type(error).__name__ == "NonexistentTenant":
        return NGSI_LD_ERRORS + "NonexistentTenant"
    for cls in type(error).__mro__:
        name = _TYPE_BY_CLASS.get(cls)
        if name is not None:
            return NGSI_LD_ERRORS + name
    return NGSI_LD_ERRORS + "InternalError"


def problem_details(error: errors.CityosError) -> dict[str, object]:
    """The ProblemDetails JSON object of an error."""
    return {
        "type": problem_type(error),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }


def problem_response(
    error: errors.CityosError, headers: Mapping[str, str] | None = None
) -> Response:
    """An HTTP response carrying the error's ProblemDetails (plus ``headers``)."""
    headers = dict(headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, errors.ServiceUnavailable) and error.retry_after_s is not None:
        headers.setdefault("Retry-After", str(error.retry_after_s))
    return Response(
        dumps(problem_details(error)),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


async def handle_cityos_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for every ``CityosError``."""
    assert isinstance(exc, errors.CityosError)
    return problem_response(exc)


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    """Last resort: log the traceback, answer a ProblemDetails 500 without internals."""
    log.exception("Unhandled error on %s %s", request.method, request.url.path)
    error = errors.CityosError("The server hit an unexpected error; it has been logged.")
    return problem_response(error)
