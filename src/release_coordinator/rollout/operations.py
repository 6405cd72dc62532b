"""The RolloutManager's operator actions: create, start, pause, resume and abort rollouts,
promote a stage; list rollouts and children; report on a rollout."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from release_coordinator.errors import ConflictError, InvalidTransitionError, ValidationError
from release_coordinator.rollout.events import RolloutEventKind, rollout_event
from release_coordinator.rollout.geo import Area, MatchMode
from release_coordinator.rollout.interventions import _Interventions
from release_coordinator.rollout.judging import child_group
from release_coordinator.rollout.models import Child, ReleaseBundle, Rollout, RolloutState
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.reports import RolloutReport, build_report
from release_coordinator.rollout.strategy import StageType

__all__ = ["ReleaseStates"]

#: How a manager learns the state of a data release its rollouts wait for: the release's id ->
#: its state's value ("published", "failed", "canceled", or a state on the way); raises
#: NotFoundError for an unknown release. A host supplies it (``manager.release_states``);
#: :class:`~release_coordinator.gates.ReleaseGate` sets it to its coordinator's.
ReleaseStates = Callable[[str], Awaitable[str]]

#: The states a data release ends in that abort the rollouts waiting for it.
RELEASE_ENDED_BADLY = frozenset({"failed", "canceled"})

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log


class _Operations(_Interventions):
    """The operator's side of a rollout manager (see the module documentation)."""

    # -- operator ----------------------------------------------------------------------------
    async def create_rollout(
        self,
        bundle: ReleaseBundle,
        target: Area | Mapping[str, Any],
        *,
        name: str = "",
        match: MatchMode = "intersects",
        priority: int = 0,
        policy: Policy | None = None,
        start: bool = True,
        gated: bool = False,
        after_release: str = "",
        actor: str = "",
    ) -> Rollout:
        """Deploy ``bundle`` to the children whose area reaches ``target``.

        ``match="within"`` asks for children whose area lies inside the target instead of
        merely intersecting it. Started at once unless ``start=False``. ``gated`` leaves the
        opening of stage barriers to :meth:`open_barrier` (a relay's parent decides).

        ``after_release`` names a data release of the Coordinator: the rollout is created a
        draft and starts when that release is published (at once if it is already), and is
        aborted if it fails or is canceled (a
        :class:`~release_coordinator.gates.ReleaseGate` watches). It needs
        :attr:`release_states` (ValidationError without); NotFoundError (404) for an unknown
        release, ConflictError (409) for one that failed or was canceled already;
        ``start=False`` is refused with it (the release decides when the rollout starts).

        ``actor`` names the operator who asks, for the event log (as for every action).
        """
        release_state = ""
        if after_release:
            release_state = await self._release_state(after_release)
            if not start:
                raise ValidationError(
                    "invalid rollout",
                    [("start", "a rollout gated on a data release starts when it is published")],
                )
            if release_state in RELEASE_ENDED_BADLY:
                raise ConflictError(
                    f"data release {after_release} is {release_state}: a rollout gated on it "
                    "would never start",
                    release_id=after_release,
                    release_state=release_state,
                )
        area = target if isinstance(target, Area) else Area.from_geojson(target, path="target")
        if match not in ("intersects", "within"):
            raise ValidationError("invalid rollout", [("match", "must be intersects or within")])
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) >= 2**31:
            raise ValidationError("invalid rollout", [("priority", "must be a 32-bit integer")])
        rollout = Rollout(
            id=bundle.id,
            name=name or bundle.strategy.name,
            target=area,
            match=match,
            priority=priority,
            policy=policy or GlobalIncremental(),
            gated=gated,
            after_release=after_release,
        )
        by = f" by {actor}" if actor else ""
        created = rollout_event(
            RolloutEventKind.USER_ACTION,
            f"rollout {rollout.name!r} created{by}",
            rollout.id,
            state=rollout.state.value,
            actor=actor,
        )
        stored = await self.store.add_rollout(rollout, bundle, events=[created])
        self._events_written()
        if start and (not after_release or release_state == "published"):
            stored = await self._start(stored.id, actor=actor, request=False)
        return stored

    async def _release_state(self, release_id: str) -> str:
        """The state of the data release ``release_id`` (NotFoundError if unknown)."""
        if self.release_states is None:
            raise ValidationError(
                "invalid rollout",
                [("after_release", "this manager knows no data releases (no ReleaseGate)")],
            )
        return await self.release_states(release_id)

    async def start(self, rollout_id: str, *, actor: str = "") -> Rollout:
        """Offer a draft rollout to every child its target reaches (and to later ones).

        A rollout gated on a data release (``after_release``) starts only once that release
        is published: before, InvalidTransitionError (409) saying what it waits for."""
        return await self._start(rollout_id, actor=actor, request=True)

    async def _start(self, rollout_id: str, *, actor: str, request: bool) -> Rollout:
        draft = await self.store.get_rollout(rollout_id)
        if draft.after_release and draft.state is RolloutState.DRAFT:
            state = await self._release_state(draft.after_release)
            if state != "published":
                raise InvalidTransitionError(
                    "rollout",
                    draft.state.value,
                    "start",
                    subject=rollout_id,
                    hint=f"it waits for data release {draft.after_release} to be published "
                    f"(it is {state})",
                )
        await self._sync(force=True)
        rollout = await self._operate(rollout_id, "start", actor=actor, request=request)
        await self._tally(rollout.id)
        self._targets[rollout.match].add(rollout.id, rollout.target)
        await self._find_eligible(rollout)
        await self._admit(rollout)
        return rollout

    async def pause(self, rollout_id: str, *, actor: str = "") -> Rollout:
        """Stop offering the rollout and stop ending stages; children keep what they run."""
        return await self._operate(rollout_id, "pause", actor=actor, request=True)

    async def resume(self, rollout_id: str, *, actor: str = "") -> Rollout:
        """Undo :meth:`pause`; barriers that became ready meanwhile open at the next report.
        A rollout its policy paused (``error_action="pause"``) resumes only once its error
        condition no longer holds (InvalidTransitionError, 409, until then)."""
        await self._check_resume(rollout_id)  # (rollout.interventions)
        await self._sync(force=True)
        rollout = await self._operate(rollout_id, "resume", actor=actor, request=True)
        await self._admit(rollout)
        return rollout

    async def abort(
        self, rollout_id: str, *, reason: str = "aborted by the operator", actor: str = ""
    ) -> Rollout:
        """Stop the rollout: children that have not fetched it never will, and children running
        it are told to roll back (``end_stage`` answers ``{"end_stage": true, "action":
        "rollback"}``)."""
        return await self._abort(rollout_id, reason, actor=actor, request=True)

    async def promote(self, rollout_id: str, stage_name: str, *, actor: str = "") -> Rollout:
        """End a ``WaitForSignal`` stage now, whatever its barrier's condition (an operator's
        judgement, as Argo Rollouts' promote): the barrier opens, every child waiting on the
        stage is told to end it, and every child that waits on it later too. Promoting an open
        barrier changes nothing. InvalidTransitionError (409) unless the rollout is active and
        not gated by a parent (a relay's stages end when its parent's do), and for a stage that
        does not wait; NotFoundError for an unknown rollout or stage."""
        rollout = await self.store.get_rollout(rollout_id)
        if rollout.state is not RolloutState.ACTIVE or rollout.gated:
            raise InvalidTransitionError(
                "rollout",
                rollout.state.value,
                "promote",
                subject=rollout_id,
                hint="its stages end when its parent ends them"
                if rollout.gated
                else "only an active rollout's stages can be promoted",
            )
        stage = (await self.store.get_bundle(rollout_id)).strategy.stage(stage_name)
        if stage.type is not StageType.WAIT_FOR_SIGNAL:
            raise InvalidTransitionError(
                "stage",
                stage.type.value,
                "promote",
                subject=f"{rollout_id}/{stage_name}",
                hint="only a WaitForSignal stage waits to be ended",
            )
        by = f" by {actor}" if actor else ""
        await self._append_events(
            [
                rollout_event(
                    RolloutEventKind.USER_ACTION,
                    f"promote of stage {stage_name!r} requested{by}",
                    rollout_id,
                    stage=stage_name,
                    actor=actor,
                )
            ]
        )
        await self._open(rollout_id, stage_name, f"promoted{by}")
        await self.open_barrier(rollout_id, stage_name)
        log.info("rollout %s: stage %r promoted", rollout_id, stage_name)
        return rollout

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return await self.store.get_rollout(rollout_id)

    async def children(self) -> list[Child]:
        """Every registered child."""
        return await self.store.list_children()

    async def live_children(self) -> list[Child]:
        """The children that are not lost."""
        children = await self.store.list_children()
        seen = await self.store.last_seen(c.id for c in children)
        now = self._clock()
        return [c for c in children if not self._is_lost(seen, c.id, now)]

    async def list_rollouts(self, *, states: set[RolloutState] | None = None) -> list[Rollout]:
        return await self.store.list_rollouts(states=states)

    async def report(self, rollout_id: str, *, area: Area | None = None) -> RolloutReport:
        """The rollout per child, per stage (counts and aggregate), overall; with ``area``,
        only the children whose area intersects it."""
        await self._sync()
        rollout = await self.store.get_rollout(rollout_id)
        bundle = await self.store.get_bundle(rollout_id)
        children = await self.store.child_releases(rollout_id)
        if area is not None:
            inside = set(self._children.match(area, "intersects"))
            children = [c for c in children if c.child_id in inside]
        seen = await self.store.last_seen(c.child_id for c in children)
        now = self._clock()
        lost = tuple(c.child_id for c in children if self._is_lost(seen, c.child_id, now))
        group = child_group(self, rollout)  # canary judgement by group (rollout.judging)
        return build_report(rollout, bundle.strategy.stage_names, children, lost, group)
