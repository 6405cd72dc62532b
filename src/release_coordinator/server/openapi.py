"""OpenAPI 3.1 documents of the HTTP apps, assembled from their parts and checked against them.

::

    from release_coordinator.server.openapi import combined_openapi, coordinator_openapi

    document = coordinator_openapi()  # a new dict every call: change it at will

- :func:`coordinator_openapi`: the API of :func:`~release_coordinator.server.coordinator_app.
  coordinator_app` (task services, releases, tasks, events, the task-service callback).
- :func:`rollout_openapi`: the API of :func:`~release_coordinator.server.rollout_app.
  rollout_app` (the edge-rollout child protocol and the operator API).
- :func:`combined_openapi`: both in one document, for a server that serves both apps (each
  under an optional path prefix).

Each app serves its own document at ``GET /openapi.json`` (no token needed). Schemas use the
JSON Schema 2020-12 dialect, as OpenAPI 3.1 does. Request schemas describe what the apps
accept (a few rules that JSON Schema cannot say, such as "printable text" or "a valid
polygon", are approximated and said in a ``description``); response schemas describe every
answer the apps give, errors included: ``{"error": {"code", "message", "details"}}`` with the
codes each status can carry.

**Generated, not written.** Every request and answer body is declared once as a msgspec Struct
(:mod:`release_coordinator.coordinator.bodies` and :mod:`~release_coordinator.coordinator.
api_bodies` for the task-service protocol and the Coordinator's API;
:mod:`release_coordinator.rollout.bodies` and :mod:`~release_coordinator.rollout.api_bodies`
for the child protocol and the rollout operator API); the apps decode request bodies through
them, and their component schemas are generated from them
(:func:`release_coordinator.schemas.schema_components`). The paths are generated from a table
of routes per app (``COORDINATOR_ROUTES`` in :mod:`~release_coordinator.server.
openapi_coordinator`, ``ROLLOUT_ROUTES`` in :mod:`~release_coordinator.server.openapi_rollout`,
built by :func:`release_coordinator.server.openapi_routes.paths`); the enumerations come from
the library's own enums. What is still written out by hand is what no Struct declares: a
GeoJSON area's shape, a result body's two encodings and the policies
(:mod:`~release_coordinator.server.openapi_rollout_schemas`), and the error bodies and shared
parameters (:mod:`~release_coordinator.server.openapi_parts`).

Needs nothing beyond the core dependencies: it is plain data.
"""

from __future__ import annotations

from typing import Any

from release_coordinator._version import __version__
from release_coordinator.server.graphql_openapi import GRAPHQL_PATH, GRAPHQL_TAG, graphql_paths
from release_coordinator.server.openapi_coordinator import (
    _COORDINATOR_DESCRIPTION,
    _COORDINATOR_PARAMETERS,
    _COORDINATOR_SCHEMAS,
    _COORDINATOR_TAGS,
    _coordinator_paths,
)
from release_coordinator.server.openapi_parts import (
    _DIALECT,
    OPENAPI_PATH,
    OPENAPI_VERSION,
    _document,
    _fresh,
    _security_schemes,
)
from release_coordinator.server.openapi_rollout import (
    _ROLLOUT_DESCRIPTION,
    _ROLLOUT_TAGS,
    _rollout_paths,
)
from release_coordinator.server.openapi_rollout_schemas import (
    _ROLLOUT_PARAMETERS,
    _ROLLOUT_SCHEMAS,
)

__all__ = [
    "OPENAPI_PATH",
    "OPENAPI_VERSION",
    "combined_openapi",
    "coordinator_openapi",
    "rollout_openapi",
]


def coordinator_openapi(version: str = __version__) -> dict[str, Any]:
    """The OpenAPI 3.1 document of :func:`~release_coordinator.server.coordinator_app.
    coordinator_app` (``info.version`` is ``version``); a new dict on every call."""
    return _fresh(
        _document(
            "release_coordinator: Coordinator API",
            _COORDINATOR_DESCRIPTION,
            version,
            _COORDINATOR_TAGS,
            _coordinator_paths(),
            _COORDINATOR_SCHEMAS,
            _COORDINATOR_PARAMETERS,
            _security_schemes("operatorToken", "serviceToken"),
        )
    )


# -- the Rollout API ---------------------------------------------------------------------------


def rollout_openapi(version: str = __version__) -> dict[str, Any]:
    """The OpenAPI 3.1 document of :func:`~release_coordinator.server.rollout_app.rollout_app`
    (``info.version`` is ``version``); a new dict on every call."""
    return _fresh(
        _document(
            "release_coordinator: Rollout API",
            _ROLLOUT_DESCRIPTION,
            version,
            _ROLLOUT_TAGS,
            _rollout_paths(),
            _ROLLOUT_SCHEMAS,
            _ROLLOUT_PARAMETERS,
            _security_schemes("operatorToken", "childToken"),
        )
    )


# -- both ----------------------------------------------------------------------------------------


def combined_openapi(
    version: str = __version__,
    *,
    coordinator_prefix: str = "",
    rollout_prefix: str = "",
    graphql: bool = False,
) -> dict[str, Any]:
    """One document for a server that serves both apps, the coordinator's under
    ``coordinator_prefix`` and the rollout manager's under ``rollout_prefix`` (``""``: at the
    root). ``GET /openapi.json`` is listed once, at the root, for the combined document.
    ``graphql`` adds ``/graphql`` (under ``coordinator_prefix``): the GraphQL app
    (:mod:`~release_coordinator.server.graphql`), which ``serve`` mounts when it is installed.

    Raises ValueError when a prefix is not ``""`` or ``/name`` (no trailing slash), or when the
    two apps would serve the same path."""
    for prefix in (coordinator_prefix, rollout_prefix):
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(
                f"a prefix is '' or starts with '/' and does not end with it: {prefix!r}"
            )
    coordinator = coordinator_openapi(version)
    rollout = rollout_openapi(version)
    paths: dict[str, Any] = {OPENAPI_PATH: coordinator["paths"][OPENAPI_PATH]}
    paths[OPENAPI_PATH]["get"]["operationId"] = "combinedOpenAPI"
    for document, prefix in ((coordinator, coordinator_prefix), (rollout, rollout_prefix)):
        for path, item in document["paths"].items():
            if path == OPENAPI_PATH:
                continue
            if prefix + path in paths:  # pragma: no cover - their paths differ today
                raise ValueError(f"both apps serve {prefix + path}: give them prefixes")
            paths[prefix + path] = item
    components: dict[str, dict[str, Any]] = {}
    for document in (coordinator, rollout):
        for section, entries in document["components"].items():
            merged = components.setdefault(section, {})
            for name, entry in entries.items():
                if name in merged and merged[name] != entry:  # pragma: no cover - a bug here
                    raise ValueError(f"components.{section}.{name} differs between the apps")
                merged[name] = entry
    tags: dict[str, dict[str, Any]] = {}
    for document in (coordinator, rollout):
        for tag in document["tags"]:
            tags.setdefault(tag["name"], tag)
    if graphql:
        paths.update(graphql_paths(coordinator_prefix + GRAPHQL_PATH))
        tags[GRAPHQL_TAG["name"]] = dict(GRAPHQL_TAG)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": _DIALECT,
        "info": {
            "title": "release_coordinator",
            "version": version,
            "description": (
                "The Coordinator API and the Rollout API (child protocol and operator API)"
                " served together.\n\n" + _COORDINATOR_DESCRIPTION + "\n\n" + _ROLLOUT_DESCRIPTION
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": list(tags.values()),
        "security": [{"operatorToken": []}],
        "paths": paths,
        "components": components,
    }
