"""The Rollout API's schemas in the OpenAPI documents: the child protocol's bodies and the
operator API's (generated from their Structs, :mod:`release_coordinator.rollout.bodies` and
:mod:`release_coordinator.rollout.api_bodies`), and the hand-written schemas those Structs
refer to: GeoJSON areas, result bodies in their two encodings, policies."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator.wire import MAX_TEXT
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.api_bodies import (
    ANSWER_BODIES,
    ANSWER_NAMES,
    REQUEST_BODIES,
)
from release_coordinator.rollout.approval_bodies import (
    APPROVAL_ANSWER_NAMES,
    ApprovalAnswerBody,
    WhatIfBody,
)
from release_coordinator.rollout.bodies import (
    EndStageAnswerBody,
    EndStageRequest,
    PollAnswerBody,
    PollRequest,
    ResultAnswer,
)
from release_coordinator.rollout.event_bodies import EVENT_ANSWER_NAMES, RolloutEventPageBody
from release_coordinator.rollout.intervention_bodies import (
    INTERVENTION_ANSWER_NAMES,
    INTERVENTION_BODIES,
)
from release_coordinator.rollout.judgement import MIN_CALLS_FLOOR
from release_coordinator.rollout.policies import (
    DEFAULT_CHILD_TIMEOUT,
    MAX_APPROVALS,
    MAX_GROUPS,
    MAX_WAVES,
)
from release_coordinator.rollout.results import MAX_SUMMARIES
from release_coordinator.schemas import MAX_INT32, schema_components
from release_coordinator.server.openapi_interventions import with_error_action
from release_coordinator.server.openapi_pacing import pacing_components, with_pacing
from release_coordinator.server.openapi_parts import (
    _NUMBER,
    _json,
    _object,
    _or_null,
    _path_id,
    _query,
    _record,
    _ref,
)

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


def _times(keys: tuple[str, str, str]) -> dict[str, Any]:
    number: dict[str, Any] = {"type": "number", "minimum": 0}
    return _object(
        dict.fromkeys(keys, number),
        list(keys),
        closed=False,
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
        "child_timeout": {
            **timeout,
            "description": "Per-child time limit in seconds (null: none); left out: "
            f"{DEFAULT_CHILD_TIMEOUT:g}. A child that has not fetched the release that long "
            "after the offer, or stays in a stage that long past its minDuration, times out "
            "(Failed, outcome timed_out).",
        },
    }
    approvals = {  # (rollout.approvals)
        "type": "array",
        "maxItems": MAX_APPROVALS,
        "items": {"type": "string", "minLength": 1},
        "description": "Stages no child starts before an operator approves them: the first "
        "stage, or stages every stage leading to on success is a WaitForSignal stage.",
    }
    if output:
        record = _record(properties)
        # Shown only when set (a policy without one reads as before): not required.
        record["properties"]["judgement"] = _ref("Judgement")
        record["properties"]["approvals"] = approvals
        return record
    properties["judgement"] = _or_null(_ref("JudgementInput"))
    properties["approvals"] = _or_null(approvals)
    required = [] if kind == "global_incremental" else ["type"]
    return _object(properties, required)


def _judgement(*, output: bool) -> dict[str, Any]:
    """A policy's canary judgement (:mod:`release_coordinator.rollout.judgement`)."""
    properties: dict[str, Any] = {
        "confidence": {
            "type": "number",
            "exclusiveMinimum": 0.5,
            "exclusiveMaximum": 1,
            "description": "Of the one-sided pooled two-proportion z-test of the error rates "
            "(the new version worse): it fails when its p-value <= 1 - confidence. Left out: "
            "0.95.",
        },
        "min_calls": {
            "type": "integer",
            "minimum": MIN_CALLS_FLOOR,
            "maximum": MAX_INT32,
            "description": "Calls each version needs, else the verdict is inconclusive. Left "
            "out: 200.",
        },
        "latency_threshold": {
            "type": ["number", "null"],
            "minimum": 0,
            "description": "Fails when the new median > old median * (1 + this); null: "
            "latency not judged. Left out: 0.2.",
        },
        "max_wait": {
            "type": "number",
            "minimum": 0,
            "description": "Seconds an inconclusive stage waits (from the first child waiting "
            "on it) before on_inconclusive applies. Left out: 300.",
        },
        "on_inconclusive": {"type": "string", "enum": ["rollback", "proceed"]},
        "scope": {
            "type": "string",
            "enum": ["rollout", "child", "group"],
            "description": "rollout: the aggregate of the ready children, a failure aborts "
            "the rollout; child: each child (a relay: its subtree) on its own, a failure "
            "rolls that child back; group: the aggregate of each location_sequential group "
            "of ready children, a failure rolls that group's ready children back.",
        },
    }
    if output:
        return _record(properties)
    return _object(properties)


def _policies(*, output: bool) -> dict[str, Any]:
    fraction = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

    def maybe(schema: dict[str, Any]) -> dict[str, Any]:
        return schema if output else _or_null(schema)

    return {
        "oneOf": [
            _policy("global_incremental", {}, output=output),
            _policy(
                "location_sequential",
                {"groups": maybe({"type": "array", "maxItems": MAX_GROUPS, "items": _ref("Area")})},
                output=output,
            ),
            _policy(
                "waves",
                {
                    "sizes": maybe(
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_WAVES,
                            "items": fraction,
                            "description": "Growing shares of the eligible children.",
                        }
                    ),
                    "success_threshold": maybe(fraction),
                    "failure_threshold": maybe(fraction),
                    "min_finished": maybe({"type": "integer", "minimum": 0, "maximum": MAX_INT32}),
                },
                output=output,
            ),
        ],
        "description": (
            "How the rollout advances: ``global_incremental`` (the default), "
            "``location_sequential`` or ``waves``."
        ),
    }


#: The components' names of the Structs whose class name is not the component's.
_STRUCT_NAMES = {
    "PollAnswerBody": "PollAnswer",
    "EndStageAnswerBody": "EndStageAnswer",
    **ANSWER_NAMES,
    **EVENT_ANSWER_NAMES,
    **APPROVAL_ANSWER_NAMES,
    **INTERVENTION_ANSWER_NAMES,
}

#: The child protocol's bodies, generated from their Structs.
_CHILD_BODIES = schema_components(
    [PollRequest, PollAnswerBody, EndStageRequest, EndStageAnswerBody, ResultAnswer],
    names=_STRUCT_NAMES,
)

#: The operator API's bodies, generated from their Structs (answers named without ``Body``).
_OPERATOR_BODIES = schema_components(
    [
        *REQUEST_BODIES,
        *ANSWER_BODIES,
        RolloutEventPageBody,
        ApprovalAnswerBody,
        WhatIfBody,
        *INTERVENTION_BODIES,
    ],
    names=_STRUCT_NAMES,
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
    "DocumentedTimes": _times(("Median", "Minimum", "Maximum")),
    "OriginalTimes": _times(("median", "minimum", "maximum")),
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
                "maxItems": MAX_SUMMARIES,
                "items": {"anyOf": [_ref("DocumentedSummary"), _ref("OriginalSummary")]},
                "description": "One encoding per body.",
            },
        },
        ["id", "release_id", "stage_summaries"],
        closed=False,
        description="A child's stage summaries, in either encoding of the protocol.",
    ),
    **_CHILD_BODIES,
    "PolicyInput": with_error_action(
        with_pacing(_policies(output=False), output=False), output=False
    ),
    "Policy": with_error_action(with_pacing(_policies(output=True), output=True), output=True),
    **pacing_components(),
    "JudgementInput": _judgement(output=False),
    "Judgement": _judgement(output=True),
    **_OPERATOR_BODIES,
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
