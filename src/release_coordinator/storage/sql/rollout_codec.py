"""How the rollout half's records are written in their SQL columns, and read back.

Areas, policies and stages are JSON text, canonical (equal values encode to the same text),
which the compare-and-set of a child's state relies on: its ``WHERE`` compares the stored text
with the encoding of the state the caller read. A child that is Todo with every stage Pending
has NULL stages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import attrs
import sqlalchemy as sa

from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.archive import FunctionArchive
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ChildStage,
    Outcome,
    ReleaseBundle,
)
from release_coordinator.rollout.policies import parse_policy
from release_coordinator.rollout.results import StageSummary, TimesSummary
from release_coordinator.rollout.strategy import parse_strategy

_TODO_INT = int(ReleaseStatus.TODO)
_DOING_INT = int(ReleaseStatus.DOING)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _times(value: Sequence[float]) -> TimesSummary:
    return TimesSummary(value[0], value[1], value[2])


def _summary_json(summary: object) -> list[Any] | None:
    """A summary as JSON, canonical (floats as floats, counts as ints): equal summaries
    encode to the same text, which the compare-and-set relies on."""
    if summary is None:
        return None
    assert isinstance(summary, StageSummary)
    return [
        [float(t.median), float(t.minimum), float(t.maximum)]
        for t in (summary.proxy_times, summary.f1_times, summary.f2_times)
    ] + [
        float(summary.f1_err_rate),
        float(summary.f2_err_rate),
        int(summary.f1_calls),
        int(summary.f2_calls),
    ]


def _summary(value: list[Any] | None) -> StageSummary | None:
    if value is None:
        return None
    proxy, f1, f2, f1_err, f2_err, f1_calls, f2_calls = value
    return StageSummary(_times(proxy), _times(f1), _times(f2), f1_err, f2_err, f1_calls, f2_calls)


_PENDING = ChildStage()


def _encode_stages(state: ChildRelease, names: Sequence[str]) -> str | None:
    """The stages column, canonical (in the strategy's order ``names``, times as floats):
    NULL for a child that is Todo with every stage untouched."""
    if (
        state.status is ReleaseStatus.TODO
        and not state.acknowledged
        and state.outcome is Outcome.NONE
        and all(stage == _PENDING for stage in state.stages.values())
    ):
        return None
    order = [*names, *(n for n in state.stages if n not in names)]
    return _dumps(
        [
            [
                name,
                int(s.status),
                _summary_json(s.summary),
                float(s.changed_at),
                float(s.started_at),
            ]
            for name in order
            for s in (state.stages[name],)
        ]
    )


def _state_values(state: ChildRelease, names: Sequence[str]) -> dict[str, Any]:
    waiting_stage, waiting_since = "", None
    for name in names:
        stage = state.stages[name]
        if stage.status is StageStatus.SUCCESS_WAITING:
            waiting_stage, waiting_since = name, stage.changed_at
            break
    stages = _encode_stages(state, names)
    return {
        "status": int(state.status),
        "acknowledged": state.acknowledged,
        "outcome": state.outcome.value,
        "stages": stages,
        "statuses": ""
        if stages is None
        else ".".join(str(int(state.stages[n].status)) for n in names),
        "waiting_stage": waiting_stage,
        "waiting_since": waiting_since,
    }


def _child(row: sa.Row[Any]) -> Child:
    area = Area.from_geojson(json.loads(row.area), path=f"rc_children[{row.id}].area")
    return Child(row.id, area, row.number_of_children, row.registered_at)


def _child_release(
    rollout_id: str, child_id: str, row: sa.Row[Any], names: Sequence[str]
) -> ChildRelease:
    if row.stages is None:
        stages = {name: _PENDING for name in names}
    else:
        stages = {
            name: ChildStage(StageStatus(status), _summary(summary), changed, started)
            for name, status, summary, changed, started in json.loads(row.stages)
        }
    return ChildRelease(
        rollout_id,
        child_id,
        ReleaseStatus(row.status),
        stages,
        Outcome(row.outcome),
        row.acknowledged,
    )


@attrs.frozen
class _Fixed:
    """What never changes about a stored rollout (decoded once per process)."""

    target: Area
    policy: Any
    bundle: ReleaseBundle


def _fixed(rollout_id: str, row: Any) -> _Fixed:
    """What never changes about a rollout, from its row's ``target``, ``policy``,
    ``strategy_text``, ``archive`` and ``archive_files``."""
    data = bytes(row.archive)
    files = tuple(json.loads(row.archive_files))
    archive = FunctionArchive(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        folders=frozenset(
            "/".join(name.split("/", 2)[:2]) for name in files if name.count("/") >= 2
        ),
        files=files,
    )
    text = row.strategy_text
    return _Fixed(
        target=Area.from_geojson(json.loads(row.target), path=f"rc_rollouts[{rollout_id}]"),
        policy=parse_policy(json.loads(row.policy)),
        bundle=ReleaseBundle(parse_strategy(text), text, archive),
    )
