"""A task-service kit served over HTTP: the task-service protocol's two endpoints.

::

    from release_coordinator.server.taskservice_app import task_service_app

    app = task_service_app(SearchIndex("search"), token=os.environ["RC_TOKEN"])
    # uvicorn mymodule:app

- ``GET /status`` answers :meth:`~release_coordinator.coordinator.kit.TaskServiceKit.handle_status`;
- ``POST /tasks`` answers :meth:`~release_coordinator.coordinator.kit.TaskServiceKit.handle_task`.

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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from release_coordinator.coordinator.kit import TaskServiceKit
from release_coordinator.errors import ConfigurationError
from release_coordinator.server.common import (
    CODES,
    DEFAULT_MAX_BODY,
    Refusal,
    error_body,
    http_error,
    json_response,
    phrase,
    refused,
)
from release_coordinator.server.request_body import read_json
from release_coordinator.server.token_auth import TokenAuth, bearer_token, unauthorized

__all__ = ["DEFAULT_MAX_BODY", "task_service_app"]

log = logging.getLogger(__name__)


def _answer(status: int, body: Any, *, codes: Mapping[int, str] | None = None) -> Response:
    """The kit's ``(status, body)``; a non-200 body is put in the error shape if it is not."""
    if status == 200:
        return json_response(status, body)
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return json_response(status, body)
    reason = phrase(status)
    if isinstance(body, Mapping):
        message = body.get("message")
        details = {k: v for k, v in body.items() if k != "message"}
        if not isinstance(message, str) or not message:
            message = reason
    else:
        message = reason
        details = {} if body is None else {"body": body}
    code = (codes or {}).get(status) or CODES.get(status, "error")
    return json_response(status, error_body(code, message, details))


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
    auth = TokenAuth([token], what="the token") if token else None

    async def authorize(request: Request) -> None:
        if auth is None:
            return
        given = bearer_token(request)
        if given is None or await auth.identify(given) is None:
            raise unauthorized()

    async def guarded(
        request: Request,
        work: Callable[[], Awaitable[tuple[int, Any]]],
        codes: Mapping[int, str] | None = None,
    ) -> Response:
        try:
            await authorize(request)
            status, body = await work()
        except Refusal as refusal:
            return refused(refusal)
        except Exception as error:  # a bug in the kit's hooks: say so in the same shape
            log.exception("task service %s failed on %s %s", kit.name, request.method, request.url)
            return json_response(
                500, error_body("internal", f"{kit.name} failed: {type(error).__name__}", {})
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
            body = await read_json(request, max_body)
            try:
                return await kit.handle_task(body)
            except RecursionError:  # a value nested too deeply to even describe: refuse it
                raise Refusal(400, "the body is nested too deeply") from None

        return await guarded(request, work, {503: "rejected"})

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
