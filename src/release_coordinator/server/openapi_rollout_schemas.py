"""The Rollout API's schemas in the OpenAPI documents: GeoJSON areas, the child protocol's
bodies (generated from their Structs, :mod:`release_coordinator.rollout.bodies`), result
summaries, policies and the operator API's records."""

from __future__ import annotations

from typing import Any

from release_coordinator.coordinator.wire import MAX_TEXT
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import ARCHIVE_FILENAME, ARCHIVE_MEDIA_TYPE
from release_coordinator.rollout.bodies import (
    EndStageAnswerBody,
    EndStageRequest,
    PollAnswerBody,
    PollRequest,
    ResultAnswer,
)
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.strategy import StageType
from release_coordinator.schemas import schema_components
from release_coordinator.server.openapi_parts import (
    _EMPTY_OBJECT,
    _MAX_GROUPS,
    _MAX_INT32,
    _MAX_REASON,
    _MAX_SUMMARIES,
    _MAX_WAVES,
    _NUMBER,
    _enum,
    _json,
    _object,
    _or_null,
    _page,
    _path_id,
    _query,
    _record,
    _ref,
    _text,
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

#: The child protocol's bodies, generated from their Structs.
_CHILD_BODIES = schema_components(
    [PollRequest, PollAnswerBody, EndStageRequest, EndStageAnswerBody, ResultAnswer],
    names={"PollAnswerBody": "PollAnswer", "EndStageAnswerBody": "EndStageAnswer"},
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
    **_CHILD_BODIES,
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
