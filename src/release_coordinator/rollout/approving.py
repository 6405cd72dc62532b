"""The RolloutManager's operator actions on what waits: approving a stage (see
:mod:`~release_coordinator.rollout.approvals`) and the what-if of a draft on the real fleet
(see :mod:`~release_coordinator.rollout.what_if`); the checks they add to creating a rollout
and promoting a stage."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

from release_coordinator.errors import ConflictError, InvalidTransitionError
from release_coordinator.rollout.approvals import approval_key, check_approvals, stages_before
from release_coordinator.rollout.events import RolloutEventKind, rollout_event
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import ReleaseBundle, Rollout, RolloutState
from release_coordinator.rollout.operations import _Operations
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.what_if import WHAT_IF_LIMIT, WhatIf, build_what_if

__all__ = ["StageApproval"]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

_FINAL = frozenset({RolloutState.COMPLETED, RolloutState.ABORTED})


@attrs.frozen
class StageApproval:
    """A stage of a rollout whose policy needs it approved before it opens: whether it is."""

    stage: str
    approved: bool


class _Approving(_Operations):
    """Approvals and the what-if (see the module documentation)."""

    async def create_rollout(
        self,
        bundle: ReleaseBundle,
        target: Area | Mapping[str, Any],
        *,
        policy: Policy | None = None,
        **options: Any,
    ) -> Rollout:
        """See :meth:`_Operations.create_rollout`; the policy's ``approvals`` must name stages
        of the bundle's strategy that can wait (ValidationError, 422, otherwise); a rollout
        gated by a relay's parent ignores them (its parent decides), unchecked."""
        if not options.get("gated"):
            check_approvals(policy or GlobalIncremental(), bundle.strategy)
        return await super().create_rollout(bundle, target, policy=policy, **options)

    async def promote(self, rollout_id: str, stage_name: str, *, actor: str = "") -> Rollout:
        """See :meth:`_Operations.promote`; a stage whose end leads to a stage waiting for
        approval cannot be promoted (InvalidTransitionError, 409: approve that stage first)."""
        rollout = await self.store.get_rollout(rollout_id)
        if rollout.state is RolloutState.ACTIVE:
            held = await self._held_after(rollout, stage_name)
            if held:
                raise InvalidTransitionError(
                    "stage",
                    "waiting for approval",
                    "promote",
                    subject=f"{rollout_id}/{stage_name}",
                    hint=f"the stage it leads to, {held!r}, needs an operator's approval first",
                )
        return await super().promote(rollout_id, stage_name, actor=actor)

    async def approvals(self, rollout_id: str) -> tuple[StageApproval, ...]:
        """The stages the rollout's policy needs approved, in the policy's order, and whether
        each is; NotFoundError for an unknown rollout."""
        rollout = await self.store.get_rollout(rollout_id)
        if not rollout.policy.approvals:
            return ()
        strategy = (await self.store.get_bundle(rollout_id)).strategy
        return tuple(
            [
                StageApproval(name, await self._approved(rollout_id, strategy, name))
                for name in rollout.policy.approvals
            ]
        )

    async def approve(self, rollout_id: str, stage_name: str, *, actor: str = "") -> Rollout:
        """Approve a stage the rollout's policy names in ``approvals``: children may start it
        from now on (the rollout is offered, when it is the first stage; the barrier of the
        stages leading to it may open, otherwise). Logged in the rollout event log with
        ``actor``; approving again changes nothing (and logs nothing). A draft, active or paused
        rollout may be approved; NotFoundError (404) for an unknown rollout or stage;
        InvalidTransitionError (409) for a completed or aborted rollout, a rollout gated by a
        relay's parent, or a stage that needs no approval."""
        rollout = await self.store.get_rollout(rollout_id)
        strategy = (await self.store.get_bundle(rollout_id)).strategy
        strategy.stage(stage_name)  # NotFoundError for an unknown stage
        hint = ""
        if rollout.state in _FINAL:
            hint = "the rollout is over"
        elif rollout.gated:
            hint = "its stages open when its parent's do"
        elif stage_name not in rollout.policy.approvals:
            hint = "the rollout's policy does not ask for this stage's approval"
        if hint:
            raise InvalidTransitionError(
                "stage",
                rollout.state.value,
                "approve",
                subject=f"{rollout_id}/{stage_name}",
                hint=hint,
            )
        by = f" by {actor}" if actor else ""
        event = rollout_event(
            RolloutEventKind.USER_ACTION,
            f"stage {stage_name!r} approved{by}",
            rollout_id,
            stage=stage_name,
            actor=actor,
        )
        key = approval_key(strategy, stage_name)
        record = await self.store.mark_barrier(rollout_id, key, open=True, events=[event])
        self._events_written()
        self._remember(rollout_id, key, record)
        log.info("rollout %s: stage %r approved%s", rollout_id, stage_name, by)
        rollout = await self.store.get_rollout(rollout_id)
        if rollout.state is RolloutState.ACTIVE:
            if stage_name == strategy.first_stage.name:
                await self._admit(rollout)
            for before in stages_before(strategy, stage_name):
                await self._check_barrier(rollout, before)
        return rollout

    async def what_if(self, rollout_id: str, *, limit: int = WHAT_IF_LIMIT) -> WhatIf:
        """Which registered children the draft rollout would reach if it started now, per
        area and per wave of its policy, relays counted apart (see
        :mod:`~release_coordinator.rollout.what_if`); writes nothing. NotFoundError for an
        unknown rollout; ConflictError (409) for one that is no draft (its report says whom it
        reached)."""
        rollout = await self.store.get_rollout(rollout_id)
        if rollout.state is not RolloutState.DRAFT:
            raise ConflictError(
                f"rollout {rollout_id} is {rollout.state.value}, not a draft: its status "
                "report says whom it reached",
                rollout_id=rollout_id,
                state=rollout.state.value,
            )
        await self._sync(force=True)
        matched = self._children.match(rollout.target, rollout.match)
        eligible = sorted(matched) if self.shared else matched
        seen = await self.store.last_seen(eligible)
        now = self._clock()
        waiting = [a.stage for a in await self.approvals(rollout_id) if not a.approved]
        notes = ["the children registered now; children registering later join when it runs"]
        if rollout.policy.pacing.is_set:
            notes.append("its pacing (rate, schedule, windows) spreads the offers in time")
        if waiting:
            notes.append(f"stages waiting for approval: {', '.join(waiting)}")
        return build_what_if(
            rollout,
            eligible,
            children_of=self._children_count,
            area_of=self._children.area,
            lost=lambda child: self._is_lost(seen, child, now),
            limit=limit,
            note="; ".join(notes),
        )
