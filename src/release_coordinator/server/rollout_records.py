"""The rollout app's records as JSON, and the values it reads from requests.

The operator API's answers (:func:`rollout_json`, :func:`bundle_json`,
:func:`child_release_json`; their shapes are declared, and documented, by the Structs of
:mod:`release_coordinator.rollout.api_bodies`), the checks of free text in its bodies
(:func:`text_problem`) and the area a report is narrowed to (:func:`area_query`). Needs the
``server`` extra (Starlette).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request

from release_coordinator.rollout.archive import ARCHIVE_FILENAME
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.judgement import StageJudgement
from release_coordinator.rollout.models import ChildRelease, ReleaseBundle, Rollout
from release_coordinator.rollout.policies import policy_json
from release_coordinator.rollout.results import StageSummary
from release_coordinator.schemas import MAX_TEXT
from release_coordinator.server.common import Refusal
from release_coordinator.server.request_body import parse_json

__all__ = [
    "MAX_TEXT",
    "area_query",
    "bundle_json",
    "child_release_json",
    "rollout_json",
    "stage_judgement_json",
    "summary_json",
    "text_problem",
]


def rollout_json(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it."""
    return {
        "id": rollout.id,
        "name": rollout.name,
        "state": rollout.state.value,
        "target": rollout.target.to_geojson(),
        "match": rollout.match,
        "priority": rollout.priority,
        "policy": policy_json(rollout.policy),
        "seq": rollout.seq,
        "reason": rollout.reason,
        "gated": rollout.gated,
        "after_release": rollout.after_release,
    }


def bundle_json(bundle: ReleaseBundle) -> dict[str, Any]:
    """A rollout's bundle as the API shows it: its strategy's outline, its archive's."""
    strategy = bundle.strategy
    return {
        "strategy": {
            "id": strategy.id,
            "name": strategy.name,
            "type": strategy.type,
            "stages": [{"name": s.name, "type": s.type.value} for s in strategy.stages],
            "functions": [f.name for f in strategy.functions],
        },
        "archive": {
            "filename": ARCHIVE_FILENAME,
            "sha256": bundle.archive.sha256,
            "size": bundle.archive.size,
            "files": list(bundle.archive.files),
        },
    }


def _finite(value: Any) -> Any:
    """Summaries as strict JSON: a float that is not finite becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def summary_json(summary: object) -> dict[str, Any] | None:
    """A stage summary in the documented encoding's keys (None: no summary)."""
    return _finite(summary.to_documented()) if isinstance(summary, StageSummary) else None


def stage_judgement_json(judgement: StageJudgement | None) -> dict[str, Any] | None:
    """A stage's canary judgement as strict JSON (None: none)."""
    return None if judgement is None else _finite(judgement.to_json())


def child_release_json(state: ChildRelease, *, lost: bool = False) -> dict[str, Any]:
    """One child's state in a rollout: statuses by their protocol names, summaries in the
    documented encoding's keys."""
    return {
        "child_id": state.child_id,
        "status": state.status.wire_name,
        "outcome": state.outcome.value,
        "acknowledged": state.acknowledged,
        "lost": lost,
        "stages": {
            name: {"status": stage.status.wire_name, "summary": summary_json(stage.summary)}
            for name, stage in state.stages.items()
        },
    }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def text_problem(value: object, most: int = MAX_TEXT) -> str | None:
    """What is wrong with ``value`` as free text of at most ``most`` characters, or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if len(value) > most:
        return f"is longer than {most} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    if not value.isprintable():
        return "must be printable text"
    return None


def area_query(request: Request) -> Area | None:
    """``?bbox=minLon,minLat,maxLon,maxLat`` or ``?area=<GeoJSON>``: the area to narrow to."""
    bbox = request.query_params.get("bbox")
    area = request.query_params.get("area")
    if bbox is not None and area is not None:
        raise Refusal(400, "give bbox or area, not both")
    if bbox is not None:
        parts = bbox.split(",")
        numbers = [_number(_float(p)) for p in parts] if len(parts) == 4 else []
        if len(numbers) != 4 or None in numbers:
            raise Refusal(400, "bbox must be four numbers: minLon,minLat,maxLon,maxLat")
        w, s, e, n = (x for x in numbers if x is not None)
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        return Area.from_geojson({"type": "Polygon", "coordinates": [ring]}, path="bbox")
    if area is not None:
        return Area.from_geojson(parse_json(area), path="area")
    return None


def _float(text: str) -> float | None:
    try:
        return float(text) if len(text) <= 40 else None
    except ValueError:
        return None
