"""The agent's API errors: an HTTP status, a stable code and one line of message.

``ApiError`` is a :class:`raftsso.errors.RaftssoError`; the HTTP layer turns it into
``{"error": CODE, "message": "..."}`` with its status, and :mod:`raftsso.agent.client`
raises it again on the calling side for the codes without a closer raftsso error. The
codes are part of the API contract (docs/agent.md): clients branch on ``error``, never on
the message.
"""

from __future__ import annotations

from raftsso.errors import RaftssoError

#: code -> HTTP status; the complete list (the OpenAPI document is built from it).
CODES: dict[str, int] = {
    "BAD_REQUEST": 400,  # malformed HTTP, JSON, field or name
    "INVALID_TOKEN": 400,  # a ciphertext that does not decrypt (one opaque answer)
    "FORBIDDEN": 403,  # the caller's uid and groups do not allow this
    "APP_DISABLED": 403,  # the application is disabled: it refuses everything
    "NOT_FOUND": 404,  # no such route, application, mapping or setting
    "METHOD_NOT_ALLOWED": 405,
    "REQUEST_TIMEOUT": 408,  # the request did not arrive whole within request_timeout
    "ALREADY_EXISTS": 409,  # the application exists already
    "CONFLICT": 409,  # the application's type does not allow this
    "UNDECRYPTABLE": 409,  # a stored value does not decrypt (retired version, altered row)
    "TOO_LARGE": 413,  # the body is larger than max_body
    "HEADERS_TOO_LARGE": 431,  # request line and headers larger than max_header
    "INTERNAL": 500,  # a bug: logged with a traceback; never expected
    "STALE": 503,  # encryption refused: the cached keyring is older than max_staleness
    "UNAVAILABLE": 503,  # no primary master secret yet, or the store cannot be used
    "BUSY": 503,  # too many connections
}

REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable", 200: "OK",
           201: "Created"}


class ApiError(RaftssoError):
    """An answer other than success; ``code`` is one of :data:`CODES`."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        # A client may meet a code from a newer agent: it keeps the status it was sent.
        self.status = status if status is not None else CODES.get(code, 500)
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError("BAD_REQUEST", message)


def forbidden(message: str) -> ApiError:
    return ApiError("FORBIDDEN", message)


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)
