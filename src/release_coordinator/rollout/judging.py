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

Children that reach the stage after its barrier opened are told to end it at once, unjudged:
the stage's verdict is in. A rollout whose barriers a parent opens (a relay's, ``gated``) is
not judged here: its parent judges the relay's aggregate. Each decision is logged; the
rollout's report (:class:`~release_coordinator.rollout.reports.StageReportRow`'s
``judgement``) shows the verdict over what the stage's children reported.

A verdict is computed once per change of the rollout's child states (and kept until the next
one, or over a shared store until the stage counters are rebuilt), so a barrier asked about by
every waiting child costs one look at the children per change, not one per question.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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

__all__ = ["ABORTED", "HOLD", "OPEN", "child_group", "judge_barrier", "told_to_roll_back"]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: What :func:`judge_barrier` decided: open the barrier, hold it, or the rollout
#: was aborted (nothing more to do).
OPEN, HOLD, ABORTED = "open", "hold", "aborted"

_NO_TIMES = TimesSummary(0.0, 0.0, 0.0)
_NOTHING = StageSummary(_NO_TIMES, _NO_TIMES, _NO_TIMES, 0.0, 0.0)  # no calls: inconclusive

#: A unit judged on its own: its name ("" for the whole rollout, a child's id, a group's
#: name), the ready children it holds, and its verdict.
_Unit = tuple[str, tuple[str, ...], CanaryVerdict]

#: Per (rollout, stage): the change it was judged at, and the units' verdicts.
_Verdicts = dict[tuple[str, str], tuple[tuple[int, float | None], list[_Unit]]]


def _cache(manager: _Matching) -> _Verdicts:
    cache: _Verdicts | None = getattr(manager, "_judged", None)
    if cache is None:
        cache = {}
        manager._judged = cache  # type: ignore[attr-defined]
    return cache


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


async def _verdicts(
    manager: _Matching, rollout: Rollout, stage_name: str, judgement: Judgement
) -> list[_Unit]:
    """The verdicts on the children ready on the stage, by unit (see :data:`_Unit`): each
    child (``child``), each group (``group``), or their aggregate (``rollout``). Cached per
    change of the rollout's child states and per rebuild of its counters (over a shared
    store, at most ``refresh`` seconds old, as the counters are; and before a barrier opens
    there, the counters are rebuilt, so the verdict that opens it is judged afresh)."""
    key = (manager._changes.get(rollout.id, 0), manager._tally_at.get(rollout.id))
    cache = _cache(manager)
    cached = cache.get((rollout.id, stage_name))
    if cached is not None and cached[0] == key:
        return cached[1]
    ready: list[tuple[str, StageSummary]] = []
    for state in await manager.store.child_releases(rollout.id):
        summary = state.stages[stage_name].summary
        if state.status in ACTIVE and state.stages[stage_name].status in READY:
            ready.append(
                (state.child_id, summary if isinstance(summary, StageSummary) else _NOTHING)
            )
    group = child_group(manager, rollout)
    members: dict[str, list[str]] = {}
    for child_id, _summary in ready:
        unit = child_id if judgement.scope == "child" else group(child_id)
        members.setdefault("" if judgement.scope == "rollout" else unit, []).append(child_id)
    units: list[_Unit] = []
    for name, parts in units_of(judgement.scope, ready, group).items():
        verdict = judge(judgement, aggregate(parts) or _NOTHING)
        units.append((name, tuple(members.get(name, ())), verdict))
    if not units:
        units.append(("", (), judge(judgement, _NOTHING)))  # nobody ready: inconclusive
    cache[(rollout.id, stage_name)] = (key, units)
    return units


async def judge_barrier(
    manager: _Matching, rollout: Rollout, stage_name: str, waiting_since: float | None
) -> str:
    """Judge a ready barrier of ``manager``'s rollout (see the module documentation):
    :data:`OPEN`, :data:`HOLD` or :data:`ABORTED`. ``waiting_since``: when the first child
    began to wait on the stage (``max_wait`` counts from then)."""
    judgement = rollout.policy.judgement
    if judgement is None:
        return OPEN
    units = await _verdicts(manager, rollout, stage_name, judgement)
    now = manager._clock()
    expired = waiting_since is None or now - waiting_since >= judgement.max_wait
    rollback_inconclusive = expired and judgement.on_inconclusive == "rollback"
    failed = [
        unit
        for unit in units
        if unit[2].verdict is Verdict.FAIL
        or (unit[2].verdict is Verdict.INCONCLUSIVE and rollback_inconclusive)
    ]
    waiting = any(v.verdict is Verdict.INCONCLUSIVE for _, _, v in units) and not expired
    if judgement.scope == "rollout":
        if failed:
            reason = f"canary judgement, stage {stage_name!r}: {_what(failed[0][2], judgement)}"
            log.warning("rollout %s aborted by %s", rollout.id, reason)
            await manager._abort(rollout.id, reason)
            return ABORTED
        return HOLD if waiting else OPEN
    rejected = 0
    for name, children, verdict in failed:
        for child_id in children:
            rejected += await _reject(manager, rollout, stage_name, child_id, verdict, judgement)
        if judgement.scope == "group":
            log.warning(
                "rollout %s: group %s (%d children) rolled back by canary judgement, stage %r: %s",
                rollout.id,
                name,
                len(children),
                stage_name,
                _what(verdict, judgement),
            )
    if rejected:
        await manager._admit(rollout)  # the next group or wave may go
    return HOLD if waiting else OPEN


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
