"""Domain errors raised by services and mapped to wire formats by ``cityos.api.problems``.

Services never build HTTP responses. They raise one of these; each API adapter maps
the class to its standard's error format (NGSI-LD ProblemDetails, Open311 error
array, CKAN error envelope). The class names follow the NGSI-LD error types because
that is the richest vocabulary of the standards we speak.
"""

from __future__ import annotations


class CityosError(Exception):
    """Base class: ``title`` is a short summary, ``detail`` says what exactly was wrong."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, *, title: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if title is not None:
            self.title = title


class BadRequestData(CityosError):
    """The request is well-formed but its content is wrong (bad id, bad attribute, bad value)."""

    status = 400
    title = "Bad request data"


class InvalidRequest(CityosError):
    """The request cannot be understood: invalid JSON, bad query parameters, bad syntax."""

    status = 400
    title = "Invalid request"


class ResourceNotFound(CityosError):
    """The addressed entity, attribute, tenant or other resource does not exist."""

    status = 404
    title = "Resource not found"


class AlreadyExists(CityosError):
    """A resource with the same identifier already exists."""

    status = 409
    title = "Already exists"


class OperationNotSupported(CityosError):
    """The operation is valid but this server does not support it for this resource."""

    status = 422
    title = "Operation not supported"


class LdContextNotAvailable(CityosError):
    """A JSON-LD @context given by URL could not be retrieved or is not a valid context."""

    status = 503
    title = "LD context not available"


class NotAcceptable(CityosError):
    """None of the media types the client accepts can be produced."""

    status = 406
    title = "Not acceptable"


class UnsupportedMediaType(CityosError):
    """The request body has a media type this endpoint does not take."""

    status = 415
    title = "Unsupported media type"


class PayloadTooLarge(CityosError):
    """The request body is over the configured size limit."""

    status = 413
    title = "Payload too large"


class Unauthorized(CityosError):
    """No valid credentials were given."""

    status = 401
    title = "Unauthorized"


class Forbidden(CityosError):
    """The credentials are valid but do not allow this operation."""

    status = 403
    title = "Forbidden"


class TooManyResults(CityosError):
    """The query would return more results than the server allows in one page."""

    status = 403
    title = "Too many results"


class MethodNotAllowed(CityosError):
    """The resource exists but does not take this HTTP method."""

    status = 405
    title = "Method not allowed"


class ServiceUnavailable(CityosError):
    """A dependency (the database) is temporarily unavailable; the client may retry."""

    status = 503
    title = "Service unavailable"
    retry_after_s: int | None = None
    """Sent as ``Retry-After`` when set: how long a client should wait before retrying."""
