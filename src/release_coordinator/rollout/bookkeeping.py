"""The RolloutManager's state, and the writes that keep its copies true.

:class:`_Bookkeeping` holds what a manager knows (its settings, the spatial indexes of children
and rollout targets, the eligible children per rollout, the stage counters, the barriers, the
lost children, the registrations waiting to be written) and the writes every job of the
manager goes through: a child's state (compare-and-set, counted in the rollout's
:class:`_Tally`), targeting and withdrawing children, a barrier's record, a rollout's state.

Each of these writes hands the store the events of the change it makes
(:mod:`~release_coordinator.rollout.events`), written with it; the event log is read and
followed here too (:meth:`_Bookkeeping.list_events`, :meth:`_Bookkeeping.subscribe`), and
what the store appended is delivered to subscribers after every write, as the Coordinator's
log is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from release_coordinator.coordinator.models import EventType
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    InvalidTransitionError,
)
from release_coordinator.feeds import EventFeed
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.events import (
    RolloutEvent,
    RolloutEventFilter,
    RolloutEventKind,
    child_events,
    offered_event,
    rollout_event,
    withdrawn_event,
)
from release_coordinator.rollout.geo import Area, GeoIndex, MatchMode
from release_coordinator.rollout.models import ChildRelease, Rollout, RolloutState
from release_coordinator.rollout.reports import ACTIVE
from release_coordinator.rollout.strategy import StageType
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import BarrierRecord, RolloutStore

__all__ = ["RolloutSubscriber", "transition_event"]

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: A subscriber gets every rollout event of the log, in order; it may be sync or async.
RolloutSubscriber = Callable[[RolloutEvent], Awaitable[None] | None]

_USER = RolloutEventKind.USER_ACTION

#: How often an action is judged again from a fresh state before it gives up (ConflictError).
_ATTEMPTS = 8

#: When a child that never polled was last seen (long ago: it counts as lost).
NEVER_SEEN = -1e18


@attrs.define
class _Barrier:
    """A WaitForSignal stage's barrier: open once the policy's condition held."""

    open: bool = False
    first_waiting_at: float | None = None


class _Tally:
    """Per stage of one rollout: how many targeted children are in each (release active,
    stage status) bucket, and which children are ``SuccessWaiting`` (in the order they began
    to wait)."""

    __slots__ = ("counts", "waiting")

    def __init__(self, stage_names: Iterable[str]) -> None:
        self.counts: dict[str, dict[tuple[bool, StageStatus], int]] = {
            name: {} for name in stage_names
        }
        self.waiting: dict[str, dict[str, None]] = {name: {} for name in self.counts}

    def add(self, state: ChildRelease, sign: int) -> None:
        active = state.status in ACTIVE
        for name, stage in state.stages.items():
            counts = self.counts.get(name)
            if counts is None:
                continue
            key = (active, stage.status)
            counts[key] = counts.get(key, 0) + sign
            if stage.status is StageStatus.SUCCESS_WAITING:
                if sign > 0:
                    self.waiting[name][state.child_id] = None
                else:
                    self.waiting[name].pop(state.child_id, None)

    @classmethod
    def from_counts(
        cls,
        stage_names: tuple[str, ...],
        counts: Mapping[tuple[ReleaseStatus, tuple[StageStatus, ...]], int],
        waiting: Mapping[str, list[str]],
    ) -> _Tally:
        tally = cls(stage_names)
        for (status, statuses), n in counts.items():
            active = status in ACTIVE
            for name, stage_status in zip(stage_names, statuses, strict=True):
                bucket = tally.counts[name]
                key = (active, stage_status)
                bucket[key] = bucket.get(key, 0) + n
        for name, child_ids in waiting.items():
            tally.waiting[name] = dict.fromkeys(child_ids)
        return tally

    def children(self) -> tuple[int, bool]:
        """How many children are targeted, and whether one of them is still at it (Todo or
        Doing): every targeted child has every stage, so the first stage's buckets count them
        all."""
        buckets = next(iter(self.counts.values()), {})
        busy = any(n > 0 for (active, _), n in buckets.items() if active)
        return sum(buckets.values()), busy

    def add_todo(self, count: int, sign: int) -> None:
        """``count`` children targeted (or withdrawn): Todo, every stage Pending."""
        key = (True, StageStatus.PENDING)
        for counts in self.counts.values():
            counts[key] = counts.get(key, 0) + sign * count


class _Bookkeeping(EventFeed):
    """What a :class:`~release_coordinator.rollout.manager.RolloutManager` knows, and the
    writes that keep it true (see the module documentation); its constructor's arguments are
    the manager's."""

    _feed_log = log
    _feed_what = "rollout event subscriber"

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        lost_after: float = 60.0,
        clock: Callable[[], float] | None = None,
        refresh: float = 1.0,
        owner: str | None = None,
        lease_seconds: float = 15.0,
    ) -> None:
        if lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be positive, not {lease_seconds}")
        self.store = store if store is not None else MemoryRolloutStore()
        #: Who this manager is among the processes sharing the store (the loop's lease holder).
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease_seconds = lease_seconds
        #: Other manager processes may change the same rollouts (the store is shared).
        self.shared = bool(self.store.shared)
        self.lost_after = lost_after
        self.refresh = refresh
        self._clock = clock or (time.time if self.shared else time.monotonic)
        self._synced_at: float | None = None
        self._child_change = 0
        self._tally_at: dict[str, float] = {}
        # (rollout, stage) -> ((lost set, changes, counters) it was computed for, counts)
        self._lost_cache: dict[
            tuple[str, str], tuple[tuple[int, int, float | None], tuple[int, int]]
        ] = {}
        self._lost_version = 0  # grows whenever the lost children are recomputed
        self._fingerprints: dict[str, int] = {}
        self._children_count: dict[str, int] = {}
        self._children = GeoIndex[str]()
        self._targets: dict[MatchMode, GeoIndex[str]] = {
            "intersects": GeoIndex[str](),
            "within": GeoIndex[str](),
        }
        self._barriers: dict[tuple[str, str], _Barrier] = {}  # read from the store
        # Per active or paused rollout: the children its target reaches, in the order they
        # became eligible, with their areas (the policy admits from these).
        self._eligible: dict[str, dict[str, Area]] = {}
        self._target_json: dict[str, Mapping[str, Any]] = {}
        # Per rollout: the stage counters, and how many changes of its child states were seen
        # (a counter built from the store is kept only if no change happened meanwhile).
        self._tallies: dict[str, _Tally] = {}
        self._changes: dict[str, int] = {}
        # The children lost at ``_lost_at``, valid while no live child can have gone quiet:
        # until ``now - _lost_ref > lost_after`` (or one of them polls again).
        self._lost: frozenset[str] = frozenset()
        self._lost_at: float | None = None
        self._lost_ref = 0.0
        #: Grows whenever a child registers or moves (relays recompute their area then).
        self.children_version = 0
        # Registrations waiting to be written, and the task writing them (see _register).
        self._registering: list[tuple[str, Area, int, int, asyncio.Future[None]]] = []
        self._registrar: asyncio.Task[None] | None = None
        # Per rollout: when this manager offered it to each child that has not fetched it
        # (children offered before a restart count from the first look after it), and when
        # its children were last looked at for time-outs.
        self._offered_at: dict[str, dict[str, float]] = {}
        self._timeouts_at: dict[str, float] = {}
        # Per child: the aborted rollouts it was running when they were aborted and has not
        # reported on since (its /poll names them, so that it rolls back at once).
        self._aborted_for: dict[str, set[str]] = {}
        # The (rollout, stage) barriers whose waiting children are being told to end now.
        self._signalling: set[tuple[str, str]] = set()
        #: How to learn a data release's state, for rollouts gated on one (``after_release``;
        #: see ``operations.ReleaseStates``): None until a host or a ReleaseGate sets it.
        self.release_states: Callable[[str], Awaitable[str]] | None = None
        # The event log's subscribers, and what was delivered to them (feeds.EventFeed).
        self._init_feed()

    # -- the event log ---------------------------------------------------------------------
    async def list_events(
        self,
        *,
        rollout_id: str | None = None,
        child_id: str | None = None,
        stage: str | None = None,
        types: Collection[EventType] | None = None,
        kinds: Collection[RolloutEventKind] | None = None,
        after_id: int = 0,
        since: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[RolloutEvent]:
        """The rollout event log, oldest first, filtered (as ``Coordinator.events``)."""
        flt = RolloutEventFilter(rollout_id, child_id, stage, types, kinds, after_id, since)
        return await self.store.list_events(flt, limit=limit, offset=offset)

    async def subscribe(
        self, subscriber: RolloutSubscriber, *, filter: RolloutEventFilter | None = None
    ) -> Callable[[], None]:
        """Call ``subscriber`` with every rollout event appended from now on (that matches
        ``filter``), in order; returns an unsubscribe function. A subscriber that raises is
        logged and kept. Events come from the store, so with a shared store a subscriber also
        sees what other managers log (delivered when this one next writes an event)."""
        last = await self.store.last_event_id()
        if not self._subscribers:
            self._events_seen = last
        given = filter or RolloutEventFilter()
        entry = (subscriber, attrs.evolve(given, after_id=max(last, given.after_id)))
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    async def _append_events(self, events: Sequence[RolloutEvent]) -> None:
        """Write events that come with no change of state, and deliver them."""
        await self.store.append_events(events)
        self._events_written()

    async def _events_after(self, after_id: int) -> list[RolloutEvent]:
        return await self.store.list_events(RolloutEventFilter(after_id=after_id))

    # -- rollouts' states ------------------------------------------------------------------
    async def _operate(
        self,
        rollout_id: str,
        action: str,
        reason: str | None = None,
        *,
        actor: str = "",
        request: bool = False,
    ) -> Rollout:
        """Apply an operator's action (or a policy's abort) as a compare-and-set on the stored
        state: when the state moved meanwhile (the rollout completed, another process paused
        it), judge the action again from the fresh state, so the action fails only when the
        fresh state does not allow it. A repeated abort is answered with the aborted rollout.

        Logged with the change: the transition (a policy's decision for an abort that is not
        an operator's ``request``), after the operator's request when it is one (by
        ``actor``); an action refused, or repeated, logs nothing."""
        sources, dest = _OPERATIONS[action]
        for _attempt in range(_ATTEMPTS):
            current = await self.store.get_rollout(rollout_id)
            if action == "abort" and current.state is RolloutState.ABORTED:
                return current  # idempotent, like a repeated cancel of a release
            if current.state not in sources:
                raise InvalidTransitionError(
                    "rollout",
                    current.state.value,
                    action,
                    subject=rollout_id,
                    hint=f"only a rollout that is {' or '.join(s.value for s in sources)} can be "
                    f"{_PAST[action]}",
                )
            events = _operation_events(rollout_id, action, dest, reason, actor, request)
            try:
                rollout = await self.store.set_rollout_state(
                    rollout_id, {current.state}, dest, reason=reason, events=events
                )
            except ConcurrentUpdateError:
                continue  # moved meanwhile: judge again from what it is now
            self._events_written()
            return rollout
        raise ConflictError(f"rollout {rollout_id} keeps changing; try {action} again")

    async def _abort(
        self, rollout_id: str, reason: str, *, actor: str = "", request: bool = False
    ) -> Rollout:
        """Abort the rollout (see ``RolloutManager.abort``): the operator does (``request``),
        and so do the policies and the barrier time-outs (logged as their decisions). Aborting
        an aborted rollout changes nothing."""
        before = await self.store.get_rollout(rollout_id)
        rollout = await self._operate(rollout_id, "abort", reason, actor=actor, request=request)
        if before.state is RolloutState.ABORTED:
            return rollout
        self._forget(rollout)
        await self._withdraw(rollout_id, await self.store.targeted(rollout_id))
        await self._note_aborted(rollout_id)
        return rollout

    async def _policy_failed(self, rollout: Rollout, reason: str) -> None:
        """The policy's error condition holds (``reason``): its ``error_action`` applies,
        ``abort`` (see :meth:`_abort`) or ``pause`` (logged as the policy's decision; the
        operator retries or excludes the failed children, then resumes, or aborts)."""
        if getattr(rollout.policy, "error_action", "abort") != "pause":
            await self._abort(rollout.id, reason)
            return
        with contextlib.suppress(InvalidTransitionError):  # paused or ended meanwhile
            await self._operate(rollout.id, "pause", reason)
            log.warning("rollout %s paused by its policy: %s", rollout.id, reason)

    async def _note_aborted(self, rollout_id: str) -> None:
        """Remember which children run the aborted rollout, for their next poll."""
        for state in await self.store.child_releases(rollout_id):
            if state.status is ReleaseStatus.DOING:
                self._aborted_for.setdefault(state.child_id, set()).add(rollout_id)

    def _reported_on(self, child_id: str, rollout_id: str) -> None:
        """The child reported on the aborted rollout: its polls stop naming it."""
        aborted = self._aborted_for.get(child_id)
        if aborted is not None:
            aborted.discard(rollout_id)
            if not aborted:
                del self._aborted_for[child_id]

    async def _seen(self, child_id: str) -> None:
        """Record that the child called (any call of the child protocol counts, not only a
        poll: a child waiting on a barrier calls only ``/end_stage``)."""
        await self.store.touch_child(child_id, self._clock())
        if child_id in self._lost:
            self._lost_at = None  # back from the lost

    def _is_lost(self, seen: Mapping[str, float], child_id: str, now: float) -> bool:
        """Whether the child, last seen at ``seen[child_id]`` (by the manager's clock; not in
        ``seen``: never), is lost at ``now``: quiet for longer than ``lost_after``."""
        return now - seen.get(child_id, NEVER_SEEN) > self.lost_after

    def _forget(self, rollout: Rollout) -> None:
        """An aborted or completed rollout is offered to nobody: no child is matched with it."""
        self._targets[rollout.match].discard(rollout.id)
        self._eligible.pop(rollout.id, None)
        self._offered_at.pop(rollout.id, None)
        self._timeouts_at.pop(rollout.id, None)

    async def _barrier(self, rollout_id: str, stage_name: str) -> _Barrier:
        """The stage's barrier: from the store, kept here once open (it stays open) or, when
        this manager is the store's only user, kept here from the first read."""
        barrier = self._barriers.get((rollout_id, stage_name))
        if barrier is None or not (barrier.open or not self.shared):
            record = await self.store.barrier(rollout_id, stage_name)
            barrier = self._remember(rollout_id, stage_name, record)
        return barrier

    def _remember(self, rollout_id: str, stage_name: str, record: BarrierRecord) -> _Barrier:
        barrier = _Barrier(record.open, record.waiting_since)
        self._barriers[(rollout_id, stage_name)] = barrier
        return barrier

    async def _open(self, rollout_id: str, stage_name: str, why: str = "") -> _Barrier:
        """Open the barrier (it stays open), logging the decision (``why``) if this call
        opened it."""
        message = f"barrier of stage {stage_name!r} opened" + (f": {why}" if why else "")
        event = rollout_event(RolloutEventKind.POLICY, message, rollout_id, stage=stage_name)
        record = await self.store.mark_barrier(rollout_id, stage_name, open=True, events=[event])
        self._events_written()
        return self._remember(rollout_id, stage_name, record)

    # -- counters ------------------------------------------------------------------------------
    async def _tally(self, rollout_id: str) -> _Tally:
        """The rollout's stage counters, built from the store the first time."""
        tally = self._tallies.get(rollout_id)
        now = self._clock()
        if tally is not None and (
            not self.shared or 0 <= now - self._tally_at.get(rollout_id, now) < self.refresh
        ):
            return tally
        bundle = await self.store.get_bundle(rollout_id)
        names = bundle.strategy.stage_names
        waits = [s.name for s in bundle.strategy.stages if s.type is StageType.WAIT_FOR_SIGNAL]
        for _attempt in range(5):
            changes = self._changes.get(rollout_id, 0)
            counts = await self.store.status_counts(rollout_id)
            waiting = {name: await self.store.waiting(rollout_id, name) for name in waits}
            if self._changes.get(rollout_id, 0) == changes:
                break
        tally = _Tally.from_counts(names, counts, waiting)
        self._tally_at[rollout_id] = now
        self._tallies[rollout_id] = tally
        return tally

    def _changed(self, rollout_id: str) -> _Tally | None:
        self._changes[rollout_id] = self._changes.get(rollout_id, 0) + 1
        return self._tallies.get(rollout_id)

    async def _put(
        self, expected: ChildRelease, new: ChildRelease, *, before: Sequence[RolloutEvent] = ()
    ) -> None:
        """Compare-and-set a child's state (ConcurrentUpdateError) and count the change; its
        events are written with it (after ``before``: an operator's request, say)."""
        events = [*before, *child_events(expected, new)]
        await self.store.put_child_release(expected, new, events=events)
        self._events_written()
        tally = self._changed(new.rollout_id)
        if tally is not None:
            tally.add(expected, -1)
            tally.add(new, 1)

    async def _target(
        self, rollout_id: str, child_ids: Iterable[str], *, decision: str = ""
    ) -> None:
        """Offer the rollout to these children (those not offered it yet); ``decision``: the
        policy's, logged with the offers when it offered some (a wave or group admitted)."""
        events: tuple[RolloutEvent, ...] = ()
        if decision:
            child_ids = list(child_ids)
            message = f"{decision}: {len(child_ids)} more children admitted"
            events = (rollout_event(RolloutEventKind.POLICY, message, rollout_id),)
        added = await self.store.target(
            rollout_id, child_ids, event=offered_event(rollout_id), events=events
        )
        if added:
            self._events_written()
            now = self._clock()
            offered = self._offered_at.setdefault(rollout_id, {})
            for child_id in added:
                offered[child_id] = now
        tally = self._changed(rollout_id)
        if tally is not None and added:
            tally.add_todo(len(added), 1)

    async def _withdraw(self, rollout_id: str, child_ids: Iterable[str]) -> None:
        # Only Todo children are withdrawn, and a Todo child has every stage Pending (it never
        # fetched the release).
        removed = await self.store.withdraw(
            rollout_id, child_ids, event=withdrawn_event(rollout_id)
        )
        if removed:
            self._events_written()
        tally = self._changed(rollout_id)
        if tally is not None and removed:
            tally.add_todo(len(removed), -1)


_RS = RolloutState
_OPERATIONS: dict[str, tuple[frozenset[RolloutState], RolloutState]] = {
    "start": (frozenset({_RS.DRAFT}), _RS.ACTIVE),
    "pause": (frozenset({_RS.ACTIVE}), _RS.PAUSED),
    "resume": (frozenset({_RS.PAUSED}), _RS.ACTIVE),
    "abort": (frozenset({_RS.DRAFT, _RS.ACTIVE, _RS.PAUSED}), _RS.ABORTED),
}
_PAST = {"start": "started", "pause": "paused", "resume": "resumed", "abort": "aborted"}


def transition_event(
    rollout_id: str, state: RolloutState, reason: str = "", *, actor: str = ""
) -> RolloutEvent:
    """The event of a rollout's state changing to ``state`` (``reason``: why), by no
    operator's request (completed, started by its data release, ...)."""
    why = f": {reason}" if reason else ""
    return rollout_event(
        RolloutEventKind.TRANSITION,
        f"rollout {state.value}{why}",
        rollout_id,
        type=EventType.WARNING if state is RolloutState.ABORTED else EventType.INFO,
        state=state.value,
        actor=actor,
    )


def _operation_events(
    rollout_id: str,
    action: str,
    dest: RolloutState,
    reason: str | None,
    actor: str,
    request: bool,
) -> list[RolloutEvent]:
    """The events of a rollout's ``action``: the operator's request (``request``, by
    ``actor``), then the transition, with ``reason`` (an abort that is not an operator's is
    its policy's decision)."""
    why = f": {reason}" if reason else ""
    events = []
    if request:
        by = f" by {actor}" if actor else ""
        events.append(rollout_event(_USER, f"{action} requested{by}{why}", rollout_id, actor=actor))
    by_policy = action in ("abort", "pause") and not request  # (an error action: a decision)
    kind = RolloutEventKind.POLICY if by_policy else RolloutEventKind.TRANSITION
    type_ = EventType.WARNING if action == "abort" or by_policy else EventType.INFO
    message = f"rollout {_PAST[action]}{why}"
    events.append(
        rollout_event(kind, message, rollout_id, type=type_, state=dest.value, actor=actor)
    )
    return events
