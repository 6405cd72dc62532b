"""Hierarchy: a RolloutManager that is itself the child of another manager (a relay).

A :class:`Relay` speaks the child protocol upward through a :class:`ParentLink` on behalf of a
local :class:`~release_coordinator.rollout.manager.RolloutManager`:

- it polls the parent with its id, its area (the union of its children's areas, or an area of
  its own) and the number of nodes below it (every registered node of its subtree, lost or
  not: the parent is told the subtree's size, not how much of it polled lately);
- it fetches a release the parent offers, and runs it as a local rollout over its own children
  inside the release's target (the parent's ``target_area`` extra; the relay's whole area when
  the parent does not send one), *gated*: stage barriers open only when the parent says so;
- per stage, it reports one call-weighted aggregate summary upward: ``SuccessWaiting`` once the
  subtree is ready on a ``WaitForSignal`` stage, the stage's final status once every child of
  the subtree finished it; a child failing a ``WaitForSignal`` stage that rolls back fails the
  stage upward at once and rolls the whole subtree back (the subtree is one child upward);
- it passes the parent's ``ShouldEnd`` down (opening the local barrier) and the parent's abort
  (``action: rollback``) down (aborting the local rollout).

Trees of any depth are relays over relays. :class:`InProcessParent` links to a manager in the
same process (a whole tree runs in one event loop); the HTTP link comes with the server.

**Running it.** ``async with relay.running():`` (or :meth:`Relay.start` and :meth:`Relay.stop`)
does a round every ``interval`` seconds: sync with the parent, then tick the local manager.
With ``follow_hints``, a round polls the parent only once the parent's last ``next_poll`` hint
passed (while a release is being relayed, every round), so that the parent steers the load of
its relays as of its leaves. The rounds are the manager's background loop (see
:mod:`~release_coordinator.rollout.ticks`), not a second one beside it: a relay's manager is
ticked by its relay, once per round, and ``manager.is_running`` is true while the relay runs.
So a relay's host runs the relay *instead of* ``manager.running()``; starting the relay while
the manager ticks on its own is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs

from release_coordinator.errors import (
    ConfigurationError,
    ConflictError,
    ReleaseCoordinatorError,
)
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.results import (
    ResultReport,
    StageReport,
    StageSummary,
    TimesSummary,
    aggregate,
    to_original,
)
from release_coordinator.rollout.strategy import Stage, StageType
from release_coordinator.transports.base import ParentLink

__all__ = ["Relay"]

log = logging.getLogger(__name__)

_EMPTY = StageSummary(
    TimesSummary(0.0, 0.0, 0.0), TimesSummary(0.0, 0.0, 0.0), TimesSummary(0.0, 0.0, 0.0), 0.0, 0.0
)


@attrs.define
class _Upward:
    """How far a relayed release got upward."""

    stage: str
    waiting_reported: bool = False
    released: bool = False
    done: bool = False


class Relay:
    """Runs ``manager`` as the child of ``parent`` (see the module docstring).

    ``area`` is reported when the relay has no children yet (without it, the relay does not
    poll until a child registers); with ``own_area``, ``area`` (then required) is always the
    area reported, the relay's own, whatever its children's. ``relay_id`` is the relay's id
    at the parent; empty, the parent assigns one at the first poll. ``policy`` orchestrates
    relayed releases among the relay's children. Run it with ``async with relay.running():``
    (or :meth:`start` and :meth:`stop`), or call :meth:`sync` and the manager's ``tick``
    periodically yourself.
    """

    def __init__(
        self,
        manager: RolloutManager,
        parent: ParentLink,
        *,
        relay_id: str = "",
        area: Area | None = None,
        policy: Policy | None = None,
        interval: float = 1.0,
        own_area: bool = False,
        follow_hints: bool = False,
    ) -> None:
        if own_area and area is None:
            raise ConfigurationError("own_area needs an area")
        self.manager = manager
        self.parent = parent
        self.id = relay_id
        self.area = area
        self.policy = policy or GlobalIncremental()
        self.interval = interval
        self.own_area = own_area
        #: The rounds poll the parent only once its last answer's ``next_poll`` hint passed
        #: (on the manager's clock), unless a release is being relayed; reports upward and
        #: the ticks go on every round. Explicit :meth:`sync` calls always poll.
        self.follow_hints = follow_hints
        self._poll_after: float | None = None
        self._relayed: dict[str, _Upward] = {}
        self._area_version = -1
        self._area_json: dict[str, Any] | None = None

    # -- running it -------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """Whether this relay's rounds run (as its manager's background loop)."""
        loop = self.manager._loop
        return loop is not None and loop.alive and loop.owner is self

    async def start(self, *, load: bool = True) -> None:
        """Run a round (:meth:`sync`, then the manager's ``tick``) every ``interval`` seconds
        as the manager's background loop, after rebuilding the manager's indexes from its
        store (``load=False`` skips it). Idempotent. ConfigurationError while the manager's
        loop runs without this relay (``manager.start_loops``, or another relay): a manager
        is ticked by one loop, and a relay's rounds must be it."""
        if self.interval <= 0:
            raise ConfigurationError(f"the relay's interval must be positive, not {self.interval}")
        if self.is_running:
            return
        if self.manager.is_running:
            raise ConfigurationError(
                "the relay's manager is ticked by a loop of its own (manager.running() or "
                "start_loops()): run the relay instead, whose rounds tick the manager"
            )
        await self.manager._start_loop(
            self._round,
            self.interval,
            owner=self,
            load=load,
            name="rc-relay",
            failure=f"relay {self.id or '(unregistered)'}: unexpected error",
        )

    async def stop(self) -> None:
        """Stop the rounds, after the one in progress. Idempotent; leaves alone a manager
        loop that is not this relay's."""
        if self.manager._loop is not None and self.manager._loop.owner is self:
            await self.manager.stop_loops()

    @contextlib.asynccontextmanager
    async def running(self, *, load: bool = True) -> AsyncIterator[Relay]:
        """``async with relay.running():`` runs the relay's rounds inside the block
        (:meth:`start` on entry, :meth:`stop` on exit; rounds that ran already on entry are
        left running) and gives the relay."""
        started = not self.is_running
        await self.start(load=load)
        try:
            yield self
        finally:
            if started:
                await self.stop()

    async def run(self) -> None:
        """Sync with the parent and tick the local manager every ``interval`` seconds, in
        the calling task, forever (prefer :meth:`running`, which the manager knows of)."""
        while True:
            try:
                await self._round()
            except Exception:  # a bug must not stop the relay silently
                log.exception("relay %s: unexpected error", self.id or "(unregistered)")
            await asyncio.sleep(self.interval)

    async def _round(self) -> None:
        """One round: sync with the parent, tick the manager; the parent being away (or
        refusing) is a warning, and the next round tries again."""
        try:
            await self.sync(hinted=self.follow_hints)
            await self.manager.tick()
        except ReleaseCoordinatorError as error:  # the parent may be away for a while
            log.warning("relay %s: %s", self.id or "(unregistered)", error)

    async def sync(self, *, hinted: bool = False) -> None:
        """One round: poll the parent, adopt a new release, report upward, pass signals down.
        ``hinted``: poll only if the parent's last ``next_poll`` hint passed (or a release is
        being relayed)."""
        if not hinted or self._poll_due():
            await self._poll_parent()
        for release_id, upward in list(self._relayed.items()):
            if not upward.done:
                await self._advance(release_id, upward)

    async def _own_area(self) -> dict[str, Any] | None:
        if self.own_area and self.area is not None:
            if self._area_json is None:
                self._area_json = self.area.to_geojson()
            return self._area_json
        if self.manager.children_version != self._area_version:
            children = await self.manager.children()
            self._area_version = self.manager.children_version
            if children:
                self._area_json = Area.union(c.area for c in children).to_geojson()
            elif self.area is not None:
                self._area_json = self.area.to_geojson()
        return self._area_json

    def _poll_due(self) -> bool:
        if self._poll_after is None or self.manager._clock() >= self._poll_after:
            return True
        return any(not upward.done for upward in self._relayed.values())

    async def _poll_parent(self) -> None:
        area = await self._own_area()
        if area is None:
            return
        # Every node of the subtree, lost or not (a child that went quiet is still below).
        # At least 1: a relay is never taken for a leaf (the parent sends it target areas).
        children = await self.manager.children()
        nodes = sum(1 + c.number_of_children for c in children)
        answer = await self.parent.poll(self.id, area, max(nodes, 1))
        hint = answer.next_poll
        self._poll_after = None if hint is None else self.manager._clock() + hint
        for aborted in answer.aborted:  # the parent aborted a release this subtree runs
            if aborted in self._relayed:
                await self._abort_below(aborted)
        if answer.id != self.id:
            log.info("relay: the parent knows this relay as %s", answer.id)
        self.id = answer.id
        release_id = answer.new_release
        if not release_id or release_id in self._relayed:
            return
        text = await self.parent.get_release(self.id, release_id)
        bundle = ReleaseBundle.from_parts(
            text, await self.parent.get_functions(release_id, self.id)
        )
        target = (
            Area.from_geojson(answer.target_area, path="target_area")
            if answer.target_area is not None
            else Area.from_geojson(area)
        )
        with contextlib.suppress(ConflictError):  # adopted before (restarted over its store)
            await self.manager.create_rollout(bundle, target, policy=self.policy, gated=True)
        self._relayed[release_id] = _Upward(stage=bundle.strategy.first_stage.name)

    async def _abort_below(self, release_id: str) -> None:
        """The parent aborted the release: abort it here too (the children running it roll
        back); the next round reports the roll-back upward."""
        with contextlib.suppress(ConflictError):  # completed here meanwhile
            await self.manager.abort(release_id, reason="the parent aborted the release")

    async def _advance(self, release_id: str, upward: _Upward) -> None:
        rollout = await self.manager.get_rollout(release_id)
        bundle = await self.manager.store.get_bundle(release_id)
        stage = bundle.strategy.stage(upward.stage)
        if rollout.state is RolloutState.ABORTED:
            await self._report(release_id, stage, StageStatus.FAILURE, None, "rollback")
            upward.done = True
            return
        if stage.type is StageType.WAIT_FOR_SIGNAL and not upward.released:
            if stage.end_action.on_failure == "rollback" and await self._failed_below(
                release_id, stage
            ):
                return

            if not upward.waiting_reported:
                # The counters say whether the subtree is ready; the children are read only
                # once, for the summary reported upward.
                counts = await self.manager.stage_counts(release_id, stage.name)
                state = await self.manager.barrier(release_id, stage.name) if counts.ready else None
                if state is not None and state.ready:
                    summaries = [c.stages[stage.name].summary for c in state.waiting]
                    await self._report(
                        release_id, stage, StageStatus.SUCCESS_WAITING, summaries, ""
                    )
                    upward.waiting_reported = True
            if upward.waiting_reported:
                answer = await self.parent.end_stage(self.id, release_id, stage.name)
                if answer.action == "rollback":
                    await self.manager.abort(release_id, reason="the parent aborted the release")
                    await self._report(release_id, stage, StageStatus.FAILURE, None, "rollback")
                    upward.done = True
                    return
                if answer.end_stage:
                    await self.manager.open_barrier(release_id, stage.name)
                    upward.released = True
        await self._finish_stage(release_id, stage, upward)

    async def _failed_below(self, release_id: str, stage: Stage) -> bool:
        """A child failed a ``WaitForSignal`` stage that rolls back, before its barrier opened:
        the subtree is one child to the parent, so it fails the stage upward at once and rolls
        back as a whole (the children waiting at the barrier are told to roll back) rather
        than let the others go on and roll out while the parent counts it rolled back."""
        counts = await self.manager.stage_counts(release_id, stage.name)
        if counts.final <= counts.completed:
            return False
        failed = [
            c.stages[stage.name].summary
            for c in await self.manager.store.child_releases(release_id)
            if c.stages[stage.name].status in (StageStatus.FAILURE, StageStatus.ERROR)
        ]
        with contextlib.suppress(ConflictError):  # aborted meanwhile
            await self.manager.abort(
                release_id, reason=f"stage {stage.name!r} failed below: the subtree rolls back"
            )
        await self._report(release_id, stage, StageStatus.FAILURE, failed, "rollback")
        self._relayed[release_id].done = True
        return True

    async def _finish_stage(self, release_id: str, stage: Stage, upward: _Upward) -> None:
        """Report the stage's final status once every child of the subtree finished it.

        A stage that failed below (and so upward) and rolls back rolls the whole subtree back:
        the children that completed it and went on are told to roll back too (the local
        rollout is aborted), as the parent now counts this subtree rolled back.
        """
        counts = await self.manager.stage_counts(release_id, stage.name)
        if counts.taking_part or not counts.final:
            return  # somebody below is still at it, or nobody finished yet
        if stage.type is StageType.WAIT_FOR_SIGNAL and not upward.released and counts.completed:
            return  # cannot complete upward before the parent said the stage ends
        finals = [
            c
            for c in await self.manager.store.child_releases(release_id)
            if c.stages[stage.name].status.is_final
        ]
        completed = all(c.stages[stage.name].status is StageStatus.COMPLETED for c in finals)
        status = StageStatus.COMPLETED if completed else StageStatus.FAILURE
        action = stage.end_action.on_success if completed else stage.end_action.on_failure
        following = "" if action in ("rollout", "rollback") else action
        await self._report(
            release_id, stage, status, [c.stages[stage.name].summary for c in finals], following
        )
        if following:
            upward.stage = following
            upward.waiting_reported = upward.released = False
            return
        upward.done = True
        if action == "rollback" and any(c.status is ReleaseStatus.DOING for c in finals):
            with contextlib.suppress(ConflictError):  # aborted or finished meanwhile
                await self.manager.abort(
                    release_id, reason=f"stage {stage.name!r} failed below: rolled back"
                )

    async def _report(
        self,
        release_id: str,
        stage: Stage,
        status: StageStatus,
        summaries: list[object] | None,
        next_stage: str,
    ) -> None:
        combined = aggregate([s for s in summaries or () if isinstance(s, StageSummary)])
        report = ResultReport(
            self.id,
            release_id,
            (StageReport(stage.name, status, next_stage, combined or _EMPTY),),
        )
        if await self.parent.submit_result(to_original(report)) == "rollback":
            await self._abort_below(release_id)  # the parent aborted it meanwhile
