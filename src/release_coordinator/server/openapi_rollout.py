"""The Rollout API's paths in the OpenAPI documents (see
:func:`~release_coordinator.server.openapi.rollout_openapi`)."""

from __future__ import annotations

from typing import Any

from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.models import RolloutState
from release_coordinator.server.openapi_parts import (
    OPENAPI_PATH,
    _answer,
    _body,
    _choices,
    _openapi_operation,
    _operation,
    _param,
    _path_id,
    _query,
    _ref,
)
from release_coordinator.server.openapi_rollout_schemas import (
    _ID,
    _RELEASE_NAMES,
)


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
