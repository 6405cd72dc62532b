"""The RolloutManager: staged, geo-targeted function rollouts to edge children.

Children poll with their area; the manager offers them the releases whose target their area
reaches, serves the strategy and the function archive, takes their stage results through the
per-child state machines of :mod:`release_coordinator.fsm.rollout`, and decides, by the
rollout's orchestration policy, when a ``WaitForSignal`` stage ends.

The poll is the hot path: matching is precomputed (a spatial index is queried when a child
registers or moves, and when a rollout starts, never per poll), an unchanged area is recognised
by a hash of its JSON, and the store answers "what waits for this child" from a short sorted
list.

Stage barriers are judged from counters, not by reading every child: per rollout and stage, the
manager keeps how many targeted children are in each (release active?, stage status) bucket
and which ones wait (:class:`_Tally`, updated wherever a child's state changes), and which
children are lost (recomputed only once a live child may have gone quiet). A barrier check
costs O(1) plus one look per lost child; opening a barrier touches only the waiting children.
The counters assume this manager is the only writer of its rollouts' child states (as its other
indexes do); they are rebuilt from the store on first use after :meth:`RolloutManager.load`.

**Several managers on one store.** Over a store that is ``shared`` (PostgreSQL), several
manager processes serve the same fleet: every change of a child's state is a compare-and-set in
the store, so racing results never both win; stage barriers are kept in the store and only
open; and each manager re-reads what others may have changed instead of trusting its own
copies: registrations and rollouts (at most every ``refresh`` seconds, and before every
operator action), stage counters (older than ``refresh`` seconds are rebuilt, and always before
a barrier opens), lost children (every ``refresh`` seconds). Times are then wall-clock times
(``time.time``), the same in every process; policies admit children in the order of their ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from release_coordinator.coordinator.models import new_id
from release_coordinator.errors import (
    ConcurrentUpdateError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.rollout import (
    STAGE_TRIGGER_FOR,
    ReleaseStatus,
    StageStatus,
    release_step,
    stage_step,
)
from release_coordinator.rollout.admission import admit
from release_coordinator.rollout.geo import Area, GeoIndex, MatchMode
from release_coordinator.rollout.models import (
    Child,
    ChildRelease,
    ChildStage,
    Outcome,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.rollout.policies import GlobalIncremental, Policy
from release_coordinator.rollout.results import (
    ResultReport,
    StageReport,
    StageSummary,
    aggregate,
    parse_result,
)
from release_coordinator.rollout.strategy import StageType
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import BarrierRecord, RolloutStore

__all__ = [
    "BarrierState",
    "EndStageAnswer",
    "PollAnswer",
    "RolloutManager",
    "RolloutReport",
    "StageCounts",
    "StageReportRow",
]

log = logging.getLogger(__name__)

_MAX_ID = 256


@attrs.frozen
class StageReportRow:
    """One stage across the rollout's children: how many are in each status, and the
    call-weighted aggregate of their summaries (the shape of a child's summary)."""

    name: str
    counts: Mapping[str, int]
    aggregate: StageSummary | None


@attrs.frozen
class RolloutReport:
    rollout: Rollout
    children: tuple[ChildRelease, ...]
    stages: tuple[StageReportRow, ...]
    statuses: Mapping[str, int]
    outcomes: Mapping[str, int]
    lost: tuple[str, ...]


_FINGERPRINT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


_KEYED = "area_key"  # keeps fingerprints from keys apart from those of JSON texts


def _area_fingerprint(area: object) -> int:
    try:
        return hash(_FINGERPRINT.encode(area))
    except (TypeError, ValueError, RecursionError):
        return 0  # not JSON: parsing will say what is wrong


@attrs.frozen
class BarrierState:
    """A ``WaitForSignal`` stage's barrier: ``ready`` when the policy's condition holds among
    the ``taking_part`` children (``ready_count`` of them wait or are told to end); ``waiting``
    are the children waiting on it now."""

    open: bool
    ready: bool
    waiting: tuple[ChildRelease, ...]
    taking_part: int
    ready_count: int


@attrs.frozen
class StageCounts:
    """Where one stage stands among a rollout's targeted children, from the counters the
    manager keeps (no child is read): ``taking_part`` children are Todo or Doing, not lost, with
    the stage not final, ``ready_count`` of them wait on it or were told to end it; ``ready``
    when the policy's quorum of them is ready (:class:`BarrierState`'s ``ready``); ``waiting``
    children are ``SuccessWaiting`` now; ``final`` children finished the stage (Completed,
    Failure or Error), ``completed`` of them Completed. ``open``: the barrier opened."""

    open: bool
    ready: bool
    taking_part: int
    ready_count: int
    waiting: int
    final: int
    completed: int


@attrs.define
class _Barrier:
    """A WaitForSignal stage's barrier: open once the policy's condition held."""

    open: bool = False
    first_waiting_at: float | None = None


_ACTIVE = frozenset({ReleaseStatus.TODO, ReleaseStatus.DOING})
_READY = frozenset({StageStatus.SUCCESS_WAITING, StageStatus.SHOULD_END})


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
        active = state.status in _ACTIVE
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
            active = status in _ACTIVE
            for name, stage_status in zip(stage_names, statuses, strict=True):
                bucket = tally.counts[name]
                key = (active, stage_status)
                bucket[key] = bucket.get(key, 0) + n
        for name, child_ids in waiting.items():
            tally.waiting[name] = dict.fromkeys(child_ids)
        return tally

    def add_todo(self, count: int, sign: int) -> None:
        """``count`` children targeted (or withdrawn): Todo, every stage Pending."""
        key = (True, StageStatus.PENDING)
        for counts in self.counts.values():
            counts[key] = counts.get(key, 0) + sign * count


class RolloutManager:
    """Serves the edge-rollout protocol to children and runs rollouts over them.

    ``lost_after`` (seconds): a child that has not polled for that long is *lost* and no longer
    holds up barriers. ``clock``: seconds, injectable for tests; by default a monotonic clock,
    or wall-clock time over a ``shared`` store (whose times every process must agree on).
    ``refresh`` (seconds): over a shared store, how old what this manager knows of other
    processes' changes may be (see the module documentation).
    """

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        lost_after: float = 60.0,
        clock: Callable[[], float] | None = None,
        refresh: float = 1.0,
    ) -> None:
        self.store = store if store is not None else MemoryRolloutStore()
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

    async def load(self) -> None:
        """Rebuild the in-memory indexes from the store (a manager restarted over a store)."""
        self._tallies.clear()
        self._barriers.clear()
        self._lost_at = None
        self._child_change = 0
        self._synced_at = self._clock()
        await self._sync_children()
        for rollout in await self.store.list_rollouts(
            states={RolloutState.ACTIVE, RolloutState.PAUSED}
        ):
            self._targets[rollout.match].add(rollout.id, rollout.target)
            await self._find_eligible(rollout)

    async def _sync_children(self) -> list[Child]:
        """Index the children saved since the last look (by this or another process)."""
        saved, self._child_change = await self.store.children_since(self._child_change)
        changed = []
        for child in saved:
            self._children_count[child.id] = child.number_of_children
            if child.id in self._children and self._children.area(child.id) == child.area:
                continue  # (saved by this manager, or a change of its count only)
            self._fingerprints[child.id] = 0  # its next poll here is parsed again
            changed.append(child)
        self._children.add_many((child.id, child.area) for child in changed)
        return changed

    async def _sync(self, *, force: bool = False) -> None:
        """Over a shared store: take in the children and rollouts other processes registered,
        moved, started or stopped (at most every ``refresh`` seconds unless ``force``)."""
        if not self.shared:
            return
        now = self._clock()
        if not force and self._synced_at is not None and 0 <= now - self._synced_at < self.refresh:
            return
        self._synced_at = now
        changed = await self._sync_children()
        live = {
            r.id: r
            for r in await self.store.list_rollouts(
                states={RolloutState.ACTIVE, RolloutState.PAUSED}
            )
        }
        for rollout_id in [r for r in self._eligible if r not in live]:
            self._eligible.pop(rollout_id)
            for index in self._targets.values():
                index.discard(rollout_id)
        newcomers: dict[str, list[str] | None] = {}
        for rollout in live.values():
            if rollout.id not in self._eligible:
                self._targets[rollout.match].add(rollout.id, rollout.target)
                await self._find_eligible(rollout)
                newcomers[rollout.id] = None  # (every eligible child)
        for child in changed:  # moved or new: which rollouts reach it now
            reached = set(self._targets["intersects"].match(child.area, "intersects"))
            reached.update(self._targets["within"].match(child.area, "contains"))
            for rollout_id, eligible in self._eligible.items():
                if rollout_id in reached:
                    if child.id not in eligible:
                        found = newcomers.setdefault(rollout_id, [])
                        if found is not None:
                            found.append(child.id)
                    eligible[child.id] = child.area
                else:
                    eligible.pop(child.id, None)
        # A rollout started elsewhere, or a child registered elsewhere, may reach children the
        # other process did not know of: admit them (targeting is idempotent).
        for rollout_id, new in newcomers.items():
            rollout = live[rollout_id]
            if rollout.state is RolloutState.ACTIVE:
                await self._admit(rollout, new)

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
    ) -> Rollout:
        """Deploy ``bundle`` to the children whose area reaches ``target``.

        ``match="within"`` asks for children whose area lies inside the target instead of
        merely intersecting it. Started at once unless ``start=False``. ``gated`` leaves the
        opening of stage barriers to :meth:`open_barrier` (a relay's parent decides).
        """
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
        )
        stored = await self.store.add_rollout(rollout, bundle)
        if start:
            stored = await self.start(stored.id)
        return stored

    async def _operate(self, rollout_id: str, action: str, reason: str | None = None) -> Rollout:
        sources, dest = _OPERATIONS[action]
        current = await self.store.get_rollout(rollout_id)
        if current.state not in sources:
            raise InvalidTransitionError(
                "rollout",
                current.state.value,
                action,
                subject=rollout_id,
                hint=f"only a rollout that is {' or '.join(s.value for s in sources)} can be "
                f"{_PAST[action]}",
            )
        return await self.store.set_rollout_state(rollout_id, sources, dest, reason=reason)

    async def start(self, rollout_id: str) -> Rollout:
        """Offer a draft rollout to every child its target reaches (and to later ones)."""
        await self._sync(force=True)
        rollout = await self._operate(rollout_id, "start")
        await self._tally(rollout.id)
        self._targets[rollout.match].add(rollout.id, rollout.target)
        await self._find_eligible(rollout)
        await self._admit(rollout)
        return rollout

    async def _find_eligible(self, rollout: Rollout) -> None:
        eligible = self._eligible.setdefault(rollout.id, {})
        for child_id in self._children.match(rollout.target, rollout.match):
            if child_id not in eligible:
                eligible[child_id] = self._children.area(child_id)

    async def _admit(self, rollout: Rollout, newcomers: list[str] | None = None) -> None:
        """Offer the rollout to the children its policy admits now (or abort it);
        ``newcomers``: only these became eligible since the last look."""
        if rollout.state is not RolloutState.ACTIVE:
            return
        eligible = self._eligible.get(rollout.id, {})
        if isinstance(rollout.policy, GlobalIncremental):
            # Everyone at once: no need to look at anybody's state.
            await self._target(rollout.id, list(eligible) if newcomers is None else newcomers)
            return
        states = {c.child_id: c for c in await self.store.child_releases(rollout.id)}
        seen = await self.store.last_seen(states)
        now = self._clock()
        decision = admit(
            rollout.policy,
            sorted(eligible) if self.shared else list(eligible),
            states,
            lost=lambda child: now - seen.get(child, -1e18) > self.lost_after,
            area_of=eligible.__getitem__,
        )
        if decision.abort:
            await self.abort(rollout.id, reason=decision.abort)
        elif decision.admit:
            await self._target(rollout.id, decision.admit)

    async def pause(self, rollout_id: str) -> Rollout:
        """Stop offering the rollout and stop ending stages; children keep what they run."""
        return await self._operate(rollout_id, "pause")

    async def resume(self, rollout_id: str) -> Rollout:
        """Undo :meth:`pause`; barriers that became ready meanwhile open at the next report."""
        await self._sync(force=True)
        rollout = await self._operate(rollout_id, "resume")
        await self._admit(rollout)
        return rollout

    async def abort(self, rollout_id: str, *, reason: str = "aborted by the operator") -> Rollout:
        """Stop the rollout: children that have not fetched it never will, and children running
        it are told to roll back (``end_stage`` answers ``{"end_stage": true, "action":
        "rollback"}``)."""
        rollout = await self._operate(rollout_id, "abort", reason)
        self._targets[rollout.match].discard(rollout_id)
        self._eligible.pop(rollout_id, None)
        await self._withdraw(rollout_id, await self.store.targeted(rollout_id))
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
        return [c for c in children if now - seen.get(c.id, -1e18) <= self.lost_after]

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
        lost = tuple(
            c.child_id for c in children if now - seen.get(c.child_id, -1e18) > self.lost_after
        )
        rows = []
        for name in bundle.strategy.stage_names:
            counts: dict[str, int] = {}
            summaries: list[StageSummary] = []
            for child in children:
                stage = child.stages[name]
                counts[stage.status.wire_name] = counts.get(stage.status.wire_name, 0) + 1
                if isinstance(stage.summary, StageSummary):
                    summaries.append(stage.summary)
            rows.append(StageReportRow(name, counts, aggregate(summaries)))
        statuses: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        for child in children:
            statuses[child.status.wire_name] = statuses.get(child.status.wire_name, 0) + 1
            if child.outcome is not Outcome.NONE:
                outcomes[child.outcome.value] = outcomes.get(child.outcome.value, 0) + 1
        return RolloutReport(rollout, tuple(children), tuple(rows), statuses, outcomes, lost)

    # -- the child protocol ------------------------------------------------------------------
    async def poll(
        self,
        child_id: object,
        area: object,
        number_of_children: object = 0,
        *,
        area_key: bytes | None = None,
    ) -> PollAnswer:
        """``POST /poll``: register or refresh a child; the first release waiting for it.

        An empty id registers a new child under a fresh id; an unknown id is registered as
        given. Raises ValidationError/GeoJSONError (400) for a bad id, count or area.

        A child's area is parsed when it differs from the one it gave before, which is told by
        a fingerprint of its JSON; ``area_key``, bytes that are equal only where the areas are
        (the HTTP app gives the request's body), is the fingerprint's cheaper stand-in.
        """
        problems = []
        if not isinstance(child_id, str) or len(child_id) > _MAX_ID:
            problems.append(("id", f"must be a string of at most {_MAX_ID} characters"))
        if (
            isinstance(number_of_children, bool)
            or not isinstance(number_of_children, int)
            or not 0 <= number_of_children < 2**31
        ):
            problems.append(("number_of_children", "must be a non-negative integer"))
        if problems:
            raise ValidationError("invalid poll", problems)
        assert isinstance(child_id, str)
        assert isinstance(number_of_children, int)
        if not child_id:
            child_id = new_id("CH")
        fingerprint = _area_fingerprint(area) if area_key is None else hash((_KEYED, area_key))
        if fingerprint == 0 or self._fingerprints.get(child_id) != fingerprint:
            parsed = Area.from_geojson(area)
            await self._register(child_id, parsed, number_of_children, fingerprint)
        elif self._children_count.get(child_id) != number_of_children:
            child = await self.store.get_child(child_id)
            await self.store.save_child(attrs.evolve(child, number_of_children=number_of_children))
            self._children_count[child_id] = number_of_children
        await self.store.touch_child(child_id, self._clock())
        if child_id in self._lost:
            self._lost_at = None  # back from the lost
        offer = await self.store.first_offer(child_id)
        if offer and number_of_children:
            return PollAnswer(child_id, offer, await self._target_geojson(offer))
        return PollAnswer(child_id, offer)

    async def _target_geojson(self, rollout_id: str) -> Mapping[str, Any]:
        cached = self._target_json.get(rollout_id)
        if cached is None:
            cached = (await self.store.get_rollout(rollout_id)).target.to_geojson()
            self._target_json[rollout_id] = cached
        return cached

    async def _register(self, child_id: str, area: Area, count: int, fingerprint: int) -> None:
        """Register a new child, or a child's new area. Registrations that arrive while others
        are being written are written together, as one batch (a fleet starting at once: one
        read, one save and one targeting per rollout for many children, not for each)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._registering.append((child_id, area, count, fingerprint, done))
        registrar = self._registrar
        if registrar is None or registrar.done() or registrar.get_loop() is not loop:
            self._registrar = loop.create_task(self._write_registrations())
        await done

    async def _write_registrations(self) -> None:
        """Write the waiting registrations, batch after batch, until none is left; each waiting
        poll learns how its batch went."""
        batch: list[tuple[str, Area, int, int, asyncio.Future[None]]] = []
        try:
            while self._registering:
                batch, self._registering = self._registering, []
                await self._register_many([(c, a, n, f) for c, a, n, f, _ in batch])
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)
                batch = []
        except BaseException as error:
            # This batch failed (or the writer was stopped): so did every registration still
            # waiting (their polls raise; their children poll again).
            failed, self._registering = batch + self._registering, []
            for child_id, *_, done in failed:
                # Its next poll registers it again, whatever this batch got to do.
                self._fingerprints.pop(child_id, None)
                self._children.discard(child_id)
                if not done.done():
                    done.set_exception(
                        error if isinstance(error, Exception) else asyncio.CancelledError()
                    )
            if not isinstance(error, Exception):
                raise

    async def _register_many(self, batch: list[tuple[str, Area, int, int]]) -> None:
        latest: dict[str, tuple[Area, int, int]] = {}  # child -> the last area, count, print
        for child_id, area, count, fingerprint in batch:
            latest.pop(child_id, None)
            latest[child_id] = (area, count, fingerprint)
        olds = await self.store.get_children(latest)
        now = self._clock()
        await self._sync()  # (over a shared store: the rollouts other processes started)
        saving = []
        for child_id, (area, count, _) in latest.items():
            old = olds.get(child_id)
            child = Child(child_id, area, count, old.registered_at if old else now)
            if child != old:
                saving.append(child)
        await self.store.save_children(saving)
        newcomers: dict[str, list[str]] = {}  # rollout -> children its target reaches now
        moved: list[tuple[str, set[str]]] = []  # (child, the rollouts that reach it now)
        for child_id, (area, count, fingerprint) in latest.items():
            old = olds.get(child_id)
            changed = old is None or old.area != area
            self._fingerprints[child_id] = fingerprint
            self._children_count[child_id] = count
            if not changed and child_id in self._children:
                continue
            self.children_version += 1
            self._children.add(child_id, area)
            reached = set(self._targets["intersects"].match(area, "intersects"))
            reached.update(self._targets["within"].match(area, "contains"))
            for rollout_id in reached:
                newcomers.setdefault(rollout_id, []).append(child_id)
            if changed and old is not None:
                moved.append((child_id, reached))
        for rollout_id in sorted(newcomers):
            rollout = await self.store.get_rollout(rollout_id)
            if rollout.state in (RolloutState.ACTIVE, RolloutState.PAUSED):
                eligible = self._eligible.setdefault(rollout_id, {})
                for child_id in newcomers[rollout_id]:
                    eligible[child_id] = latest[child_id][0]
                await self._admit(rollout, newcomers[rollout_id])
        # Moved away: take back what they have not fetched yet.
        leaving: dict[str, list[str]] = {}
        for child_id, reached in moved:
            for rollout_id, eligible in self._eligible.items():
                if rollout_id not in reached and eligible.pop(child_id, None) is not None:
                    leaving.setdefault(rollout_id, []).append(child_id)
        for rollout_id, child_ids in leaving.items():
            await self._withdraw(rollout_id, child_ids)

    async def get_release(self, child_id: object, release_id: object) -> str:
        """``GET /release``: the strategy text; the child's release turns ``Doing`` and its
        first stage ``InProgress``. NotFoundError for an unknown release or one not meant for
        the child (or aborted); ValidationError for a missing parameter."""
        child_id, release_id = self._ids(child_id, release_id)
        rollout = await self.store.get_rollout(release_id)
        if rollout.state in (RolloutState.ABORTED, RolloutState.DRAFT):
            raise NotFoundError("release", release_id)
        bundle = await self.store.get_bundle(release_id)
        first = bundle.strategy.first_stage.name
        for _attempt in range(5):
            state = await self.store.child_release(release_id, child_id)
            if state.status in (ReleaseStatus.DONE, ReleaseStatus.FAILED):
                raise NotFoundError("release for child", f"{release_id}/{child_id}")
            status = release_step(state.status, "fetch", subject=child_id)
            stages = dict(state.stages)
            if stages[first].status is StageStatus.PENDING:
                now = self._clock()
                stages[first] = ChildStage(StageStatus.IN_PROGRESS, None, now, now)
            try:
                await self._put(state, attrs.evolve(state, status=status, stages=stages))
            except ConcurrentUpdateError:
                continue
            return bundle.strategy_text
        raise ConflictError(f"release {release_id} for {child_id} keeps changing; ask again")

    async def get_functions(self, release_id: object) -> bytes:
        """``GET /release/functions/{id}``: the function archive, byte for byte."""
        if not isinstance(release_id, str) or not release_id:
            raise ValidationError("invalid request", [("release_id", "is required")])
        return (await self.store.get_bundle(release_id)).archive.data

    async def submit_result(self, body: object) -> None:
        """``POST /result`` (either encoding): apply each stage summary in order.

        ValidationError (400) for a malformed body, NotFoundError (404) for an unknown child,
        release or stage, InvalidTransitionError (409) for a status change the stage machine
        or the stage's type does not allow. A repeated identical report changes nothing.
        """
        report = parse_result(body)
        for attempt in range(5):
            try:
                await self._apply(report)
                return
            except ConcurrentUpdateError:
                if attempt == 4:
                    raise ConflictError("the child's state keeps changing; report again") from None

    async def _apply(self, report: ResultReport) -> None:
        await self.store.get_child(report.child_id)
        rollout = await self.store.get_rollout(report.release_id)
        bundle = await self.store.get_bundle(rollout.id)
        before = await self.store.child_release(rollout.id, report.child_id)
        state = before
        last = len(report.reports) - 1
        for i, stage_report in enumerate(report.reports):
            state = self._apply_stage(rollout, bundle, state, stage_report, last=i == last)
        if state != before:
            await self._put(before, attrs.evolve(state, acknowledged=True))
            for name, stage in state.stages.items():
                if stage.status is StageStatus.SUCCESS_WAITING:
                    await self._check_barrier(rollout, name)
            if state.status is not before.status:  # finished: the next group or wave may go
                await self._admit(rollout)
                await self._complete_if_finished(rollout)

    def _apply_stage(
        self,
        rollout: Rollout,
        bundle: ReleaseBundle,
        state: ChildRelease,
        report: StageReport,
        *,
        last: bool = True,
    ) -> ChildRelease:
        strategy = bundle.strategy
        subject = f"{state.child_id}/{rollout.id}"
        name = report.stage_name or state.live_stage
        if name is None:
            raise InvalidTransitionError(
                "stage",
                "Pending",
                f"report {report.status.wire_name}",
                subject=subject,
                hint="the child has no stage in progress to report on",
            )
        stage_def = strategy.stage(name)  # NotFoundError for an unknown stage
        current = state.stage(name)
        if current.status is report.status and current.summary == report.summary:
            return state  # an identical repeat changes nothing
        if (
            report.status is StageStatus.SUCCESS_WAITING
            and current.status is StageStatus.SHOULD_END
        ):
            return state  # still waiting, as far as the child knows: the barrier opened already
        if state.status is not ReleaseStatus.DOING:
            raise InvalidTransitionError(
                "child release",
                state.status.wire_name,
                "report",
                subject=subject,
                hint="results are taken only while the release is Doing",
            )
        trigger = STAGE_TRIGGER_FOR.get(report.status)
        if trigger is None:
            raise InvalidTransitionError(
                "stage",
                current.status.wire_name,
                f"report {report.status.wire_name}",
                subject=f"{subject}/{name}",
                hint="a child reports only final or waiting states",
            )
        waits = stage_def.type is StageType.WAIT_FOR_SIGNAL
        if report.status is StageStatus.SUCCESS_WAITING and not waits:
            raise InvalidTransitionError(
                "stage",
                current.status.wire_name,
                "wait",
                subject=f"{subject}/{name}",
                hint="only a WaitForSignal stage waits for the parent",
            )
        if (
            report.status is StageStatus.COMPLETED
            and waits
            and current.status is not StageStatus.SHOULD_END
        ):
            raise InvalidTransitionError(
                "stage",
                current.status.wire_name,
                "complete",
                subject=f"{subject}/{name}",
                hint="a WaitForSignal stage completes only after the parent said ShouldEnd",
            )
        new_status = stage_step(current.status, trigger, subject=f"{subject}/{name}")
        now = self._clock()
        stages = dict(state.stages)
        stages[name] = ChildStage(new_status, report.summary, now, current.started_at or now)
        if not new_status.is_final:
            return attrs.evolve(state, stages=stages)
        nxt = report.next_stage
        if not nxt and not last:
            # Several summaries in one body: only the last carries the child's next stage (the
            # original agent's encoding); the earlier ones went where the strategy says.
            nxt = (
                stage_def.end_action.on_success
                if new_status is StageStatus.COMPLETED
                else stage_def.end_action.on_failure
            )
        if nxt and nxt not in ("rollout", "rollback"):
            state.stage(nxt)  # NotFoundError for an unknown next stage
            # From the stage's state after this report: a stage cannot follow itself.
            follow = stages[nxt]
            step = stage_step(follow.status, "begin", subject=f"{subject}/{nxt}")
            stages[nxt] = ChildStage(step, None, now, now)
            return attrs.evolve(state, stages=stages)
        # The child ended the release: rolled out or back.
        action = nxt or (
            stage_def.end_action.on_success
            if new_status is StageStatus.COMPLETED
            else stage_def.end_action.on_failure
        )
        if action in ("rollout", "rollback"):
            outcome = Outcome.ROLLED_OUT if action == "rollout" else Outcome.ROLLED_BACK
        else:
            # The child ended although the strategy names a next stage: it kept the new version
            # if the stage completed, the base one otherwise.
            completed = new_status is StageStatus.COMPLETED
            outcome = Outcome.ROLLED_OUT if completed else Outcome.ROLLED_BACK
        trigger = "finish" if new_status is StageStatus.COMPLETED else "fail"
        return attrs.evolve(
            state,
            stages=stages,
            status=release_step(state.status, trigger, subject=subject),
            outcome=outcome,
        )

    async def end_stage(
        self, child_id: object, strategy_id: object, stage_name: object
    ) -> EndStageAnswer:
        """``POST /end_stage``: whether the stage should end (``ShouldEnd`` or later)."""
        if isinstance(strategy_id, int) and not isinstance(strategy_id, bool):
            strategy_id = str(strategy_id)
        child_id, release_id = self._ids(child_id, strategy_id)
        if not isinstance(stage_name, str) or not stage_name:
            raise ValidationError("invalid end_stage", [("stage_name", "is required")])
        rollout = await self.store.get_rollout(release_id)
        state = await self.store.child_release(release_id, child_id)
        stage = state.stage(stage_name)
        if rollout.state is RolloutState.ABORTED:
            return EndStageAnswer(True, "rollback")
        if stage.status is StageStatus.SUCCESS_WAITING:
            await self._check_barrier(rollout, stage_name)
            stage = (await self.store.child_release(release_id, child_id)).stage(stage_name)
        return EndStageAnswer(stage.status >= StageStatus.SHOULD_END)

    # -- orchestration -----------------------------------------------------------------------
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
                if status in _READY:
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
            if state.status in _ACTIVE and not status.is_final:
                part += 1
                if status in _READY:
                    ready += 1
        self._lost_cache[(rollout_id, stage_name)] = (key, (part, ready))
        return part, ready

    async def open_barrier(self, rollout_id: str, stage_name: str) -> None:
        """Open a stage's barrier now (a relay does, when its parent says the stage ends): every
        child waiting on it, and every child that waits on it later, is told to end it."""
        rollout = await self.store.get_rollout(rollout_id)
        if stage_name not in (await self._tally(rollout_id)).counts:
            raise NotFoundError("stage", stage_name)
        await self._open(rollout_id, stage_name)
        await self._check_barrier(rollout, stage_name)

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

    async def _open(self, rollout_id: str, stage_name: str) -> _Barrier:
        record = await self.store.mark_barrier(rollout_id, stage_name, open=True)
        return self._remember(rollout_id, stage_name, record)

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
            if counts.ready:
                barrier = await self._open(rollout.id, stage_name)
            elif (
                policy.barrier_timeout is not None
                and barrier.first_waiting_at is not None
                and now - barrier.first_waiting_at > policy.barrier_timeout
            ):
                await self.abort(
                    rollout.id,
                    reason=f"stage {stage_name!r}: {counts.ready_count} of {counts.taking_part} "
                    f"children ready after the barrier time-out of {policy.barrier_timeout:g}s",
                )
                return
        if barrier.open:
            if self.shared:  # children of other processes wait too
                waiting = dict.fromkeys(await self.store.waiting(rollout.id, stage_name))
            for child_id in list(waiting):
                child = await self.store.child_release(rollout.id, child_id)
                stages = dict(child.stages)
                old = stages[stage_name]
                if old.status is not StageStatus.SUCCESS_WAITING:
                    continue
                stages[stage_name] = attrs.evolve(
                    old, status=stage_step(old.status, "signal"), changed_at=now
                )
                # A child that moved meanwhile is seen again by the next check.
                with contextlib.suppress(ConcurrentUpdateError):
                    await self._put(child, attrs.evolve(child, stages=stages))

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

    async def _put(self, expected: ChildRelease, new: ChildRelease) -> None:
        """Compare-and-set a child's state (ConcurrentUpdateError) and count the change."""
        await self.store.put_child_release(expected, new)
        tally = self._changed(new.rollout_id)
        if tally is not None:
            tally.add(expected, -1)
            tally.add(new, 1)

    async def _target(self, rollout_id: str, child_ids: Iterable[str]) -> None:
        added = await self.store.target(rollout_id, child_ids)
        tally = self._changed(rollout_id)
        if tally is not None and added:
            tally.add_todo(len(added), 1)

    async def _withdraw(self, rollout_id: str, child_ids: Iterable[str]) -> None:
        # Only Todo children are withdrawn, and a Todo child has every stage Pending (it never
        # fetched the release).
        removed = await self.store.withdraw(rollout_id, child_ids)
        tally = self._changed(rollout_id)
        if tally is not None and removed:
            tally.add_todo(len(removed), -1)

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
            at = seen.get(child_id, -1e18)
            if now - at > self.lost_after:
                lost.add(child_id)
            elif at < ref:
                ref = at
        self._lost, self._lost_at, self._lost_ref = frozenset(lost), now, ref
        self._lost_version += 1
        return self._lost

    async def tick(self) -> None:
        """Re-judge every open question that time alone can settle: barriers and groups held
        up by children that went quiet (lost), barrier time-outs. Call it periodically."""
        await self._sync()
        for rollout in await self.store.list_rollouts(states={RolloutState.ACTIVE}):
            if not isinstance(rollout.policy, GlobalIncremental):
                await self._admit(rollout)  # lost children no longer hold up the next group
                rollout = await self.store.get_rollout(rollout.id)
                if rollout.state is not RolloutState.ACTIVE:
                    continue
            bundle = await self.store.get_bundle(rollout.id)
            for stage in bundle.strategy.stages:
                if stage.type is StageType.WAIT_FOR_SIGNAL:
                    await self._check_barrier(rollout, stage.name)
            await self._complete_if_finished(rollout)

    async def _complete_if_finished(self, rollout: Rollout) -> None:
        """Complete an active rollout once every child it reached has finished it (Done or
        Failed) and no eligible child is left to offer it to: from then on it is offered to
        nobody (children registering later in its area get a rollout of their own)."""
        if rollout.state is not RolloutState.ACTIVE:
            return
        tally = await self._tally(rollout.id)
        # Every targeted child has every stage: the first stage's buckets count them all.
        buckets = next(iter(tally.counts.values()), {})
        targeted = sum(buckets.values())
        if targeted <= 0 or any(n > 0 for (active, _), n in buckets.items() if active):
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
                rollout.id, {RolloutState.ACTIVE}, RolloutState.COMPLETED, reason=reason
            )
        except ConcurrentUpdateError:
            return  # paused, aborted or completed meanwhile (by another process, say)
        log.info("rollout %s completed: %s", rollout.id, reason)
        self._targets[rollout.match].discard(rollout.id)
        self._eligible.pop(rollout.id, None)

    @staticmethod
    def _ids(child_id: object, release_id: object) -> tuple[str, str]:
        problems = []
        if not isinstance(child_id, str) or not child_id or len(child_id) > _MAX_ID:
            problems.append(("childID", "is required (a string)"))
        if not isinstance(release_id, str) or not release_id or len(release_id) > _MAX_ID:
            problems.append(("releaseID", "is required (a string)"))
        if problems:
            raise ValidationError("invalid request", problems)
        assert isinstance(child_id, str)
        assert isinstance(release_id, str)
        return child_id, release_id


_RS = RolloutState
_OPERATIONS: dict[str, tuple[frozenset[RolloutState], RolloutState]] = {
    "start": (frozenset({_RS.DRAFT}), _RS.ACTIVE),
    "pause": (frozenset({_RS.ACTIVE}), _RS.PAUSED),
    "resume": (frozenset({_RS.PAUSED}), _RS.ACTIVE),
    "abort": (frozenset({_RS.DRAFT, _RS.ACTIVE, _RS.PAUSED}), _RS.ABORTED),
}
_PAST = {"start": "started", "pause": "paused", "resume": "resumed", "abort": "aborted"}
