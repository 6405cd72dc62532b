"""OpenAPI 3.1 documents of the HTTP apps, written by hand and checked against them by the tests.

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

The enumerations (states, statuses, event types) are taken from the library's own enums, so
that they cannot drift; everything else is written out here.

Needs nothing beyond the core dependencies: it is plain data.
"""

from __future__ import annotations

import json
from typing import Any

from release_coordinator._version import __version__
from release_coordinator.coordinator.models import EventKind, EventType, HealthStatus
from release_coordinator.coordinator.wire import MAX_TEXT, REPORTED_STATES
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.strategy import StageType

__all__ = [
    "OPENAPI_PATH",
    "OPENAPI_VERSION",
    "combined_openapi",
    "coordinator_openapi",
    "rollout_openapi",
]

#: The OpenAPI version of the documents.
OPENAPI_VERSION = "3.1.0"
#: Where each app serves its document.
OPENAPI_PATH = "/openapi.json"

_DIALECT = "https://spec.openapis.org/oas/3.1/dialect/base"

# The limits the apps enforce (kept equal to the constants of the app modules; the tests check).
_MAX_DESCRIPTION = 10_000
_MAX_URL = 2048
_MAX_ITEMS = 10_000
_MAX_REASON = 1000
_MAX_PAGE = 1000
_DEFAULT_PAGE = 100
_MAX_OFFSET = 2**31 - 1
_MAX_EVENT_ID = 2**63 - 1
_MAX_INT32 = 2**31 - 1
_MAX_SUMMARIES = 100
_MAX_WAVES = 100
_MAX_GROUPS = 1000

# "Printable text": no control characters (the apps also refuse other unprintable characters,
# such as format characters, and lone surrogates).
_PRINTABLE = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
_MULTILINE = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
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
        "pattern": _MULTILINE if multiline else _PRINTABLE,
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
            "limit": {"type": "integer", "minimum": 1, "maximum": _MAX_PAGE},
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
        {"type": "integer", "minimum": 1, "maximum": _MAX_PAGE, "default": _DEFAULT_PAGE},
        "The most items of the page (400 if not an integer, 422 outside the range).",
    ),
    "offset": _query(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET, "default": 0},
        "How many items to skip (400 if not an integer, 422 outside the range).",
    ),
}

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


# -- the Coordinator's API ---------------------------------------------------------------------

_TEXTS = _or_null(
    {
        "type": "array",
        "maxItems": _MAX_ITEMS,
        "items": {**_text(), "minLength": 1},
    }
)

_COORDINATOR_SCHEMAS: dict[str, Any] = {
    "Status": _record(
        {"name": {"type": "string"}, "version": {"type": "string"}, "message": {"type": "string"}}
    ),
    "ServiceHealth": _record(
        {
            "status": _enum(HealthStatus),
            "consecutive_failures": {"type": "integer", "minimum": 0},
            "last_checked_at": {"anyOf": [_time(), {"type": "null"}]},
            "last_error": {"type": "string"},
            "reported_name": {"type": "string"},
            "reported_version": {"type": "string"},
            "message": {"type": "string"},
        },
        "What the health checks know of a task service.",
    ),
    "TaskService": _record(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "url": {"type": "string"},
            "enabled": {"type": "boolean"},
            "health": _ref("ServiceHealth"),
            "created_at": _time(),
            "updated_at": _time(),
        }
    ),
    "TaskServicePage": _page("TaskService"),
    "TaskServiceCreate": _object(
        {
            "name": _text(blank=False),
            "url": {
                **_text(_MAX_URL, blank=False),
                "description": "The service's base URL (http, https, or memory:// in process).",
            },
            "enabled": _or_null({"type": "boolean", "default": True}),
            "check": _or_null(
                {
                    "type": "boolean",
                    "default": True,
                    "description": "Ask its GET /status first (422 if it does not answer).",
                }
            ),
        },
        ["name", "url"],
    ),
    "TaskServiceUpdate": _object(
        {"name": _or_null(_text(blank=False)), "url": _or_null(_text(_MAX_URL, blank=False))},
        description="The fields to change (none: nothing changes).",
    ),
    "Release": _record(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string", "description": "A semantic version."},
            "state": _enum(ReleaseState),
            "description": {"type": "string"},
            "studies": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "author": {"type": "string"},
            "is_major": {"type": "boolean"},
            "auto_publish": {"type": "boolean"},
            "failure": {"type": "string", "description": "Why it failed (empty otherwise)."},
            "cloned_from": {"type": "string", "description": "The release it runs again."},
            "created_at": _time(),
            "updated_at": _time(),
            "state_changed_at": _time(),
        }
    ),
    "ReleasePage": _page("Release"),
    "ReleaseCreate": _object(
        {
            "name": _text(blank=False),
            "description": _or_null(_text(_MAX_DESCRIPTION, multiline=True)),
            "studies": _TEXTS,
            "tags": _TEXTS,
            "author": _or_null(
                {**_text(), "description": "Left out: the name of the operator's token."}
            ),
            "is_major": _or_null({"type": "boolean", "default": False}),
            "auto_publish": _or_null({"type": "boolean", "default": False}),
        },
        ["name"],
    ),
    "ReleaseUpdate": _object(
        {
            "name": _or_null(_text(blank=False)),
            "description": _or_null(_text(_MAX_DESCRIPTION, multiline=True)),
            "tags": _TEXTS,
        },
        description="The fields to change (none: nothing changes).",
    ),
    "CancelRequest": _object({"reason": _or_null(_text(_MAX_REASON))}),
    "EmptyObject": _EMPTY_OBJECT,
    "Task": _record(
        {
            "id": {"type": "string"},
            "release_id": {"type": "string"},
            "task_service_id": {"type": "string"},
            "state": _enum(TaskState),
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": {"type": "string"},
            "created_at": _time(),
            "updated_at": _time(),
            "progress_at": _time(),
        }
    ),
    "TaskPage": _page("Task"),
    "TaskCallback": _object(
        {
            "state": _enum(sorted(REPORTED_STATES)),
            "progress": _or_null(
                {
                    "anyOf": [
                        {"type": "integer", "minimum": 0, "maximum": 100},
                        {"type": "string", "pattern": "^\\s*[0-9]{1,3}\\s*%?\\s*$"},
                    ],
                    "description": "0..100, or a string such as ``42%``.",
                }
            ),
            "task_id": {"description": "Ignored (the path names the task)."},
            "release_id": {"description": "Ignored (the path names the task)."},
        },
        ["state"],
        description=(
            "A task service's report; an impossible transition is a 409 and changes nothing."
        ),
    ),
    "Event": _record(
        {
            "id": {"type": "integer", "minimum": 1},
            "at": _time(),
            "type": _enum(EventType),
            "kind": _enum(EventKind),
            "message": {"type": "string"},
            "release_id": {"type": ["string", "null"]},
            "task_id": {"type": ["string", "null"]},
            "task_service_id": {"type": ["string", "null"]},
            "state": {
                "type": ["string", "null"],
                "description": "The new state, for a transition.",
            },
        }
    ),
    "EventPage": _page("Event"),
}

_COORDINATOR_PARAMETERS: dict[str, Any] = {
    "serviceId": _path_id("service_id", "task service"),
    "releaseId": _path_id("release_id", "release"),
    "taskId": _path_id("task_id", "task"),
}


def _coordinator_paths() -> dict[str, Any]:
    operator = (401, 403, 503)
    body = (400, 413, 422)
    service = [_param("serviceId")]
    release = [_param("releaseId")]
    task = [_param("taskId")]
    paging = [_param("limit"), _param("offset")]
    callback_security: list[dict[str, list[str]]] = [{"operatorToken": []}, {"serviceToken": []}]

    def one(schema: str, what: str, status: int = 200) -> dict[int, dict[str, Any]]:
        return {status: _answer(what, _ref(schema))}

    def service_action(name: str, summary: str) -> dict[str, Any]:
        return {
            "post": _operation(
                f"{name}TaskService",
                summary,
                "task services",
                one("TaskService", "The task service."),
                (*body, 404, *operator),
                parameters=service,
                body=_body(_ref("EmptyObject"), required=False),
            )
        }

    def release_action(name: str, summary: str, status: int = 200, **extra: Any) -> dict[str, Any]:
        return {
            "post": _operation(
                f"{name}Release",
                summary,
                "releases",
                one("Release", "The release.", status),
                (*body, 404, 409, *operator),
                parameters=release,
                body=extra.pop("request", _body(_ref("EmptyObject"), required=False)),
                **extra,
            )
        }

    task_state = _choices("state", TaskState, "tasks in states")
    callback = _operation(
        "reportTask",
        "Task-service callback: report a task's state",
        "tasks",
        one("Task", "The task as it is now."),
        (*body, 404, 409, *operator),
        body=_body(_ref("TaskCallback")),
        security=callback_security,
        description=(
            "A task service pushes its state. A state the task can reach along the normal path"
            " is accepted, even early; one it cannot is refused with 409. A task-service token"
            " may report on its own service's tasks only (403 otherwise)."
        ),
    )
    get_task = _operation(
        "getTask",
        "One task",
        "tasks",
        one("Task", "The task."),
        (404, *operator),
    )
    text_filter = _text()
    return {
        "/status": {
            "get": _operation(
                "getStatus",
                "Name and version (no token needed)",
                "status",
                one("Status", "The coordinator is up."),
                (),
                security=[],
            )
        },
        OPENAPI_PATH: _openapi_operation("coordinator"),
        "/task-services": {
            "get": _operation(
                "listTaskServices",
                "List task services",
                "task services",
                one("TaskServicePage", "A page of task services."),
                (400, 422, *operator),
                parameters=[_choices("enabled", ("true", "false"), "services"), *paging],
            ),
            "post": _operation(
                "registerTaskService",
                "Register a task service",
                "task services",
                one("TaskService", "The registered service.", 201),
                (*body, 409, *operator),
                body=_body(_ref("TaskServiceCreate")),
            ),
        },
        "/task-services/{service_id}": {
            "get": _operation(
                "getTaskService",
                "One task service",
                "task services",
                one("TaskService", "The task service."),
                (404, *operator),
                parameters=service,
            ),
            "patch": _operation(
                "updateTaskService",
                "Rename a task service or move it to another URL",
                "task services",
                one("TaskService", "The task service as it is now."),
                (*body, 404, 409, *operator),
                parameters=service,
                body=_body(_ref("TaskServiceUpdate")),
            ),
            "delete": _operation(
                "removeTaskService",
                "Forget a task service (409 while an unfinished release uses it)",
                "task services",
                {204: _answer("Forgotten.")},
                (404, 409, *operator),
                parameters=service,
            ),
        },
        "/task-services/{service_id}/enable": service_action(
            "enable", "Include a task service in new releases"
        ),
        "/task-services/{service_id}/disable": service_action(
            "disable", "Leave a task service out of new releases"
        ),
        "/task-services/{service_id}/health": service_action(
            "check", "Ask a task service's GET /status now"
        ),
        "/releases": {
            "get": _operation(
                "listReleases",
                "List releases, newest first",
                "releases",
                one("ReleasePage", "A page of releases."),
                (400, 422, *operator),
                parameters=[
                    _choices("state", ReleaseState, "releases in states"),
                    _query("tag", text_filter, "Only releases with this tag."),
                    _query("author", text_filter, "Only releases by this author."),
                    *paging,
                ],
            ),
            "post": _operation(
                "createRelease",
                "Create a release over every enabled task service",
                "releases",
                one("Release", "The new release.", 201),
                (*body, *operator),
                body=_body(_ref("ReleaseCreate")),
            ),
        },
        "/releases/{release_id}": {
            "get": _operation(
                "getRelease",
                "One release",
                "releases",
                one("Release", "The release."),
                (404, *operator),
                parameters=release,
            ),
            "patch": _operation(
                "updateRelease",
                "Change a release's name, description or tags",
                "releases",
                one("Release", "The release as it is now."),
                (*body, 404, *operator),
                parameters=release,
                body=_body(_ref("ReleaseUpdate")),
            ),
        },
        "/releases/{release_id}/publish": release_action(
            "publish", "Publish a staged release (409 otherwise)"
        ),
        "/releases/{release_id}/cancel": release_action(
            "cancel",
            "Cancel a release that is not final",
            request=_body(_ref("CancelRequest"), required=False),
        ),
        "/releases/{release_id}/run-again": release_action(
            "runAgain", "A new release like a finished one", 201
        ),
        "/releases/{release_id}/tasks": {
            "get": _operation(
                "listReleaseTasks",
                "The tasks of a release",
                "tasks",
                one("TaskPage", "A page of tasks."),
                (400, 404, 422, *operator),
                parameters=[*release, task_state, *paging],
            )
        },
        "/releases/{release_id}/tasks/{task_id}": {
            "parameters": [*release, *task],
            "get": get_task | {"operationId": "getReleaseTask"},
            "patch": callback | {"operationId": "reportReleaseTask"},
        },
        "/tasks": {
            "get": _operation(
                "listTasks",
                "The tasks of a release",
                "tasks",
                one("TaskPage", "A page of tasks."),
                (400, 404, 422, *operator),
                parameters=[
                    _query(
                        "release_id",
                        {"type": "string", "minLength": 1},
                        "The release (required: 400 without it).",
                        required=True,
                    ),
                    task_state,
                    *paging,
                ],
            )
        },
        "/tasks/{task_id}": {"parameters": task, "get": get_task, "patch": callback},
        "/events": {
            "get": _operation(
                "listEvents",
                "The event log, oldest first",
                "events",
                one("EventPage", "A page of events."),
                (400, 422, *operator),
                parameters=[
                    _query("release_id", text_filter, "Only events of this release."),
                    _query("task_id", text_filter, "Only events of this task."),
                    _query("task_service_id", text_filter, "Only events of this task service."),
                    _choices("type", EventType, "events of types"),
                    _choices("kind", EventKind, "events of kinds"),
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
                    *paging,
                ],
            )
        },
    }


_COORDINATOR_TAGS = [
    ("status", "Is the coordinator up."),
    ("task services", "The registry of task services."),
    ("releases", "Data releases, driven through every enabled task service together."),
    ("tasks", "One release on one task service; the task-service callback."),
    ("events", "The append-only event log."),
    ("documentation", "This document."),
]

_COORDINATOR_DESCRIPTION = (
    "The Coordinator's HTTP API (``coordinator_app``): task services, releases, tasks, events"
    " and the task-service callback of the task-service protocol. Every endpoint but"
    " ``GET /status`` and ``GET /openapi.json`` needs ``Authorization: Bearer <token>``: an"
    " operator token, or for the callbacks only the token of the task's own service. Listings"
    " are pages (``limit`` 1..1000, default 100, and ``offset``). Every refusal is"
    ' ``{"error": {"code", "message", "details"}}`` and changes nothing.'
)


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

_POSITION = {
    "type": "array",
    "description": "[longitude, latitude] (an altitude may follow), WGS84.",
    "prefixItems": [
        {"type": "number", "minimum": -180, "maximum": 180},
        {"type": "number", "minimum": -90, "maximum": 90},
        {"type": "number"},
    ],
    "minItems": 2,
    "maxItems": 3,
}
_RING = {
    "type": "array",
    "description": "A closed ring: its last position repeats its first.",
    "minItems": 4,
    "items": _ref("Position"),
}
_POLYGON_COORDINATES = {"type": "array", "minItems": 1, "items": _ref("LinearRing")}

_ID = {"type": "string", "minLength": 1, "maxLength": 256}
_STAGE_NAMES = [s.wire_name for s in StageStatus]
_RELEASE_NAMES = [s.wire_name for s in ReleaseStatus]


def _times(keys: tuple[str, str, str], *, output: bool) -> dict[str, Any]:
    number: dict[str, Any] = {"type": "number", "minimum": 0}
    if output:
        number = {"type": ["number", "null"]}
    return _object(
        dict.fromkeys(keys, number),
        list(keys),
        closed=output,
        description="Milliseconds; minimum <= median <= maximum.",
    )


def _summary_input(documented: bool) -> dict[str, Any]:
    times = _ref("DocumentedTimes" if documented else "OriginalTimes")
    rate = {"type": "number", "minimum": 0, "maximum": 1}
    calls = _or_null({"type": "integer", "minimum": 0, "maximum": 2**63 - 1})
    status = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": len(_STAGE_NAMES) - 1},
            {"type": "string", "enum": [str(i) for i in range(len(_STAGE_NAMES))]},
            {"type": "string", "enum": _STAGE_NAMES},
        ],
        "description": "A StageStatus by number, digits or name.",
    }
    keys = (
        ("ProxyTimes", "F1TimesSummary", "F2TimesSummary", "F1ErrRate", "F2ErrRate")
        if documented
        else ("proxy_times", "f1_times_summary", "f2_times_summary", "f1_err_rate", "f2_err_rate")
    )
    properties: dict[str, Any] = {
        keys[0]: times,
        keys[1]: times,
        keys[2]: times,
        keys[3]: rate,
        keys[4]: rate,
        "status": status,
        "stage_name": _or_null({"type": "string", "maxLength": MAX_TEXT}),
        "f1_calls": calls,
        "f2_calls": calls,
        "F1Calls": calls,
        "F2Calls": calls,
    }
    if documented:
        properties["next_stage"] = _or_null({"type": "string", "maxLength": MAX_TEXT})
    return _object(
        properties,
        [*keys, "status"],
        closed=False,
        description=(
            "One stage's summary in the "
            + ("documented" if documented else "original agent's")
            + " encoding (other keys are ignored)."
        ),
    )


def _policy(kind: str, fields: dict[str, Any], *, output: bool) -> dict[str, Any]:
    fraction = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    timeout = {"type": ["number", "null"], "exclusiveMinimum": 0}
    properties = {
        "type": {"type": "string", "const": kind},
        **fields,
        "quorum": fraction if output else _or_null(fraction),
        "barrier_timeout": timeout,
    }
    if output:
        return _record(properties)
    required = [] if kind == "global_incremental" else ["type"]
    return _object(properties, required)


def _policies(*, output: bool) -> dict[str, Any]:
    fraction = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

    def maybe(schema: dict[str, Any]) -> dict[str, Any]:
        return schema if output else _or_null(schema)

    return {
        "oneOf": [
            _policy("global_incremental", {}, output=output),
            _policy(
                "location_sequential",
                {
                    "groups": maybe(
                        {"type": "array", "maxItems": _MAX_GROUPS, "items": _ref("Area")}
                    )
                },
                output=output,
            ),
            _policy(
                "waves",
                {
                    "sizes": maybe(
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": _MAX_WAVES,
                            "items": fraction,
                            "description": "Growing shares of the eligible children.",
                        }
                    ),
                    "success_threshold": maybe(fraction),
                    "failure_threshold": maybe(fraction),
                    "min_finished": maybe({"type": "integer", "minimum": 0, "maximum": _MAX_INT32}),
                },
                output=output,
            ),
        ],
        "description": (
            "How the rollout advances: ``global_incremental`` (the default), "
            "``location_sequential`` or ``waves``."
        ),
    }


def _rollout_fields() -> dict[str, Any]:
    return {
        "target": _ref("Area"),
        "name": _or_null(_text()),
        "match": {"type": "string", "enum": ["intersects", "within"], "default": "intersects"},
        "priority": {
            "type": "integer",
            "minimum": -_MAX_INT32,
            "maximum": _MAX_INT32,
            "default": 0,
        },
        "policy": _or_null(_ref("PolicyInput")),
        "start": {
            "type": "boolean",
            "default": True,
            "description": "False leaves the rollout a draft to start later.",
        },
    }


_ROLLOUT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "The strategy's (and release's) id."},
    "name": {"type": "string"},
    "state": _enum(RolloutState),
    "target": _ref("Area"),
    "match": {"type": "string", "enum": ["intersects", "within"]},
    "priority": {"type": "integer"},
    "policy": _ref("Policy"),
    "seq": {"type": "integer", "minimum": 0},
    "reason": {"type": "string"},
    "gated": {"type": "boolean"},
}

_SUMMARY_OUTPUT = _record(
    {
        "ProxyTimes": _ref("SummaryTimes"),
        "F1TimesSummary": _ref("SummaryTimes"),
        "F2TimesSummary": _ref("SummaryTimes"),
        "F1ErrRate": {"type": ["number", "null"]},
        "F2ErrRate": {"type": ["number", "null"]},
        "f1_calls": {"type": "integer", "minimum": 0},
        "f2_calls": {"type": "integer", "minimum": 0},
    },
    "A stage summary (or a call-weighted aggregate) in the documented encoding's keys.",
)

_ROLLOUT_SCHEMAS: dict[str, Any] = {
    "Position": _POSITION,
    "LinearRing": _RING,
    "Polygon": _object(
        {
            "type": {"type": "string", "const": "Polygon"},
            "coordinates": _POLYGON_COORDINATES,
        },
        ["type", "coordinates"],
        closed=False,
    ),
    "MultiPolygon": _object(
        {
            "type": {"type": "string", "const": "MultiPolygon"},
            "coordinates": {"type": "array", "minItems": 1, "items": _POLYGON_COORDINATES},
        },
        ["type", "coordinates"],
        closed=False,
    ),
    "Area": {
        "description": (
            "A GeoJSON Polygon or MultiPolygon (or a Feature carrying one), longitude first,"
            " WGS84; its rings closed and the geometry valid (no self-intersection)."
        ),
        "oneOf": [
            _ref("Polygon"),
            _ref("MultiPolygon"),
            _object(
                {
                    "type": {"type": "string", "const": "Feature"},
                    "geometry": {"oneOf": [_ref("Polygon"), _ref("MultiPolygon")]},
                },
                ["type", "geometry"],
                closed=False,
            ),
        ],
    },
    "PollRequest": _object(
        {
            "id": _or_null(
                {
                    "type": "string",
                    "maxLength": 256,
                    "description": "Empty (or left out) for a new child: the answer names it.",
                }
            ),
            "geographic_area": _ref("Area"),
            "number_of_children": _or_null(
                {"type": "integer", "minimum": 0, "maximum": _MAX_INT32, "default": 0}
            ),
        },
        ["geographic_area"],
        closed=False,
    ),
    "PollAnswer": _object(
        {
            "id": {"type": "string", "minLength": 1},
            "new_release": {
                "type": "string",
                "description": "The first release waiting for the child, or empty.",
            },
            "target_area": {
                "allOf": [_ref("Area")],
                "description": "For relays: the release's target.",
            },
            "token": {
                "type": "string",
                "description": "The child's token, at its first poll (child tokens only).",
            },
        },
        ["id", "new_release"],
    ),
    "DocumentedTimes": _times(("Median", "Minimum", "Maximum"), output=False),
    "OriginalTimes": _times(("median", "minimum", "maximum"), output=False),
    "DocumentedSummary": _summary_input(True),
    "OriginalSummary": _summary_input(False),
    "ResultRequest": _object(
        {
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "release_id": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
                    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                ]
            },
            "next_stage": _or_null(
                {
                    "type": "string",
                    "maxLength": MAX_TEXT,
                    "description": "The original encoding's: the stage after the last summary.",
                }
            ),
            "stage_summaries": {
                "type": "array",
                "minItems": 1,
                "maxItems": _MAX_SUMMARIES,
                "items": {"anyOf": [_ref("DocumentedSummary"), _ref("OriginalSummary")]},
                "description": "One encoding per body.",
            },
        },
        ["id", "release_id", "stage_summaries"],
        closed=False,
        description="A child's stage summaries, in either encoding of the protocol.",
    ),
    "ResultAnswer": _object({}, description="Always an empty object."),
    "EndStageRequest": _object(
        {
            "id": _ID,
            "strategy_id": {
                "anyOf": [
                    _ID,
                    {"type": "integer", "minimum": 0},
                ]
            },
            "stage_name": {"type": "string", "minLength": 1},
        },
        ["id", "strategy_id", "stage_name"],
        closed=False,
    ),
    "EndStageAnswer": _object(
        {
            "end_stage": {"type": "boolean"},
            "action": {
                "type": "string",
                "enum": ["rollback"],
                "description": "An aborted rollout: roll back now.",
            },
        },
        ["end_stage"],
    ),
    "PolicyInput": _policies(output=False),
    "Policy": _policies(output=True),
    "RolloutFields": _object(
        _rollout_fields(),
        ["target"],
        description="The rollout part of an upload.",
    ),
    "RolloutUpload": _object(
        {
            "strategy": {"type": "string", "description": "The strategy document (YAML)."},
            "archive": {
                "type": "string",
                "contentEncoding": "base64",
                "contentMediaType": ARCHIVE_MEDIA_TYPE,
                "description": f"``{ARCHIVE_FILENAME}``, base64.",
            },
            **_rollout_fields(),
        },
        ["strategy", "archive", "target"],
    ),
    "RolloutMultipart": _object(
        {
            "strategy": {"type": "string", "description": "The strategy document (YAML)."},
            "archive": {
                "type": "string",
                "contentMediaType": ARCHIVE_MEDIA_TYPE,
                "description": f"``{ARCHIVE_FILENAME}``.",
            },
            "rollout": _ref("RolloutFields"),
        },
        ["strategy", "archive", "rollout"],
    ),
    "Rollout": _record(_ROLLOUT_PROPERTIES),
    "Bundle": _record(
        {
            "strategy": _record(
                {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "stages": {
                        "type": "array",
                        "items": _record({"name": {"type": "string"}, "type": _enum(StageType)}),
                    },
                    "functions": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "archive": _record(
                {
                    "filename": {"type": "string", "const": ARCHIVE_FILENAME},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "size": {"type": "integer", "minimum": 0},
                    "files": {"type": "array", "items": {"type": "string"}},
                }
            ),
        }
    ),
    "RolloutWithBundle": _record(
        {**_ROLLOUT_PROPERTIES, "bundle": _ref("Bundle")},
        "A rollout and its bundle (the strategy and the function archive).",
    ),
    "RolloutPage": _page("Rollout"),
    "AbortRequest": _object({"reason": _or_null(_text(_MAX_REASON))}),
    "EmptyObject": _EMPTY_OBJECT,
    "SummaryTimes": _times(("Median", "Minimum", "Maximum"), output=True),
    "Summary": _SUMMARY_OUTPUT,
    "RolloutStatus": _record(
        {
            "rollout": _ref("Rollout"),
            "children": {"type": "integer", "minimum": 0},
            "statuses": {
                "type": "object",
                "propertyNames": {"enum": _RELEASE_NAMES},
                "additionalProperties": {"type": "integer", "minimum": 1},
                "description": "How many children are in each ReleaseStatus.",
            },
            "outcomes": {
                "type": "object",
                "propertyNames": {"enum": [o.value for o in Outcome if o.value]},
                "additionalProperties": {"type": "integer", "minimum": 1},
                "description": "How many children rolled out or back.",
            },
            "lost": {"type": "array", "items": {"type": "string"}},
            "stages": {
                "type": "array",
                "items": _record(
                    {
                        "name": {"type": "string"},
                        "counts": {
                            "type": "object",
                            "propertyNames": {"enum": _STAGE_NAMES},
                            "additionalProperties": {"type": "integer", "minimum": 1},
                        },
                        "aggregate": {"anyOf": [_ref("Summary"), {"type": "null"}]},
                    }
                ),
            },
        }
    ),
    "ChildRelease": _record(
        {
            "child_id": {"type": "string"},
            "status": {"type": "string", "enum": _RELEASE_NAMES},
            "outcome": {"type": "string", "enum": [o.value for o in Outcome]},
            "acknowledged": {"type": "boolean"},
            "lost": {"type": "boolean"},
            "stages": {
                "type": "object",
                "additionalProperties": _record(
                    {
                        "status": {"type": "string", "enum": _STAGE_NAMES},
                        "summary": {"anyOf": [_ref("Summary"), {"type": "null"}]},
                    }
                ),
            },
        }
    ),
    "ChildReleasePage": _page("ChildRelease"),
    "Child": _record(
        {
            "id": {"type": "string"},
            "area": _ref("Area"),
            "number_of_children": {"type": "integer", "minimum": 0},
            "lost": {"type": "boolean"},
            "has_token": {"type": "boolean"},
        }
    ),
    "ChildPage": _page("Child"),
}

_ROLLOUT_PARAMETERS: dict[str, Any] = {
    "rolloutId": _path_id("rollout_id", "rollout"),
    "bbox": _query(
        "bbox",
        {
            "type": "string",
            "pattern": f"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$",
        },
        "Only children in this box: ``minLon,minLat,maxLon,maxLat`` (not with ``area``).",
    ),
    "area": {
        "name": "area",
        "in": "query",
        "description": "Only children in this GeoJSON area (not with ``bbox``).",
        "content": _json(_ref("Area")),
    },
}


def _rollout_paths() -> dict[str, Any]:
    operator = (401, 403, 503)
    body = (400, 413, 422)
    one = [_param("rolloutId")]
    paging = [_param("limit"), _param("offset")]
    child: list[dict[str, list[str]]] = [{}, {"childToken": []}]

    def action(name: str, summary: str, request: str = "EmptyObject") -> dict[str, Any]:
        return {
            "post": _operation(
                f"{name}Rollout",
                summary,
                "rollouts",
                {200: _answer("The rollout as it is now.", _ref("Rollout"))},
                (*body, 404, 409, *operator),
                parameters=one,
                body=_body(_ref(request), required=False),
            )
        }

    return {
        "/poll": {
            "post": _operation(
                "poll",
                "A child registers or refreshes itself; the first release waiting for it",
                "child protocol",
                {200: _answer("The child's id and its waiting release.", _ref("PollAnswer"))},
                (400, 401, 403, 413, 503),
                body=_body(_ref("PollRequest")),
                security=child,
            )
        },
        "/release": {
            "get": _operation(
                "getReleaseStrategy",
                "The release's strategy; the child's release turns Doing",
                "child protocol",
                {
                    200: {
                        "description": "The strategy document (YAML).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                (400, 401, 403, 404, 409, 503),
                parameters=[
                    _query("childID", _ID, "The child.", required=True),
                    _query(
                        "releaseID",
                        _ID,
                        "The release.",
                        required=True,
                    ),
                ],
                security=child,
            )
        },
        "/release/functions/{release_id}": {
            "get": _operation(
                "getReleaseFunctions",
                f"The release's function archive, ``{ARCHIVE_FILENAME}``",
                "child protocol",
                {
                    200: {
                        "description": f"``{ARCHIVE_FILENAME}`` (one folder per function"
                        " version under ``fns/``).",
                        "headers": {
                            "Content-Disposition": {
                                "schema": {
                                    "type": "string",
                                    "const": f'attachment; filename="{ARCHIVE_FILENAME}"',
                                }
                            }
                        },
                        "content": {
                            ARCHIVE_MEDIA_TYPE: {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": ARCHIVE_MEDIA_TYPE,
                                }
                            }
                        },
                    }
                },
                (400, 401, 404, 503),
                parameters=[_path_id("release_id", "release")],
                security=child,
            )
        },
        "/result": {
            "post": _operation(
                "submitResult",
                "A child reports stage summaries (either encoding)",
                "child protocol",
                {
                    200: _answer(
                        "Applied (a repeated report changes nothing).", _ref("ResultAnswer")
                    )
                },
                (400, 401, 403, 404, 409, 413, 503),
                body=_body(_ref("ResultRequest")),
                security=child,
            )
        },
        "/end_stage": {
            "post": _operation(
                "endStage",
                "Whether a child's stage should end",
                "child protocol",
                {
                    200: _answer(
                        "True once the stage is ShouldEnd or later.", _ref("EndStageAnswer")
                    )
                },
                (400, 401, 403, 404, 413, 503),
                body=_body(_ref("EndStageRequest")),
                security=child,
            )
        },
        OPENAPI_PATH: _openapi_operation("rollout"),
        "/rollouts": {
            "get": _operation(
                "listRollouts",
                "List rollouts, by priority then creation",
                "rollouts",
                {200: _answer("A page of rollouts.", _ref("RolloutPage"))},
                (400, 422, *operator),
                parameters=[_choices("state", RolloutState, "rollouts in states"), *paging],
            ),
            "post": _operation(
                "createRollout",
                "Upload a bundle and create its rollout",
                "rollouts",
                {201: _answer("The new rollout.", _ref("RolloutWithBundle"))},
                (*body, 409, 415, *operator),
                body={
                    "required": True,
                    "description": (
                        "The strategy, the function archive and the rollout's fields: as"
                        " multipart parts (what ``curl -F`` sends) or one JSON object."
                    ),
                    "content": {
                        "multipart/form-data": {
                            "schema": _ref("RolloutMultipart"),
                            "encoding": {
                                "strategy": {"contentType": "application/yaml, text/plain"},
                                "archive": {"contentType": ARCHIVE_MEDIA_TYPE},
                                "rollout": {"contentType": "application/json"},
                            },
                        },
                        "application/json": {"schema": _ref("RolloutUpload")},
                    },
                },
            ),
        },
        "/rollouts/{rollout_id}": {
            "get": _operation(
                "getRollout",
                "A rollout and its bundle",
                "rollouts",
                {200: _answer("The rollout.", _ref("RolloutWithBundle"))},
                (404, *operator),
                parameters=one,
            )
        },
        "/rollouts/{rollout_id}/start": action("start", "Start a draft"),
        "/rollouts/{rollout_id}/pause": action("pause", "Pause an active rollout"),
        "/rollouts/{rollout_id}/resume": action("resume", "Resume a paused rollout"),
        "/rollouts/{rollout_id}/abort": action(
            "abort", "Abort a rollout: its children roll back", "AbortRequest"
        ),
        "/rollouts/{rollout_id}/status": {
            "get": _operation(
                "getRolloutStatus",
                "Counts per status, outcome and stage, aggregates, lost children",
                "rollouts",
                {200: _answer("The rollout's status.", _ref("RolloutStatus"))},
                (400, 404, *operator),
                parameters=[*one, _param("bbox"), _param("area")],
            )
        },
        "/rollouts/{rollout_id}/children": {
            "get": _operation(
                "listRolloutChildren",
                "Per child: status, outcome, stages with their summaries",
                "rollouts",
                {200: _answer("A page of children's states.", _ref("ChildReleasePage"))},
                (400, 404, 422, *operator),
                parameters=[
                    *one,
                    _query(
                        "status",
                        {
                            "type": "string",
                            "enum": [
                                *(str(int(s)) for s in ReleaseStatus),
                                *_RELEASE_NAMES,
                            ],
                        },
                        "Only children in this ReleaseStatus (number or name).",
                    ),
                    _param("bbox"),
                    _param("area"),
                    *paging,
                ],
            )
        },
        "/children": {
            "get": _operation(
                "listChildren",
                "The registered children",
                "children",
                {200: _answer("A page of children.", _ref("ChildPage"))},
                (400, 422, *operator),
                parameters=paging,
            )
        },
        "/children/{child_id}/token": {
            "delete": _operation(
                "revokeChildToken",
                "Revoke a child's token (its next poll gets a new one)",
                "children",
                {204: _answer("Revoked.")},
                (404, *operator),
                parameters=[_path_id("child_id", "child")],
            )
        },
    }


_ROLLOUT_TAGS = [
    (
        "child protocol",
        "The edge-rollout protocol, byte-compatible with the original agents. Open unless the"
        " app issues child tokens; every invalid input is a 400.",
    ),
    ("rollouts", "The operator API: upload, list, follow and steer rollouts."),
    ("children", "The registered children and their tokens."),
    ("documentation", "This document."),
]

_ROLLOUT_DESCRIPTION = (
    "A RolloutManager over HTTP (``rollout_app``): the edge-rollout child protocol and the"
    " operator API. The operator API needs an operator token (``Authorization: Bearer"
    " <token>``); the child protocol needs a child token only when the app issues them."
    " Listings are pages (``limit`` 1..1000, default 100, and ``offset``). Every refusal is"
    ' ``{"error": {"code", "message", "details"}}`` and changes nothing.'
)


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
    version: str = __version__, *, coordinator_prefix: str = "", rollout_prefix: str = ""
) -> dict[str, Any]:
    """One document for a server that serves both apps, the coordinator's under
    ``coordinator_prefix`` and the rollout manager's under ``rollout_prefix`` (``""``: at the
    root). ``GET /openapi.json`` is listed once, at the root, for the combined document.

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
