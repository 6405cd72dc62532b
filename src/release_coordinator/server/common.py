"""What the ASGI apps share: JSON answers and errors, routes, query parameters.

- **Errors.** Every answer that is not a success is JSON ``{"error": {"code", "message",
  "details"}}`` (the shape of :meth:`~release_coordinator.errors.ReleaseCoordinatorError.to_dict`).
  A refusal decided at the HTTP edge is a :class:`Refusal`; a library error keeps its own
  ``code`` and ``http_status``. :func:`guarded` wraps an endpoint so that nothing else leaves it:
  a bug answers a JSON 500 (and is logged), never a plain-text page.
- **Routes.** :func:`method_routes` serves every method of a path from one route;
  :func:`http_error` answers Starlette's own refusals in the error shape.
- **Query parameters.** :func:`query_int`, :func:`paging` and :func:`page_of` (listings).

Request bodies are read and decoded by :mod:`release_coordinator.server.request_body`; bearer
tokens are checked by :mod:`release_coordinator.server.token_auth`.

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import http
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from release_coordinator.errors import ReleaseCoordinatorError
from release_coordinator.schemas import DEFAULT_PAGE, MAX_INT32, MAX_PAGE

log = logging.getLogger(__name__)

__all__ = [
    "CODES",
    "DEFAULT_MAX_BODY",
    "Endpoint",
    "Refusal",
    "StatusFor",
    "error_body",
    "error_response",
    "failure_response",
    "guarded",
    "http_error",
    "json_bytes",
    "json_response",
    "method_routes",
    "page_of",
    "paging",
    "phrase",
    "query_int",
    "refused",
]


#: Largest request body accepted by default (1 MiB).
DEFAULT_MAX_BODY = 1024 * 1024

#: The error ``code`` of a refusal, by status, when nothing more precise is known.
CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


# -- errors ----------------------------------------------------------------------------------


class Refusal(Exception):
    """A refusal decided at the HTTP edge, answered as a JSON error by :func:`guarded`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")
        self.details = details
        self.headers = dict(headers or {})


def error_body(code: str, message: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON error shape of :meth:`ReleaseCoordinatorError.to_dict`."""
    return {"error": {"code": code, "message": message, "details": dict(details)}}


def _jsonable(value: object, depth: int = 0) -> Any:
    """``value`` as strict JSON values (error details may hold enums, tuples, odd floats)."""
    if depth > 20:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


# One encoder and one decoder for every request: json.dumps/json.loads with options build a
# new one at each call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def json_bytes(content: Any) -> bytes:
    """``content`` as strict, ASCII-escaped JSON bytes (what :func:`json_response` sends)."""
    return _ENCODER.encode(content).encode("ascii")


def json_response(status: int, content: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer. ASCII-escaped: a lone surrogate echoed from a request (``"\\ud800"`` is
    valid JSON) cannot be encoded as UTF-8, but it can be escaped; ``allow_nan=False`` keeps
    the output strict JSON."""
    return Response(
        json_bytes(content),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def refused(refusal: Refusal) -> Response:
    """The JSON answer of a :class:`Refusal`."""
    body = error_body(refusal.code, refusal.message, _jsonable(refusal.details))
    return json_response(refusal.status, body, refusal.headers)


def error_response(error: ReleaseCoordinatorError, status: int | None = None) -> Response:
    """The JSON answer of a library error: its ``to_dict()`` with its ``http_status`` (or
    ``status``)."""
    body = error.to_dict()
    body["error"]["details"] = _jsonable(body["error"]["details"])
    return json_response(status or error.http_status, body)


def phrase(status: int) -> str:
    """The reason phrase of an HTTP status (``Not Found``)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


#: How an app may change the status of a library error (``None``: the error's own).
StatusFor = Callable[[ReleaseCoordinatorError], int | None]

Endpoint = Callable[[Request], Awaitable[Response]]


def failure_response(
    error: Exception, status_for: StatusFor | None, method: str, path: str
) -> Response:
    """The JSON answer of an endpoint that raised ``error`` (see the module docstring); a bug
    (any exception that is not a refusal or a library error) is logged."""
    if isinstance(error, Refusal):
        return refused(error)
    if isinstance(error, ReleaseCoordinatorError):
        return error_response(error, status_for(error) if status_for else None)
    if isinstance(error, RecursionError):  # a value nested too deeply to even describe
        return refused(Refusal(400, "the request is nested too deeply"))
    log.error("%s %s failed", method, path, exc_info=error)
    return json_response(500, error_body("internal", f"internal error: {type(error).__name__}", {}))


def guarded(handler: Endpoint, *, status_for: StatusFor | None = None) -> Endpoint:
    """``handler`` answering every failure as a JSON error (see the module docstring)."""

    async def endpoint(request: Request) -> Response:
        try:
            if any(isinstance(v, str) and "\x00" in v for v in request.path_params.values()):
                # (no id holds one; PostgreSQL would refuse to even look it up)
                raise Refusal(404, "there is nothing at a path that holds a NUL character")
            return await handler(request)
        except Exception as error:
            return failure_response(error, status_for, request.method, request.url.path)

    return endpoint


def method_routes(table: Iterable[tuple[str, str, Endpoint]]) -> list[Route]:
    """One route per path serving every method the table lists for it (so that a wrong
    method's 405 names them all in ``Allow``), in the table's order."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for path, method, handler in table:
        by_path.setdefault(path, {})[method] = handler

    def dispatch(handlers: dict[str, Endpoint]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        return endpoint

    return [
        Route(path, dispatch(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (404 unknown path, 405 wrong method) in the error shape."""
    if isinstance(error, HTTPException):
        return refused(
            Refusal(
                error.status_code, str(error.detail), headers=error.headers, path=request.url.path
            )
        )
    raise error  # pragma: no cover - only registered for HTTPException


# -- query parameters ---------------------------------------------------------------------------


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter: 400 if it is not one, 422 outside ``low..high``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text or len(text) > 20 or not text.lstrip("-").isdigit() or not text.isascii():
        raise Refusal(400, f"the query parameter {name!r} must be an integer", parameter=name)
    value = int(text)
    if not low <= value <= high:
        raise Refusal(
            422,
            f"the query parameter {name!r} must be within {low}..{high}",
            parameter=name,
            problems=[{"path": name, "message": f"must be within {low}..{high}"}],
        )
    return value


def paging(
    request: Request, *, default: int = DEFAULT_PAGE, most: int = MAX_PAGE
) -> tuple[int, int]:
    """``(limit, offset)`` from the query (``limit`` 1..``most``, ``offset`` >= 0)."""
    limit = query_int(request, "limit", default, low=1, high=most)
    offset = query_int(request, "offset", 0, low=0, high=MAX_INT32)
    return limit, offset


def page_of(items: list[Any], limit: int, offset: int, *, more: bool) -> dict[str, Any]:
    """A page of a listing: ``{"items", "limit", "offset", "next_offset"}`` (``next_offset``
    is null on the last page)."""
    return {
        "items": items,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(items) if more else None,
    }
