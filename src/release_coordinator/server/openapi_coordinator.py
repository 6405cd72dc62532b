"""The Coordinator API's part of the OpenAPI documents: its schemas (generated from the Structs
of :mod:`release_coordinator.coordinator.api_bodies`), parameters, and its routes as a table
(:data:`COORDINATOR_ROUTES`), from which its paths are built (see
:func:`~release_coordinator.server.openapi.coordinator_openapi`)."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator import api_bodies as bodies
from release_coordinator.coordinator.models import EventKind, EventType
from release_coordinator.coordinator.webhook_bodies import WEBHOOK_NAMES
from release_coordinator.fsm.release import ReleaseState, TaskState
from release_coordinator.schemas import schema_components
from release_coordinator.server.openapi_parts import (
    _BODY,
    _EMPTY_OBJECT,
    _OPERATOR,
    _PAGE_PARAMS,
    OPENAPI_PATH,
    _choices,
    _following,
    _openapi_operation,
    _param,
    _path_id,
    _query,
    _text,
)
from release_coordinator.server.openapi_routes import Route, paths
from release_coordinator.server.openapi_webhooks import (
    WEBHOOK_PARAMETERS,
    WEBHOOK_ROUTES,
    WEBHOOK_SCHEMAS,
    WEBHOOK_TAG,
)

__all__ = ["COORDINATOR_ROUTES"]

#: The bodies' schemas, generated from their Structs; the empty object of the actions is the
#: component both APIs share.
_COORDINATOR_SCHEMAS: dict[str, Any] = {
    **schema_components(bodies.REQUESTS + bodies.ANSWERS, bodies.NAMES),
    **WEBHOOK_SCHEMAS,
    "EmptyObject": _EMPTY_OBJECT,
}

_COORDINATOR_PARAMETERS: dict[str, Any] = {
    "serviceId": _path_id("service_id", "task service"),
    "releaseId": _path_id("release_id", "release"),
    "taskId": _path_id("task_id", "task"),
    "noteId": _path_id("note_id", "release note"),
    "studyId": _path_id("study_id", "study"),
    **WEBHOOK_PARAMETERS,
}

_SERVICE = (_param("serviceId"),)
_RELEASE = (_param("releaseId"),)
_TASK = (_param("taskId"),)
_TEXT_FILTER = _text()
_TASK_STATE = _choices("state", TaskState, "tasks in states")
_SERVICES = "/task-services"
_ONE_SERVICE = "/task-services/{service_id}"
_ONE_RELEASE = "/releases/{release_id}"
_NOTE = (_param("noteId"),)
_STUDY = (_param("studyId"),)
_ONE_NOTE = "/notes/{note_id}"
_ONE_STUDY = "/studies/{study_id}"


def _service_action(action: str, name: str, summary: str) -> Route:
    return Route(
        "POST",
        f"{_ONE_SERVICE}/{action}",
        f"{name}TaskService",
        summary,
        "task services",
        {200: ("The task service.", bodies.TaskServiceAnswer)},
        (*_BODY, 404, *_OPERATOR),
        request="EmptyObject",
        request_required=False,
        parameters=_SERVICE,
    )


def _release_action(
    action: str,
    name: str,
    summary: str,
    status: int = 200,
    request: type | str = "EmptyObject",
    description: str | None = None,
) -> Route:
    return Route(
        "POST",
        f"{_ONE_RELEASE}/{action}",
        f"{name}Release",
        summary,
        "releases",
        {status: ("The release.", bodies.ReleaseAnswer)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=request,
        request_required=False,
        parameters=_RELEASE,
        description=description,
    )


def _task_routes(path: str, get_id: str, report_id: str, shared: tuple[Any, ...]) -> list[Route]:
    """``GET`` one task and ``PATCH`` it (the task-service callback) at ``path``."""
    return [
        Route(
            "GET",
            path,
            get_id,
            "One task",
            "tasks",
            {200: ("The task.", bodies.TaskAnswer)},
            (404, *_OPERATOR),
            path_parameters=shared,
        ),
        Route(
            "PATCH",
            path,
            report_id,
            "Task-service callback: report a task's state",
            "tasks",
            {200: ("The task as it is now.", bodies.TaskAnswer)},
            (*_BODY, 404, 409, *_OPERATOR),
            request=bodies.TaskCallback,
            security=[{"operatorToken": []}, {"serviceToken": []}],
            path_parameters=shared,
            description=(
                "A task service pushes its state. A state the task can reach along the normal"
                " path is accepted, even early; one it cannot is refused with 409. A"
                " task-service token may report on its own service's tasks only (403"
                " otherwise)."
            ),
        ),
    ]


#: Every operation of the Coordinator's API but ``GET /openapi.json``, in the document's order.
COORDINATOR_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/status",
        "getStatus",
        "Name and version (no token needed)",
        "status",
        {200: ("The coordinator is up.", bodies.StatusAnswer)},
        security=[],
    ),
    Route(
        "GET",
        _SERVICES,
        "listTaskServices",
        "List task services",
        "task services",
        {200: ("A page of task services.", bodies.TaskServicePage)},
        (400, 422, *_OPERATOR),
        parameters=(_choices("enabled", ("true", "false"), "services"), *_PAGE_PARAMS),
    ),
    Route(
        "POST",
        _SERVICES,
        "registerTaskService",
        "Register a task service",
        "task services",
        {201: ("The registered service.", bodies.TaskServiceAnswer)},
        (*_BODY, 409, *_OPERATOR),
        request=bodies.TaskServiceCreate,
    ),
    Route(
        "GET",
        _ONE_SERVICE,
        "getTaskService",
        "One task service",
        "task services",
        {200: ("The task service.", bodies.TaskServiceAnswer)},
        (404, *_OPERATOR),
        parameters=_SERVICE,
    ),
    Route(
        "PATCH",
        _ONE_SERVICE,
        "updateTaskService",
        "Rename a task service or move it to another URL",
        "task services",
        {200: ("The task service as it is now.", bodies.TaskServiceAnswer)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=bodies.TaskServiceUpdate,
        parameters=_SERVICE,
    ),
    Route(
        "DELETE",
        _ONE_SERVICE,
        "removeTaskService",
        "Forget a task service (409 while an unfinished release uses it)",
        "task services",
        {204: ("Forgotten.", None)},
        (404, 409, *_OPERATOR),
        parameters=_SERVICE,
    ),
    _service_action("enable", "enable", "Include a task service in new releases"),
    _service_action("disable", "disable", "Leave a task service out of new releases"),
    _service_action("health", "check", "Ask a task service's GET /status now"),
    Route(
        "GET",
        "/releases",
        "listReleases",
        "List releases, newest first",
        "releases",
        {200: ("A page of releases.", bodies.ReleasePage)},
        (400, 422, *_OPERATOR),
        parameters=(
            _choices("state", ReleaseState, "releases in states"),
            _query("tag", _TEXT_FILTER, "Only releases with this tag."),
            _query("author", _TEXT_FILTER, "Only releases by this author."),
            _query("study", _TEXT_FILTER, "Only releases that name this study."),
            *_PAGE_PARAMS,
        ),
    ),
    Route(
        "POST",
        "/releases",
        "createRelease",
        "Create a release over every enabled task service",
        "releases",
        {201: ("The new release.", bodies.ReleaseAnswer)},
        (*_BODY, *_OPERATOR),
        request=bodies.ReleaseCreate,
    ),
    Route(
        "GET",
        _ONE_RELEASE,
        "getRelease",
        "One release",
        "releases",
        {200: ("The release.", bodies.ReleaseAnswer)},
        (404, *_OPERATOR),
        parameters=_RELEASE,
    ),
    Route(
        "PATCH",
        _ONE_RELEASE,
        "updateRelease",
        "Change a release's name, description or tags",
        "releases",
        {200: ("The release as it is now.", bodies.ReleaseAnswer)},
        (*_BODY, 404, *_OPERATOR),
        request=bodies.ReleaseUpdate,
        parameters=_RELEASE,
    ),
    _release_action("publish", "publish", "Publish a staged release (409 otherwise)"),
    _release_action(
        "cancel", "cancel", "Cancel a release that is not final", request=bodies.CancelRequest
    ),
    _release_action("run-again", "runAgain", "A new release like a finished one", 201),
    _release_action(
        "approve",
        "approve",
        "Approve a release before publish (once per operator, by the token's name)",
        description="409 for a release that needs no approval, or is final; 403 for a token"
        " without a name.",
    ),
    _release_action(
        "checks",
        "recheck",
        "Ask a release's checks before publish again (a failed one, say)",
        description="409 for a release without checks, or a final one.",
    ),
    Route(
        "GET",
        f"{_ONE_RELEASE}/tasks",
        "listReleaseTasks",
        "The tasks of a release",
        "tasks",
        {200: ("A page of tasks.", bodies.TaskPage)},
        (400, 404, 422, *_OPERATOR),
        parameters=(*_RELEASE, _TASK_STATE, *_PAGE_PARAMS),
    ),
    *_task_routes(
        f"{_ONE_RELEASE}/tasks/{{task_id}}",
        "getReleaseTask",
        "reportReleaseTask",
        (*_RELEASE, *_TASK),
    ),
    Route(
        "GET",
        "/tasks",
        "listTasks",
        "The tasks of a release",
        "tasks",
        {200: ("A page of tasks.", bodies.TaskPage)},
        (400, 404, 422, *_OPERATOR),
        parameters=(
            _query(
                "release_id",
                {"type": "string", "minLength": 1},
                "The release (required: 400 without it).",
                required=True,
            ),
            _TASK_STATE,
            *_PAGE_PARAMS,
        ),
    ),
    *_task_routes("/tasks/{task_id}", "getTask", "reportTask", _TASK),
    Route(
        "GET",
        "/events",
        "listEvents",
        "The event log, oldest first",
        "events",
        {200: ("A page of events.", bodies.EventPage)},
        (400, 422, *_OPERATOR),
        parameters=(
            _query("release_id", _TEXT_FILTER, "Only events of this release."),
            _query("task_id", _TEXT_FILTER, "Only events of this task."),
            _query("task_service_id", _TEXT_FILTER, "Only events of this task service."),
            _choices("type", EventType, "events of types"),
            _choices("kind", EventKind, "events of kinds"),
            *_following(),
            *_PAGE_PARAMS,
        ),
    ),
)


#: The release notes' and studies' operations (after the others, in the document's order).
_NOTES_AND_STUDIES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{_ONE_RELEASE}/notes",
        "listReleaseNotes",
        "The notes of a release, oldest first",
        "notes",
        {200: ("A page of release notes.", bodies.NotePage)},
        (400, 404, 422, *_OPERATOR),
        parameters=(
            *_RELEASE,
            _query(
                "study_id",
                _TEXT_FILTER,
                "Only the notes on this study (empty: those on the release as a whole).",
            ),
            *_PAGE_PARAMS,
        ),
    ),
    Route(
        "POST",
        f"{_ONE_RELEASE}/notes",
        "addReleaseNote",
        "Add a note to a release, or to one of its studies",
        "notes",
        {201: ("The new note.", bodies.NoteAnswer)},
        (*_BODY, 404, *_OPERATOR),
        request=bodies.NoteCreate,
        parameters=_RELEASE,
        description=(
            "The note's `text` is Markdown. A `study_id` must be one of the release's studies"
            " (422 otherwise). The author is `author`, else the operator token's name."
        ),
    ),
    Route(
        "GET",
        _ONE_NOTE,
        "getReleaseNote",
        "One release note",
        "notes",
        {200: ("The note.", bodies.NoteAnswer)},
        (404, *_OPERATOR),
        parameters=_NOTE,
    ),
    Route(
        "PATCH",
        _ONE_NOTE,
        "editReleaseNote",
        "Replace a release note's text",
        "notes",
        {200: ("The note as it is now.", bodies.NoteAnswer)},
        (*_BODY, 404, *_OPERATOR),
        request=bodies.NoteUpdate,
        parameters=_NOTE,
    ),
    Route(
        "DELETE",
        _ONE_NOTE,
        "deleteReleaseNote",
        "Delete a release note",
        "notes",
        {204: ("Deleted.", None)},
        (404, *_OPERATOR),
        parameters=_NOTE,
    ),
    Route(
        "GET",
        "/studies",
        "listStudies",
        "Every study a release names, newest first",
        "studies",
        {200: ("A page of studies.", bodies.StudyPage)},
        (400, 422, *_OPERATOR),
        parameters=_PAGE_PARAMS,
    ),
    Route(
        "GET",
        _ONE_STUDY,
        "getStudy",
        "One study: its releases, latest and last published versions",
        "studies",
        {200: ("The study.", bodies.StudyAnswer)},
        (404, *_OPERATOR),
        parameters=_STUDY,
        description="404 for a study that no release names.",
    ),
    Route(
        "GET",
        f"{_ONE_STUDY}/notes",
        "listStudyNotes",
        "The notes on a study, oldest first",
        "notes",
        {200: ("A page of release notes.", bodies.NotePage)},
        (400, 404, 422, *_OPERATOR),
        parameters=(*_STUDY, *_PAGE_PARAMS),
    ),
)

COORDINATOR_ROUTES += _NOTES_AND_STUDIES + WEBHOOK_ROUTES


def _coordinator_paths() -> dict[str, Any]:
    return paths(
        COORDINATOR_ROUTES,
        bodies.NAMES | WEBHOOK_NAMES,
        {OPENAPI_PATH: _openapi_operation("coordinator")},
    )


_COORDINATOR_TAGS = [
    ("status", "Is the coordinator up."),
    ("task services", "The registry of task services."),
    ("releases", "Data releases, driven through every enabled task service together."),
    ("tasks", "One release on one task service; the task-service callback."),
    ("events", "The append-only event log."),
    ("notes", "Release notes in Markdown, on a release or on one of its studies."),
    ("studies", "Studies, read from the releases that name them."),
    WEBHOOK_TAG,
    ("documentation", "This document."),
]

_COORDINATOR_DESCRIPTION = (
    "The Coordinator's HTTP API (``coordinator_app``): task services, releases, tasks, events"
    " and the task-service callback of the task-service protocol. Every endpoint but"
    " ``GET /status`` and ``GET /openapi.json`` needs ``Authorization: Bearer <token>``: an"
    " operator token, or for the callbacks only the token of the task's own service. Listings"
    " are pages (``limit`` 1..1000, default 100, and ``offset``). Every refusal is"
    ' ``{"error": {"code", "message", "details"}}`` and changes nothing. Two rules of the'
    " request bodies are checked in code, not by these schemas: every text is printable"
    " (Python's ``str.isprintable``, tabs and line ends allowed in a release's description:"
    " the patterns only refuse control characters), and a name or URL is not blank; a body"
    " that breaks either is a 422."
)
