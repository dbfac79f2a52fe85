"""Every error the gateway answers with: DropbatchError → OpenAI's error JSON, in one table.

    {"error": {"message", "type", "param", "code"}}

The HTTP status decides which exception the OpenAI SDK raises (400 BadRequestError,
401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409
ConflictError, 422 UnprocessableEntityError, 429 RateLimitError). The rule for
bad input: a body that cannot be read (not JSON, not an object, broken
multipart) is 400; a readable body or query whose fields fail the schema
(missing, wrong type, out of range, not one of the allowed values) is 422; a
well-formed request refused on its merits (unsupported purpose, a file that is
not batch input) is 400. A 429 always carries ``retry-after`` in whole seconds
(1..120, the range the SDK honours); a 409 carries ``x-should-retry: false``.
"""

from __future__ import annotations

import logging
import math
import time

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dropbatch.errors import (
    ConfigError,
    DropbatchError,
    ObjectNotFound,
    QuotaExceeded,
    RateLimited,
    StorageUnavailable,
    UnprocessableRequest,
    WriteConflict,
    openai_error,
)

log = logging.getLogger("dropbatch.gateway")

MAX_RETRY_AFTER = 120  # the OpenAI SDK ignores retry-after above this


# Status by class, most specific first; anything else uses its class's status_code.
_STATUS: tuple[tuple[type[DropbatchError], int], ...] = (
    (ObjectNotFound, 404),  # an object behind a record vanished: for the caller it does not exist
    (WriteConflict, 409),
    (StorageUnavailable, 503),
    (ConfigError, 500),
)
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(exc: DropbatchError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return exc.status_code


def envelope(
    message: str, *, status: int, code: str | None, param: str | None = None, type_: str | None = None
) -> dict:
    return openai_error(message, type_=type_ or _TYPE_BY_STATUS.get(status, "server_error"), code=code, param=param)


def retry_after_seconds(exc: DropbatchError, now: float) -> int | None:
    """Seconds for ``retry-after`` on a 429, clamped to what the SDK honours."""
    if isinstance(exc, RateLimited):
        seconds = exc.retry_after
    elif isinstance(exc, QuotaExceeded):
        seconds = exc.retry_at - now
    else:
        return None
    return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))


def error_response(exc: DropbatchError, *, now: float | None = None) -> JSONResponse:
    status = status_of(exc)
    body = envelope(
        exc.message, status=status, code=exc.code, param=exc.param, type_=None if status >= 500 else exc.error_type
    )
    if status >= 500:
        body["error"]["type"] = "server_error"
    headers = {}
    retry_after = retry_after_seconds(exc, time.time() if now is None else now)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if status == 409:
        # The SDK retries 409 by default; ours are state conflicts that a retry cannot fix.
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


def schema_error(exc: ValidationError, *, where: str = "body") -> UnprocessableRequest:
    """The first field problem of a pydantic validation, as a 422 naming the field."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    param = loc or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return UnprocessableRequest(
            f"Missing required parameter: '{loc}'.", code="missing_required_parameter", param=param
        )
    return UnprocessableRequest(f"Invalid value for '{loc or where}': {message}.", param=param)


async def handle_dropbatch_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, DropbatchError):  # pragma: no cover - registered for DropbatchError only
        raise exc
    status = status_of(exc)
    if status >= 500:
        log.error(
            "request failed",
            extra={
                "path": request.url.path,
                "error": str(exc),
                "code": exc.code,
                "tenant": request.scope.get("state", {}).get("tenant"),
            },
        )
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route, wrong method, unreadable multipart) in OpenAI's shape."""
    if not isinstance(exc, HTTPException):  # pragma: no cover
        raise exc
    status = exc.status_code
    codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request", 413: "file_too_large"}
    message = exc.detail if isinstance(exc.detail, str) else "Bad request."
    if status == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    headers = dict(exc.headers or {})
    return JSONResponse(envelope(message, status=status, code=codes.get(status)), status_code=status, headers=headers)


CLIENT_CLOSED = 499  # nginx's "client closed request": counted in the metrics, read by nobody


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away mid-request (an upload cut short, a timeout): not a server error, nobody to answer."""
    log.info("client disconnected", extra={"path": request.url.path})
    return Response(status_code=CLIENT_CLOSED)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: logged with its traceback, answered as a 500 in OpenAI's shape."""
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(
        envelope("The server had an error while processing your request.", status=500, code="internal_error"),
        status_code=500,
    )
