"""The RolloutManager's interventions on single children and on failures.

- :meth:`_Interventions.exclude` takes one child out of a rollout (AWS IoT's "cancel job
  execution", with ``force``): its release ends ``Failed`` with the outcome ``excluded`` and it
  is never offered the rollout again, nor retried. A child that had not fetched it never will;
  a child running it is told to roll back (its next ``/poll`` names the rollout among the
  aborted ones, ``/end_stage`` and ``/result`` answer ``rollback``). A child the rollout was
  not offered to yet (a later wave or group, a draft) is excluded before it is. Excluded
  children count for no threshold of the policy.
- :meth:`_Interventions.retry` offers the rollout again to the children whose release failed
  (failed a stage, rolled back, timed out, stopped): they start over from ``Todo``, every
  stage ``Pending``. A completed rollout becomes active again (it runs again, for those and
  for children that came into its target since); an aborted one is never run again (its
  children were told to roll back: create a new rollout).
- A rollout its policy paused (``Waves`` with ``error_action="pause"``) resumes only once its
  error condition no longer holds (:meth:`_Interventions._check_resume`): retry or exclude
  the failed children first, or abort it.

Every intervention is logged as the operator's request (by its ``actor``), then the changes
it made (the children's transitions, the rollout's), in one write each; a refused one (a clear
409, 404 or 422) changes and logs nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence

import attrs

from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.rollout import ReleaseStatus, release_step, stage_step
from release_coordinator.rollout.admission import failure_condition, success_share
from release_coordinator.rollout.bookkeeping import transition_event
from release_coordinator.rollout.events import RolloutEventKind, rollout_event
from release_coordinator.rollout.models import ChildRelease, Outcome, Rollout, RolloutState
from release_coordinator.rollout.pacing import RateLimit, format_time
from release_coordinator.rollout.policies import Waves
from release_coordinator.rollout.ticks import _Ticks

__all__ = ["RetryResult"]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: How often an intervention is judged again from a fresh state before it gives up (409).
_ATTEMPTS = 8

#: The most children one retry names, and the longest id (as a child's own).
MAX_RETRY_CHILDREN = 10_000
_MAX_ID = 200

_RS = RolloutState
#: The rollouts whose children can be excluded, and those that can be retried.
_EXCLUDABLE = frozenset({_RS.DRAFT, _RS.ACTIVE, _RS.PAUSED, _RS.COMPLETED})
_RETRIABLE = frozenset({_RS.ACTIVE, _RS.PAUSED, _RS.COMPLETED})


@attrs.frozen
class RetryResult:
    """What :meth:`RolloutManager.retry` did: the rollout as it is now (active again if it
    had completed) and the children offered it again, in targeting order."""

    rollout: Rollout
    retried: tuple[str, ...]


def _by(actor: str) -> str:
    return f" by {actor}" if actor else ""


def _excluded(state: ChildRelease, now: float) -> ChildRelease:
    """The child's state once excluded: Failed, outcome ``excluded``, the stage it was in
    ``Error`` (a Failed child keeps its stages, and its status)."""
    if state.status is ReleaseStatus.FAILED:
        return attrs.evolve(state, outcome=Outcome.EXCLUDED)
    stages = dict(state.stages)
    name = state.live_stage
    if name is not None:
        stage = stages[name]
        stages[name] = attrs.evolve(stage, status=stage_step(stage.status, "error"), changed_at=now)
    return attrs.evolve(
        state,
        status=release_step(state.status, "fail", subject=state.child_id),
        stages=stages,
        outcome=Outcome.EXCLUDED,
    )


class _Interventions(_Ticks):
    """Exclusion, retry and the resume check of an error pause (see the module
    documentation)."""

    async def exclude(
        self, rollout_id: str, child_id: str, *, reason: str = "", actor: str = ""
    ) -> ChildRelease:
        """Exclude ``child_id`` from the rollout (see the module documentation); returns the
        child's state now (Failed, outcome ``excluded``). Excluding an excluded child changes
        nothing. NotFoundError (404) for an unknown rollout or child; InvalidTransitionError
        (409) for an aborted rollout and for a child that finished the release (Done: nothing
        is left to cancel); ConflictError (409) for a child the rollout's target does not
        reach (it is never offered it anyway)."""
        if not isinstance(child_id, str) or not child_id or len(child_id) > _MAX_ID:
            raise ValidationError(
                "invalid exclusion", [("child_id", f"must be 1 to {_MAX_ID} characters")]
            )
        rollout = await self.store.get_rollout(rollout_id)
        await self.store.get_child(child_id)  # NotFoundError for an unknown child
        subject = f"{rollout_id}/{child_id}"
        for _attempt in range(_ATTEMPTS):
            rollout = await self.store.get_rollout(rollout_id)
            if rollout.state not in _EXCLUDABLE:
                raise InvalidTransitionError(
                    "rollout",
                    rollout.state.value,
                    "exclude a child",
                    subject=rollout_id,
                    hint="an aborted rollout is offered to nobody already",
                )
            try:
                state: ChildRelease | None = await self.store.child_release(rollout_id, child_id)
            except NotFoundError:
                state = None
            if state is None or state.status is ReleaseStatus.NO:
                await self._target_to_exclude(rollout, child_id)
                continue  # Todo now: excluded in the next round
            if state.outcome is Outcome.EXCLUDED:
                return state  # idempotent: excluded already
            if state.status is ReleaseStatus.DONE:
                raise InvalidTransitionError(
                    "child release",
                    state.status,
                    "exclude",
                    subject=subject,
                    hint=f"it finished the release ({state.outcome.value or 'done'}): there is "
                    "nothing left to cancel",
                )
            new = _excluded(state, self._clock())
            why = f": {reason}" if reason else ""
            request = rollout_event(
                RolloutEventKind.USER_ACTION,
                f"exclusion of child {child_id} requested{_by(actor)}{why}",
                rollout_id,
                child_id=child_id,
                actor=actor,
            )
            try:
                await self._put(state, new, before=[request])
            except ConcurrentUpdateError:
                continue  # it moved meanwhile: judge again from what it is now
            if state.status is ReleaseStatus.DOING:  # it runs the release: roll back
                self._aborted_for.setdefault(child_id, set()).add(rollout_id)
            self._offered_at.get(rollout_id, {}).pop(child_id, None)
            log.info("rollout %s: child %s excluded%s", rollout_id, child_id, _by(actor))
            if rollout.state is RolloutState.ACTIVE:  # the next group or wave may go
                await self._admit(rollout)
                await self._complete_if_finished(await self.store.get_rollout(rollout_id))
            return new
        raise ConflictError(f"child {child_id} of rollout {rollout_id} keeps changing; try again")

    async def _target_to_exclude(self, rollout: Rollout, child_id: str) -> None:
        """Make the rollout wait for a child it reaches but was not offered to yet (logging
        no offer: the exclusion follows at once), so that its exclusion is stored."""
        await self._sync()
        reaches = child_id in self._eligible.get(rollout.id, {}) or child_id in set(
            self._children.match(rollout.target, rollout.match)
        )
        if not reaches:
            raise ConflictError(
                f"the target of rollout {rollout.id} does not reach child {child_id}: it is "
                "never offered the rollout, there is nothing to exclude",
                rollout_id=rollout.id,
                child_id=child_id,
            )
        added = await self.store.target(rollout.id, [child_id])
        tally = self._changed(rollout.id)
        if tally is not None and added:
            tally.add_todo(len(added), 1)

    async def retry(
        self, rollout_id: str, children: Iterable[str] | None = None, *, actor: str = ""
    ) -> RetryResult:
        """Offer the rollout again to the children whose release failed (``children``: these
        only; None: every one), excluded children never (see the module documentation).

        NotFoundError (404) for an unknown rollout, and for a named child the rollout was
        never offered to; InvalidTransitionError (409) for a draft or aborted rollout, and for
        a named child whose release did not fail or that was excluded; ConflictError (409)
        when no child is left to retry; ValidationError (422) for a malformed list. Nothing is
        changed when one of these is raised."""
        wanted = self._retry_names(children)
        rollout = await self.store.get_rollout(rollout_id)
        if rollout.state not in _RETRIABLE:
            raise InvalidTransitionError(
                "rollout",
                rollout.state.value,
                "retry",
                subject=rollout_id,
                hint="a draft has nothing to retry: start it"
                if rollout.state is RolloutState.DRAFT
                else "an aborted rollout is not run again (its children were told to roll "
                "back): create a new rollout",
            )
        states = {s.child_id: s for s in await self.store.child_releases(rollout_id)}
        chosen = self._retry_choice(rollout_id, states, wanted)
        limit = self._retry_paced(rollout, states, len(chosen))
        count = f"{len(chosen)} {'child' if len(chosen) == 1 else 'children'}"
        request = rollout_event(
            RolloutEventKind.USER_ACTION,
            f"retry of {count} requested{_by(actor)}",
            rollout_id,
            actor=actor,
        )
        if rollout.state is RolloutState.COMPLETED:
            reason = f"retried: {count} offered it again"
            try:
                rollout = await self.store.set_rollout_state(
                    rollout_id,
                    {RolloutState.COMPLETED},
                    RolloutState.ACTIVE,
                    reason=reason,
                    events=[request, transition_event(rollout_id, RolloutState.ACTIVE, reason)],
                )
            except ConcurrentUpdateError:
                raise ConflictError(
                    f"rollout {rollout_id} changed meanwhile; retry again"
                ) from None
            self._events_written()
            await self._sync(force=True)
            await self._tally(rollout_id)
            self._targets[rollout.match].add(rollout_id, rollout.target)
            await self._find_eligible(rollout)
        else:
            await self._append_events([request])
        retried = []
        stage_names = (await self.store.get_bundle(rollout_id)).strategy.stage_names
        offered = self._offered_at.setdefault(rollout_id, {})
        for state in chosen:
            if await self._offer_again(state, stage_names):
                retried.append(state.child_id)
                offered[state.child_id] = self._clock()
        if limit is not None and retried:
            limit.spend(self._clock(), len(retried))  # (offers: they count for the rate)
        log.info("rollout %s: %d children retried%s", rollout_id, len(retried), _by(actor))
        if rollout.state is RolloutState.ACTIVE:
            await self._admit(rollout)
        return RetryResult(await self.store.get_rollout(rollout_id), tuple(retried))

    def _retry_paced(
        self, rollout: Rollout, states: Mapping[str, ChildRelease], count: int
    ) -> RateLimit | None:
        """A retry's offers are offers: refused (409, nothing changed) when the rollout's
        pacing offers nothing now (past its deadline, before its start, outside its windows)
        or when ``count`` offers would pass its rate; the rate limit they are counted in."""
        pacing = rollout.policy.pacing
        if not pacing.is_set:
            return None
        wall = self._wall()
        if pacing.past_deadline(wall):
            raise ConflictError(
                f"rollout {rollout.id}'s deadline has passed: nothing is offered any more "
                "(create a new rollout)",
                id=rollout.id,
            )
        if not pacing.is_open(wall):
            opens = pacing.opens_at(wall)
            when = "never again" if opens is None else f"again at {format_time(opens)}"
            raise ConflictError(
                f"rollout {rollout.id} offers nothing now (before its start or outside its "
                f"windows): retry once it may offer ({when})",
                id=rollout.id,
            )
        if not pacing.limits_rate:
            return None
        now = self._clock()
        limit = self._rate_limit(rollout.id, pacing, now)
        budget = limit.budget(now, success_share(states))
        if count > budget:
            raise ConflictError(
                f"retrying {count} children of rollout {rollout.id} would pass its rate "
                f"(room for {budget} in this minute): retry fewer, or later",
                id=rollout.id,
                room=budget,
            )
        return limit

    @staticmethod
    def _retry_names(children: Iterable[str] | None) -> list[str] | None:
        if children is None:
            return None
        if isinstance(children, str | bytes):
            raise ValidationError("invalid retry", [("children", "must be a list of child ids")])
        names = list(children)
        problems = [
            (f"children[{i}]", f"must be a child's id (1 to {_MAX_ID} characters)")
            for i, name in enumerate(names)
            if not isinstance(name, str) or not name or len(name) > _MAX_ID
        ]
        if not names or len(names) > MAX_RETRY_CHILDREN:
            problems.append(("children", f"must name 1 to {MAX_RETRY_CHILDREN} children"))
        if problems:
            raise ValidationError("invalid retry", problems[:20])
        return list(dict.fromkeys(names))

    @staticmethod
    def _retry_choice(
        rollout_id: str, states: dict[str, ChildRelease], wanted: list[str] | None
    ) -> list[ChildRelease]:
        """The children a retry offers the rollout again (refusing a named one that cannot
        be retried)."""
        if wanted is None:
            chosen = [
                s
                for s in states.values()
                if s.status is ReleaseStatus.FAILED and s.outcome is not Outcome.EXCLUDED
            ]
            if not chosen:
                raise ConflictError(
                    f"rollout {rollout_id} has no child to retry: none failed or timed out "
                    "(excluded children are never retried)",
                    rollout_id=rollout_id,
                )
            return chosen
        chosen = []
        for child_id in wanted:
            state = states.get(child_id)
            subject = f"{rollout_id}/{child_id}"
            if state is None or state.status is ReleaseStatus.NO:
                raise NotFoundError("release for child", subject)
            if state.status is not ReleaseStatus.FAILED or state.outcome is Outcome.EXCLUDED:
                raise InvalidTransitionError(
                    "child release",
                    state.status,
                    "retry",
                    subject=subject,
                    hint="an excluded child is never offered the rollout again"
                    if state.outcome is Outcome.EXCLUDED
                    else "only a child whose release failed (or timed out) is retried",
                )
            chosen.append(state)
        return chosen

    async def _offer_again(self, state: ChildRelease, stage_names: Sequence[str]) -> bool:
        """Put a failed child back to Todo, every stage Pending (False: it moved meanwhile,
        to a state that is not retried)."""
        for _attempt in range(_ATTEMPTS):
            fresh = ChildRelease.todo(state.rollout_id, state.child_id, stage_names)
            try:
                await self._put(state, fresh)
            except ConcurrentUpdateError:
                with contextlib.suppress(NotFoundError):
                    state = await self.store.child_release(state.rollout_id, state.child_id)
                    excluded = state.outcome is Outcome.EXCLUDED
                    if state.status is ReleaseStatus.FAILED and not excluded:
                        continue
                return False
            self._reported_on(state.child_id, state.rollout_id)
            return True
        return False

    async def _check_resume(self, rollout_id: str) -> None:
        """Refuse to resume a rollout paused by its policy's error action while the error
        condition still holds (it would pause again at once): InvalidTransitionError (409)
        saying what to do."""
        rollout = await self.store.get_rollout(rollout_id)
        policy = rollout.policy
        if (
            rollout.state is not RolloutState.PAUSED
            or not isinstance(policy, Waves)
            or policy.error_action != "pause"
        ):
            return
        states = {s.child_id: s for s in await self.store.child_releases(rollout_id)}
        failing = failure_condition(policy, states)
        if failing:
            raise InvalidTransitionError(
                "rollout",
                rollout.state.value,
                "resume",
                subject=rollout_id,
                hint=f"its error condition still holds ({failing}): retry or exclude the "
                "failed children first, or abort it",
            )
