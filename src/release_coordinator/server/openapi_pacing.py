"""The OpenAPI schemas of a policy's pacing (:mod:`release_coordinator.rollout.pacing`) and a
``Waves`` policy's ``soak_time``: components of the rollout manager's document, and the
properties they add to every policy."""

from __future__ import annotations

import copy
from typing import Any

from release_coordinator.rollout.pacing import (
    DAY_NAMES,
    DEADLINE_ACTIONS,
    MAX_TIME,
    MAX_WINDOWS,
    WEEK,
)
from release_coordinator.schemas import MAX_INT32
from release_coordinator.server.openapi_parts import _object, _or_null, _record, _ref

__all__: list[str] = []

_TIME_OF_DAY = "^([01][0-9]|2[0-3]):[0-5][0-9]$"
_PER_MINUTE = {"type": "integer", "minimum": 1, "maximum": MAX_INT32}


def _moment(what: str, *, output: bool) -> dict[str, Any]:
    text = {"type": "string", "format": "date-time", "minLength": 10, "maxLength": 40}
    if output:
        return {"type": ["string", "null"], "format": "date-time", "description": what}
    return {
        "anyOf": [text, {"type": "number", "minimum": 0, "maximum": MAX_TIME}, {"type": "null"}],
        "description": f"{what} RFC 3339 (an offset or Z; none: UTC), or seconds since the "
        "epoch; null: none.",
    }


def _ramp(*, output: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "start_per_minute": {
            **_PER_MINUTE,
            "description": "Children offered the release in any 60 seconds at first.",
        },
        "factor": {
            "type": "number",
            "exclusiveMinimum": 1,
            "maximum": 100,
            "description": "The rate grows by this factor every minute while the success share "
            "holds. Left out: 2.",
        },
        "success_threshold": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "description": "Of the finished children, the share that must have rolled out for "
            "the rate to grow. Left out: 0.9.",
        },
    }
    if output:
        return _record(properties)
    return _object(properties, ["start_per_minute"])


def _window(*, output: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "days": {
            "type": "array",
            "minItems": 1,
            "maxItems": 7 if output else 14,
            "items": {"type": "string", "enum": list(DAY_NAMES)}
            if output
            else {"type": "string", "minLength": 3, "maxLength": 9},
            "description": "Days of the week it opens on, UTC (mon ... sun; full names too). "
            "Left out: every day.",
        },
        "start": {
            "type": "string",
            "pattern": _TIME_OF_DAY,
            "description": "When it opens, HH:MM UTC.",
        },
        "duration": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": WEEK,
            "description": "Seconds it stays open (it may run past midnight).",
        },
    }
    if output:
        return _record(properties)
    return _object(properties, ["start", "duration"])


def _pacing(*, output: bool) -> dict[str, Any]:
    suffix = "" if output else "Input"
    properties: dict[str, Any] = {
        "ramp": _or_null(_ref(f"Ramp{suffix}")),
        "max_per_minute": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_INT32,
            "description": "Never more children offered the release in any 60 seconds.",
        },
        "start_at": _moment("A started rollout offers nothing before it.", output=output),
        "windows": {
            "type": "array" if output else ["array", "null"],
            "maxItems": MAX_WINDOWS,
            "items": _ref(f"Window{suffix}"),
            "description": "Weekly maintenance windows, UTC: outside every one nothing new is "
            "offered (and offers not fetched yet are withdrawn). Empty: always open.",
        },
        "deadline": _moment("Past it nothing new is offered and the rollout ends.", output=output),
        "on_deadline": {
            "type": "string",
            "enum": list(DEADLINE_ACTIONS),
            "description": "stop (the default): children offered it keep it, the rollout "
            "completes once they finished; cancel: offers not fetched are withdrawn too; abort: "
            "the rollout is aborted (reason 'deadline passed'), children running it roll back.",
        },
    }
    description = "Rate and time controls (see the rollout guide). Shown only when set."
    if output:
        return _record(properties, description)
    return _object(properties, description=description)


def pacing_components() -> dict[str, Any]:
    """The document's components for pacings."""
    return {
        "PacingInput": _pacing(output=False),
        "Pacing": _pacing(output=True),
        "RampInput": _ramp(output=False),
        "Ramp": _ramp(output=True),
        "WindowInput": _window(output=False),
        "Window": _window(output=True),
    }


_SOAK = {
    "type": "number",
    "minimum": 0,
    "description": "Seconds the next wave waits once a wave met success_threshold. Left out: "
    "0 (shown only when set).",
}


def with_pacing(policies: dict[str, Any], *, output: bool) -> dict[str, Any]:
    """The policies' schema (``oneOf`` one per kind) with ``pacing`` on every kind and
    ``soak_time`` on waves: optional properties (answers show them only when set)."""
    schema = copy.deepcopy(policies)
    for kind in schema["oneOf"]:
        properties = kind["properties"]
        properties["pacing"] = _ref("Pacing") if output else _or_null(_ref("PacingInput"))
        if properties["type"].get("const") == "waves":
            properties["soak_time"] = _SOAK if output else _or_null(_SOAK)
    return schema
