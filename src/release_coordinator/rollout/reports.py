"""What the RolloutManager reports: per rollout (:class:`RolloutReport`, one
:class:`StageReportRow` per stage) and per ``WaitForSignal`` stage (:class:`BarrierState`,
:class:`StageCounts`), and how a rollout's report is counted from its children's states."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.judgement import REST, StageJudgement, stage_judgement
from release_coordinator.rollout.models import ChildRelease, Outcome, Rollout
from release_coordinator.rollout.results import StageSummary, aggregate

__all__ = ["BarrierState", "RolloutReport", "StageCounts", "StageReportRow"]

#: A child's release that takes part in the rollout's stages (neither Done nor Failed).
ACTIVE = frozenset({ReleaseStatus.TODO, ReleaseStatus.DOING})
#: A child's stage that is ready for the stage's barrier: waiting on it, or told to end it.
READY = frozenset({StageStatus.SUCCESS_WAITING, StageStatus.SHOULD_END})


@attrs.frozen
class StageReportRow:
    """One stage across the rollout's children: how many are in each status, and the
    call-weighted aggregate of their summaries (the shape of a child's summary), and the
    canary judgement over those summaries when the rollout's policy has a ``judgement``."""

    name: str
    counts: Mapping[str, int]
    aggregate: StageSummary | None
    #: The canary judgement of the stage when the policy has one (see :mod:`.judgement`).
    judgement: StageJudgement | None = None


@attrs.frozen
class RolloutReport:
    rollout: Rollout
    children: tuple[ChildRelease, ...]
    stages: tuple[StageReportRow, ...]
    statuses: Mapping[str, int]
    outcomes: Mapping[str, int]
    lost: tuple[str, ...]


@attrs.frozen
class BarrierState:
    """A ``WaitForSignal`` stage's barrier: ``ready`` when the policy's condition holds among
    the ``taking_part`` children (``ready_count`` of them wait or are told to end); ``waiting``
    are the children waiting on it now."""

    open: bool
    ready: bool
    waiting: tuple[ChildRelease, ...]
    taking_part: int
    ready_count: int


@attrs.frozen
class StageCounts:
    """Where one stage stands among a rollout's targeted children, from the counters the
    manager keeps (no child is read): ``taking_part`` children are Todo or Doing, not lost, with
    the stage not final, ``ready_count`` of them wait on it or were told to end it; ``ready``
    when the policy's quorum of them is ready (:class:`BarrierState`'s ``ready``); ``waiting``
    children are ``SuccessWaiting`` now; ``final`` children finished the stage (Completed,
    Failure or Error), ``completed`` of them Completed. ``open``: the barrier opened."""

    open: bool
    ready: bool
    taking_part: int
    ready_count: int
    waiting: int
    final: int
    completed: int


def _one_group(_child: str) -> str:
    return REST


def build_report(
    rollout: Rollout,
    stage_names: Iterable[str],
    children: list[ChildRelease],
    lost: tuple[str, ...],
    group: Callable[[str], str] | None = None,
) -> RolloutReport:
    """The report of ``rollout`` over ``children`` (``lost``: the ids of those that are lost):
    per stage, how many are in each status, the aggregate of their summaries and its canary
    judgement (``group``: a child's group, for a judgement by group); overall, how many are in
    each release status and have each outcome."""
    rows = []
    for name in stage_names:
        counts: dict[str, int] = {}
        summaries: list[StageSummary] = []
        judged: list[tuple[str, StageSummary]] = []
        for child in children:
            stage = child.stages[name]
            counts[stage.status.wire_name] = counts.get(stage.status.wire_name, 0) + 1
            if isinstance(stage.summary, StageSummary):
                summaries.append(stage.summary)
                judged.append((child.child_id, stage.summary))
        verdict = stage_judgement(rollout.policy.judgement, judged, group or _one_group)
        rows.append(StageReportRow(name, counts, aggregate(summaries), verdict))
    statuses: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for child in children:
        statuses[child.status.wire_name] = statuses.get(child.status.wire_name, 0) + 1
        if child.outcome is not Outcome.NONE:
            outcomes[child.outcome.value] = outcomes.get(child.outcome.value, 0) + 1
    return RolloutReport(rollout, tuple(children), tuple(rows), statuses, outcomes, lost)
