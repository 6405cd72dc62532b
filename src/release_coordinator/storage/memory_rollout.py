"""The in-memory RolloutManager store: a real adapter for embedding and for users' own tests.

Built for fleets: a targeted child that has not fetched a rollout costs one int in its offer
list. One :class:`threading.Lock` guards everything, so the store is safe to share between
threads and asyncio tasks. It keeps nothing across processes: use
:mod:`release_coordinator.storage.sql` (``SQLRolloutStore``) for that.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from array import array
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import attrs

from release_coordinator.errors import ConcurrentUpdateError, ConflictError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.events import ALL_EVENTS, RolloutEvent, RolloutEventFilter
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.storage.rollout_base import BarrierRecord, RolloutStore, last_of_each

__all__ = ["MemoryRolloutStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class MemoryRolloutStore(RolloutStore):
    """A :class:`RolloutStore` in process memory, built for fleets.

    A targeted child that has not fetched the rollout costs one entry in its offer list (an
    int); its Todo record is materialized only when it is first changed. Event ids are the
    log's positions (1 first): gapless.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollouts: dict[str, Rollout] = {}
        self._bundles: dict[str, ReleaseBundle] = {}
        self._seq = itertools.count(1)
        self._children: dict[str, Child] = {}
        self._seen: dict[str, float] = {}
        # Per child: sort keys of the rollouts targeting it, ascending = offered first.
        self._offers: dict[str, list[int]] = {}
        self._key_to_rollout: dict[int, str] = {}
        self._targeted: dict[str, dict[str, None]] = {}  # rollout -> children (ordered set)
        self._state: dict[tuple[str, str], ChildRelease] = {}
        self._barriers: dict[tuple[str, str], BarrierRecord] = {}
        self._change = 0
        self._child_change: dict[str, int] = {}  # child -> number of its last save
        self._tokens: dict[str, str] = {}  # child -> digest of its token
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, runs out at)
        # The event log, by position (an event's id less 1), in three columns: an event, or
        # the template of a targeting's (or withdrawal's) per-child events, kept once per
        # rollout; that event's child (None: the event is whole); its time (microseconds
        # since the epoch). A fleet's offers cost three slots each, not an event, until read.
        self._events: list[RolloutEvent] = []
        self._event_child: list[str | None] = []
        self._event_at = array("q")
        self._templates: dict[tuple[object, ...], RolloutEvent] = {}

    @staticmethod
    def _sort_key(rollout: Rollout) -> int:
        # Higher priority first, then creation order, in one int (cheap to keep per child).
        return ((2**31 - rollout.priority) << 32) | rollout.seq

    def _rollout(self, rollout_id: str) -> Rollout:
        try:
            return self._rollouts[rollout_id]
        except KeyError:
            raise NotFoundError("release", rollout_id) from None

    # -- rollouts ----------------------------------------------------------------------------
    async def add_rollout(
        self, rollout: Rollout, bundle: ReleaseBundle, *, events: Sequence[RolloutEvent] = ()
    ) -> Rollout:
        with self._lock:
            if rollout.id in self._rollouts:
                raise ConflictError(f"release {rollout.id!r} exists", id=rollout.id)
            stored = attrs.evolve(rollout, seq=next(self._seq))
            self._rollouts[stored.id] = stored
            self._bundles[stored.id] = bundle
            self._targeted[stored.id] = {}
            self._key_to_rollout[self._sort_key(stored)] = stored.id
            self._log(events)
            return stored

    async def get_rollout(self, rollout_id: str) -> Rollout:
        with self._lock:
            return self._rollout(rollout_id)

    async def get_bundle(self, rollout_id: str) -> ReleaseBundle:
        with self._lock:
            self._rollout(rollout_id)
            return self._bundles[rollout_id]

    async def list_rollouts(
        self, *, states: Collection[RolloutState] | None = None
    ) -> list[Rollout]:
        with self._lock:
            found = [r for r in self._rollouts.values() if states is None or r.state in states]
        return sorted(found, key=self._sort_key)

    async def set_rollout_state(
        self,
        rollout_id: str,
        from_states: Collection[RolloutState],
        to_state: RolloutState,
        *,
        reason: str | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> Rollout:
        with self._lock:
            current = self._rollout(rollout_id)
            if current.state not in from_states:
                raise ConcurrentUpdateError("rollout", rollout_id, from_states, current.state)
            updated = attrs.evolve(
                current, state=to_state, reason=current.reason if reason is None else reason
            )
            self._rollouts[rollout_id] = updated
            self._log(events)
            return updated

    # -- children ----------------------------------------------------------------------------
    async def save_child(self, child: Child) -> None:
        await self.save_children([child])

    async def save_children(self, children: Sequence[Child]) -> None:
        with self._lock:
            for child in last_of_each(children):
                self._children[child.id] = child
                self._offers.setdefault(child.id, [])
                self._change += 1
                self._child_change.pop(child.id, None)  # (keeps the dict in change order)
                self._child_change[child.id] = self._change

    async def children_since(self, change: int) -> tuple[list[Child], int]:
        with self._lock:
            found = [self._children[c] for c, n in self._child_change.items() if n > change]
            return found, self._change

    async def get_child(self, child_id: str) -> Child:
        with self._lock:
            try:
                return self._children[child_id]
            except KeyError:
                raise NotFoundError("child", child_id) from None

    async def get_children(self, child_ids: Iterable[str]) -> dict[str, Child]:
        with self._lock:
            children = self._children
            return {c: children[c] for c in child_ids if c in children}

    async def list_children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    async def touch_child(self, child_id: str, seen_at: float) -> None:
        # No lock: one dict read and one store (a racing touch may keep the older of two
        # simultaneous times, which a poll moments later corrects).
        if seen_at > self._seen.get(child_id, -1e300) and child_id in self._children:
            self._seen[child_id] = seen_at

    async def last_seen(self, child_ids: Iterable[str]) -> dict[str, float]:
        seen = self._seen
        return {c: seen[c] for c in child_ids if c in seen}

    # -- targeting and offers ----------------------------------------------------------------
    async def target(
        self,
        rollout_id: str,
        child_ids: Iterable[str],
        *,
        event: RolloutEvent | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> list[str]:
        added: list[str] = []
        with self._lock:
            rollout = self._rollout(rollout_id)
            key = self._sort_key(rollout)
            targeted = self._targeted[rollout_id]
            for child_id in child_ids:
                if child_id in targeted or child_id not in self._children:
                    continue
                targeted[child_id] = None
                bisect.insort(self._offers[child_id], key)
                added.append(child_id)
            if added:
                if event is not None:
                    self._each(event, added)
                self._log(events)
        return added

    async def withdraw(
        self, rollout_id: str, child_ids: Iterable[str], *, event: RolloutEvent | None = None
    ) -> list[str]:
        removed: list[str] = []
        with self._lock:
            rollout = self._rollout(rollout_id)
            key = self._sort_key(rollout)
            targeted = self._targeted[rollout_id]
            for child_id in child_ids:
                state = self._state.get((rollout_id, child_id))
                if child_id not in targeted or (
                    state is not None and state.status is not ReleaseStatus.TODO
                ):
                    continue
                del targeted[child_id]
                self._state.pop((rollout_id, child_id), None)
                offers = self._offers[child_id]
                offers.pop(bisect.bisect_left(offers, key))
                removed.append(child_id)
            if event is not None:
                self._each(event, removed)
        return removed

    async def targeted(self, rollout_id: str) -> list[str]:
        with self._lock:
            self._rollout(rollout_id)
            return list(self._targeted[rollout_id])

    async def first_offer(self, child_id: str) -> str:
        offers = self._offers.get(child_id)
        if not offers:
            return ""
        for key in offers:  # usually the first one is it
            rollout_id = self._key_to_rollout[key]
            if self._rollouts[rollout_id].state is not RolloutState.ACTIVE:
                continue
            state = self._state.get((rollout_id, child_id))
            if state is None or state.status is ReleaseStatus.TODO:
                return rollout_id
            if state.status is ReleaseStatus.DOING and not state.acknowledged:
                return rollout_id
        return ""

    # -- per-child state ---------------------------------------------------------------------
    def _child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        state = self._state.get((rollout_id, child_id))
        if state is not None:
            return state
        self._rollout(rollout_id)
        if child_id not in self._targeted[rollout_id]:
            raise NotFoundError("release for child", f"{rollout_id}/{child_id}")
        stages = self._bundles[rollout_id].strategy.stage_names
        return ChildRelease.todo(rollout_id, child_id, stages)

    async def child_release(self, rollout_id: str, child_id: str) -> ChildRelease:
        with self._lock:
            return self._child_release(rollout_id, child_id)

    async def child_releases(self, rollout_id: str) -> list[ChildRelease]:
        with self._lock:
            self._rollout(rollout_id)
            return [self._child_release(rollout_id, c) for c in self._targeted[rollout_id]]

    async def put_child_release(
        self, expected: ChildRelease, new: ChildRelease, *, events: Sequence[RolloutEvent] = ()
    ) -> ChildRelease:
        with self._lock:
            current = self._child_release(expected.rollout_id, expected.child_id)
            if current != expected:
                raise ConcurrentUpdateError(
                    "child release",
                    f"{expected.rollout_id}/{expected.child_id}",
                    [expected.status.wire_name],
                    current.status.wire_name,
                )
            self._state[(new.rollout_id, new.child_id)] = new
            self._log(events)
            return new

    # -- counts, barriers ----------------------------------------------------------------------
    async def status_counts(
        self, rollout_id: str
    ) -> dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int]:
        counts: dict[tuple[ReleaseStatus, tuple[StageStatus, ...]], int] = {}
        with self._lock:
            self._rollout(rollout_id)
            todo = (
                ReleaseStatus.TODO,
                tuple(StageStatus.PENDING for _ in self._stage_names(rollout_id)),
            )
            for child_id in self._targeted[rollout_id]:
                state = self._state.get((rollout_id, child_id))
                key = (
                    todo
                    if state is None
                    else (state.status, tuple(s.status for s in state.stages.values()))
                )
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _stage_names(self, rollout_id: str) -> tuple[str, ...]:
        return self._bundles[rollout_id].strategy.stage_names

    async def waiting(self, rollout_id: str, stage_name: str) -> list[str]:
        found: list[tuple[float, str]] = []
        with self._lock:
            self._rollout(rollout_id)
            for (rid, child_id), state in self._state.items():
                stage = state.stages.get(stage_name) if rid == rollout_id else None
                if stage is not None and stage.status is StageStatus.SUCCESS_WAITING:
                    found.append((stage.changed_at, child_id))
        return [child_id for _, child_id in sorted(found)]

    async def barrier(self, rollout_id: str, stage_name: str) -> BarrierRecord:
        with self._lock:
            self._rollout(rollout_id)
            return self._barriers.get((rollout_id, stage_name), BarrierRecord())

    async def mark_barrier(
        self,
        rollout_id: str,
        stage_name: str,
        *,
        open: bool = False,
        waiting_since: float | None = None,
        events: Sequence[RolloutEvent] = (),
    ) -> BarrierRecord:
        with self._lock:
            self._rollout(rollout_id)
            old = self._barriers.get((rollout_id, stage_name), BarrierRecord())
            new = BarrierRecord(
                old.open or open,
                old.waiting_since if old.waiting_since is not None else waiting_since,
            )
            self._barriers[(rollout_id, stage_name)] = new
            if new.open and not old.open:
                self._log(events)
            return new

    # -- the event log -------------------------------------------------------------------------
    def _log(self, events: Sequence[RolloutEvent]) -> None:
        """Append whole events (the lock held)."""
        if events:
            self._events.extend(events)
            self._event_child.extend([None] * len(events))
            self._event_at.frombytes(bytes(8 * len(events)))  # (zeros: the events keep times)

    def _each(self, event: RolloutEvent, child_ids: list[str]) -> None:
        """Log ``event`` once per child (the lock held)."""
        key: tuple[object, ...] = (event.type, event.kind, event.message, event.rollout_id)
        key += (event.stage, event.state, event.actor)
        template = self._templates.setdefault(key, event)
        at = (event.at - _EPOCH) // _MICROSECOND
        self._events.extend([template] * len(child_ids))
        self._event_child.extend(child_ids)
        self._event_at.extend(array("q", (at,)) * len(child_ids))

    async def append_events(self, events: Sequence[RolloutEvent]) -> list[RolloutEvent]:
        with self._lock:
            first = len(self._events) + 1
            self._log(events)
        return [attrs.evolve(e, id=first + i) for i, e in enumerate(events)]

    async def last_event_id(self) -> int:
        return len(self._events)

    async def list_events(
        self, filter: RolloutEventFilter = ALL_EVENTS, *, limit: int | None = None, offset: int = 0
    ) -> list[RolloutEvent]:
        if limit is not None and limit <= 0:
            return []
        start = max(0, filter.after_id)  # (ids are positions: skip to it)
        with self._lock:
            tail = self._events[start:]
            children = self._event_child[start:]
            times = self._event_at[start:]
        found: list[RolloutEvent] = []
        skip = max(0, offset)
        rid, cid = filter.rollout_id, filter.child_id
        for i, entry in enumerate(tail):
            child_id = children[i]
            if (rid is not None and entry.rollout_id != rid) or (
                cid is not None and (entry.child_id if child_id is None else child_id) != cid
            ):
                continue  # (the common filters, before an event is built)
            if child_id is None:
                event = attrs.evolve(entry, id=start + 1 + i)
            else:
                at = _EPOCH + times[i] * _MICROSECOND
                event = attrs.evolve(entry, child_id=child_id, at=at, id=start + 1 + i)
            if not filter.matches(event):
                continue
            if skip:
                skip -= 1
                continue
            found.append(event)
            if limit is not None and len(found) >= limit:
                break
        return found

    # -- child tokens ------------------------------------------------------------------------
    async def child_token(self, child_id: str) -> str | None:
        return self._tokens.get(child_id)  # (one dict read: no lock needed)

    async def add_child_token(self, child_id: str, digest: str) -> bool:
        with self._lock:
            if child_id in self._tokens:
                return False
            self._tokens[child_id] = digest
            return True

    async def drop_child_token(self, child_id: str) -> bool:
        with self._lock:
            return self._tokens.pop(child_id, None) is not None

    async def children_with_tokens(self, child_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {c for c in child_ids if c in self._tokens}

    # -- leases on periodic work (this process's clock) ----------------------------------------
    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held[0] != owner and held[1] > now:
                return False
            self._leases[name] = (owner, now + seconds)
            return True

    async def drop_lease(self, name: str, owner: str) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is None or held[0] != owner:
                return False
            del self._leases[name]
            return True
