"""The Coordinator's HTTP API: task services, releases, tasks, events, and task-service callbacks.

::

    from release_coordinator.server.coordinator_app import coordinator_app

    app = coordinator_app(coordinator, tokens={"alice": os.environ["RC_ALICE_TOKEN"]},
                          callback_tokens={"search": os.environ["RC_SEARCH_TOKEN"]})
    # uvicorn mymodule:app, or mount it in the host's own Starlette/FastAPI app

======  ======================================  =====================================  ==========
method  path                                    what                                   success
======  ======================================  =====================================  ==========
GET     ``/status``                             name and version (no token needed)     200
GET     ``/openapi.json``                       the OpenAPI 3.1 document (no token)    200
GET     ``/task-services``                      list (``enabled``, paging)             200
POST    ``/task-services``                      register ``{name, url, enabled, check}`` 201
GET     ``/task-services/{id}``                 one                                    200
PATCH   ``/task-services/{id}``                 ``{name, url}``                        200
DELETE  ``/task-services/{id}``                 forget it                              204
POST    ``/task-services/{id}/enable``          include in new releases                200
POST    ``/task-services/{id}/disable``         leave out of new releases              200
POST    ``/task-services/{id}/health``          ask ``GET /status`` now                200
GET     ``/releases``                           list (``state``, ``tag``, ``author``,  200
                                                ``study``)
POST    ``/releases``                           create                                 201
GET     ``/releases/{id}``                      one                                    200
PATCH   ``/releases/{id}``                      ``{name, description, tags}``          200
POST    ``/releases/{id}/publish``              publish a staged release               200
POST    ``/releases/{id}/cancel``               ``{reason}``                           200
POST    ``/releases/{id}/run-again``            a new release like a finished one      201
POST    ``/releases/{id}/approve``              an admin's approval before publish     200
POST    ``/releases/{id}/checks``               ask its checks before publish again    200
GET     ``/releases/{id}/tasks``                its tasks (``state``, paging)          200
GET     ``/releases/{rid}/tasks/{id}``          one task of the release                200
PATCH   ``/releases/{rid}/tasks/{id}``          task-service callback                  200
GET     ``/tasks?release_id=``                  the tasks of a release                 200
GET     ``/tasks/{id}``                         one task                               200
PATCH   ``/tasks/{id}``                         task-service callback                  200
GET     ``/events``                             the event log, filtered, oldest first  200
GET     ``/releases/{id}/notes``                its notes, oldest first (``study_id``)  200
POST    ``/releases/{id}/notes``                add one ``{text, study_id, author}``   201
GET     ``/notes/{id}``                         one release note                       200
PATCH   ``/notes/{id}``                         ``{text}``                             200
DELETE  ``/notes/{id}``                         delete it                              204
GET     ``/studies``                            every study releases name, newest first 200
GET     ``/studies/{id}``                       one: releases, latest, last published  200
GET     ``/studies/{id}/notes``                 the notes on it, oldest first          200
GET     ``/webhooks``                           webhook subscriptions (admins only)    200
POST    ``/webhooks``                           subscribe ``{url, kinds, states...}``  201
GET     ``/webhooks/{id}``                      one, with its delivery state           200
PATCH   ``/webhooks/{id}``                      change it; ``enabled`` resumes it      200
DELETE  ``/webhooks/{id}``                      unsubscribe                            204
GET     ``/webhooks/{id}/deliveries``           its delivery log, newest first         200
======  ======================================  =====================================  ==========

Listings answer ``{"items", "limit", "offset", "next_offset"}`` (``limit`` 1..1000, default
100; ``next_offset`` null on the last page). Refusals answer ``{"error": {"code", "message",
"details"}}``: 400 a body or query parameter that does not parse, 401 no valid token, 403 a
token that may not do this, 404 an unknown id or path, 405 a wrong method, 409 a state that
does not allow it, 413 a body over ``max_body``, 422 invalid values (``details.problems`` lists
them by path). A refusal changes nothing.

Tokens: every endpoint but ``GET /status`` and ``GET /openapi.json`` needs
``Authorization: Bearer <token>``: an operator token (``tokens`` or ``verifier``) for
everything, or, for the callbacks only, the token of the task service the task belongs to
(``callback_tokens``, keyed by the service's name or id); a service token anywhere else is a
403, and on another service's task too.

This module assembles the app; the endpoints are in
:mod:`~release_coordinator.server.coordinator_routes` (by job) and
:mod:`~release_coordinator.server.coordinator_notes` (notes, studies), the bodies' Structs in
:mod:`release_coordinator.coordinator.api_bodies` (read by
:mod:`~release_coordinator.server.coordinator_requests`), the records as JSON in
:mod:`~release_coordinator.server.coordinator_json`.

**Lifecycle.** The coordinator must run (:meth:`Coordinator.start`, or ``async with
coordinator.running():``) for unfinished releases to be resumed and health checks to run.
With ``lifespan=True`` the app's lifespan does it; a *mounted* app's lifespan never runs, so a
host that mounts the app runs ``async with coordinator.running():`` in its own lifespan (see
``docs/howto/embedding.md``). A request reaching the app while the coordinator does not run
logs one WARNING (per app) that says so and names the fix; the request is served as usual.

Needs the ``server`` extra (Starlette). ``import release_coordinator`` does not import this
module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from release_coordinator._version import __version__
from release_coordinator.coordinator.api_bodies import MAX_DESCRIPTION as MAX_DESCRIPTION
from release_coordinator.coordinator.api_bodies import MAX_ITEMS as MAX_ITEMS
from release_coordinator.coordinator.api_bodies import MAX_URL as MAX_URL
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.errors import ConfigurationError
from release_coordinator.server.background import BackgroundCheck
from release_coordinator.server.common import (
    DEFAULT_MAX_BODY,
    Endpoint,
    guarded,
    http_error,
    json_response,
    method_routes,
)
from release_coordinator.server.coordinator_gates import GateEndpoints
from release_coordinator.server.coordinator_json import (
    event_json,
    release_json,
    service_json,
    task_json,
)
from release_coordinator.server.coordinator_notes import (
    NoteEndpoints,
    ReleaseByStudyEndpoints,
    StudyEndpoints,
)
from release_coordinator.server.coordinator_routes import (
    Access,
    EventEndpoints,
    ServiceEndpoints,
    TaskEndpoints,
)
from release_coordinator.server.coordinator_webhooks import WebhookEndpoints
from release_coordinator.server.openapi import OPENAPI_PATH, coordinator_openapi
from release_coordinator.server.token_auth import Verifier, _api_tokens

__all__ = [
    "DEFAULT_MAX_BODY",
    "coordinator_app",
    "event_json",
    "release_json",
    "service_json",
    "task_json",
]

log = logging.getLogger(__name__)


def coordinator_app(
    coordinator: Coordinator,
    *,
    tokens: Iterable[str] | Mapping[str, str] = (),
    verifier: Verifier | None = None,
    callback_tokens: Mapping[str, str] | None = None,
    allow_anonymous: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    lifespan: bool = False,
    name: str = "release-coordinator",
) -> Starlette:
    """An ASGI app serving ``coordinator``'s API (see the module docstring).

    - ``tokens``: operator bearer tokens, a collection or a mapping of names to tokens (the
      name becomes a new release's ``author`` when the request names none); ``verifier``: a
      callable (sync or async) the host supplies, given a token and answering a name or
      ``True`` to accept it, ``False``/``None`` to refuse it. One of them is required unless
      ``allow_anonymous`` (every request is then an operator: for tests and trusted networks).
    - ``callback_tokens``: task-service tokens by service name or id; such a token may only
      report the state of its own service's tasks (``PATCH /tasks/{id}``).
    - ``max_body``: the largest request body, in bytes (413 beyond).
    - ``lifespan``: the app's startup starts the coordinator and its shutdown closes it
      (``coordinator.running()``; a coordinator the host runs already is left running). Left
      out, the host owns the coordinator's life. A mounted app's lifespan never runs: the
      host runs ``async with coordinator.running():`` in its own (``docs/howto/embedding.md``);
      the first request while the coordinator does not run logs a WARNING saying so.
    """
    if max_body < 1:
        raise ConfigurationError(f"max_body must be at least 1 byte, not {max_body}")
    operators, services, anonymous = _api_tokens(
        "coordinator API", tokens, verifier, callback_tokens, allow_anonymous=allow_anonymous
    )
    access = Access(operators, services, anonymous)

    async def status(request: Request) -> Response:
        return json_response(200, {"name": name, "version": __version__, "message": "ok"})

    document = coordinator_openapi(__version__)

    async def openapi(request: Request) -> Response:
        return json_response(200, document)

    table: list[tuple[str, str, Endpoint]] = [
        ("/status", "GET", status),
        (OPENAPI_PATH, "GET", openapi),
    ]
    for endpoints in (
        ServiceEndpoints,
        ReleaseByStudyEndpoints,
        TaskEndpoints,
        EventEndpoints,
        NoteEndpoints,
        StudyEndpoints,
        WebhookEndpoints,
        GateEndpoints,
    ):
        table += endpoints(coordinator, access, max_body).table()
    routes = [(path, method, guarded(handler)) for path, method, handler in table]

    background = BackgroundCheck(
        "coordinator_app",
        "coordinator is",
        "async with coordinator.running():",
        is_running=lambda: coordinator.is_running,
        lifespan=lifespan,
        logger=log,
    )

    return Starlette(
        routes=method_routes(routes),
        middleware=[background.middleware()],
        exception_handlers={HTTPException: http_error},
        lifespan=background.app_lifespan(coordinator.running),
    )
