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

import attrs

from release_coordinator.errors import ConcurrentUpdateError
from release_coordinator.fsm.rollout import StageStatus, release_step, stage_step
from release_coordinator.rollout.judgement import CanaryVerdict, Judgement, Verdict, judge
from release_coordinator.rollout.matching import _Matching
from release_coordinator.rollout.models import ChildRelease, Outcome, Rollout
from release_coordinator.rollout.reports import ACTIVE, READY
from release_coordinator.rollout.results import StageSummary, TimesSummary, aggregate

__all__ = ["ABORTED", "HOLD", "OPEN", "judge_barrier", "told_to_roll_back"]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: What :func:`judge_barrier` decided: open the barrier, hold it, or the rollout
#: was aborted (nothing more to do).
OPEN, HOLD, ABORTED = "open", "hold", "aborted"

_NO_TIMES = TimesSummary(0.0, 0.0, 0.0)
_NOTHING = StageSummary(_NO_TIMES, _NO_TIMES, _NO_TIMES, 0.0, 0.0)  # no calls: inconclusive

#: Per (rollout, stage): the change it was judged at, and the verdicts (see ``_verdicts``).
_Verdicts = dict[tuple[str, str], tuple[tuple[int, float | None], list[tuple[str, CanaryVerdict]]]]


def _cache(manager: _Matching) -> _Verdicts:
    cache: _Verdicts | None = getattr(manager, "_judged", None)
    if cache is None:
        cache = {}
        manager._judged = cache  # type: ignore[attr-defined]
    return cache


async def _verdicts(
    manager: _Matching, rollout: Rollout, stage_name: str, judgement: Judgement
) -> list[tuple[str, CanaryVerdict]]:
    """The verdicts on the children ready on the stage: one per child (``child``), or one
    over their aggregate (``rollout``, keyed ``""``). Cached per change of the rollout's
    child states and per rebuild of its counters (over a shared store, at most ``refresh``
    seconds old, as the counters are; and before a barrier opens there, the counters are
    rebuilt, so the verdict that opens it is judged afresh)."""
    key = (manager._changes.get(rollout.id, 0), manager._tally_at.get(rollout.id))
    cache = _cache(manager)
    cached = cache.get((rollout.id, stage_name))
    if cached is not None and cached[0] == key:
        return cached[1]
    ready: list[ChildRelease] = [
        state
        for state in await manager.store.child_releases(rollout.id)
        if state.status in ACTIVE
        and state.stages[stage_name].status in READY
        and isinstance(state.stages[stage_name].summary, StageSummary)
    ]
    verdicts: list[tuple[str, CanaryVerdict]] = []
    if judgement.scope == "child":
        for state in ready:
            summary = state.stages[stage_name].summary
            assert isinstance(summary, StageSummary)
            verdicts.append((state.child_id, judge(judgement, summary)))
    else:
        summaries = [s.stages[stage_name].summary for s in ready]
        combined = aggregate([s for s in summaries if isinstance(s, StageSummary)])
        verdicts.append(("", judge(judgement, combined or _NOTHING)))
    cache[(rollout.id, stage_name)] = (key, verdicts)
    return verdicts


async def judge_barrier(
    manager: _Matching, rollout: Rollout, stage_name: str, waiting_since: float | None
) -> str:
    """Judge a ready barrier of ``manager``'s rollout (see the module documentation):
    :data:`OPEN`, :data:`HOLD` or :data:`ABORTED`. ``waiting_since``: when the first child
    began to wait on the stage (``max_wait`` counts from then)."""
    judgement = rollout.policy.judgement
    if judgement is None:
        return OPEN
    verdicts = await _verdicts(manager, rollout, stage_name, judgement)
    now = manager._clock()
    expired = waiting_since is None or now - waiting_since >= judgement.max_wait
    rollback_inconclusive = expired and judgement.on_inconclusive == "rollback"
    failed = [
        (child_id, verdict)
        for child_id, verdict in verdicts
        if verdict.verdict is Verdict.FAIL
        or (verdict.verdict is Verdict.INCONCLUSIVE and rollback_inconclusive)
    ]
    waiting = any(v.verdict is Verdict.INCONCLUSIVE for _, v in verdicts) and not expired
    if judgement.scope != "child":
        if failed:
            reason = f"canary judgement, stage {stage_name!r}: {_what(failed[0][1], judgement)}"
            log.warning("rollout %s aborted by %s", rollout.id, reason)
            await manager._abort(rollout.id, reason)
            return ABORTED
        return HOLD if waiting else OPEN
    rejected = 0
    for child_id, verdict in failed:
        rejected += await _reject(manager, rollout, stage_name, child_id, verdict, judgement)
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


def told_to_roll_back(state: ChildRelease, stage_name: str) -> bool:
    """Whether ``/end_stage`` tells the child to roll back because the manager rolled it
    back by judgement (its release Failed, rolled back, the stage Failure)."""
    return (
        state.outcome is Outcome.ROLLED_BACK
        and state.stages[stage_name].status is StageStatus.FAILURE
    )


def _what(verdict: CanaryVerdict, judgement: Judgement) -> str:
    if verdict.verdict is Verdict.INCONCLUSIVE:
        return f"inconclusive after {judgement.max_wait:g}s ({verdict.reason})"
    return f"{verdict.verdict.value}: {verdict.reason}"
