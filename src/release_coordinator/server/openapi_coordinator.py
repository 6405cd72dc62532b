"""The Coordinator API's part of the OpenAPI documents: its schemas, parameters and paths
(see :func:`~release_coordinator.server.openapi.coordinator_openapi`)."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator.models import EventKind, EventType, HealthStatus
from release_coordinator.coordinator.wire import REPORTED_STATES
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.server.openapi_parts import (
    _EMPTY_OBJECT,
    _MAX_DESCRIPTION,
    _MAX_EVENT_ID,
    _MAX_ITEMS,
    _MAX_REASON,
    _MAX_URL,
    OPENAPI_PATH,
    _answer,
    _body,
    _choices,
    _enum,
    _object,
    _openapi_operation,
    _operation,
    _or_null,
    _page,
    _param,
    _path_id,
    _query,
    _record,
    _ref,
    _text,
    _time,
)

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
