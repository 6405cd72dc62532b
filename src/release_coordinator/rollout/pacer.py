"""The RolloutManager's pacing layer: a policy's rate and time controls (its ``pacing``, see
:mod:`~release_coordinator.rollout.pacing`; a ``Waves`` policy's ``soak_time``) applied on top
of the policy's decision, what the periodic tick does about them (windows that close,
deadlines that pass), and the next-poll hint of ``/poll`` answers.

A rollout whose policy paces nothing is admitted exactly as before (``_Matching._admit``).
A paced one is admitted here: nothing while it is before its ``start_at``, outside its windows
or past its deadline; otherwise the policy's decision, cut to what the rate allows in the last
60 seconds. Over a shared store, a rate-limited rollout is admitted only by the process that
ticks (that holds the loop's lease, or runs :meth:`tick` itself), so that the fleet sees one
rate, not one per process. A rate's state is kept in memory: a restarted manager starts its ramps
again from ``start_per_minute`` (never faster).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import Any

import attrs

from release_coordinator.errors import ConcurrentUpdateError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.admission import admit, success_share
from release_coordinator.rollout.bookkeeping import transition_event
from release_coordinator.rollout.matching import _Matching
from release_coordinator.rollout.models import ChildRelease, Rollout, RolloutState
from release_coordinator.rollout.pacing import Pacing, PollHints, RateLimit
from release_coordinator.rollout.policies import GlobalIncremental, Waves

__all__: list[str] = []

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

DEADLINE_PASSED = "deadline passed"

#: Up to how many live (active or paused) rollouts a poll looks at for its next-poll hint:
#: with more, the idle hint (a poll's work stays bounded).
HINT_SCAN = 64


@attrs.define
class _PaceState:
    #: Per rate-limited rollout: its sliding minute.
    limits: dict[str, RateLimit] = attrs.Factory(dict)
    #: Per rollout held by its schedule (before start_at, outside its windows): when it may
    #: offer again (wall-clock; inf: never).
    held: dict[str, float] = attrs.Factory(dict)
    #: Per child: how many releases it runs (Doing), as this manager saw them change.
    busy: dict[str, int] = attrs.Factory(dict)
    #: Per GlobalIncremental rollout offered to every eligible child: (children_version,
    #: how many were eligible) then.
    complete: dict[str, tuple[int, int]] = attrs.Factory(dict)
    #: Rollouts whose not-yet-fetched offers were withdrawn (a window closed, a deadline with
    #: ``cancel`` passed), until they may offer again.
    swept: set[str] = attrs.Factory(set)


def _paced(rollout: Rollout) -> bool:
    policy = rollout.policy
    return policy.pacing.is_set or (isinstance(policy, Waves) and policy.soak_time > 0)


class _Pacing(_Matching):
    """Rate and time controls, and the next-poll hint (see the module documentation)."""

    #: The next-poll hints of ``/poll`` answers (see :class:`PollHints`): assign a
    #: :class:`PollHints` to change them.
    poll_hints: PollHints = PollHints()
    holds_lease: bool  # (the ticks layer's: whether this manager does the ticks)
    _ticking = False  # a tick is admitting (over a shared store, only it admits rate-limited)

    @property
    def _pace(self) -> _PaceState:
        state: _PaceState | None = self.__dict__.get("_pace_state")
        if state is None:
            state = self.__dict__["_pace_state"] = _PaceState()
        return state

    def _wall(self) -> float:
        """Wall-clock now: the manager's clock, unless it is the default monotonic one."""
        clock = self._clock
        return time.time() if clock is time.monotonic else clock()

    def _rate_limit(self, rollout_id: str, pacing: Pacing, now: float) -> RateLimit:
        """The sliding minute of ``rollout_id``'s rate: a new one when its pacing changed."""
        limits = self._pace.limits
        limit = limits.get(rollout_id)
        if limit is None or limit.pacing != pacing:
            limit = limits[rollout_id] = RateLimit(pacing, now)
        return limit

    # -- admission ---------------------------------------------------------------------------
    async def _admit(self, rollout: Rollout, newcomers: list[str] | None = None) -> None:
        if not _paced(rollout):
            await super()._admit(rollout, newcomers)
            return
        if rollout.state is not RolloutState.ACTIVE:
            return
        policy = rollout.policy
        pacing = policy.pacing
        pace = self._pace
        wall = self._wall()
        if not pacing.is_open(wall):
            opens = pacing.opens_at(wall)
            pace.held[rollout.id] = math.inf if opens is None else opens
            return
        pace.held.pop(rollout.id, None)
        pace.swept.discard(rollout.id)
        if pacing.limits_rate and self.shared and not (self._ticking or self.holds_lease):
            return  # the lease holder offers it, one process at a time: one rate for the fleet
        eligible = self._eligible.get(rollout.id, {})
        # Reading every child's state is skipped when it cannot change the decision: a
        # GlobalIncremental rollout offered to every eligible child already (known until a
        # child registers or moves, or offers are withdrawn), a rate spent for now.
        whole = isinstance(policy, GlobalIncremental)
        key = (self.children_version, len(eligible))
        if newcomers:
            pace.complete.pop(rollout.id, None)
        elif whole and pace.complete.get(rollout.id) == key:
            return
        now = self._clock()
        limit = pace.limits.get(rollout.id)
        if limit is not None and limit.pacing == pacing and limit.exhausted(now):
            return
        states = {c.child_id: c for c in await self.store.child_releases(rollout.id)}
        seen = await self.store.last_seen(states)
        decision = admit(
            policy,
            sorted(eligible) if self.shared else list(eligible),
            states,
            lost=lambda child: self._is_lost(seen, child, now),
            area_of=eligible.__getitem__,
            now=now,
        )
        if decision.abort:  # (the policy's error_action: abort, or pause)
            await self._policy_failed(rollout, decision.abort)
            return
        chosen = decision.admit
        if chosen and pacing.limits_rate:
            limit = self._rate_limit(rollout.id, pacing, now)
            chosen = chosen[: limit.budget(now, success_share(states))]
            limit.spend(now, len(chosen))
        if whole and len(chosen) == len(decision.admit):
            pace.complete[rollout.id] = key  # every eligible child is offered it now
        if chosen:  # (the decision is logged with the offers, as _Matching._admit's)
            paced = " (paced)" if pacing.is_set else ""
            await self._target(
                rollout.id, chosen, decision=f"{type(policy).__name__} policy{paced}"
            )

    # -- the tick's part ---------------------------------------------------------------------
    async def _pace_tick(self, rollout: Rollout) -> bool:
        """Before a tick judges the rollout: end it if its deadline passed with ``abort``,
        withdraw the offers not fetched yet once its window closed (or its deadline passed
        with ``cancel``). True if the rollout is no longer active."""
        pacing = rollout.policy.pacing
        if not pacing.is_set:
            return False
        wall = self._wall()
        if pacing.past_deadline(wall):
            if pacing.on_deadline == "abort":
                await self._abort(rollout.id, DEADLINE_PASSED)
                log.info("rollout %s aborted: %s", rollout.id, DEADLINE_PASSED)
                return True
            if pacing.on_deadline == "cancel":
                await self._withdraw_unfetched(rollout)
            return False
        if pacing.windows and not pacing.is_open(wall):
            await self._withdraw_unfetched(rollout)
        return False

    async def _withdraw_unfetched(self, rollout: Rollout) -> None:
        """Withdraw the offers no child fetched yet (once per closing)."""
        pace = self._pace
        if rollout.id in pace.swept:
            return
        pace.swept.add(rollout.id)
        pace.complete.pop(rollout.id, None)
        todo = [
            s.child_id
            for s in await self.store.child_releases(rollout.id)
            if s.status is ReleaseStatus.TODO
        ]
        if todo:
            await self._withdraw(rollout.id, todo)
            offered = self._offered_at.get(rollout.id, {})
            for child_id in todo:
                offered.pop(child_id, None)
            log.info("rollout %s: withdrew %d offers not fetched yet", rollout.id, len(todo))

    async def _complete_past_deadline(self, rollout: Rollout) -> None:
        """Complete an active rollout past its deadline (``stop``, ``cancel``) once nobody is
        offered it or runs it any more: the children not reached are left out."""
        pacing = rollout.policy.pacing
        if not pacing.past_deadline(self._wall()) or pacing.on_deadline == "abort":
            return
        current = await self.store.get_rollout(rollout.id)
        if current.state is not RolloutState.ACTIVE:
            return
        by_status: collections.Counter[ReleaseStatus] = collections.Counter()
        for (status, _), n in (await self.store.status_counts(rollout.id)).items():
            by_status[status] += n
        if by_status[ReleaseStatus.TODO] or by_status[ReleaseStatus.DOING]:
            return
        done, failed = by_status[ReleaseStatus.DONE], by_status[ReleaseStatus.FAILED]
        left = max(0, len(self._eligible.get(rollout.id, ())) - done - failed)
        reason = (
            f"{DEADLINE_PASSED}: {done} done, {failed} failed; {left} eligible children not "
            "reached were left out"
        )
        try:
            await self.store.set_rollout_state(
                rollout.id,
                {RolloutState.ACTIVE},
                RolloutState.COMPLETED,
                reason=reason,
                events=[transition_event(rollout.id, RolloutState.COMPLETED, reason)],
            )
        except ConcurrentUpdateError:
            return
        self._events_written()
        log.info("rollout %s completed: %s", rollout.id, reason)
        self._forget(current)

    def _forget(self, rollout: Rollout) -> None:
        super()._forget(rollout)
        pace = self._pace
        pace.limits.pop(rollout.id, None)
        pace.complete.pop(rollout.id, None)
        pace.held.pop(rollout.id, None)
        pace.swept.discard(rollout.id)

    # -- the next-poll hint ------------------------------------------------------------------
    async def _put(self, expected: ChildRelease, new: ChildRelease, *args: Any, **kw: Any) -> None:
        await super()._put(expected, new, *args, **kw)
        was, now = expected.status is ReleaseStatus.DOING, new.status is ReleaseStatus.DOING
        if was != now:
            busy = self._pace.busy
            count = busy.get(new.child_id, 0) + (1 if now else -1)
            if count > 0:
                busy[new.child_id] = count
            else:
                busy.pop(new.child_id, None)

    async def load(self) -> None:
        await super().load()
        self._pace.complete.clear()
        busy = self._pace.busy
        busy.clear()
        for rollout_id in self._eligible:
            for state in await self.store.child_releases(rollout_id):
                if state.status is ReleaseStatus.DOING:
                    busy[state.child_id] = busy.get(state.child_id, 0) + 1

    def _poll_hint(self, child_id: str, offer: str) -> int:
        """Seconds until the child should poll again (``next_poll``): ``busy`` if it is
        offered a release or runs one, else ``idle``, or longer (up to ``longest``) when every
        rollout reaching it waits for its window or scheduled start: until it opens (judged
        while the manager has at most :data:`HINT_SCAN` live rollouts)."""
        hints = self.poll_hints
        pace = self._pace
        if offer or child_id in pace.busy:
            return math.ceil(hints.busy)
        held = pace.held
        live = self._eligible
        if held and len(live) <= HINT_SCAN:  # (bounded work per poll; else the idle hint)
            reached, soonest = False, math.inf
            for rollout_id, eligible in live.items():
                if child_id in eligible:
                    opens = held.get(rollout_id)
                    if opens is None:
                        return math.ceil(hints.idle)  # an open rollout reaches it
                    reached, soonest = True, min(soonest, opens)
            if reached:  # every rollout reaching it waits (inf: for ever, its deadline passed)
                wait = min(soonest - self._wall(), hints.longest)
                return math.ceil(max(wait, hints.idle))
        return math.ceil(hints.idle)
