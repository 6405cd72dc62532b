"""The RolloutManager's decisions that counters and time settle: where a stage's barrier
stands and when it opens (or times out), which children are lost, when a rollout is complete;
:meth:`_Ticks.tick` re-judges them periodically, and the manager's background loop
(:meth:`_Ticks.running`, :meth:`_Ticks.start_loops`, :meth:`_Ticks.stop_loops`) calls it.

**The background loop.** A manager has one: it ticks the manager every ``interval`` seconds,
or, when a :class:`~release_coordinator.rollout.relay.Relay` runs it, does the relay's rounds
(poll the parent, report upward, tick). One loop per manager, whoever started it, so that a
manager is never ticked twice over and "is this manager's loop running?" has one answer
(:attr:`_Ticks.is_running`, which the HTTP app checks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

import attrs

from release_coordinator.errors import ConcurrentUpdateError, ConfigurationError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus, release_step, stage_step
from release_coordinator.rollout.approvals import _Approvals
from release_coordinator.rollout.bookkeeping import NEVER_SEEN, transition_event
from release_coordinator.rollout.judging import OPEN, SIGNAL, judge_barrier, judge_late
from release_coordinator.rollout.models import ChildRelease, Outcome, Rollout, RolloutState
from release_coordinator.rollout.pacer import _paced
from release_coordinator.rollout.policies import GlobalIncremental
from release_coordinator.rollout.reports import ACTIVE, READY, BarrierState, StageCounts
from release_coordinator.rollout.strategy import StageType

__all__: list[str] = []

log = logging.getLogger("release_coordinator.rollout.manager")  # the manager's log

#: How many children waiting on an open barrier one call tells to end the stage.
SIGNAL_BATCH = 64

#: The lease (see ``RolloutStore.hold_lease``) that the background loop's rounds need over a
#: shared store: one manager process of several does the periodic work at a time.
LOOP_LEASE = "rollout-manager-loop"

#: Seconds :meth:`_Loop.stop` lets a round in progress finish before it cancels it (a round
#: cancelled inside a store write could leave a SQLite connection holding the database's lock).
STOP_GRACE = 2.0


class _Loop:
    """``body()`` every ``interval`` seconds in a task of the running event loop, until
    :meth:`stop`; a failing round is logged (as ``failure``) and the next one runs as usual.
    ``owner`` is who started it (the manager, or a relay)."""

    def __init__(
        self,
        body: Callable[[], Awaitable[None]],
        interval: float,
        *,
        owner: object,
        name: str,
        failure: str,
    ) -> None:
        self.owner = owner
        self.interval = interval
        self._body = body
        self._failure = failure
        self._stopping = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=name)

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self._stopping.is_set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._body()
            except Exception:  # keep going; the next round may succeed
                log.exception(self._failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def stop(self) -> None:
        """Stop after the round in progress (cancelled if it takes over :data:`STOP_GRACE`
        seconds); a sleeping loop stops at once."""
        self._stopping.set()
        if self.task is asyncio.current_task():
            return  # stopped from its own round: it ends after this round
        _done, pending = await asyncio.wait({self.task}, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class _Ticks(_Approvals):
    """Barriers, stage counts, lost children and completion, and the background loop that
    ticks them (see the module documentation)."""

    _loop: _Loop | None = None  # the background loop (None until one starts)
    #: Over a shared store: whether this manager holds the loop's lease (does the ticks).
    holds_lease: bool = False

    # -- the background loop ----------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """Whether the manager's background loop runs: its own ticks
        (:meth:`start_loops`), or a relay's rounds (``Relay.start``)."""
        return self._loop is not None and self._loop.alive

    async def start_loops(self, *, interval: float = 1.0, load: bool = True) -> None:
        """Start the background loop: :meth:`tick` every ``interval`` seconds (barrier
        time-outs, lost children, child time-outs and the completion they allow are judged
        then), after rebuilding the indexes from the store (:meth:`load`; ``load=False``
        skips it). Idempotent: a loop that runs already (this manager's, or a relay's, which
        ticks it too) is left as it is. Call it in a running event loop; stop with
        :meth:`stop_loops`, or use :meth:`running`."""
        if interval <= 0:
            raise ConfigurationError(f"the tick interval must be positive, not {interval}")
        if self.is_running:
            return
        await self._start_loop(self.tick, interval, owner=self, load=load)

    async def _start_loop(
        self,
        body: Callable[[], Awaitable[None]],
        interval: float,
        *,
        owner: object,
        load: bool,
        name: str = "rc-rollout-ticks",
        failure: str = "rollout manager tick failed",
    ) -> None:
        """Start ``body`` as the manager's background loop (none may run); over a shared
        store, its rounds run only while this manager holds the loop's lease."""
        if self._loop is not None:
            await self._loop.stop()  # a stopped one, or one stopping
        self._loop = None
        if load:
            await self.load()
        if self.is_running:  # started by another caller while loading
            return
        if self.shared:
            if self.lease_seconds < 2 * interval:
                raise ConfigurationError(
                    f"lease_seconds ({self.lease_seconds:g}) must be at least twice the loop's "
                    f"interval ({interval:g} s): the lease is renewed once a round"
                )
            body = self._leased(body)
        self._loop = _Loop(body, interval, owner=owner, name=name, failure=failure)

    def _leased(self, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``body``, run in a round only if this manager holds (takes or renews) the lease
        :data:`LOOP_LEASE` for :attr:`lease_seconds`: of several managers sharing the store,
        one at a time does the periodic work; when it stops, dies or cannot renew, another
        takes over once the lease is dropped or runs out."""

        async def leased() -> None:
            held = False  # (unless the store answers: a lease it cannot renew runs out)
            try:
                held = await self.store.hold_lease(LOOP_LEASE, self.owner, self.lease_seconds)
            finally:
                self._note_lease(held)
            if held:
                started = time.monotonic()
                await body()
                took = time.monotonic() - started
                if took > self.lease_seconds / 2:
                    log.warning(
                        "a round of the background loop took %.1f s, over half of the loop's "
                        "lease (%g s): another manager may take the lease over in a round; "
                        "raise lease_seconds",
                        took,
                        self.lease_seconds,
                    )

        return leased

    def _note_lease(self, held: bool) -> None:
        if held != self.holds_lease:
            self.holds_lease = held
            if held:
                log.info("%s holds the lease of the background loop: it does the ticks", self.owner)
            else:
                log.info("%s does not hold the lease of the background loop", self.owner)

    async def _drop_lease(self) -> None:
        """Give the loop's lease up (a stopped loop): another manager takes over at once."""
        if not self.holds_lease:
            return
        self.holds_lease = False
        try:
            await self.store.drop_lease(LOOP_LEASE, self.owner)
        except Exception:  # it runs out
            log.warning("%s could not give up the loop's lease; it runs out", self.owner)

    async def stop_loops(self) -> None:
        """Stop the background loop (a relay's too), after the round in progress. Idempotent;
        the manager keeps serving calls, only the periodic work stops."""
        loop, self._loop = self._loop, None
        if loop is not None:
            await loop.stop()
            await self._drop_lease()

    @contextlib.asynccontextmanager
    async def running(self, *, interval: float = 1.0, load: bool = True) -> AsyncIterator[Self]:
        """``async with manager.running():`` runs the background loop inside the block
        (:meth:`start_loops` on entry, :meth:`stop_loops` on exit) and gives the manager. A
        loop that ran already on entry is left running on exit: only what this block started
        is stopped."""
        started = not self.is_running
        await self.start_loops(interval=interval, load=load)
        try:
            yield self
        finally:
            if started:
                await self.stop_loops()

    async def barrier(self, rollout_id: str, stage_name: str) -> BarrierState:
        """Where a ``WaitForSignal`` stage's barrier stands among the admitted children
        (``waiting`` in the order the children began to wait)."""
        rollout = await self.store.get_rollout(rollout_id)
        counts = await self._counts(rollout, stage_name)
        tally = await self._tally(rollout_id)
        waiting = []
        for child_id in list(tally.waiting[stage_name]):
            with contextlib.suppress(NotFoundError):
                waiting.append(await self.store.child_release(rollout_id, child_id))
        return BarrierState(
            open=counts.open,
            ready=counts.ready,
            waiting=tuple(waiting),
            taking_part=counts.taking_part,
            ready_count=counts.ready_count,
        )

    async def stage_counts(self, rollout_id: str, stage_name: str) -> StageCounts:
        """How the rollout's targeted children stand on one stage, without reading them (see
        :class:`StageCounts`); NotFoundError for an unknown rollout or stage."""
        rollout = await self.store.get_rollout(rollout_id)
        return await self._counts(rollout, stage_name)

    async def _counts(self, rollout: Rollout, stage_name: str) -> StageCounts:
        tally = await self._tally(rollout.id)
        counts = tally.counts.get(stage_name)
        if counts is None:
            raise NotFoundError("stage", stage_name)
        taking_part = ready = final = completed = 0
        for (active, status), n in counts.items():
            if status.is_final:
                final += n
                if status is StageStatus.COMPLETED:
                    completed += n
            elif active:
                taking_part += n
                if status in READY:
                    ready += n
        lost_part, lost_ready = await self._lost_counts(rollout.id, stage_name)
        taking_part -= lost_part
        ready -= lost_ready
        barrier = await self._barrier(rollout.id, stage_name)
        return StageCounts(
            open=barrier.open,
            ready=taking_part > 0 and ready >= rollout.policy.quorum * taking_part,
            taking_part=taking_part,
            ready_count=ready,
            waiting=len(tally.waiting[stage_name]),
            final=final,
            completed=completed,
        )

    async def _lost_counts(self, rollout_id: str, stage_name: str) -> tuple[int, int]:
        """How many of the rollout's children taking part in the stage are lost, and how many
        of those are ready: read from the store once per lost set and state of the rollout
        (a tick over many lost children costs one look, not one query per child)."""
        lost = await self._lost_children()
        if not lost:
            return 0, 0
        key = (self._lost_version, self._changes.get(rollout_id, 0), self._tally_at.get(rollout_id))
        cached = self._lost_cache.get((rollout_id, stage_name))
        if cached is not None and cached[0] == key:
            return cached[1]
        if len(lost) > 32:
            states = [s for s in await self.store.child_releases(rollout_id) if s.child_id in lost]
        else:
            states = []
            for child_id in lost:
                with contextlib.suppress(NotFoundError):  # not targeted by this rollout
                    states.append(await self.store.child_release(rollout_id, child_id))
        part = ready = 0
        for state in states:
            status = state.stages[stage_name].status
            if state.status in ACTIVE and not status.is_final:
                part += 1
                if status in READY:
                    ready += 1
        self._lost_cache[(rollout_id, stage_name)] = (key, (part, ready))
        return part, ready

    async def open_barrier(self, rollout_id: str, stage_name: str) -> None:
        """Open a stage's barrier now (a relay does, when its parent says the stage ends): every
        child waiting on it, and every child that waits on it later, is told to end it."""
        rollout = await self.store.get_rollout(rollout_id)
        if stage_name not in (await self._tally(rollout_id)).counts:
            raise NotFoundError("stage", stage_name)
        await self._open(rollout_id, stage_name, "opened from outside (a relay's parent)")
        await self._check_barrier(rollout, stage_name)

    async def _check_barrier(self, rollout: Rollout, stage_name: str) -> None:
        """Open the stage's barrier when the policy's condition holds (for a rollout gated by
        a parent, only :meth:`open_barrier` opens it), and tell every child waiting on the
        stage to end it."""
        if rollout.state is not RolloutState.ACTIVE:
            return
        barrier = await self._barrier(rollout.id, stage_name)
        waiting = (await self._tally(rollout.id)).waiting[stage_name]
        now = self._clock()
        if waiting and barrier.first_waiting_at is None:
            record = await self.store.mark_barrier(rollout.id, stage_name, waiting_since=now)
            barrier = self._remember(rollout.id, stage_name, record)
        policy = rollout.policy
        if not barrier.open and not rollout.gated:
            counts = await self._counts(rollout, stage_name)
            if counts.ready and self.shared:
                # Counters may be up to `refresh` old: judge again from the store.
                self._tallies.pop(rollout.id, None)
                counts = await self._counts(rollout, stage_name)
            if counts.ready and policy.judgement is not None:  # canary judgement (.judging)
                judged = await judge_barrier(self, rollout, stage_name, barrier.first_waiting_at)
                if judged != OPEN:
                    return  # held (inconclusive), or aborted
                counts = await self._counts(rollout, stage_name)  # without those rolled back
            if counts.ready and await self._held_after(rollout, stage_name):
                return  # the next stage waits for an operator's approval (.approvals)
            if counts.ready:
                why = f"{counts.ready_count} of {counts.taking_part} children ready"
                barrier = await self._open(rollout.id, stage_name, why)
            elif (
                policy.barrier_timeout is not None
                and barrier.first_waiting_at is not None
                and now - barrier.first_waiting_at > policy.barrier_timeout
            ):
                await self._abort(
                    rollout.id,
                    f"stage {stage_name!r}: {counts.ready_count} of {counts.taking_part} "
                    f"children ready after the barrier time-out of {policy.barrier_timeout:g}s",
                )
                return
        if barrier.open:
            key = (rollout.id, stage_name)
            if key in self._signalling:
                return  # another call is telling the waiting children right now
            self._signalling.add(key)
            try:
                if self.shared:  # children of other processes wait too
                    waiting = dict.fromkeys(await self.store.waiting(rollout.id, stage_name))
                # A bounded batch per call (the call is a child's request, or a tick): the rest
                # are told when they next ask (/end_stage writes its own child), or by the next
                # calls, so no request writes hundreds of child states.
                for child_id in list(waiting)[:SIGNAL_BATCH]:
                    child = await self.store.child_release(rollout.id, child_id)
                    if await judge_late(self, rollout, child, stage_name) == SIGNAL:  # .judging
                        await self._signal(child, stage_name)
            finally:
                self._signalling.discard(key)

    async def _signal(self, child: ChildRelease, stage_name: str) -> None:
        """Tell a child waiting on an open barrier to end the stage (ShouldEnd); a child that
        moved meanwhile is seen again by the next check."""
        old = child.stages[stage_name]
        if old.status is not StageStatus.SUCCESS_WAITING:
            return
        stages = dict(child.stages)
        stages[stage_name] = attrs.evolve(
            old, status=stage_step(old.status, "signal"), changed_at=self._clock()
        )
        with contextlib.suppress(ConcurrentUpdateError):
            await self._put(child, attrs.evolve(child, stages=stages))

    async def _lost_children(self) -> frozenset[str]:
        """The children that have not polled for ``lost_after``: recomputed from the store only
        when a child that was live then may have gone quiet since (or a lost one polled)."""
        now = self._clock()
        if (
            self._lost_at is not None
            and self._lost_at <= now
            and now - self._lost_ref <= self.lost_after
            and not (self.shared and now - self._lost_at >= self.refresh)
        ):
            return self._lost
        await self._sync()
        known = list(self._children_count)  # every registered child (load, polls, sync)
        seen = await self.store.last_seen(known)
        lost = set()
        ref = now  # children registering later polled after now
        for child_id in known:
            at = seen.get(child_id, NEVER_SEEN)
            if now - at > self.lost_after:  # self._is_lost, with `at` kept for `ref`
                lost.add(child_id)
            elif at < ref:
                ref = at
        self._lost, self._lost_at, self._lost_ref = frozenset(lost), now, ref
        self._lost_version += 1
        return self._lost

    async def tick(self) -> None:
        """Re-judge every open question that time alone can settle: barriers and groups held
        up by children that went quiet (lost), barrier and child time-outs, and the policy's
        pacing (a window that opens or closes, a soak time or a scheduled start that ends, a
        rate that allows more, a deadline that passes). Call it periodically."""
        await self._sync()
        self._ticking = True  # (over a shared store, rate-limited rollouts are offered here)
        try:
            for rollout in await self.store.list_rollouts(states={RolloutState.ACTIVE}):
                await self._tick_rollout(rollout)
        finally:
            self._ticking = False

    async def _tick_rollout(self, rollout: Rollout) -> None:
        if await self._pace_tick(rollout):  # a deadline passed, a window closed
            return
        if not isinstance(rollout.policy, GlobalIncremental) or _paced(rollout):
            # lost children no longer hold up the next group; a window opened, a soak
            # time ended, the rate allows more
            await self._admit(rollout)
            rollout = await self.store.get_rollout(rollout.id)
            if rollout.state is not RolloutState.ACTIVE:
                return
        if await self._time_out_children(rollout):
            await self._admit(rollout)  # the next group or wave may go
            rollout = await self.store.get_rollout(rollout.id)
            if rollout.state is not RolloutState.ACTIVE:
                return
        bundle = await self.store.get_bundle(rollout.id)
        for stage in bundle.strategy.stages:
            if stage.type is StageType.WAIT_FOR_SIGNAL:
                await self._check_barrier(rollout, stage.name)
        await self._complete_if_finished(rollout)
        await self._complete_past_deadline(rollout)

    async def _time_out_children(self, rollout: Rollout) -> int:
        """Time out the rollout's children that exceeded the policy's ``child_timeout`` (see
        :mod:`~release_coordinator.rollout.policies`): Failed, outcome ``timed_out``, the stage
        they were in ``Error``. Looks at the children at most every quarter of the limit (and
        every 10 s), and only while one of them is still at it. Returns how many timed out."""
        limit = rollout.policy.child_timeout
        if limit is None:
            return 0
        now = self._clock()
        last = self._timeouts_at.get(rollout.id)
        if last is not None and 0 <= now - last < min(limit / 4, 10.0):
            return 0
        tally = await self._tally(rollout.id)
        if not tally.children()[1]:
            return 0
        self._timeouts_at[rollout.id] = now
        strategy = (await self.store.get_bundle(rollout.id)).strategy
        offered = self._offered_at.setdefault(rollout.id, {})
        timed_out = 0
        for state in await self.store.child_releases(rollout.id):
            since: float | None = None
            if state.status is ReleaseStatus.TODO:
                since = offered.setdefault(state.child_id, now)
            elif state.status is ReleaseStatus.DOING:
                name = state.live_stage
                stage = state.stages[name] if name is not None else None
                if stage is None:
                    since = max((s.changed_at for s in state.stages.values()), default=now)
                elif stage.status is StageStatus.IN_PROGRESS:
                    assert name is not None
                    since = stage.started_at + strategy.stage(name).min_duration.total_seconds()
                elif stage.status is StageStatus.SHOULD_END:
                    since = stage.changed_at
                # SuccessWaiting: waiting on the barrier, whose barrier_timeout applies
            if since is None or now - since <= limit:
                continue
            stages = dict(state.stages)
            name = state.live_stage
            if name is not None:
                stages[name] = attrs.evolve(
                    stages[name], status=stage_step(stages[name].status, "error"), changed_at=now
                )
            failed = attrs.evolve(
                state,
                status=release_step(state.status, "fail", subject=state.child_id),
                stages=stages,
                outcome=Outcome.TIMED_OUT,
            )
            try:
                await self._put(state, failed)
            except ConcurrentUpdateError:
                continue  # it reported meanwhile: alive after all
            offered.pop(state.child_id, None)
            timed_out += 1
        if timed_out:
            log.warning(
                "rollout %s: timed out %d %s (no progress within the child_timeout of %gs)",
                rollout.id,
                timed_out,
                "child" if timed_out == 1 else "children",
                limit,
            )
        return timed_out

    async def _complete_if_finished(self, rollout: Rollout) -> None:
        """Complete an active rollout once every child it reached has finished it (Done or
        Failed) and no eligible child is left to offer it to: from then on it is offered to
        nobody (children registering later in its area get a rollout of their own)."""
        if rollout.state is not RolloutState.ACTIVE:
            return
        tally = await self._tally(rollout.id)
        targeted, busy = tally.children()
        if targeted <= 0 or busy:
            return  # nobody reached yet, or somebody still at it
        if targeted < len(self._eligible.get(rollout.id, ())):
            return  # somebody eligible was not offered it yet (the policy's next group)
        # The counters say so; the store (which other processes change too) has the last word.
        counts = await self.store.status_counts(rollout.id)
        by_status: collections.Counter[ReleaseStatus] = collections.Counter()
        for (status, _), n in counts.items():
            by_status[status] += n
        if by_status[ReleaseStatus.TODO] or by_status[ReleaseStatus.DOING]:
            return
        done, failed = by_status[ReleaseStatus.DONE], by_status[ReleaseStatus.FAILED]
        reason = f"every child it reached finished it: {done} done, {failed} failed"
        try:
            await self.store.set_rollout_state(
                rollout.id,
                {RolloutState.ACTIVE},
                RolloutState.COMPLETED,
                reason=reason,
                events=[transition_event(rollout.id, RolloutState.COMPLETED, reason)],
            )
        except ConcurrentUpdateError:
            return  # paused, aborted or completed meanwhile (by another process, say)
        self._events_written()
        log.info("rollout %s completed: %s", rollout.id, reason)
        self._forget(rollout)
