"""Stages that need an operator's approval before they open (a policy's ``approvals``).

A rollout's policy may name stages (``"approvals": ["canary", "everyone"]``) that no child
starts before an operator approved them (:meth:`RolloutManager.approve
<release_coordinator.rollout.manager.RolloutManager.approve>`, ``POST
/rollouts/{id}/stages/{stage}/approve``), as hawkBit's approval workflow or a pause step of
Argo Rollouts, but per stage:

- the **first** stage: the rollout is offered to nobody until it is approved (it may be
  approved while the rollout is still a draft);
- a later stage: the children that finish the stage before it wait there, as at a barrier
  (the stages leading to it on success must be ``WaitForSignal`` stages: a child ends an
  ``A/B`` stage by itself), and ``/end_stage`` answers "not yet" until it is approved; the
  barrier of the stage before opens (by its own condition) only once it is.

A stage leading to one that waits for approval cannot be promoted either (409: approve the
next stage first), and a child's report that would begin a waiting stage (naming it as the
next stage) is refused (409, nothing changed). A rollout gated by a relay's parent ignores
approvals: its parent decides when its stages end. An approval is kept in the store as a
barrier record of its own (under a key no stage name takes: :func:`approval_key`), so every
manager sharing the store sees it and it survives restarts; it is logged in the rollout event
log with the operator as actor.
"""

from __future__ import annotations

from release_coordinator.errors import InvalidTransitionError, Problem, ValidationError
from release_coordinator.fsm.rollout import StageStatus
from release_coordinator.rollout.models import ChildRelease, Rollout
from release_coordinator.rollout.pacer import _Pacing
from release_coordinator.rollout.policies import Policy
from release_coordinator.rollout.strategy import StageType, Strategy

__all__ = ["approval_key", "check_approvals", "stages_before"]

#: The start of the barrier keys that approvals are kept under (no stage name begins so).
APPROVAL_PREFIX = "\x1fapproval:"


def approval_key(strategy: Strategy, stage_name: str) -> str:
    """The barrier key the approval of ``stage_name`` is kept under: by the stage's place
    (a stage name may be long; the key stays short)."""
    return f"{APPROVAL_PREFIX}{strategy.stage_names.index(stage_name)}"


def stages_before(strategy: Strategy, stage_name: str) -> tuple[str, ...]:
    """The stages that lead to ``stage_name`` when they succeed (itself excluded)."""
    return tuple(
        s.name
        for s in strategy.stages
        if s.name != stage_name and s.end_action.on_success == stage_name
    )


def check_approvals(policy: Policy, strategy: Strategy, path: str = "policy") -> None:
    """ValidationError (422) unless every stage the policy's ``approvals`` names is a stage of
    the strategy that can wait for approval: the first one, or one every stage leading to it
    on success is a ``WaitForSignal`` stage of (see the module documentation)."""
    problems: list[Problem] = []
    names = strategy.stage_names
    for i, name in enumerate(policy.approvals):
        where = f"{path}.approvals[{i}]"
        if name not in names:
            problems.append((where, f"{name[:60]!r} is not a stage of the strategy"))
            continue
        if name == names[0]:
            continue
        before = stages_before(strategy, name)
        if not before:
            problems.append((where, f"no stage leads to stage {name!r}: it never opens"))
        for other in before:
            if strategy.stage(other).type is not StageType.WAIT_FOR_SIGNAL:
                problems.append(
                    (
                        where,
                        f"stage {other!r}, which leads to {name!r}, is not a WaitForSignal "
                        "stage: its children move on by themselves, nobody could hold them",
                    )
                )
    if any(n.startswith(APPROVAL_PREFIX) for n in names) and policy.approvals:
        problems.append((f"{path}.approvals", "a stage name starts with a reserved prefix"))
    if problems:
        raise ValidationError("invalid policy", problems)


class _Approvals(_Pacing):
    """Holds what waits for an approval: the offers of a rollout whose first stage waits for
    one, the barriers of the stages before one that waits (see the module documentation)."""

    async def _approved(self, rollout_id: str, strategy: Strategy, stage_name: str) -> bool:
        """Whether ``stage_name`` was approved (cached once it is: approvals stay)."""
        return (await self._barrier(rollout_id, approval_key(strategy, stage_name))).open

    async def _waits_for_approval(self, rollout: Rollout, stage_name: str) -> bool:
        """Whether ``stage_name`` needs an approval it does not have yet."""
        if rollout.gated or stage_name not in rollout.policy.approvals:
            return False
        strategy = (await self.store.get_bundle(rollout.id)).strategy
        return not await self._approved(rollout.id, strategy, stage_name)

    async def _held_after(self, rollout: Rollout, stage_name: str) -> str:
        """The stage waiting for approval that the end of ``stage_name`` leads to, or ""."""
        if rollout.gated or not rollout.policy.approvals:
            return ""
        strategy = (await self.store.get_bundle(rollout.id)).strategy
        nxt = strategy.stage(stage_name).end_action.on_success
        if nxt in rollout.policy.approvals and not await self._approved(rollout.id, strategy, nxt):
            return nxt
        return ""

    async def _refuse_unapproved(
        self, rollout: Rollout, strategy: Strategy, before: ChildRelease, after: ChildRelease
    ) -> None:
        """InvalidTransitionError (409, nothing changed) when a child's report would begin a
        stage that waits for approval (a child naming it as its next stage, say)."""
        if rollout.gated or not rollout.policy.approvals:
            return
        for name in rollout.policy.approvals:
            old, new = before.stages.get(name), after.stages.get(name)
            if old is None or new is None or old.status is not StageStatus.PENDING:
                continue
            if new.status is not StageStatus.PENDING and not await self._approved(
                rollout.id, strategy, name
            ):
                raise InvalidTransitionError(
                    "stage",
                    old.status.wire_name,
                    "begin",
                    subject=f"{before.child_id}/{rollout.id}/{name}",
                    hint="the stage waits for an operator's approval",
                )

    async def _admit(self, rollout: Rollout, newcomers: list[str] | None = None) -> None:
        if rollout.policy.approvals and not rollout.gated:
            strategy = (await self.store.get_bundle(rollout.id)).strategy
            first = strategy.first_stage.name
            if await self._waits_for_approval(rollout, first):
                return  # offered to nobody before its first stage is approved
        await super()._admit(rollout, newcomers)
