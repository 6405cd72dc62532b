"""``/graphql`` in an OpenAPI document: one path, ``GET`` and ``POST``, whose answers are
GraphQL's ``{"data", "errors"}`` (what a query may ask is the GraphQL schema's business: read
it by introspection, or ``graphql_schema().as_str()``).

:func:`~release_coordinator.server.openapi.combined_openapi` adds it with ``graphql=True``,
which is what :func:`~release_coordinator.server.service_app.service_app` serves when it mounts
the GraphQL app (strawberry-graphql installed). Plain data: needs no GraphQL library.
"""

from __future__ import annotations

from typing import Any

from release_coordinator.server.openapi_routes import Route, paths

__all__ = ["GRAPHQL_PATH", "GRAPHQL_TAG", "graphql_paths"]

#: Where ``serve`` mounts the GraphQL app.
GRAPHQL_PATH = "/graphql"

#: The tag of its operations.
GRAPHQL_TAG = {
    "name": "graphql",
    "description": "A read-only GraphQL query surface over releases, tasks, events, task"
    " services, studies and rollouts (the `graphql` extra). Any operator role may query.",
}

_NULLABLE_OBJECT = {"type": ["object", "null"]}

_RESULT: dict[str, Any] = {
    "type": "object",
    "description": "A GraphQL result: `data` (null when nothing could be read) and, when"
    " something went wrong, `errors`, each with `extensions.code` for the library's errors"
    " (`not_found`, `invalid`, `too_large`, `internal`).",
    "properties": {
        "data": _NULLABLE_OBJECT,
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "locations": {"type": "array", "items": {"type": "object"}},
                    "path": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "extensions": {"type": "object"},
                },
            },
        },
        "extensions": {"type": "object"},
    },
}

_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": "A GraphQL request (GraphQL over HTTP).",
    "required": ["query"],
    "properties": {
        "query": {"type": "string", "description": "The GraphQL document."},
        "variables": _NULLABLE_OBJECT,
        "operationName": {"type": ["string", "null"]},
        "extensions": _NULLABLE_OBJECT,
    },
}


def _query_parameter(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_ANSWER = {200: ("The result (a query that does not validate has `errors`).", _RESULT)}


def graphql_paths(path: str = GRAPHQL_PATH) -> dict[str, Any]:
    """The OpenAPI ``paths`` entry of the GraphQL app served at ``path``."""
    routes = [
        Route(
            "GET",
            path,
            "graphqlGet",
            "A GraphQL query in the query string",
            "graphql",
            _ANSWER,
            (400,),
            parameters=(
                _query_parameter("query", "The GraphQL document.", required=True),
                _query_parameter("variables", "Its variables: a JSON object."),
                _query_parameter("operationName", "The operation to run."),
            ),
            description="GraphQL over HTTP by `GET` (no GraphiQL page is served: 400 without"
            " `query`).",
        ),
        Route(
            "POST",
            path,
            "graphqlPost",
            "A GraphQL query in a JSON body",
            "graphql",
            _ANSWER,
            (400, 413, 415),
            request=_REQUEST,
            description="GraphQL over HTTP by `POST` (`application/json`). It only reads:"
            " a reader may send it.",
        ),
    ]
    return paths(routes)
