"""The Rollout API's paths in the OpenAPI documents (see
:func:`~release_coordinator.server.openapi.rollout_openapi`): :data:`ROLLOUT_ROUTES`, a table
of routes (:class:`~release_coordinator.server.openapi_routes.Route`) whose bodies are named by
their Structs, and the few parts of an operation a route cannot state (an answer that is not
JSON, a body in two media types), set by :func:`_rollout_paths` over the table's paths."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator.models import EventType
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.api_bodies import (
    AbortRequest,
    ActionRequest,
    ChildPageBody,
    ChildReleasePageBody,
    RolloutBody,
    RolloutPageBody,
    RolloutStatusBody,
    RolloutUpload,
    RolloutWithBundleBody,
)
from release_coordinator.rollout.approval_bodies import ApprovalAnswerBody, WhatIfBody
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.bodies import (
    EndStageAnswerBody,
    EndStageRequest,
    PollAnswerBody,
    PollRequest,
    ResultAnswer,
)
from release_coordinator.rollout.event_bodies import RolloutEventPageBody
from release_coordinator.rollout.events import RolloutEventKind
from release_coordinator.rollout.models import RolloutState
from release_coordinator.rollout.what_if import WHAT_IF_LIMIT
from release_coordinator.schemas import MAX_PAGE
from release_coordinator.server.openapi_interventions import INTERVENTION_ROUTES
from release_coordinator.server.openapi_parts import (
    _BODY,
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
from release_coordinator.server.openapi_rollout_schemas import (
    _ID,
    _RELEASE_NAMES,
    _STRUCT_NAMES,
)
from release_coordinator.server.openapi_routes import Route, paths

__all__ = ["ROLLOUT_ROUTES"]

_ONE = (_param("rolloutId"),)
_CHILD: list[dict[str, list[str]]] = [{}, {"childToken": []}]
_CHILDREN = "child protocol"


def _event_filters(*, of_rollout: bool) -> tuple[dict[str, Any], ...]:
    """The rollout event log's query: its filters (the Coordinator's ``GET /events``'s) and
    paging."""
    text = _text()
    return (
        *(() if of_rollout else (_query("rollout_id", text, "Only events of this rollout."),)),
        _query("child_id", text, "Only events of this child."),
        _query("stage", text, "Only events of this stage."),
        _choices("type", EventType, "events of types"),
        _choices("kind", RolloutEventKind, "events of kinds"),
        *_following(),
        *_PAGE_PARAMS,
    )


def _action(name: str, summary: str, request: type = ActionRequest) -> Route:
    return Route(
        "POST",
        f"/rollouts/{{rollout_id}}/{name}",
        f"{name}Rollout",
        summary,
        "rollouts",
        {200: ("The rollout as it is now.", RolloutBody)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=request,
        request_required=False,
        parameters=_ONE,
    )


#: Every operation of the Rollout API but ``GET /openapi.json``, in the document's order.
ROLLOUT_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/poll",
        "poll",
        "A child registers or refreshes itself; the first release waiting for it",
        _CHILDREN,
        {200: ("The child's id and its waiting release.", PollAnswerBody)},
        (400, 401, 403, 413, 503),
        request=PollRequest,
        security=_CHILD,
    ),
    Route(
        "GET",
        "/release",
        "getReleaseStrategy",
        "The release's strategy; the child's release turns Doing",
        _CHILDREN,
        {200: ("The strategy document (YAML).", None)},  # text/plain: see _RAW_ANSWERS
        (400, 401, 403, 404, 409, 503),
        parameters=(
            _query("childID", _ID, "The child.", required=True),
            _query("releaseID", _ID, "The release.", required=True),
        ),
        security=_CHILD,
    ),
    Route(
        "GET",
        "/release/functions/{release_id}",
        "getReleaseFunctions",
        f"The release's function archive, ``{ARCHIVE_FILENAME}``",
        _CHILDREN,
        {200: ("", None)},  # a zip: see _RAW_ANSWERS
        (400, 401, 403, 404, 503),
        parameters=(
            _path_id("release_id", "release"),
            _query(
                "childID",
                _ID,
                "The calling child (an extra the protocol lacks; old agents leave it out): the "
                "call then counts as the child being seen. With child tokens it must be the "
                "token's child.",
            ),
        ),
        security=_CHILD,
    ),
    Route(
        "POST",
        "/result",
        "submitResult",
        "A child reports stage summaries (either encoding)",
        _CHILDREN,
        {200: ("Applied (a repeated report changes nothing).", ResultAnswer)},
        (400, 401, 403, 404, 409, 413, 503),
        request="ResultRequest",  # two key encodings: hand-written, parse_result in code
        security=_CHILD,
    ),
    Route(
        "POST",
        "/end_stage",
        "endStage",
        "Whether a child's stage should end",
        _CHILDREN,
        {200: ("True once the stage is ShouldEnd or later.", EndStageAnswerBody)},
        (400, 401, 403, 404, 413, 503),
        request=EndStageRequest,
        security=_CHILD,
    ),
    Route(
        "GET",
        "/rollouts",
        "listRollouts",
        "List rollouts, by priority then creation",
        "rollouts",
        {200: ("A page of rollouts.", RolloutPageBody)},
        (400, 422, *_OPERATOR),
        parameters=(_choices("state", RolloutState, "rollouts in states"), *_PAGE_PARAMS),
    ),
    Route(
        "POST",
        "/rollouts",
        "createRollout",
        "Upload a bundle and create its rollout",
        "rollouts",
        {201: ("The new rollout.", RolloutWithBundleBody)},
        (*_BODY, 409, 415, *_OPERATOR),
        request=RolloutUpload,  # and multipart/form-data: see _MULTIPART
        request_description=(
            "The strategy, the function archive and the rollout's fields: as"
            " multipart parts (what ``curl -F`` sends) or one JSON object."
        ),
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}",
        "getRollout",
        "A rollout and its bundle",
        "rollouts",
        {200: ("The rollout.", RolloutWithBundleBody)},
        (404, *_OPERATOR),
        parameters=_ONE,
    ),
    _action("start", "Start a draft"),
    _action("pause", "Pause an active rollout"),
    _action("resume", "Resume a paused rollout"),
    _action(
        "abort",
        "Abort a rollout: its children roll back (an aborted one is answered as it is)",
        AbortRequest,
    ),
    Route(
        "POST",
        "/rollouts/{rollout_id}/stages/{stage_name}/promote",
        "promoteStage",
        "End a WaitForSignal stage now, whatever its barrier's condition (an operator's "
        "judgement): every child waiting on it, and every later one, is told to end it",
        "rollouts",
        {200: ("The rollout as it is now.", RolloutBody)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=ActionRequest,
        request_required=False,
        parameters=(*_ONE, _path_id("stage_name", "stage")),
    ),
    *INTERVENTION_ROUTES,  # exclude a child, retry (.openapi_interventions)
    Route(
        "POST",
        "/rollouts/{rollout_id}/stages/{stage_name}/approve",
        "approveStage",
        "Approve a stage the rollout's policy names in approvals: children may start it from "
        "now on (an admin's action; logged with the operator; approving again changes nothing)",
        "rollouts",
        {200: ("The rollout, and where each of its approvals stands.", ApprovalAnswerBody)},
        (*_BODY, 404, 409, *_OPERATOR),
        request=ActionRequest,
        request_required=False,
        parameters=(*_ONE, _path_id("stage_name", "stage")),
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}/what-if",
        "getRolloutWhatIf",
        "Which registered children the draft rollout would reach if it started now, per area "
        "and per wave of its policy, relays counted apart (409 for a rollout that is no draft)",
        "rollouts",
        {200: ("What the draft would reach.", WhatIfBody)},
        (400, 404, 409, 422, *_OPERATOR),
        parameters=(
            *_ONE,
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": WHAT_IF_LIMIT},
                "The most ids listed per group (400 if not an integer, 422 outside the range).",
            ),
        ),
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}/status",
        "getRolloutStatus",
        "Counts per status, outcome and stage, aggregates, lost children",
        "rollouts",
        {200: ("The rollout's status.", RolloutStatusBody)},
        (400, 404, *_OPERATOR),
        parameters=(*_ONE, _param("bbox"), _param("area")),
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}/children",
        "listRolloutChildren",
        "Per child: status, outcome, stages with their summaries",
        "rollouts",
        {200: ("A page of children's states.", ChildReleasePageBody)},
        (400, 404, 422, *_OPERATOR),
        parameters=(
            *_ONE,
            _query(
                "status",
                {
                    "type": "string",
                    "enum": [*(str(int(s)) for s in ReleaseStatus), *_RELEASE_NAMES],
                },
                "Only children in this ReleaseStatus (number or name).",
            ),
            _param("bbox"),
            _param("area"),
            *_PAGE_PARAMS,
        ),
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}/events",
        "listRolloutEvents",
        "The rollout's events, oldest first: its transitions, its children's, the operators'"
        " actions and its policy's decisions",
        "rollouts",
        {200: ("A page of the rollout's events.", RolloutEventPageBody)},
        (400, 404, 422, *_OPERATOR),
        parameters=(*_ONE, *_event_filters(of_rollout=True)),
    ),
    Route(
        "GET",
        "/rollout-events",
        "listAllRolloutEvents",
        "The rollout event log, oldest first (every rollout's)",
        "rollouts",
        {200: ("A page of rollout events.", RolloutEventPageBody)},
        (400, 422, *_OPERATOR),
        parameters=_event_filters(of_rollout=False),
    ),
    Route(
        "GET",
        "/children",
        "listChildren",
        "The registered children",
        "children",
        {200: ("A page of children.", ChildPageBody)},
        (400, 422, *_OPERATOR),
        parameters=_PAGE_PARAMS,
    ),
    Route(
        "DELETE",
        "/children/{child_id}/token",
        "revokeChildToken",
        "Revoke a child's token (its next poll gets a new one)",
        "children",
        {204: ("Revoked.", None)},
        (404, *_OPERATOR),
        parameters=(_path_id("child_id", "child"),),
    ),
)

#: The answers that are not JSON, by ``(path, method, status)``.
_RAW_ANSWERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/release", "get", "200"): {
        "description": "The strategy document (YAML).",
        "headers": {
            "X-Archive-SHA256": {
                "description": "Hex SHA-256 of the release's function archive (an extra).",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            "X-Archive-Size": {
                "description": "Its size in bytes (an extra).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
        },
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    ("/release/functions/{release_id}", "get", "200"): {
        "description": f"``{ARCHIVE_FILENAME}`` (one folder per function version under ``fns/``).",
        "headers": {
            "Content-Disposition": {
                "schema": {
                    "type": "string",
                    "const": f'attachment; filename="{ARCHIVE_FILENAME}"',
                }
            },
            "ETag": {
                "description": "The archive's hex SHA-256, quoted.",
                "schema": {"type": "string"},
            },
            "Repr-Digest": {
                "description": "``sha-256=:<base64>:`` (RFC 9530), to check the bytes against.",
                "schema": {"type": "string"},
            },
        },
        "content": {
            ARCHIVE_MEDIA_TYPE: {
                "schema": {"type": "string", "contentMediaType": ARCHIVE_MEDIA_TYPE}
            }
        },
    },
}

#: ``POST /rollouts``'s other media type: the upload as multipart parts.
_MULTIPART = {
    "multipart/form-data": {
        "schema": {"$ref": "#/components/schemas/RolloutMultipart"},
        "encoding": {
            "strategy": {"contentType": "application/yaml, text/plain"},
            "archive": {"contentType": ARCHIVE_MEDIA_TYPE},
            "rollout": {"contentType": "application/json"},
        },
    }
}


def _rollout_paths() -> dict[str, Any]:
    """The ``paths`` of :data:`ROLLOUT_ROUTES` (and ``GET /openapi.json``), with what a route
    cannot state set on them."""
    items = paths(ROLLOUT_ROUTES, _STRUCT_NAMES, {OPENAPI_PATH: _openapi_operation("rollout")})
    for (path, method, status), answer in _RAW_ANSWERS.items():
        items[path][method]["responses"][status] = answer
    upload = items["/rollouts"]["post"]["requestBody"]
    upload["content"] = {**_MULTIPART, **upload["content"]}
    return items


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
