"""The RolloutManager acting on canary judgement (:mod:`~release_coordinator.rollout.judgement`).

When a rollout's policy has a ``judgement``, a ``WaitForSignal`` stage's barrier is judged
before it opens: once the policy's quorum of the children taking part is ready on the stage
(waiting on it), the manager judges the summaries those ready children reported, by the
judgement's ``scope``:

- ``rollout``: the call-weighted aggregate of them all. ``pass`` opens the barrier; ``fail``
  aborts the rollout (every child rolls back; the rollout's reason says ``canary judgement``
  and why); ``inconclusive`` holds the barrier, until a verdict comes from more children or
  ``max_wait`` seconds have passed since the first child began to wait on the stage; then
  ``on_inconclusive`` (``rollback``: abort as for ``fail``; ``proceed``: open).
- ``child``: each ready child on its own summary (for a relay, its subtree's aggregate: a
  region). A child whose verdict is ``fail`` is rolled back alone: its release is ``Failed``,
  outcome ``rolled_back``, the stage ``Failure``, and its next ``/end_stage`` answers
  ``rollback`` (a relay rolls its subtree back). The others go on: the barrier opens once
  the quorum holds among the children still taking part. Inconclusive children hold the
  barrier until ``max_wait``, then ``on_inconclusive`` applies to each of them.
- ``group``: the aggregate of each group of ready children (a ``LocationSequential``
  policy's group areas: the first one a child's area intersects, ``rest`` for none; with no
  groups, or another policy, one group of them all). A failing group's ready children are
  rolled back as one child is with ``child``; the other groups go on, and under
  ``LocationSequential`` the next group is offered the release once the failed one finished.
  So a flat fleet is judged per region.

A child that waits on the stage after its barrier opened (a late child, or any child of a
``LocationSequential`` group after the first: the barrier stays open) is judged before it is
told to end the stage (:func:`judge_late`): with ``rollout``, not at all (the stage's verdict
is in); with ``child``, on its own summary; with ``group``, with its group, once the policy's
quorum of the group's children taking part is ready (or ``max_wait`` after the group's first
waiting child). Until its unit's verdict is in, ``/end_stage`` answers ``end_stage: false``;
a unit's verdict, once in, holds for its children that wait later. A rollout whose barriers
a parent opens (a relay's, ``gated``) is not judged here: its parent judges the relay's
aggregate. Each decision is logged; the
rollout's report (:class:`~release_coordinator.rollout.reports.StageReportRow`'s
``judgement``) shows the verdict over what the stage's children reported.

A verdict is computed once per change of the rollout's child states (and kept until the next
one, or over a shared store until the stage counters are rebuilt), so a barrier asked about by
every waiting child costs one look at the children per change, not one per question.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from release_coordinator.errors import ConcurrentUpdateError, NotFoundError
from release_coordinator.fsm.rollout import StageStatus, release_step, stage_step
from release_coordinator.rollout.judgement import (
    REST,
    CanaryVerdict,
    Judgement,
    Verdict,
    group_of,
    judge,
    units_of,
)
from release_coordinator.rollout.matching import _Matching
from release_coordinator.rollout.models import ChildRelease, Outcome, Rollout
from release_coordinator.rollout.policies import LocationSequential
from release_coordinator.rollout.reports import ACTIVE, READY
from release_coordinator.rollout.results import StageSummary, TimesSummary, aggregate

__all__ = [
    "ABORTED",
    "HELD",
    "HOLD",
    "OPEN",
    "ROLLED_BACK",
    "SIGNAL",
    "child_group",
    "judge_barrier",
    "judge_late",
    "told_to_roll_back",
]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: What :func:`judge_barrier` decided: open the barrier, hold it, or the rollout
#: was aborted (nothing more to do).
OPEN, HOLD, ABORTED = "open", "hold", "aborted"
#: What :func:`judge_late` decided for a child waiting on an open barrier: tell it to end
#: the stage, hold it (its unit's verdict is not in), or it was rolled back.
SIGNAL, HELD, ROLLED_BACK = "signal", "held", "rolled_back"

_NO_TIMES = TimesSummary(0.0, 0.0, 0.0)
_NOTHING = StageSummary(_NO_TIMES, _NO_TIMES, _NO_TIMES, 0.0, 0.0)  # no calls: inconclusive


@attrs.frozen
class _Unit:
    """A unit judged on its own: its name ("" for the whole rollout, a child's id, a group's
    name), the ready children it holds, its verdict, since when its first ready child waits,
    and how many of its children take part in the stage (active, the stage not final)."""

    name: str
    members: tuple[str, ...]
    verdict: CanaryVerdict
    since: float
    taking_part: int


#: Per (rollout, stage): the change it was judged at, and the units' verdicts.
_Verdicts = dict[tuple[str, str], tuple[tuple[int, float | None], list[_Unit]]]
#: Per (rollout, stage): the units whose verdict is in (pass or fail), for later children.
_Decided = dict[tuple[str, str], dict[str, Verdict]]


#: Past this many (rollout, stage) entries, the caches drop those of finished rollouts.
_KEEP = 64


def _pruned(manager: _Matching, cache: dict[tuple[str, str], Any]) -> None:
    """Drop the entries of rollouts no longer active or paused (the manager forgets those)."""
    if len(cache) > _KEEP:
        for key in [k for k in cache if k[0] not in manager._eligible]:
            del cache[key]


def _cache(manager: _Matching) -> _Verdicts:
    cache: _Verdicts | None = getattr(manager, "_judged", None)
    if cache is None:
        cache = {}
        manager._judged = cache  # type: ignore[attr-defined]
    _pruned(manager, cache)
    return cache


def _decided(manager: _Matching, rollout_id: str, stage_name: str) -> dict[str, Verdict]:
    decided: _Decided | None = getattr(manager, "_judged_units", None)
    if decided is None:
        decided = {}
        manager._judged_units = decided  # type: ignore[attr-defined]
    _pruned(manager, decided)
    return decided.setdefault((rollout_id, stage_name), {})


def child_group(manager: _Matching, rollout: Rollout) -> Callable[[str], str]:
    """A child's group (scope ``group``) in ``rollout``: by the policy's group areas (see
    :func:`~release_coordinator.rollout.judgement.group_of`), from the child's area."""
    policy = rollout.policy
    groups = policy.groups if isinstance(policy, LocationSequential) else ()
    if not groups:
        return lambda _child: REST
    eligible = manager._eligible.get(rollout.id, {})

    def group(child_id: str) -> str:
        area = eligible.get(child_id)
        if area is None:
            try:
                area = manager._children.area(child_id)
            except NotFoundError:
                return REST
        return group_of(groups, area)

    return group


def _unit_of(judgement: Judgement, group: Callable[[str], str], child_id: str) -> str:
    if judgement.scope == "child":
        return child_id
    return group(child_id) if judgement.scope == "group" else ""


async def _verdicts(
    manager: _Matching, rollout: Rollout, stage_name: str, judgement: Judgement
) -> list[_Unit]:
    """The verdicts on the children ready on the stage, by unit (see :class:`_Unit`): each
    child (``child``), each group (``group``), or their aggregate (``rollout``). Cached per
    change of the rollout's child states and per rebuild of its counters (over a shared
    store, at most ``refresh`` seconds old, as the counters are; and before a barrier opens
    there, the counters are rebuilt, so the verdict that opens it is judged afresh)."""
    key = (manager._changes.get(rollout.id, 0), manager._tally_at.get(rollout.id))
    cache = _cache(manager)
    cached = cache.get((rollout.id, stage_name))
    if cached is not None and cached[0] == key:
        return cached[1]
    group = child_group(manager, rollout)
    ready: list[tuple[str, StageSummary]] = []
    members: dict[str, list[str]] = {}
    since: dict[str, float] = {}
    taking_part: dict[str, int] = {}
    for state in await manager.store.child_releases(rollout.id):
        stage = state.stages[stage_name]
        if state.status not in ACTIVE or stage.status.is_final:
            continue
        unit = _unit_of(judgement, group, state.child_id)
        taking_part[unit] = taking_part.get(unit, 0) + 1
        if stage.status in READY:
            summary = stage.summary if isinstance(stage.summary, StageSummary) else _NOTHING
            ready.append((state.child_id, summary))
            members.setdefault(unit, []).append(state.child_id)
            since[unit] = min(since.get(unit, stage.changed_at), stage.changed_at)
    units = [
        _Unit(
            name,
            tuple(members[name]),
            judge(judgement, aggregate(parts) or _NOTHING),
            since[name],
            taking_part[name],
        )
        for name, parts in units_of(judgement.scope, ready, group).items()
    ]
    if not units:  # nobody ready: inconclusive
        units.append(_Unit("", (), judge(judgement, _NOTHING), manager._clock(), 0))
    cache[(rollout.id, stage_name)] = (key, units)
    return units


def _settled(unit: _Unit, judgement: Judgement, now: float, waiting_since: float | None) -> Verdict:
    """What the manager does with a unit: ``pass`` (go on), ``fail`` (roll back), or
    ``inconclusive`` (hold), ``max_wait`` after ``waiting_since`` (the unit's, by default)
    turning an inconclusive verdict into ``on_inconclusive``."""
    verdict = unit.verdict.verdict
    if verdict is not Verdict.INCONCLUSIVE:
        return verdict
    since = unit.since if waiting_since is None else waiting_since
    if now - since < judgement.max_wait:
        return Verdict.INCONCLUSIVE
    return Verdict.FAIL if judgement.on_inconclusive == "rollback" else Verdict.PASS


async def judge_barrier(
    manager: _Matching, rollout: Rollout, stage_name: str, waiting_since: float | None
) -> str:
    """Judge a ready barrier of ``manager``'s rollout (see the module documentation):
    :data:`OPEN`, :data:`HOLD` or :data:`ABORTED`. ``waiting_since``: when the first child
    began to wait on the stage (``max_wait`` counts from then for the ``rollout`` scope, from
    each unit's first waiting child for the others)."""
    judgement = rollout.policy.judgement
    if judgement is None:
        return OPEN
    units = await _verdicts(manager, rollout, stage_name, judgement)
    now = manager._clock()
    if judgement.scope == "rollout":
        since = manager._clock() - judgement.max_wait if waiting_since is None else waiting_since
        settled = _settled(units[0], judgement, now, since)
        if settled is Verdict.FAIL:
            reason = f"canary judgement, stage {stage_name!r}: {_what(units[0].verdict, judgement)}"
            log.warning("rollout %s aborted by %s", rollout.id, reason)
            await manager._abort(rollout.id, reason)
            return ABORTED
        return HOLD if settled is Verdict.INCONCLUSIVE else OPEN
    decided = _decided(manager, rollout.id, stage_name)
    held = rejected = 0
    for unit in units:
        settled = _settled(unit, judgement, now, None)
        if settled is Verdict.INCONCLUSIVE:
            held += 1
            continue
        decided[unit.name] = settled
        if settled is Verdict.FAIL:
            rejected += await _reject_unit(manager, rollout, stage_name, unit, judgement)
    if rejected:
        await manager._admit(rollout)  # the next group or wave may go
    return HOLD if held else OPEN


async def judge_late(
    manager: _Matching, rollout: Rollout, state: ChildRelease, stage_name: str
) -> str:
    """Judge a child waiting on an open barrier before it is told to end the stage (scopes
    ``child`` and ``group``; for ``rollout`` the stage's verdict is in): :data:`SIGNAL`,
    :data:`HELD` (its unit's verdict is not in: ``/end_stage`` answers ``end_stage: false``)
    or :data:`ROLLED_BACK`. A unit's verdict, once in, holds for its children that wait
    later. A group is judged once the policy's quorum of its children taking part is ready,
    or ``max_wait`` after its first child began to wait."""
    judgement = rollout.policy.judgement
    if judgement is None or judgement.scope == "rollout":
        return SIGNAL
    group = child_group(manager, rollout)
    name = _unit_of(judgement, group, state.child_id)
    decided = _decided(manager, rollout.id, stage_name)
    now = manager._clock()
    verdict = decided.get(name)
    unit: _Unit | None = None
    if verdict is None:
        if judgement.scope == "child":
            stage = state.stages[stage_name]
            summary = stage.summary if isinstance(stage.summary, StageSummary) else _NOTHING
            own = judge(judgement, summary)
            unit = _Unit(name, (state.child_id,), own, stage.changed_at, 1)
        else:
            units = await _verdicts(manager, rollout, stage_name, judgement)
            unit = next((u for u in units if u.name == name), None)
            if unit is None:
                return HELD  # not ready after all (moved meanwhile)
            quorum = len(unit.members) >= rollout.policy.quorum * unit.taking_part
            if not quorum and now - unit.since < judgement.max_wait:
                return HELD
        settled = _settled(unit, judgement, now, None)
        if settled is Verdict.INCONCLUSIVE:
            return HELD
        decided[name] = verdict = settled
    if verdict is Verdict.PASS:
        return SIGNAL
    if unit is None:  # the unit failed before: this child goes back with it
        stage = state.stages[stage_name]
        summary = stage.summary if isinstance(stage.summary, StageSummary) else _NOTHING
        unit = _Unit(name, (state.child_id,), judge(judgement, summary), stage.changed_at, 1)
    await _reject_unit(manager, rollout, stage_name, unit, judgement)
    await manager._admit(rollout)
    return ROLLED_BACK


async def _reject_unit(
    manager: _Matching, rollout: Rollout, stage_name: str, unit: _Unit, judgement: Judgement
) -> int:
    """Roll a unit's ready children back on its verdict; how many were."""
    rejected = 0
    for child_id in unit.members:
        rejected += await _reject(manager, rollout, stage_name, child_id, unit.verdict, judgement)
    if judgement.scope == "group" and rejected:
        log.warning(
            "rollout %s: group %s (%d children) rolled back by canary judgement, stage %r: %s",
            rollout.id,
            unit.name,
            rejected,
            stage_name,
            _what(unit.verdict, judgement),
        )
    return rejected


async def _reject(
    manager: _Matching,
    rollout: Rollout,
    stage_name: str,
    child_id: str,
    verdict: CanaryVerdict,
    judgement: Judgement,
) -> int:
    """Roll one child back on its verdict (see the module documentation); 1 if it was."""
    state = await manager.store.child_release(rollout.id, child_id)
    stage = state.stages[stage_name]
    if state.status not in ACTIVE or stage.status not in READY:
        return 0  # moved meanwhile
    subject = f"{child_id}/{rollout.id}"
    stages = dict(state.stages)
    now = manager._clock()
    stages[stage_name] = attrs.evolve(
        stage, status=stage_step(stage.status, "fail", subject=subject), changed_at=now
    )
    failed = attrs.evolve(
        state,
        status=release_step(state.status, "fail", subject=subject),
        stages=stages,
        outcome=Outcome.ROLLED_BACK,
    )
    try:
        await manager._put(state, failed)
    except ConcurrentUpdateError:
        return 0  # it reported meanwhile: judged again at the next check
    log.warning(
        "rollout %s: child %s rolled back by canary judgement, stage %r: %s",
        rollout.id,
        child_id,
        stage_name,
        _what(verdict, judgement),
    )
    return 1


def told_to_roll_back(rollout: Rollout, state: ChildRelease, stage_name: str) -> bool:
    """Whether ``/end_stage`` tells the child to roll back because the manager may have
    rolled it back by judgement: the rollout's policy judges, and the child's release is
    rolled back with the stage ``Failure`` (a child that failed the stage itself is told what
    it did; without a judgement the answer is what it always was)."""
    return (
        rollout.policy.judgement is not None
        and state.outcome is Outcome.ROLLED_BACK
        and state.stages[stage_name].status is StageStatus.FAILURE
    )


def _what(verdict: CanaryVerdict, judgement: Judgement) -> str:
    if verdict.verdict is Verdict.INCONCLUSIVE:
        return f"inconclusive after {judgement.max_wait:g}s ({verdict.reason})"
    return f"{verdict.verdict.value}: {verdict.reason}"
