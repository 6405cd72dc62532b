"""The combined app: :func:`service_app` serves the Coordinator's API and a RolloutManager's
(child protocol and operator API) as ONE ASGI app, what ``release-coordinator serve`` runs.

::

    from release_coordinator.server.serve import service_app

    app = service_app(coordinator, manager, operator_tokens={"ops": os.environ["RC_OPS"]})
    # one Starlette app: coordinator_app's routes and rollout_app's, both lifespans

Their routes side by side (their paths do not clash, which is checked; the one path both
serve, ``GET /openapi.json``, answers :func:`~release_coordinator.server.openapi.
combined_openapi`, one document for both), the startup of both and the shutdown of both, in
reverse order; :class:`~release_coordinator.server.access_log.AccessLog` in front, and
:class:`FastRoutes` sending the busiest child endpoint past Starlette's stack. With
strawberry-graphql installed (the ``graphql`` extra), the read-only GraphQL API at
``/graphql`` too (:mod:`~release_coordinator.server.graphql`).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from release_coordinator._version import __version__
from release_coordinator.coordinator.delivery import WebhookDispatcher
from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.errors import ConfigurationError
from release_coordinator.gates import ReleaseGate
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.relay import Relay
from release_coordinator.server.access_log import AccessLog
from release_coordinator.server.common import (
    DEFAULT_MAX_BODY,
    guarded,
    http_error,
    json_response,
    method_routes,
)
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.graphql_openapi import GRAPHQL_PATH
from release_coordinator.server.metrics import ServiceMetrics
from release_coordinator.server.openapi import OPENAPI_PATH, combined_openapi
from release_coordinator.server.poll_path import PollEndpoint
from release_coordinator.server.rollout_app import DEFAULT_MAX_UPLOAD, rollout_app
from release_coordinator.server.token_auth import Verifier
from release_coordinator.server.ui import ui_routes

__all__ = ["DEFAULT_TICK_INTERVAL", "FastRoutes", "service_app"]

#: ``--tick-interval``: seconds between two ``RolloutManager.tick()`` (and, for a relay, two
#: rounds with its parent).
DEFAULT_TICK_INTERVAL = 1.0


def _route_path(scope: Scope) -> str:
    """The path a router matches: the request's, less the prefix the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class FastRoutes:
    """Pure ASGI middleware sending the requests of a few exact ``(method, path)`` pairs
    straight to their endpoints, past the router and Starlette's exception middleware (the
    endpoints answer their own errors: :class:`~release_coordinator.server.poll_path.
    PollEndpoint`). Everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get((scope["method"], _route_path(scope)))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _graphql_wanted(graphql: bool | None) -> bool:
    """Whether to mount ``/graphql``: ``None`` when strawberry-graphql is installed (the
    ``graphql`` extra); ``True`` requires it."""
    installed = importlib.util.find_spec("strawberry") is not None
    if graphql and not installed:
        raise ConfigurationError(
            "graphql=True needs strawberry-graphql: pip install 'release-coordinator[graphql]'"
        )
    return installed if graphql is None else graphql


def _paths(routes: Sequence[BaseRoute]) -> set[str]:
    return {route.path for route in routes if isinstance(route, Route)}


def _merged_routes(*apps: Starlette, shared: Sequence[Route] = ()) -> list[BaseRoute]:
    """The ``shared`` routes, then the routes of ``apps`` in order, less their own routes at
    the paths of ``shared``; ConfigurationError when two apps serve another path both."""
    replaced = _paths(shared)
    routes: list[BaseRoute] = list(shared)
    for app in apps:
        own = [r for r in app.routes if not (isinstance(r, Route) and r.path in replaced)]
        clash = _paths(routes) & _paths(own)
        if clash:
            raise ConfigurationError(f"two apps serve the same paths: {', '.join(sorted(clash))}")
        routes.extend(own)
    return routes


def service_app(
    coordinator: Coordinator,
    manager: RolloutManager,
    *,
    operator_tokens: Iterable[str] | Mapping[str, str] = (),
    verifier: Verifier | None = None,
    callback_tokens: Mapping[str, str] | None = None,
    allow_anonymous: bool = False,
    child_tokens: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    lifespan: bool = True,
    tick_interval: float = DEFAULT_TICK_INTERVAL,
    relay: Relay | None = None,
    access_log: bool = True,
    name: str = "release-coordinator",
    metrics_public: bool = False,
    gate_interval: float = 5.0,
    graphql: bool | None = None,
    webhook_interval: float | None = 1.0,
) -> Starlette:
    """One ASGI app serving ``coordinator``'s API and ``manager``'s (child protocol and
    operator API): the routes of :func:`coordinator_app` and :func:`rollout_app` side by side.

    ``operator_tokens`` and ``verifier`` admit operators to both APIs (one of them is required
    unless ``allow_anonymous``); ``callback_tokens`` are the task services' (see
    ``coordinator_app``); ``child_tokens``, the children's (see ``rollout_app``; kept in the
    manager's store). With ``lifespan`` (the default) the app's startup starts the coordinator,
    then loads the manager from its store and ticks it every ``tick_interval`` seconds (or runs
    ``relay``, a :class:`Relay` of ``manager``, which polls its parent and ticks the manager
    every ``relay.interval`` seconds); its shutdown stops them in reverse order.
    ``access_log`` adds :class:`AccessLog`'s lines; ``metrics_public`` opens ``GET /metrics``.

    Rollouts may wait for data releases (``after_release``): a
    :class:`~release_coordinator.gates.ReleaseGate` over both halves looks releases up for the
    manager and, with ``lifespan``, runs after the coordinator and the manager started,
    reconciling every ``gate_interval`` seconds and whenever a release ends. With
    ``lifespan``, a :class:`~release_coordinator.coordinator.delivery.WebhookDispatcher` over
    the coordinator's store delivers its webhooks, a round every ``webhook_interval`` seconds
    (``None``: none here; another process of the same database sends them).

    ``graphql``: serve the read-only GraphQL API at ``/graphql``
    (:func:`~release_coordinator.server.graphql.graphql_app`, the same operator tokens; any
    role may query): by default when strawberry-graphql (the ``graphql`` extra) is installed,
    ``False`` never, ``True`` always (a ConfigurationError without it).
    """
    if not isinstance(operator_tokens, Mapping | str | bytes):
        operator_tokens = list(operator_tokens)  # read twice, below
    coordinator_part = coordinator_app(
        coordinator,
        tokens=operator_tokens,
        verifier=verifier,
        callback_tokens=callback_tokens,
        allow_anonymous=allow_anonymous,
        max_body=max_body,
        lifespan=lifespan,
        name=name,
    )
    rollout_part = rollout_app(
        manager,
        operator_tokens=operator_tokens,
        verifier=verifier,
        allow_anonymous=allow_anonymous,
        child_tokens=child_tokens,
        max_body=max_body,
        max_upload=max_upload,
        lifespan=lifespan,
        tick_interval=tick_interval,
        relay=relay,
    )
    parts = (coordinator_part, rollout_part)  # started in this order, stopped in reverse
    gate = ReleaseGate(coordinator, manager, interval=gate_interval)
    dispatcher = (
        None
        if webhook_interval is None
        else WebhookDispatcher(coordinator.store, interval=webhook_interval)
    )
    # Each part serves its own OpenAPI document at /openapi.json: here one document lists both.
    with_graphql = _graphql_wanted(graphql)
    document = combined_openapi(__version__, graphql=with_graphql)

    async def openapi(request: Request) -> Response:
        return json_response(200, document)

    # The rollout part's routes first: its /poll is the busiest path, and Starlette tries the
    # routes in order (the paths do not clash, so the order changes nothing else).
    routes = _merged_routes(
        rollout_part,
        coordinator_part,
        shared=method_routes([(OPENAPI_PATH, "GET", guarded(openapi))]),
    )
    metrics = ServiceMetrics(coordinator, manager, operator_tokens, verifier, metrics_public)
    routes += ui_routes() + metrics.routes()  # /ui, /docs (server.ui); /metrics (server.metrics)
    if with_graphql:
        from release_coordinator.server.graphql import graphql_app  # the graphql extra

        endpoint = graphql_app(
            coordinator,
            manager,
            operator_tokens=operator_tokens,
            verifier=verifier,
            callback_tokens=callback_tokens,
            allow_anonymous=allow_anonymous,
            max_body=max_body,
        )
        routes.append(Route(GRAPHQL_PATH, endpoint))

    @contextlib.asynccontextmanager
    async def run(_app: Starlette) -> AsyncIterator[None]:
        # Each part's own lifespan (a no-op without ``lifespan``); a failed startup unwinds
        # the parts already started.
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part.router.lifespan_context(part))
            if lifespan:
                await stack.enter_async_context(gate.running())
                if dispatcher is not None:
                    await stack.enter_async_context(dispatcher.running())
            yield

    fast = {
        (method, route.path): route.app
        for route in rollout_part.routes
        if isinstance(route, Route) and isinstance(route.app, PollEndpoint)
        for method in route.methods or ()
    }
    app = _ServiceApp(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=run)
    app.front = AccessLog(
        FastRoutes(app.starlette, routes=fast),
        log=access_log,
        observer=metrics.request,
        routes=routes,
    )
    return app


class _ServiceApp(Starlette):
    """:func:`service_app`'s app: the access log and :class:`FastRoutes` in front of
    Starlette's own stack (its error middleware, its router), so that the busiest child
    endpoints (``POST /poll``), which answer their own errors, pass through nothing else."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's own handling of a request (what the app would be without the front)."""
        await Starlette.__call__(self, scope, receive, send)
