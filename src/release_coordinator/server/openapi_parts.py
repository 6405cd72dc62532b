"""The OpenAPI documents' building blocks: limits, schema helpers, operations, the shared
error components, and a document's assembly (only the components its paths use)."""

from __future__ import annotations

import json
from typing import Any

# The limits the documents state come from the modules that enforce them; these four are
# named here for the test that holds the documents' limits to the apps'.
from release_coordinator.coordinator.api_bodies import (
    MAX_DESCRIPTION as _MAX_DESCRIPTION,  # noqa: F401
)
from release_coordinator.coordinator.api_bodies import (
    MAX_ITEMS as _MAX_ITEMS,  # noqa: F401
)
from release_coordinator.coordinator.api_bodies import (
    MAX_URL as _MAX_URL,  # noqa: F401
)
from release_coordinator.rollout.results import (
    MAX_SUMMARIES as _MAX_SUMMARIES,  # noqa: F401
)
from release_coordinator.schemas import (
    DEFAULT_PAGE,
    MAX_INT32,
    MAX_PAGE,
    MAX_TEXT,
    MULTILINE_PATTERN,
    PRINTABLE_PATTERN,
)

OPENAPI_VERSION = "3.1.0"
#: Where each app serves its document.
OPENAPI_PATH = "/openapi.json"

_DIALECT = "https://spec.openapis.org/oas/3.1/dialect/base"

_MAX_EVENT_ID = 2**63 - 1
_NUMBER = "-?[0-9]{1,3}(\\.[0-9]{1,8})?"


# -- building blocks ---------------------------------------------------------------------------


def _fresh(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` that shares nothing with the module's data (nor within itself)."""
    fresh: dict[str, Any] = json.loads(json.dumps(document))
    return fresh


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or null (which the apps take as "not given")."""
    return {"anyOf": [schema, {"type": "null"}]}


def _text(most: int = MAX_TEXT, *, blank: bool = True, multiline: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string",
        "maxLength": most,
        "pattern": MULTILINE_PATTERN if multiline else PRINTABLE_PATTERN,
    }
    if not blank:
        schema["minLength"] = 1
        schema["description"] = "Printable text that is not blank."
    return schema


def _enum(values: Any) -> dict[str, Any]:
    return {"type": "string", "enum": [str(v) for v in values]}


def _time() -> dict[str, Any]:
    return {"type": "string", "format": "date-time"}


def _object(
    properties: dict[str, Any],
    required: list[str] | None = None,
    *,
    closed: bool = True,
    description: str | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _record(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An answer's object: every property always present, nothing else."""
    return _object(properties, list(properties), description=description)


def _page(item: str) -> dict[str, Any]:
    return _record(
        {
            "items": {"type": "array", "items": _ref(item)},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "offset": {"type": "integer", "minimum": 0},
            "next_offset": {"type": ["integer", "null"], "minimum": 0},
        },
        f"A page of {item} records; ``next_offset`` is null on the last page.",
    )


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _body(
    schema: dict[str, Any], *, required: bool = True, description: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {"required": required, "content": _json(schema)}
    if description:
        body["description"] = description
    return body


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = _json(schema)
    return answer


#: The name of the shared response of each refusal status.
_REFUSALS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "TooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    503: "Unavailable",
}


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    answers: dict[int, dict[str, Any]],
    refusals: tuple[int, ...],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): answer for status, answer in answers.items()}
    for status in refusals:
        responses[str(status)] = {"$ref": f"#/components/responses/{_REFUSALS[status]}"}
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = dict(sorted(responses.items()))
    if security is not None:
        operation["security"] = security
    return operation


def _param(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/parameters/{name}"}


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The id of the {what}.",
        "schema": {"type": "string", "minLength": 1},
    }


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


def _following() -> tuple[dict[str, Any], dict[str, Any]]:
    """The query parameters that follow an event log (the Coordinator's and the rollouts'):
    ``after_id`` and ``since``."""
    return (
        _query(
            "after_id",
            {"type": "integer", "minimum": 0, "maximum": _MAX_EVENT_ID},
            "Only events with a greater id (to follow the log).",
        ),
        _query(
            "since",
            _time(),
            "Only events at or after this ISO 8601 time (UTC without a zone;"
            " 400 if it does not parse).",
        ),
    )


def _choices(name: str, values: Any, what: str) -> dict[str, Any]:
    """A filter of several values: ``?name=a&name=b`` or ``?name=a,b``."""
    return _query(
        name,
        {"type": "array", "items": _enum(values)},
        f"Only {what} of these values (repeat the parameter, or separate values with commas).",
        style="form",
        explode=True,
    )


# -- shared components -------------------------------------------------------------------------

_PROBLEM = _object(
    {"path": {"type": "string"}, "message": {"type": "string"}},
    ["path", "message"],
    description="One refused value: its path (``stages[1].name``; empty for the whole body).",
)


def _error(codes: list[str] | None, *, problems: bool = False) -> dict[str, Any]:
    details: dict[str, Any] = {
        "type": "object",
        "description": "More about the refusal; ``problems`` lists every refused value.",
        "properties": {"problems": {"type": "array", "items": _ref("Problem")}},
    }
    if problems:
        details["required"] = ["problems"]
    code: dict[str, Any] = {"type": "string", "pattern": "^[a-z_]+$"}
    if codes is not None:
        code = {"type": "string", "enum": codes}
    return _record(
        {
            "error": _record(
                {
                    "code": code,
                    "message": {"type": "string", "minLength": 1},
                    "details": details,
                }
            )
        },
        "The answer of every refusal (the shape of ``ReleaseCoordinatorError.to_dict()``).",
    )


_ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _PROBLEM,
    "Error": _error(None),
    "BadRequestError": _error(["invalid", "invalid_area"]),
    "UnauthorizedError": _error(["unauthorized"]),
    "ForbiddenError": _error(["forbidden"]),
    "NotFoundError": _error(["not_found"]),
    "ConflictError": _error(["conflict", "invalid_transition", "concurrent_update"]),
    "TooLargeError": _error(["too_large"]),
    "UnsupportedMediaTypeError": _error(["unsupported_media_type"]),
    "InvalidError": _error(["invalid", "invalid_strategy", "invalid_bundle"], problems=True),
    "UnavailableError": _error(["unavailable", "storage", "schema"]),
}

_ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _answer(
        "A body that is not JSON (or not a JSON object), a query parameter that does not parse,"
        " a missing parameter; on the child protocol, every invalid value.",
        _ref("BadRequestError"),
    ),
    "Unauthorized": {
        **_answer("No valid bearer token.", _ref("UnauthorizedError")),
        "headers": {
            "WWW-Authenticate": {
                "description": "Always ``Bearer``.",
                "schema": {"type": "string", "const": "Bearer"},
            }
        },
    },
    "Forbidden": _answer("A valid token that may not do this.", _ref("ForbiddenError")),
    "NotFound": _answer("An unknown id.", _ref("NotFoundError")),
    "Conflict": _answer(
        "The stored state does not allow it; nothing was changed.", _ref("ConflictError")
    ),
    "TooLarge": _answer("The body is larger than the app's limit.", _ref("TooLargeError")),
    "UnsupportedMediaType": _answer(
        "A content type the endpoint does not take.", _ref("UnsupportedMediaTypeError")
    ),
    "Invalid": _answer(
        "Invalid values, each listed in ``details.problems`` by its path.", _ref("InvalidError")
    ),
    "Unavailable": _answer(
        "The token verifier or the store failed; ask again later.", _ref("UnavailableError")
    ),
}

_PAGING = {
    "limit": _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        "The most items of the page (400 if not an integer, 422 outside the range).",
    ),
    "offset": _query(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": MAX_INT32, "default": 0},
        "How many items to skip (400 if not an integer, 422 outside the range).",
    ),
}

#: What an operator's route may refuse (no valid token, a role short of it, the store or the
#: verifier down), what a route reading a body may (it is not JSON, too large, invalid), and
#: a listing's paging parameters (:data:`_PAGING`'s components): every API's routes'.
_OPERATOR = (401, 403, 503)
_BODY = (400, 413, 422)
_PAGE_PARAMS = (_param("limit"), _param("offset"))

_EMPTY_OBJECT = _object(
    {}, description="An empty object (or an empty body): the action takes no field."
)


def _security_schemes(*names: str) -> dict[str, Any]:
    schemes = {
        "operatorToken": "An operator token (``tokens``/``operator_tokens``, or the verifier).",
        "serviceToken": "A task service's token (``callback_tokens``): its own tasks' callbacks.",
        "childToken": "A child's token, issued at its first poll (``child_tokens=True`` only).",
    }
    return {
        name: {"type": "http", "scheme": "bearer", "description": schemes[name]} for name in names
    }


def _openapi_operation(tag: str) -> dict[str, Any]:
    return {
        "get": _operation(
            f"{tag}OpenAPI",
            "This document",
            "documentation",
            {200: _answer("The OpenAPI 3.1 document of this app.", {"type": "object"})},
            (),
            security=[],
        )
    }


def _document(
    title: str,
    description: str,
    version: str,
    tags: list[tuple[str, str]],
    paths: dict[str, Any],
    schemas: dict[str, Any],
    parameters: dict[str, Any],
    schemes: dict[str, Any],
) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": _DIALECT,
        "info": {
            "title": title,
            "version": version,
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name, "description": text} for name, text in tags],
        "security": [{"operatorToken": []}],
        "paths": paths,
        "components": _used(
            paths,
            {
                "schemas": {**_ERROR_SCHEMAS, **schemas},
                "responses": _ERROR_RESPONSES,
                "parameters": {**_PAGING, **parameters},
            },
            keep={"schemas": {"Error"}},
        )
        | {"securitySchemes": schemes},
    }


def _refs(node: object) -> set[str]:
    """Every ``$ref`` in ``node``."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _used(
    paths: dict[str, Any], components: dict[str, dict[str, Any]], keep: dict[str, set[str]]
) -> dict[str, dict[str, Any]]:
    """The ``components`` that ``paths`` use (directly or through each other), and ``keep``."""
    wanted = {f"#/components/{section}/{name}" for section, names in keep.items() for name in names}
    wanted |= _refs(paths)
    done: set[str] = set()
    while wanted - done:
        ref = min(wanted - done)
        done.add(ref)
        _, _, section, name = ref.split("/")
        wanted |= _refs(components[section][name])
    return {
        section: {
            name: entry
            for name, entry in entries.items()
            if f"#/components/{section}/{name}" in done
        }
        for section, entries in components.items()
    }
