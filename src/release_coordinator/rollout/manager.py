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
and which ones wait (a tally, updated wherever a child's state changes), and which
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

**Layout, by job.** :class:`RolloutManager` (here) is the public facade and serves the child
protocol (poll, release, functions, results, end of stage); it is composed of one layer per job,
each a base class of the next: :mod:`~release_coordinator.rollout.bookkeeping` (the state, and
the writes that keep counters and indexes true), :mod:`~release_coordinator.rollout.matching`
(registering children, matching them with rollouts, admitting them by policy),
:mod:`~release_coordinator.rollout.ticks` (barriers, lost children, completion, the periodic
tick) and :mod:`~release_coordinator.rollout.operations` (the operator's actions and reports),
with :mod:`~release_coordinator.rollout.approvals` (what waits for an operator's approval,
below the ticks) and :mod:`~release_coordinator.rollout.approving` (approving a stage, the
what-if of a draft, on top); the report types are in :mod:`~release_coordinator.rollout.reports`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
from release_coordinator.rollout.approving import _Approving
from release_coordinator.rollout.archive import FunctionArchive
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.judging import ROLLED_BACK, SIGNAL, judge_late, told_to_roll_back
from release_coordinator.rollout.models import (
    ChildRelease,
    ChildStage,
    Outcome,
    ReleaseBundle,
    Rollout,
    RolloutState,
)
from release_coordinator.rollout.results import ResultReport, StageReport, parse_result
from release_coordinator.rollout.strategy import StageType
from release_coordinator.rollout.wire import EndStageAnswer, PollAnswer

__all__ = ["RolloutManager"]

_MAX_ID = 256

_FINGERPRINT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


_KEYED = "area_key"  # keeps fingerprints from keys apart from those of JSON texts


def _area_fingerprint(area: object) -> int:
    try:
        return hash(_FINGERPRINT.encode(area))
    except (TypeError, ValueError, RecursionError):
        return 0  # not JSON: parsing will say what is wrong


class RolloutManager(_Approving):
    """Serves the edge-rollout protocol to children and runs rollouts over them.

    ``lost_after`` (seconds): a child that has not polled for that long is *lost* and no longer
    holds up barriers. ``clock``: seconds, injectable for tests; by default a monotonic clock,
    or wall-clock time over a ``shared`` store (whose times every process must agree on).
    ``refresh`` (seconds): over a shared store, how old what this manager knows of other
    processes' changes may be (see the module documentation). ``owner`` names this manager
    among the processes sharing the store (by default host, pid and a random suffix), and
    ``lease_seconds`` is how long its hold on the background loop's lease lasts after a
    renewal: over a shared store one manager at a time runs the loop's rounds (see
    :data:`~release_coordinator.rollout.ticks.LOOP_LEASE`, :attr:`holds_lease`).

    What time alone settles (lost children, barrier and child time-outs, the completion they
    allow) is judged by :meth:`tick`, which the manager's background loop calls:
    ``async with manager.running():`` (or :meth:`start_loops` and :meth:`stop_loops`;
    :attr:`is_running`) in the host's lifespan, or ``rollout_app(..., lifespan=True)`` served
    on its own. :meth:`start` is the operator's action that starts a draft rollout.
    :class:`~release_coordinator.rollout.sync.SyncRolloutManager` is the blocking facade.
    """

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
        offer, told, hint = await self._polled(child_id)
        if offer and number_of_children:
            return PollAnswer(child_id, offer, await self._target_geojson(offer), told, hint)
        return PollAnswer(child_id, offer, aborted=told, next_poll=hint)

    async def poll_again(
        self, child_id: str, area_key: bytes, number_of_children: int
    ) -> tuple[str, tuple[str, ...], int] | None:
        """A poll of a child that polls as it did last time here: the same ``child_id`` (not
        empty), ``area_key`` (see :meth:`poll`) and ``number_of_children``. It does what
        :meth:`poll` does and answers the parts of the poll's answer that can change between
        two such polls: the offer (``new_release``), the ``aborted`` releases and the
        ``next_poll`` hint; the rest of the answer (its id, and the offer's target area when
        the child has children) follows from them. None, with nothing done, when the poll
        must take :meth:`poll`'s way: the manager holds another area or count for the child
        (or none). The HTTP app answers a body it has seen before this way (see
        :class:`~release_coordinator.server.poll_path.PollEndpoint`)."""
        fingerprint = self._fingerprints.get(child_id)
        if (
            not fingerprint
            or fingerprint != hash((_KEYED, area_key))
            or self._children_count.get(child_id) != number_of_children
        ):
            return None
        return await self._polled(child_id)

    async def _polled(self, child_id: str) -> tuple[str, tuple[str, ...], int]:
        """A registered child's poll: seen now (:meth:`_seen`, inlined: hot); its first offer,
        the aborted releases it runs and its next-poll hint (:mod:`~.pacer`)."""
        await self.store.touch_child(child_id, self._clock())
        if child_id in self._lost:
            self._lost_at = None  # back from the lost
        offer = await self.store.first_offer(child_id)
        aborted = self._aborted_for.get(child_id)
        told = tuple(sorted(aborted)) if aborted else ()
        return offer, told, self._poll_hint(child_id, offer)

    async def _target_geojson(self, rollout_id: str) -> Mapping[str, Any]:
        cached = self._target_json.get(rollout_id)
        if cached is None:
            cached = (await self.store.get_rollout(rollout_id)).target.to_geojson()
            self._target_json[rollout_id] = cached
        return cached

    async def get_release(self, child_id: object, release_id: object) -> str:
        """``GET /release``: the strategy text (see :meth:`release`)."""
        return (await self.release(child_id, release_id)).strategy_text

    async def release(self, child_id: object, release_id: object) -> ReleaseBundle:
        """The release a child fetches (its strategy; the archive it fetches next): the
        child's release turns ``Doing`` and its first stage ``InProgress``. NotFoundError for
        an unknown release or one not meant for the child (or aborted); ValidationError for a
        missing parameter."""
        child_id, release_id = self._ids(child_id, release_id)
        await self._seen(child_id)
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
            return bundle
        raise ConflictError(f"release {release_id} for {child_id} keeps changing; ask again")

    async def get_functions(self, release_id: object, child_id: object = "") -> bytes:
        """``GET /release/functions/{id}``: the function archive, byte for byte (see
        :meth:`archive`)."""
        return (await self.archive(release_id, child_id)).data

    async def archive(self, release_id: object, child_id: object = "") -> FunctionArchive:
        """The release's function archive, for a child: NotFoundError for an unknown, draft or
        aborted release, and for a named child the release is not meant for. The protocol's
        request does not name the child; when the caller knows it (``child_id``: a child token's
        holder, or the ``childID`` query parameter that this library's agents add), the call
        counts as the child being seen."""
        if not isinstance(release_id, str) or not release_id:
            raise ValidationError("invalid request", [("release_id", "is required")])
        if not isinstance(child_id, str) or len(child_id) > _MAX_ID:
            raise ValidationError(
                "invalid request", [("childID", f"must be at most {_MAX_ID} characters")]
            )
        if child_id:
            await self._seen(child_id)
        rollout = await self.store.get_rollout(release_id)
        if rollout.state in (RolloutState.DRAFT, RolloutState.ABORTED):
            raise NotFoundError("release", release_id)  # offered to nobody (yet, or any more)
        if child_id and await self._not_meant_for(child_id, release_id):
            raise NotFoundError("release for child", f"{release_id}/{child_id}")
        return (await self.store.get_bundle(release_id)).archive

    async def _not_meant_for(self, child_id: str, release_id: str) -> bool:
        try:
            state = await self.store.child_release(release_id, child_id)
        except NotFoundError:
            return True
        return state.status is ReleaseStatus.NO

    async def submit_result(self, body: object) -> str:
        """``POST /result`` (either encoding): apply each stage summary in order. Returns
        ``"rollback"`` when the release's rollout was aborted (the report is then recorded as
        the abort's, never as a roll-out), else ``""``.

        ValidationError (400) for a malformed body, NotFoundError (404) for an unknown child,
        release or stage, InvalidTransitionError (409) for a status change the stage machine
        or the stage's type does not allow. A repeated report (a stage's status already
        recorded, whatever its summary: a child whose answer was lost sends it again, measured
        afresh) changes nothing and is answered as the first one was.
        """
        report = parse_result(body)
        await self._seen(report.child_id)
        for _attempt in range(5):
            try:
                return await self._apply(report)
            except ConcurrentUpdateError:
                continue
        raise ConflictError("the child's state keeps changing; report again")

    async def _apply(self, report: ResultReport) -> str:
        await self.store.get_child(report.child_id)
        rollout = await self.store.get_rollout(report.release_id)
        bundle = await self.store.get_bundle(rollout.id)
        before = await self.store.child_release(rollout.id, report.child_id)
        if before.outcome is Outcome.EXCLUDED:  # the operator excluded it: roll back
            self._reported_on(before.child_id, before.rollout_id)
            return "rollback"
        state = before
        last = len(report.reports) - 1
        for i, stage_report in enumerate(report.reports):  # refuses what it always refused
            state = self._apply_stage(rollout, bundle, state, stage_report, last=i == last)
        if rollout.state is RolloutState.ABORTED:
            return await self._apply_after_abort(before, report)
        await self._refuse_unapproved(rollout, bundle.strategy, before, state)  # (.approvals)
        if state != before:
            await self._put(before, attrs.evolve(state, acknowledged=True))
            for name, stage in state.stages.items():
                if stage.status is StageStatus.SUCCESS_WAITING:
                    await self._check_barrier(rollout, name)
            if state.status is not before.status:  # finished: the next group or wave may go
                await self._admit(rollout)
                await self._complete_if_finished(rollout)
        return ""

    async def _apply_after_abort(self, before: ChildRelease, report: ResultReport) -> str:
        """A report on a release whose rollout was aborted: the child's release ends
        ``Failed``, ``rolled_back`` if the report says the child failed its stage (what a child
        told to roll back reports), else ``aborted``; never rolled out. The answer tells the
        child to roll back, unless it had rolled out before the abort."""
        self._reported_on(before.child_id, before.rollout_id)
        if before.status is not ReleaseStatus.DOING:
            return "" if before.outcome is Outcome.ROLLED_OUT else "rollback"
        failed = any(r.status in (StageStatus.FAILURE, StageStatus.ERROR) for r in report.reports)
        stages = dict(before.stages)
        name = before.live_stage
        now = self._clock()
        if name is not None:
            stage = stages[name]
            stages[name] = attrs.evolve(
                stage, status=stage_step(stage.status, "fail"), changed_at=now
            )
        subject = f"{before.child_id}/{before.rollout_id}"
        await self._put(
            before,
            attrs.evolve(
                before,
                status=release_step(before.status, "fail", subject=subject),
                stages=stages,
                outcome=Outcome.ROLLED_BACK if failed else Outcome.ABORTED,
                acknowledged=True,
            ),
        )
        return "rollback"

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
        if current.status is report.status:
            # A repeat: the child sends its report again when the answer did not reach it (a
            # time-out), measured afresh. The status is recorded; the first summary stands.
            return state
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
                hint="the manager timed the child out (no progress within the policy's "
                "child_timeout)"
                if state.outcome is Outcome.TIMED_OUT
                else "results are taken only while the release is Doing",
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
        await self.store.touch_child(child_id, self._clock())  # self._seen, inlined: hot
        if child_id in self._lost:
            self._lost_at = None
        rollout = await self.store.get_rollout(release_id)
        state = await self.store.child_release(release_id, child_id)
        stage = state.stage(stage_name)
        if (
            rollout.state is RolloutState.ABORTED
            or state.outcome in (Outcome.TIMED_OUT, Outcome.EXCLUDED)
            or told_to_roll_back(rollout, state, stage_name)  # by canary judgement
        ):
            return EndStageAnswer(True, "rollback")  # aborted, or the manager gave up on it
        if stage.status is StageStatus.SUCCESS_WAITING and rollout.state is RolloutState.ACTIVE:
            barrier = await self._barrier(release_id, stage_name)
            if not barrier.open:
                await self._check_barrier(rollout, stage_name)  # may open it
                barrier = await self._barrier(release_id, stage_name)
            if not barrier.open:
                return EndStageAnswer(False)
            late = await judge_late(self, rollout, state, stage_name)  # canary judgement
            if late == ROLLED_BACK:
                return EndStageAnswer(True, "rollback")
            if late != SIGNAL:  # its region's verdict is not in yet
                return EndStageAnswer(False)
            # Open: this child is told now, whoever else is still being told (one write).
            await self._signal(state, stage_name)
            return EndStageAnswer(True)
        return EndStageAnswer(stage.status >= StageStatus.SHOULD_END)

    # -- orchestration -----------------------------------------------------------------------
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
