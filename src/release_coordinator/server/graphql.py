"""A read-only GraphQL query surface over a Coordinator and a RolloutManager, at ``/graphql``.

::

    from starlette.routing import Route
    from release_coordinator.server.graphql import graphql_app

    routes = [Route("/graphql", graphql_app(coordinator, manager, operator_tokens=tokens))]

- :func:`graphql_schema`: the schema (strawberry-graphql): releases, tasks, events, task
  services, notes, studies, rollouts and children, with the REST API's field names and values
  (:mod:`~release_coordinator.server.graphql_query`, :mod:`~release_coordinator.server.
  graphql_types`). Queries only: there is no mutation and no subscription.
- :func:`execute_graphql`: one query through the library, no HTTP.
- :func:`graphql_app`: an ASGI app serving it, ``GET /graphql?query=...`` and ``POST /graphql``
  (``application/json``: ``{"query", "variables", "operationName"}``), answering
  ``{"data", "errors"}`` by strawberry's ASGI integration (GraphQL over HTTP). It is what
  :func:`~release_coordinator.server.service_app.service_app` (``release-coordinator serve``)
  mounts at ``/graphql`` when strawberry-graphql is installed (the ``graphql`` extra).

**Auth as the REST API's.** An operator bearer token (``operator_tokens`` or ``verifier``) of
any role: a query only reads, so a ``reader`` may send one, by ``GET`` or ``POST``
(:data:`~release_coordinator.server.roles.READER_ROUTES`). No valid token: 401 with the REST
API's error body; a task service's callback token or a child's token: 403. Refusals at the HTTP
edge (a method other than ``GET``/``POST``, a body over ``max_body``, a body that is not a JSON
object, a content type other than JSON) answer the REST API's error body too; a query that does
not parse or validate, an unknown id or an invalid argument answers 200 with ``errors``, each
with ``extensions.code`` (the REST error's code: ``not_found``, ``invalid``, ``too_large``)
and ``extensions.details``. Nothing answers a 500 but a bug, and a bug in a resolver is an error
``internal`` (logged) beside the data that could be read.

**Limits.** A query may nest at most ``max_depth`` fields deep, use ``max_aliases`` aliases and
``max_tokens`` tokens, and list at most ``max_items`` items in all its pages together (a page
read from the store counts its ``limit`` before the read: a query that would read too much is
refused before it reads it); every listing is a page of at most 1000 items.

No GraphiQL page is served (it would load its code from a CDN, which the dashboard's
Content-Security-Policy forbids): point any GraphQL client at ``/graphql`` with the
``Authorization`` header; the schema is introspectable.

Needs the ``graphql`` extra (strawberry-graphql) and the ``server`` extra (Starlette);
``import release_coordinator`` imports neither.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from release_coordinator.coordinator.engine import Coordinator
from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.server.child_tokens import ChildTokens
from release_coordinator.server.common import (
    CODES,
    DEFAULT_MAX_BODY,
    Refusal,
    _jsonable,
    failure_response,
    json_bytes,
    refused,
)
from release_coordinator.server.graphql_context import DEFAULT_MAX_ITEMS, GraphQLContext
from release_coordinator.server.graphql_openapi import GRAPHQL_PATH
from release_coordinator.server.graphql_query import Query
from release_coordinator.server.request_body import parse_json, read_asgi_body
from release_coordinator.server.roles import required_role, role_refusal
from release_coordinator.server.token_auth import (
    Principal,
    TokenAuth,
    Verifier,
    _api_tokens,
    bearer_token,
    forbidden,
    unauthorized,
)

__all__ = [
    "DEFAULT_MAX_ALIASES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_TOKENS",
    "GRAPHQL_PATH",
    "GraphQLContext",
    "execute_graphql",
    "graphql_app",
    "graphql_schema",
]

log = logging.getLogger(__name__)

#: The deepest a query may nest its fields (introspection's own fields are not counted).
DEFAULT_MAX_DEPTH = 10
#: The most aliases a query may use.
DEFAULT_MAX_ALIASES = 30
#: The most tokens (names, punctuation, values) a query may hold.
DEFAULT_MAX_TOKENS = 2000

#: Who a request comes from, handed by the app's front to the strawberry view in its scope.
_PRINCIPAL = "release_coordinator.principal"


def _shaped(error: GraphQLError) -> GraphQLError:
    """``error`` with ``extensions.code`` (and ``details``) of the library error it carries;
    a bug (any other exception) is logged and shown as ``internal`` only."""
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        return error  # a syntax or validation error: graphql-core's own, as it is
    if isinstance(original, ReleaseCoordinatorError):
        message = original.message
        extensions = {"code": original.code, "details": _jsonable(original.details)}
    else:
        log.error(
            "GraphQL field %s failed", ".".join(map(str, error.path or ())), exc_info=original
        )
        message = f"internal error: {type(original).__name__}"
        extensions = {"code": "internal"}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )


class _ShapedErrors(SchemaExtension):
    """Gives each error of a result the code of the library error it carries (see
    :func:`_shaped`)."""

    def on_operation(self) -> Any:
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if result is not None and errors:
            result.errors = [_shaped(e) for e in errors]


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Nothing: a refused query is the client's business, and a bug is logged once, by
        :class:`_ShapedErrors` (strawberry would log every error with a traceback)."""


#: How many distinct query texts the parse and validation caches keep (LRU).
_CACHED_QUERIES = 256


def _extensions(max_depth: int, max_aliases: int, max_tokens: int) -> list[type[SchemaExtension]]:
    """strawberry's limiters and caches, as classes (an instance per request, never one shared
    by requests). The limiters' validation rules are made once, so that a query text seen
    before is neither parsed nor validated again (most of a small query's time)."""
    rules = [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    ]

    class Tokens(MaxTokensLimiter):
        def __init__(self) -> None:
            super().__init__(max_token_count=max_tokens)

    class Limits(AddValidationRules):
        def __init__(self) -> None:
            super().__init__(rules)

    class Parsed(ParserCache):
        def __init__(self) -> None:
            super().__init__(maxsize=_CACHED_QUERIES)

    class Validated(ValidationCache):
        def __init__(self) -> None:
            super().__init__(maxsize=_CACHED_QUERIES)

    return [Tokens, Limits, Parsed, Validated]


@functools.lru_cache(maxsize=8)
def graphql_schema(
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_aliases: int = DEFAULT_MAX_ALIASES,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> strawberry.Schema:
    """The read-only schema (the same object for the same limits): its fields have the REST
    API's snake_case names; a query nests at most ``max_depth`` fields deep, with at most
    ``max_aliases`` aliases and ``max_tokens`` tokens (a GraphQL error otherwise)."""
    for name, value in (
        ("max_depth", max_depth),
        ("max_aliases", max_aliases),
        ("max_tokens", max_tokens),
    ):
        if value < 1:
            raise ConfigurationError(f"{name} must be at least 1, not {value}")
    return _Schema(
        query=Query,
        config=StrawberryConfig(auto_camel_case=False),
        extensions=[*_extensions(max_depth, max_aliases, max_tokens), _ShapedErrors],
    )


async def execute_graphql(
    coordinator: Coordinator,
    manager: RolloutManager | None,
    query: str,
    variables: Mapping[str, Any] | None = None,
    *,
    operation_name: str | None = None,
    schema: strawberry.Schema | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> dict[str, Any]:
    """``query`` run over ``coordinator`` and ``manager`` (None: no rollouts), answered as over
    HTTP: ``{"data": ...}``, and ``"errors"`` when there are any (each with
    ``extensions.code``)."""
    result = await (schema or graphql_schema()).execute(
        query,
        variable_values=dict(variables) if variables is not None else None,
        context_value=GraphQLContext(coordinator, manager, max_items=max_items),
        operation_name=operation_name,
    )
    answer: dict[str, Any] = {"data": result.data}
    if result.errors:
        answer["errors"] = [e.formatted for e in result.errors]
    return answer


class _View(GraphQL[GraphQLContext, None]):
    """strawberry's ASGI view over the coordinator and the manager: a context per request,
    strict ASCII JSON (as the REST API's), no GraphiQL."""

    def __init__(
        self,
        schema: strawberry.Schema,
        coordinator: Coordinator,
        manager: RolloutManager | None,
        max_items: int,
    ) -> None:
        super().__init__(schema, graphql_ide=None, allow_queries_via_get=True)
        self.coordinator = coordinator
        self.manager = manager
        self.max_items = max_items

    async def get_context(self, request: Any, response: Any) -> GraphQLContext:
        principal = request.scope.get(_PRINCIPAL)
        return GraphQLContext(
            self.coordinator, self.manager, principal=principal, max_items=self.max_items
        )

    def encode_json(self, data: object) -> bytes:
        return json_bytes(data)


def _json_refusals(send: Send) -> Send:
    """``send`` with strawberry's own plain-text refusals (400 "No GraphQL query found in the
    request", 404 for a page it does not serve) turned into the REST API's JSON error body."""
    held: dict[str, Any] = {}

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            json_answer = headers.get(b"content-type", b"").startswith(b"application/json")
            if message["status"] >= 400 and not json_answer:
                held.update(status=message["status"], body=b"")
                return
        elif message["type"] == "http.response.body" and "status" in held:
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            status = held["status"]
            text = held["body"].decode("utf-8", "replace").strip()[:500] or CODES.get(status, "")
            answer = refused(Refusal(status, text))
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": answer.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": answer.body})
            return
        await send(message)

    return sending


class _GraphQLEndpoint:
    """The app :func:`graphql_app` answers: the REST API's checks (method, token and role,
    body), then the strawberry view."""

    def __init__(
        self,
        view: _View,
        operators: TokenAuth,
        services: TokenAuth,
        children: ChildTokens | None,
        anonymous: Principal | None,
        max_body: int,
    ) -> None:
        self.view = view
        self.operators = operators
        self.services = services
        self.children = children
        self.anonymous = anonymous
        self.max_body = max_body

    async def identify(self, request: Request) -> Principal:
        """The operator asking, if its role may query (any role may): 401 without a valid
        token, 403 for a task service's or a child's token."""
        if self.anonymous is not None:
            return self.anonymous
        given = bearer_token(request)
        if given is None:
            raise unauthorized()
        who = await self.operators.identify(given)
        if who is None:
            if await self.services.identify(given) is not None:
                raise forbidden("a task-service token may not use the GraphQL API")
            if self.children is not None and await self.children.owner(given) is not None:
                raise forbidden("a child token may not use the GraphQL API")
            raise unauthorized()
        method = request.method.upper()
        needed = required_role(method, GRAPHQL_PATH)
        if who.role is not None and not who.role.allows(needed):  # (every role may: reader)
            raise role_refusal(method, GRAPHQL_PATH, needed, who.name, who.role)
        return who

    async def checked_body(self, request: Request) -> bytes:
        """A ``POST``'s body: JSON (``application/json``), one object, at most ``max_body``
        bytes; the query parameters of a ``GET`` that are JSON (``variables``,
        ``extensions``) parse too."""
        if request.method == "GET":
            if not request.query_params.get("query"):
                raise Refusal(
                    400,
                    "GET /graphql needs the query parameter 'query' (no GraphiQL page is served)",
                    parameter="query",
                )
            for name in ("variables", "extensions"):
                raw = request.query_params.get(name)
                if raw and not isinstance(parse_json(raw), dict):
                    raise Refusal(400, f"the query parameter {name!r} must be a JSON object")
            return b""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            raise Refusal(415, "POST /graphql takes application/json", content_type=kind[:100])
        body = await read_asgi_body(request.scope, request.receive, self.max_body)
        if not isinstance(parse_json(body), dict):
            raise Refusal(400, "the body must be one JSON object (a GraphQL request)")
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no subscriptions
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            if request.method not in ("GET", "POST"):
                raise Refusal(
                    405,
                    f"{GRAPHQL_PATH} takes GET and POST only",
                    headers={"Allow": "GET, POST"},
                    method=request.method[:20],
                )
            who = await self.identify(request)
            body = await self.checked_body(request)
        except Exception as error:  # a refusal; a bug answers a JSON 500, logged
            answer: Response = failure_response(error, None, request.method, request.url.path)
            await answer(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # (a disconnect, if it comes)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.view({**scope, _PRINCIPAL: who}, replay, _json_refusals(send))


def graphql_app(
    coordinator: Coordinator,
    manager: RolloutManager | None = None,
    *,
    operator_tokens: Iterable[str] | Mapping[str, str] = (),
    verifier: Verifier | None = None,
    callback_tokens: Mapping[str, str] | None = None,
    allow_anonymous: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_aliases: int = DEFAULT_MAX_ALIASES,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> ASGIApp:
    """The GraphQL API over ``coordinator`` and ``manager`` (None: no rollouts) as an ASGI app
    to route at a path (``Route("/graphql", graphql_app(...))``; see the module docstring).

    ``operator_tokens`` and ``verifier`` are the REST API's (one of them is required unless
    ``allow_anonymous``); ``callback_tokens`` (the task services') and the manager's child
    tokens are told apart only to be refused with a 403. ``max_body`` bounds a ``POST``'s body
    (413 beyond); the other limits are :func:`graphql_schema`'s and
    :class:`~release_coordinator.server.graphql_context.GraphQLContext`'s. The app has no
    lifespan: the host runs the coordinator and the manager (as ``serve`` does)."""
    if max_body < 1:
        raise ConfigurationError(f"max_body must be at least 1 byte, not {max_body}")
    if max_items < 1:
        raise ConfigurationError(f"max_items must be at least 1, not {max_items}")
    operators, services, anonymous = _api_tokens(
        "GraphQL API", operator_tokens, verifier, callback_tokens, allow_anonymous=allow_anonymous
    )
    schema = graphql_schema(max_depth=max_depth, max_aliases=max_aliases, max_tokens=max_tokens)
    view = _View(schema, coordinator, manager, max_items)
    children = None if manager is None else ChildTokens(manager.store)
    return _GraphQLEndpoint(view, operators, services, children, anonymous, max_body)
