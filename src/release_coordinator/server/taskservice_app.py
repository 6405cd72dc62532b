"""A task-service kit served over HTTP: the task-service protocol's two endpoints.

::

    from release_coordinator.server.taskservice_app import task_service_app

    app = task_service_app(SearchIndex("search"), token=os.environ["RC_TOKEN"])
    # uvicorn mymodule:app

- ``GET /status`` answers :meth:`~release_coordinator.taskservice.TaskServiceKit.handle_status`;
- ``POST /tasks`` answers :meth:`~release_coordinator.taskservice.TaskServiceKit.handle_task`.

The app is only the HTTP edge: it checks the bearer token, bounds and decodes the body, and
writes the kit's answer; every protocol decision is the kit's. Every answer that is not a 200 is
JSON ``{"error": {"code", "message", "details"}}`` (the shape of
:meth:`~release_coordinator.errors.ReleaseCoordinatorError.to_dict`): 400 invalid JSON or an
invalid request, 401 a missing or wrong token, 404 an unknown path or task, 405 a wrong method,
413 a body over ``max_body`` bytes, 503 a rejected task or an unhealthy service. No input makes
it answer 500.

Needs the ``server`` extra (Starlette). ``import release_coordinator`` does not import this
module.
"""

from __future__ import annotations

import contextlib
import hmac
import http
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.server needs the server extra: "
        "pip install 'release-coordinator[server]'"
    ) from error

from release_coordinator.errors import ConfigurationError
from release_coordinator.taskservice import TaskServiceKit

__all__ = ["DEFAULT_MAX_BODY", "task_service_app"]

log = logging.getLogger(__name__)

#: Largest request body accepted by default (1 MiB).
DEFAULT_MAX_BODY = 1024 * 1024

#: The error ``code`` of a non-200 answer, by status, when the kit did not give one.
_CODES = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    503: "unavailable",
}


class _Refusal(Exception):
    """An HTTP-level refusal, answered as a JSON error (never leaves this module)."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def _error_body(code: str, message: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON error shape of :meth:`ReleaseCoordinatorError.to_dict`."""
    return {"error": {"code": code, "message": message, "details": dict(details)}}


def _json_response(status: int, content: Any, headers: Mapping[str, str] | None = None) -> Response:
    # ensure_ascii: a lone surrogate echoed from a request (``"\ud800"`` is valid JSON) cannot
    # be encoded as UTF-8, but it can be escaped; allow_nan=False keeps the output strict JSON.
    body = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return Response(
        body.encode("ascii"),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def _refused(refusal: _Refusal) -> Response:
    code = _CODES.get(refusal.status, "error")
    return _json_response(
        refusal.status, _error_body(code, refusal.message, refusal.details), refusal.headers
    )


def _answer(status: int, body: Any, *, codes: Mapping[int, str] | None = None) -> Response:
    """The kit's ``(status, body)``; a non-200 body is put in the error shape if it is not."""
    if status == 200:
        return _json_response(status, body)
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return _json_response(status, body)
    phrase = _phrase(status)
    if isinstance(body, Mapping):
        message = body.get("message")
        details = {k: v for k, v in body.items() if k != "message"}
        if not isinstance(message, str) or not message:
            message = phrase
    else:
        message = phrase
        details = {} if body is None else {"body": body}
    code = (codes or {}).get(status) or _CODES.get(status, "error")
    return _json_response(status, _error_body(code, message, details))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _read_json(request: Request, max_body: int) -> Any:
    """The request body as a JSON value, or a refusal (400 or 413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise _Refusal(400, "Content-Length is not a number") from None
        if length > max_body:
            raise _Refusal(
                413, f"the body is larger than {max_body} bytes", limit=max_body, length=length
            )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise _Refusal(413, f"the body is larger than {max_body} bytes", limit=max_body)
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Refusal(400, "the client disconnected before the body was read") from None
    raw = b"".join(chunks)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and UnicodeDecodeError; RecursionError: nesting
        # too deep for the decoder.
        reason = str(error) if isinstance(error, ValueError) else "nested too deeply"
        raise _Refusal(400, "the body is not valid JSON", reason=reason[:200]) from None


def task_service_app(
    kit: TaskServiceKit, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> Starlette:
    """An ASGI app serving ``kit`` per the task-service protocol (see the module docstring).

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` or gets a
    401 (an empty token means none). ``max_body``: the largest ``POST /tasks`` body accepted,
    in bytes (413 beyond it).
    The app's shutdown stops the kit's background jobs (:meth:`TaskServiceKit.aclose`).
    """
    if max_body < 1:
        raise ConfigurationError(f"max_body must be at least 1 byte, not {max_body}")
    expected = f"Bearer {token}".encode() if token else None

    def authorize(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, expected):
            raise _Refusal(
                401,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def guarded(
        request: Request,
        work: Callable[[], Awaitable[tuple[int, Any]]],
        codes: Mapping[int, str] | None = None,
    ) -> Response:
        try:
            authorize(request)
            status, body = await work()
        except _Refusal as refusal:
            return _refused(refusal)
        except Exception as error:  # a bug in the kit's hooks: say so in the same shape
            log.exception("task service %s failed on %s %s", kit.name, request.method, request.url)
            return _json_response(
                500, _error_body("internal", f"{kit.name} failed: {type(error).__name__}", {})
            )
        return _answer(status, body, codes=codes)

    async def status(request: Request) -> Response:
        async def work() -> tuple[int, Any]:
            code, body = await kit.handle_status()
            if code != 200 and isinstance(body, Mapping) and "error" not in body:
                # the kit's status body says who it is; the message says it is unavailable
                reason = body.get("message")
                message = f"{kit.name} is unavailable" + (f": {reason}" if reason else "")
                body = {**body, "message": message}
            return code, body

        return await guarded(request, work)

    async def tasks(request: Request) -> Response:
        async def work() -> tuple[int, Any]:
            body = await _read_json(request, max_body)
            try:
                return await kit.handle_task(body)
            except RecursionError:  # a value nested too deeply to even describe: refuse it
                raise _Refusal(400, "the body is nested too deeply") from None

        return await guarded(request, work, {503: "rejected"})

    async def http_error(request: Request, error: Exception) -> Response:
        # 404 (unknown path) and 405 (wrong method) raised by the router.
        if isinstance(error, HTTPException):
            refusal = _Refusal(
                error.status_code, error.detail, headers=error.headers, path=request.url.path
            )
            return _refused(refusal)
        raise error  # pragma: no cover - only registered for HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await kit.aclose()

    return Starlette(
        routes=[
            Route("/status", status, methods=["GET"]),
            Route("/tasks", tasks, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
