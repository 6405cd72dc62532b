"""An API's routes as a table: one :class:`Route` per operation, and :func:`paths`, which
builds an OpenAPI document's ``paths`` object from such a table (with the operation helpers of
:mod:`~release_coordinator.server.openapi_parts`).

A body or an answer is named by its msgspec Struct (documented in the components by
:func:`~release_coordinator.schemas.schema_components`, under the Struct's name or the name
``paths`` is given for it), by a component's name, or written out as a JSON Schema.

Every operation an operator token may call (the document's default security, or one that lists
``operatorToken``) answers 401 and 403, and says the operator role it needs, by the rule of
:func:`~release_coordinator.server.roles.required_role`: in ``x-required-role`` and in its
description. No route states it itself, so that a new route gets it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from release_coordinator.server.openapi_parts import _answer, _body, _operation, _ref
from release_coordinator.server.roles import required_role

__all__ = ["Route", "Schema", "paths"]

#: A body's or an answer's schema: a Struct type (a reference to its component), a
#: component's name (a reference to it), or a JSON Schema written out (a dict).
Schema = type | str | dict[str, Any]


@attrs.frozen
class Route:
    """One operation of an API, as its OpenAPI document says it.

    ``answers`` maps each success status to its description and its schema (``None``: no
    body); ``refusals`` are the statuses of the shared error responses it may answer (401 and
    403 are added to an operator's operation).
    ``request`` is the request body's schema (``None``: it takes none), ``request_required``
    whether a body must be sent. ``security`` ``None`` keeps the document's default
    requirement; ``[]`` needs no token. ``path_parameters`` go to the path item (shared by
    every operation of the path: the first route of a path that gives them wins)."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    answers: Mapping[int, tuple[str, Schema | None]]
    refusals: tuple[int, ...] = ()
    request: Schema | None = None
    request_required: bool = True
    request_description: str = ""
    security: list[dict[str, list[str]]] | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    path_parameters: tuple[dict[str, Any], ...] = ()
    description: str | None = None


def _schema(schema: Schema, names: Mapping[str, str]) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    name = schema if isinstance(schema, str) else schema.__name__
    return _ref(names.get(name, name))


def operation(route: Route, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI operation object of ``route`` (``names`` renames Structs' components)."""
    names = names or {}
    refusals = route.refusals
    description = route.description
    role = None
    if route.security is None or any("operatorToken" in need for need in route.security):
        refusals = (*refusals, *(s for s in (401, 403) if s not in refusals))
        role = required_role(route.method, route.path).value
        needs = (
            f"An operator token needs the `{role}` role or a higher one"
            " (`reader` < `releaser` < `admin`)."
        )
        description = f"{description}\n\n{needs}" if description else needs
    answers = {
        status: _answer(text, None if schema is None else _schema(schema, names))
        for status, (text, schema) in route.answers.items()
    }
    body = None
    if route.request is not None:
        body = _body(
            _schema(route.request, names),
            required=route.request_required,
            description=route.request_description,
        )
    made = _operation(
        route.operation_id,
        route.summary,
        route.tag,
        answers,
        refusals,
        parameters=list(route.parameters) or None,
        body=body,
        security=route.security,
        description=description,
    )
    if role is not None:
        made["x-required-role"] = role
    return made


def paths(
    routes: Iterable[Route],
    names: Mapping[str, str] | None = None,
    extra: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI ``paths`` object of ``routes`` (in their order; a path's operations in the
    order of its routes), with the path items of ``extra`` (such as the document's own
    ``GET /openapi.json``) merged in."""
    items: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = items.setdefault(route.path, {})
        if route.path_parameters and "parameters" not in item:
            item["parameters"] = list(route.path_parameters)
        method = route.method.lower()
        if method in item:
            raise ValueError(f"two routes for {route.method} {route.path}")
        item[method] = operation(route, names)
    for path, item in (extra or {}).items():
        items[path] = {**items.get(path, {}), **item}
    return items
