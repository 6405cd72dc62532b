"""The RolloutManager under random child and operator events (a hypothesis state machine), and
geographic targeting under random polygons.

The machine drives one rollout (GlobalIncremental, random quorum and barrier time-out) over a
few children inside the target and a few outside it, through every child-protocol call with
random (often invalid) arguments, the passing of time and the operator's pause, resume and
abort. After every step it checks, against the store:

(a) every child release and stage status moved only along the transitions the per-child
    machines (``CHILD_RELEASE_MACHINE`` / ``STAGE_MACHINE``) allow from its last observed value
    (a short chain per step, each link allowed);
(b) a stage's barrier opens (the first ``ShouldEnd``) only when the policy's quorum of the live,
    targeted, unfinished children is waiting on it, and only while the rollout is active; a
    child told to end was waiting;
(c) a child outside the target is never offered the release and never fetches it;
(d) final statuses never change;
(e) after an abort, ``end_stage`` tells every child that fetched the release to roll back;
(f) the rollout completes only when every registered child inside the target was offered it
    and has finished it (Done or Failed), and a tick completes an active rollout that is so;
(g) a child times out (Failed, outcome ``timed_out``) only at a tick, never while it waits on
    a barrier, and only after the policy's ``child_timeout`` (random, or none) passed since it
    was last seen making progress;
(h) a repeated abort is accepted and changes nothing;
(i) with a pacing (random: none, maintenance windows, a ramp with a maximum per minute, a
    scheduled start), nothing is offered (no child newly targeted) while the pacing is closed
    (before the start, outside every window), and a ramp never offers more than its rate: in
    any 60 seconds, at most ``start_per_minute * factor ** minutes`` since the start and never
    more than ``max_per_minute``;
(j) every poll answer carries a bounded next-poll hint, the short one when it offers the
    release;
(k) with approvals (random: none, the first stage, the second, both), no child enters a stage
    that needs approval before an operator approved it (approve is a rule: any stage, accepted
    only for one the policy names and a rollout that is not over; again, it changes nothing),
    and the rollout is offered to nobody before its first stage is approved;
(l) the operator's interventions: an excluded child stays Failed with the outcome ``excluded``
    and is never offered the release again (nor retried), a running one is told to roll back
    at ``/end_stage`` and ``/result`` (its report changes nothing); a retry puts exactly the
    failed, not excluded children (or the one named) back to Todo, and a completed rollout
    back to active; exclusion and retry are refused (changing nothing) exactly when the
    rollout's or the child's state does not allow them;
(m) a child of an aborted rollout never ends rolled out after the abort.

Refused calls must raise one of the protocol's errors and change nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from shapely.geometry import shape

from release_coordinator.errors import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.base import MachineSpec
from release_coordinator.fsm.rollout import (
    CHILD_RELEASE_MACHINE,
    STAGE_MACHINE,
    ReleaseStatus,
    StageStatus,
)
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import ChildRelease, Outcome, RolloutState
from release_coordinator.rollout.pacing import Pacing, Ramp, Window
from release_coordinator.rollout.policies import GlobalIncremental
from strategies_geo import multipolygons, polygons

from .test_rollout_manager import Clock, bundle, result, square

T = TypeVar("T")

RELEASE = "42"
WAITING_STAGE = "canary-10"  # WaitForSignal; "ab-50" is A/B
STAGES = ("canary-10", "ab-50")
LOST_AFTER = 30.0
BUNDLE = bundle(RELEASE)  # immutable: parsed once, shared by every run
STRATEGY_TEXT = BUNDLE.strategy_text
TARGET = square(0, 40, 20)  # lon 0..20, lat 40..60

REFUSALS = (ValidationError, NotFoundError, InvalidTransitionError, ConflictError)
RS = ReleaseStatus
SS = StageStatus

#: What may follow what for the rollout itself (operator actions and time-out aborts).
ROLLOUT_MOVES = {
    (RolloutState.ACTIVE, RolloutState.PAUSED),
    (RolloutState.PAUSED, RolloutState.ACTIVE),
    (RolloutState.ACTIVE, RolloutState.ABORTED),
    (RolloutState.PAUSED, RolloutState.ABORTED),
    (RolloutState.ACTIVE, RolloutState.COMPLETED),
}
#: What a retry adds: a completed rollout runs again.
RETRY_MOVES = {(RolloutState.COMPLETED, RolloutState.ACTIVE)}

# The clock starts at 1000 s after the epoch (Thursday 1 January 1970, 00:16:40 UTC): windows
# every day 00:17:00-00:18:30 and 00:20:00-00:22:00; a start 45 s in.
WINDOWS = (Window(17, 90.0), Window(20, 120.0))
RAMP = Ramp(1, factor=2.0, success_threshold=0.5)
MOST_PER_MINUTE = 3
PACINGS = {
    "none": Pacing(),
    "windows": Pacing(windows=WINDOWS),
    "ramp": Pacing(ramp=RAMP, max_per_minute=MOST_PER_MINUTE),
    "start": Pacing(start_at=1045.0),
}

# A child record as the model sees it: None when the child is not targeted (status No).
Snapshot = dict[int, ChildRelease | None]


def reachable(machine: MachineSpec, old: str, new: str, max_steps: int) -> bool:
    """Whether ``new`` follows ``old`` by at most ``max_steps`` allowed transitions."""
    frontier = deque([(old, 0)])
    seen = {old}
    while frontier:
        state, steps = frontier.popleft()
        if state == new:
            return True
        if steps == max_steps:
            continue
        for trigger in machine.triggers:
            if machine.can(state, trigger):
                nxt = machine.table[(state, trigger)]
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append((nxt, steps + 1))
    return False


def release_name(record: ChildRelease | None) -> str:
    return record.status.wire_name if record is not None else RS.NO.wire_name


def stage_name(record: ChildRelease | None, stage: str) -> str:
    return record.stages[stage].status.wire_name if record is not None else SS.PENDING.wire_name


# Odd reports name stages by the part they play for the child right now (resolved when sent),
# by name, not at all (""), or wrongly; any status 0..6 (final ones a bit more often).
ROLES = ("<live>", "<pending>", "<finished>", "<itself>")
report_stages = st.sampled_from([*ROLES[:3], *STAGES, "", "no-such-stage"])
report_statuses = st.one_of(st.integers(0, 6), st.sampled_from([2, 4, 5, 6]))
report_next_stages = st.sampled_from([*ROLES, *STAGES, "", "rollback", "rollout", "junk"])


def resolve(role: str, record: ChildRelease | None, itself: str = "") -> str:
    """The stage a role stands for on this child (a real stage name if there is none)."""
    if role == "<itself>":
        return itself
    if role not in ROLES:
        return role
    if record is None:
        return STAGES[0] if role == "<live>" else STAGES[-1]
    statuses = {name: stage.status for name, stage in record.stages.items()}
    if role == "<live>":
        found = [n for n, s in statuses.items() if s in (SS.IN_PROGRESS, SS.SUCCESS_WAITING)]
        found += [n for n, s in statuses.items() if s is SS.SHOULD_END]
        return found[0] if found else STAGES[0]
    if role == "<pending>":
        found = [n for n, s in statuses.items() if s is SS.PENDING]
    else:
        found = [n for n, s in statuses.items() if s.is_final]
    return found[0] if found else STAGES[-1]


inside_squares = st.tuples(
    st.floats(0.5, 18.5), st.floats(40.5, 58.5), st.floats(0.05, 1.0)
)  # lon, lat, size: strictly inside TARGET
outside_squares = st.tuples(
    st.one_of(st.floats(-40.0, -2.0), st.floats(21.0, 40.0)),
    st.floats(-30.0, 30.0),
    st.floats(0.05, 1.0),
)


class RolloutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.manager = RolloutManager(lost_after=LOST_AFTER, clock=self.clock)
        self.ready = False
        self.areas: list[dict[str, Any]] = []
        self.inside: list[bool] = []
        self.ids: list[str] = []
        self.registered: list[bool] = []
        self.empty_id: list[bool] = []
        self.quorum = 1.0
        self.prev: Snapshot = {}
        self.prev_rollout = RolloutState.ACTIVE
        self.barrier_opened = False
        self.ticking = False
        self.child_timeout: float | None = None
        self.pacing = Pacing()
        self.started_at = 0.0
        self.offers: list[float] = []  # when each child was newly targeted (re-offers too)
        self.excluded: set[int] = set()  # (l) the children the operator excluded
        self.operated: set[int] = set()  # the children the current intervention may move
        self.retrying = False  # the current step is a retry (Failed -> Todo allowed)
        self.approvals: tuple[str, ...] = ()  # the stages the policy needs approved
        self.approved: set[str] = set()  # those an operator approved

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # -- helpers -------------------------------------------------------------------------------
    def child(self, index: int) -> int:
        return index % len(self.areas)

    async def _snapshot(self) -> tuple[RolloutState, Snapshot]:
        store = self.manager.store
        records: Snapshot = {}
        for i, child_id in enumerate(self.ids):
            try:
                records[i] = await store.child_release(RELEASE, child_id)
            except NotFoundError:
                records[i] = None
        return (await store.get_rollout(RELEASE)).state, records

    def snapshot(self) -> tuple[RolloutState, Snapshot]:
        return self.run(self._snapshot())

    async def _poll(self, i: int, count: int = 0) -> Any:
        if not self.registered[i] and self.empty_id[i]:
            answer = await self.manager.poll("", self.areas[i], count)
            assert answer.id
            self.ids[i] = answer.id
        else:
            answer = await self.manager.poll(self.ids[i], self.areas[i], count)
            assert answer.id == self.ids[i]
        self.registered[i] = True
        return answer

    def refused_changes_nothing(self, before: tuple[RolloutState, Snapshot], what: str) -> None:
        after = self.snapshot()
        assert after == before, f"refused {what} changed the store"

    # -- set-up ----------------------------------------------------------------------------------
    @initialize(
        inside=st.lists(inside_squares, min_size=3, max_size=6),
        outside=st.lists(outside_squares, min_size=0, max_size=2),
        quorum=st.sampled_from([0.5, 1.0]),
        barrier_timeout=st.sampled_from([None, None, 10.0, 45.0]),
        child_timeout=st.sampled_from([None, 20.0, 50.0, 3600.0]),
        pacing=st.sampled_from(sorted(PACINGS)),
        approvals=st.sampled_from(
            [(), ("ab-50",), ("ab-50",), ("canary-10",), ("canary-10", "ab-50")]
        ),
        data=st.data(),
    )
    def setup(
        self,
        inside: list[tuple[float, float, float]],
        outside: list[tuple[float, float, float]],
        quorum: float,
        barrier_timeout: float | None,
        child_timeout: float | None,
        pacing: str,
        approvals: tuple[str, ...],
        data: st.DataObject,
    ) -> None:
        for spec, is_inside in [(s, True) for s in inside] + [(s, False) for s in outside]:
            self.areas.append(square(*spec))
            self.inside.append(is_inside)
        n = len(self.areas)
        self.ids = [f"{'in' if self.inside[i] else 'out'}-{i}" for i in range(n)]
        self.registered = [False] * n
        self.empty_id = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), "empty ids")
        early = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), "register early")
        self.quorum = quorum
        for i in range(n):
            if early[i]:
                self.run(self._poll(i))
        self.child_timeout = child_timeout
        self.pacing = PACINGS[pacing]
        policy = GlobalIncremental(
            quorum=quorum,
            barrier_timeout=barrier_timeout,
            child_timeout=child_timeout,
            pacing=self.pacing,
            approvals=approvals,
        )
        self.approvals = approvals
        self.started_at = self.clock.now
        rollout = self.run(self.manager.create_rollout(BUNDLE, TARGET, policy=policy))
        assert rollout.state is RolloutState.ACTIVE
        self.prev_rollout, self.prev = self.snapshot()
        for record in self.prev.values():
            if record is not None:  # offered at the start
                self.check_offer_allowed()
        self.ready = True

    # -- the child protocol (each call is followed by the invariants' check) ----------------
    def do_poll(self, i: int, count: int = 0) -> str:
        answer = self.run(self._poll(i, count))
        self.check_hint(answer)
        state, records = self.snapshot()
        record = records[i]
        if i in self.excluded:  # (l)
            assert answer.new_release == "", f"excluded child {i} was offered the release again"
        if not self.inside[i]:
            assert answer.new_release == "", "a child outside the target was offered the release"
            assert record is None
        else:
            if state is RolloutState.ACTIVE and not self.pacing.is_set and self.first_open():
                # One inside always does: registered (now at the latest) means targeted.
                assert record is not None, "a child inside the target was never targeted"
            offered = (
                state is RolloutState.ACTIVE
                and record is not None
                and (
                    record.status is RS.TODO
                    or (record.status is RS.DOING and not record.acknowledged)
                )
            )
            assert answer.new_release == (RELEASE if offered else ""), (answer, record, state)
            assert (answer.target_area is not None) is bool(offered and count)
        self.check()
        return str(answer.new_release)

    def check_hint(self, answer: Any) -> None:
        """(j) A bounded hint; the short one with an offer."""
        hints = self.manager.poll_hints
        assert answer.next_poll is not None
        assert 1 <= answer.next_poll <= hints.longest
        if answer.new_release:
            assert answer.next_poll == hints.busy

    def do_fetch(self, i: int) -> None:
        before = self.snapshot()
        state, records = before
        record = records[i]
        expect_ok = (
            state in (RolloutState.ACTIVE, RolloutState.PAUSED)
            and record is not None
            and record.status in (RS.TODO, RS.DOING)
        )
        refusal: Exception | None = None
        try:
            text = self.run(self.manager.get_release(self.ids[i], RELEASE))
        except REFUSALS as exc:
            refusal = exc
        if refusal is not None:
            assert not self.inside[i] or not expect_ok, (
                f"refused a fetch it should serve: {refusal!r}"
            )
            self.refused_changes_nothing(before, "fetch")
        else:
            assert self.inside[i], "a child outside the target fetched the release"
            assert expect_ok, (state, record)
            assert text == STRATEGY_TEXT
            after = self.snapshot()[1][i]
            assert after is not None
            assert after.status is RS.DOING
            assert after.stages[STAGES[0]].status is not SS.PENDING
        self.check()

    def do_report(
        self, i: int, child_id: str, stage: str, status: int, next_stage: str, err_rate: float
    ) -> None:
        before = self.snapshot()
        record = before[1][i] if child_id == self.ids[i] else None
        stage = resolve(stage, before[1][i])
        next_stage = resolve(next_stage, before[1][i], itself=stage)
        body = result(child_id, stage, status, next_stage, f2_err_rate=err_rate)
        try:
            answer = self.run(self.manager.submit_result(body))
        except REFUSALS:
            self.refused_changes_nothing(before, "result")
            self.check()
            return
        if record is not None and record.outcome is Outcome.EXCLUDED:  # (l) told to roll back
            assert answer == "rollback"
            self.refused_changes_nothing(before, "a report of an excluded child")
            self.check()
            return
        assert child_id == self.ids[i], "a result from an unknown child was taken"
        assert self.inside[i], "a result from a child outside the target was taken"
        assert record is not None, "a result from a child that was never targeted was taken"
        name = stage or record.live_stage
        assert name in STAGES
        after = self.snapshot()[1][i]
        assert after is not None
        if self.aborted_report(before[0], record, after):
            return
        stored = after.stages[name].status
        reported = StageStatus(status)
        # An accepted report puts the stage where the child said it is (a waiting stage may be
        # told to end at once).
        assert stored is reported or (reported is SS.SUCCESS_WAITING and stored is SS.SHOULD_END), (
            f"reported {reported.wire_name} for {name}, stored {stored.wire_name}"
        )
        self.check()

    def do_next_step(self, i: int, choice: int, err_rate: float) -> None:
        """A well-behaved child reports what its live stage may lead to (so that runs get deep:
        barriers open, releases finish); the result must be taken."""
        record = self.snapshot()[1][i]
        if record is None or record.status is not RS.DOING or record.live_stage is None:
            return
        live = record.live_stage
        status = record.stages[live].status
        options: list[tuple[int, str]]
        if live == WAITING_STAGE:
            if status is SS.IN_PROGRESS:
                options = [(2, ""), (2, ""), (2, ""), (5, "rollback"), (6, "rollback")]
            elif status is SS.SUCCESS_WAITING:
                if choice:  # mostly: asks whether to end the stage, as a waiting child does
                    self.do_end_stage(i, live)
                    return
                options = [(5, "rollback")]
            else:  # told to end
                options = [(4, "ab-50"), (4, "ab-50"), (5, "rollback"), (6, "rollback")]
        else:
            options = [(4, ""), (4, "rollout"), (5, "rollback"), (6, "")]
        code, next_stage = options[choice % len(options)]
        body = result(self.ids[i], live, code, next_stage, f2_err_rate=err_rate)
        state = self.snapshot()[0]
        self.run(self.manager.submit_result(body))
        after = self.snapshot()[1][i]
        assert after is not None
        if self.aborted_report(state, record, after):
            return
        stored = after.stages[live].status
        assert stored is SS(code) or (code == 2 and stored is SS.SHOULD_END)
        if code >= 4 and next_stage == "ab-50":
            assert after.stages["ab-50"].status is SS.IN_PROGRESS
            assert after.status is RS.DOING
        elif code >= 4:
            assert after.status is (RS.DONE if code == 4 else RS.FAILED)
        self.check()

    def aborted_report(
        self, state: RolloutState, record: ChildRelease, after: ChildRelease
    ) -> bool:
        """(e) A report on an aborted rollout by a child running it ends its release Failed,
        rolled back or aborted, never rolled out; a finished child's stays as it was."""
        if state is not RolloutState.ABORTED:
            return False
        if record.status is RS.DOING:
            assert after.status is RS.FAILED, f"reported after the abort: {after}"
            assert after.outcome in (Outcome.ROLLED_BACK, Outcome.ABORTED), after
        else:
            assert after == record, f"a report after the abort changed {record} to {after}"
        self.check()
        return True

    def do_end_stage(self, i: int, stage: str) -> None:
        before = self.snapshot()
        state, records = before
        record = records[i]
        try:
            answer = self.run(self.manager.end_stage(self.ids[i], RELEASE, stage))
        except REFUSALS:
            assert not (
                state is RolloutState.ABORTED
                and record is not None
                and record.status is not RS.TODO
                and stage in STAGES
            ), "end_stage refused a child that fetched an aborted release"
            self.refused_changes_nothing(before, "end_stage")
            self.check()
            return
        assert record is not None
        assert stage in STAGES
        if state is RolloutState.ABORTED or record.outcome in (
            Outcome.TIMED_OUT,
            Outcome.EXCLUDED,
        ):
            # aborted, or the manager gave up on the child, or the operator excluded it: it
            # rolls back
            assert answer.to_json() == {"end_stage": True, "action": "rollback"}
        else:
            assert answer.action == ""
            after = self.snapshot()[1][i]
            assert after is not None
            assert answer.end_stage == (after.stages[stage].status >= SS.SHOULD_END)
        self.check()

    # -- rules -----------------------------------------------------------------------------------
    @rule(index=st.integers(0, 7), count=st.sampled_from([0, 0, 2]))
    def poll(self, index: int, count: int) -> None:
        self.do_poll(self.child(index), count)

    @rule(index=st.integers(0, 7))
    def fetch(self, index: int) -> None:
        self.do_fetch(self.child(index))

    @rule(
        index=st.integers(0, 7),
        reports=st.lists(
            st.tuples(report_stages, report_statuses, report_next_stages), min_size=1, max_size=8
        ),
        err_rate=st.sampled_from([0.0, 0.3]),
        ghost=st.integers(0, 7),
        running=st.booleans(),
    )
    def report(
        self,
        index: int,
        reports: list[tuple[str, int, str]],
        err_rate: float,
        ghost: int,
        running: bool,
    ) -> None:
        """A child sends a burst of reports: any status for any stage, valid or not (refused
        ones change nothing); ``running`` picks among the children running the release, where
        most of the questions are."""
        i = self.child(index)
        if running:
            doing = [j for j, r in self.snapshot()[1].items() if r and r.status is RS.DOING]
            i = doing[index % len(doing)] if doing else i
        child_id = "ghost" if ghost == 0 else self.ids[i]
        for stage, status, next_stage in reports:
            self.do_report(i, child_id, stage, status, next_stage, err_rate)

    @rule(index=st.integers(0, 7), choice=st.integers(0, 5), err_rate=st.sampled_from([0.0, 0.3]))
    def report_next_step(self, index: int, choice: int, err_rate: float) -> None:
        self.do_next_step(self.child(index), choice, err_rate)

    @rule(index=st.integers(0, 7), stage=st.sampled_from([*STAGES, STAGES[0], "", "junk"]))
    def ask_end_stage(self, index: int, stage: str) -> None:
        self.do_end_stage(self.child(index), stage)

    @rule(
        choices=st.lists(st.integers(0, 5), min_size=8, max_size=8),
        skip=st.lists(st.booleans(), min_size=8, max_size=8),
        odd=st.lists(
            st.none() | st.tuples(report_stages, report_statuses, report_next_stages),
            min_size=8,
            max_size=8,
        ),
    )
    def round_of_children(
        self, choices: list[int], skip: list[bool], odd: list[tuple[str, int, str] | None]
    ) -> None:
        """Every child (but the skipped ones) polls, fetches what it is offered, or takes the
        next step of what it runs; some then send an odd report (valid or not)."""
        for i in range(len(self.areas)):
            if skip[i]:
                continue
            offered = self.do_poll(i)
            record = self.snapshot()[1][i]
            if offered and (record is None or record.status is RS.TODO):
                self.do_fetch(i)
            else:  # (a child that fetched already runs it, whatever the offer says)
                self.do_next_step(i, choices[i], 0.0)
            extra = odd[i]
            if extra is not None:
                self.do_report(i, self.ids[i], *extra, 0.0)

    # -- time and the operator ---------------------------------------------------------------
    @rule(seconds=st.floats(0, 2 * LOST_AFTER))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.ticking = True
        try:
            self.run(self.manager.tick())
            self.check()
        finally:
            self.ticking = False
        state, records = self.snapshot()
        if state is RolloutState.ACTIVE:  # (f) a tick completes a finished rollout
            assert not self.everyone_finished(records), f"a tick left it active: {records}"

    @rule(edge=st.integers(0, 3), after=st.sampled_from([0.0, 1.0]))
    def window_edge(self, edge: int, after: float) -> None:
        """Time passes to the next opening or closing of a window (or just after it)."""
        now = self.clock.now
        edges = sorted(
            {w.next_opening(now) for w in WINDOWS}
            | {end for w in WINDOWS if (end := w.open_until(now)) is not None}
        )
        self.time_passes(edges[edge % len(edges)] - now + after)

    @rule()
    def minute_passes(self) -> None:
        """A minute passes (a ramp's rate may grow; a start comes)."""
        self.time_passes(60.0)

    @rule(action=st.sampled_from(["pause", "pause", "resume", "abort"]), really=st.integers(0, 3))
    def operate(self, action: str, really: int) -> None:
        if action == "abort" and really:  # an abort ends the story: keep it rarer
            action = "resume"
        before = self.snapshot()
        state = before[0]
        allowed = {
            "pause": {RolloutState.ACTIVE},
            "resume": {RolloutState.PAUSED},
            "abort": {RolloutState.ACTIVE, RolloutState.PAUSED, RolloutState.ABORTED},
        }[action]
        try:
            rollout = self.run(getattr(self.manager, action)(RELEASE))
        except REFUSALS:
            assert state not in allowed, f"{action} refused on a {state.value} rollout"
            self.refused_changes_nothing(before, action)
            self.check()
            return
        assert state in allowed, f"{action} accepted on a {state.value} rollout"
        if state is RolloutState.ABORTED:  # (h) a repeated abort changes nothing
            self.refused_changes_nothing(before, "a repeated abort")
        self.check()
        if action == "abort":
            assert rollout.state is RolloutState.ABORTED
            # (e) every child that fetched the release is told to roll back
            for i, record in before[1].items():
                if record is not None and record.status is not RS.TODO:
                    for name in STAGES:
                        self.do_end_stage(i, name)

    @rule(stage=st.sampled_from([*STAGES, "junk"]))
    def approve(self, stage: str) -> None:
        """(k) The operator approves a stage: accepted for one the policy names, unless the
        rollout is over; approving again changes nothing."""
        before = self.snapshot()
        state = before[0]
        try:
            self.run(self.manager.approve(RELEASE, stage, actor="op"))
        except REFUSALS:
            assert stage not in self.approvals or state in (
                RolloutState.COMPLETED,
                RolloutState.ABORTED,
            ), f"approve of {stage} refused on a {state.value} rollout"
            self.refused_changes_nothing(before, "approve")
            self.check()
            return
        assert stage in self.approvals, f"approved {stage}, which needs no approval"
        assert state not in (RolloutState.COMPLETED, RolloutState.ABORTED)
        again = stage in self.approved
        self.approved.add(stage)
        if again:
            self.refused_changes_nothing(before, "a repeated approve")
        self.check()

    @rule(index=st.integers(0, 7), known=st.integers(0, 5))
    def exclude(self, index: int, known: int) -> None:
        """(l) The operator excludes a child (now and then one that does not exist)."""
        i = self.child(index)
        child_id = self.ids[i] if known else "nobody"
        before = self.snapshot()
        state, records = before
        record = records[i] if known else None
        self.operated = {i} if known else set()
        try:
            try:
                after = self.run(self.manager.exclude(RELEASE, child_id, actor="op"))
            except REFUSALS:
                reachable = record is not None or self.inside[i]
                assert (
                    not known
                    or not self.registered[i]
                    or state is RolloutState.ABORTED
                    or not reachable
                    or (
                        record is not None
                        and record.status is RS.DONE
                        and record.outcome is not Outcome.EXCLUDED
                    )
                ), f"exclude of child {i} ({record}) refused on a {state.value} rollout"
                self.operated = set()
                self.refused_changes_nothing(before, "exclude")
                self.check()
                return
            assert known, "an unknown child was excluded"
            assert self.registered[i], "an unregistered child was excluded"
            assert state is not RolloutState.ABORTED, "a child of an aborted rollout excluded"
            assert record is not None or self.inside[i], "a child outside the target excluded"
            assert (after.status, after.outcome) == (RS.FAILED, Outcome.EXCLUDED)
            if record is not None and record.outcome is Outcome.EXCLUDED:
                self.refused_changes_nothing(before, "a repeated exclude")
            self.excluded.add(i)
            self.check()
        finally:
            self.operated = set()
        if record is not None and record.status is RS.DOING:  # (l) told to roll back
            for name in STAGES:
                self.do_end_stage(i, name)

    @rule(index=st.integers(0, 7), every=st.booleans(), any_child=st.integers(0, 3))
    def retry(self, index: int, every: bool, any_child: int) -> None:
        """(l) The operator retries every failed child, or one (mostly a failed one)."""
        before = self.snapshot()
        state, records = before
        failed = {
            j
            for j, r in records.items()
            if r is not None and r.status is RS.FAILED and r.outcome is not Outcome.EXCLUDED
        }
        i = sorted(failed)[index % len(failed)] if failed and any_child else self.child(index)
        wanted = failed if every else {i}
        live = state in (RolloutState.ACTIVE, RolloutState.PAUSED, RolloutState.COMPLETED)
        self.operated, self.retrying = wanted & failed, True
        try:
            try:
                names = None if every else [self.ids[i]]
                done = self.run(self.manager.retry(RELEASE, names, actor="op"))
            except REFUSALS as refusal:
                # (a pacing may refuse it: its offers keep to the windows, start and rate)
                paced = any(
                    words in str(refusal)
                    for words in ("would pass its rate", "offers nothing now", "deadline has")
                )
                assert paced or not (live and wanted and wanted <= failed), (
                    f"retry of {sorted(wanted)} refused on a {state.value} rollout ({records})"
                )
                self.operated, self.retrying = set(), False
                self.refused_changes_nothing(before, "retry")
                self.check()
                return
            assert live, f"retry accepted on a {state.value} rollout"
            assert wanted, "retry accepted with nothing to retry"
            assert wanted <= failed, f"retry of {sorted(wanted)} accepted: {records}"
            assert set(done.retried) == {self.ids[j] for j in wanted}
            if state is RolloutState.COMPLETED:
                assert done.rollout.state is RolloutState.ACTIVE
            self.check()
        finally:
            self.operated, self.retrying = set(), False

    def first_open(self) -> bool:
        return STAGES[0] not in self.approvals or STAGES[0] in self.approved

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def check_after_every_step(self) -> None:
        if self.ready:
            self.check()

    def check(self) -> None:
        state, records = self.snapshot()
        self.check_transitions(state, records)
        self.check_time_outs(records)
        if state is RolloutState.COMPLETED and self.prev_rollout is not RolloutState.COMPLETED:
            assert self.everyone_finished(records), f"completed too early: {records}"
        self.check_outside_never_targeted()
        self.check_barrier(state, records)
        self.check_approvals(records)
        for i, record in records.items():
            if record is not None and self.prev.get(i) is None and i not in self.operated:
                self.check_offer_allowed()  # (i) newly targeted now
        self.check_interventions(records)
        self.prev_rollout, self.prev = state, records

    def check_interventions(self, records: Snapshot) -> None:
        """(l) excluded children stay excluded, never offered again; (m) nothing rolls out
        after an abort."""
        for i in self.excluded:
            record = records[i]
            assert record is not None
            assert (record.status, record.outcome) == (RS.FAILED, Outcome.EXCLUDED), record
            offer = self.run(self.manager.store.first_offer(self.ids[i]))
            assert offer != RELEASE, f"excluded child {i} is offered the release again"
        if self.prev_rollout is RolloutState.ABORTED:
            for i, record in records.items():
                old = self.prev.get(i)
                rolled_out = record is not None and record.outcome is Outcome.ROLLED_OUT
                assert not rolled_out or (old is not None and old.outcome is Outcome.ROLLED_OUT), (
                    f"child {i} rolled out after the abort"
                )

    def check_approvals(self, records: Snapshot) -> None:
        """(k) No child entered a stage waiting for approval; nobody is offered the rollout
        before its first stage is approved."""
        for i, record in records.items():
            if record is None or record.outcome is Outcome.EXCLUDED:  # (excluded: not offered)
                continue
            assert self.first_open(), f"child {i} was offered it before {STAGES[0]} was approved"
            for name in self.approvals:
                if name not in self.approved:
                    status = record.stages[name].status
                    assert status is SS.PENDING, f"child {i} entered {name} ({status.wire_name})"

    def check_offer_allowed(self) -> None:
        """(i) A child was newly targeted now: the pacing is open, and the ramp's rate holds
        over the last 60 seconds."""
        now = self.clock.now
        assert self.pacing.is_open(now), f"offered at {now} while the pacing is closed"
        self.offers.append(now)
        if self.pacing.ramp is not None:
            minutes = math.floor((now - self.started_at) / 60.0)
            rate = min(
                float(MOST_PER_MINUTE),
                self.pacing.ramp.start_per_minute * self.pacing.ramp.factor ** min(minutes, 60),
            )
            recent = sum(1 for t in self.offers if now - t < 60.0)
            assert recent <= rate, f"{recent} offered in 60 s, over the rate of {rate}"

    def everyone_finished(self, records: Snapshot) -> bool:
        """(f) Every registered child inside the target has finished the release (and one
        at least was offered it)."""
        reached = [i for i in records if self.inside[i] and self.registered[i]]
        return bool(reached) and all(
            (record := records[i]) is not None and record.status in (RS.DONE, RS.FAILED)
            for i in reached
        )

    def check_time_outs(self, records: Snapshot) -> None:
        """(g): time-outs only at a tick, never of a waiting child, only after the limit."""
        for i, record in records.items():
            old = self.prev.get(i)
            if record is None or record.outcome is not Outcome.TIMED_OUT:
                continue
            if old is not None and old.outcome is Outcome.TIMED_OUT:
                continue
            assert self.ticking, f"child {i} timed out outside a tick"
            assert self.child_timeout is not None, f"child {i} timed out without a limit"
            assert record.status is RS.FAILED
            if old is not None:
                assert all(s.status is not SS.SUCCESS_WAITING for s in old.stages.values()), (
                    f"child {i} timed out while waiting on a barrier"
                )
                changed = max((s.changed_at for s in old.stages.values()), default=0.0)
                assert self.clock.now - changed > self.child_timeout, (
                    f"child {i} timed out {self.clock.now - changed}s after its last change"
                )

    def check_transitions(self, state: RolloutState, records: Snapshot) -> None:
        """(a) and (d): statuses move only along the machines' transitions; finals stay."""
        moves = ROLLOUT_MOVES | (RETRY_MOVES if self.retrying else set())
        assert (self.prev_rollout, state) in moves or self.prev_rollout is state, (
            f"rollout went {self.prev_rollout.value} -> {state.value}"
        )
        for i, record in records.items():
            old = self.prev.get(i)
            if i in self.operated and self.retrying:  # (l) a retry: Failed -> Todo, Pending
                assert record is not None
                assert old is not None
                assert old.status is RS.FAILED
                assert old.outcome is not Outcome.EXCLUDED
                assert record.status is RS.TODO, record
                assert all(s.status is SS.PENDING for s in record.stages.values())
                continue
            if i in self.operated and (old is None or old.status is RS.NO):
                # (l) excluded before it was offered: No -> Todo -> Failed, in one call
                assert record is not None
                assert (record.status, record.outcome) == (RS.FAILED, Outcome.EXCLUDED)
                continue
            old_r, new_r = release_name(old), release_name(record)
            if old_r != new_r:
                assert not CHILD_RELEASE_MACHINE.is_final(old_r), (
                    f"child {i}: final {old_r} became {new_r}"
                )
                assert reachable(CHILD_RELEASE_MACHINE, old_r, new_r, 1), (
                    f"child {i}: release {old_r} -> {new_r} is not a transition"
                )
            for name in STAGES:
                old_s, new_s = stage_name(old, name), stage_name(record, name)
                if old_s == new_s:
                    continue
                assert not STAGE_MACHINE.is_final(old_s), (
                    f"child {i}: stage {name} final {old_s} became {new_s}"
                )
                assert reachable(STAGE_MACHINE, old_s, new_s, 2), (
                    f"child {i}: stage {name} {old_s} -> {new_s} is not a chain of transitions"
                )

    def check_outside_never_targeted(self) -> None:
        """(c), in the store: the rollout never targets a child outside its target."""
        targeted = set(self.run(self.manager.store.targeted(RELEASE)))
        for i, child_id in enumerate(self.ids):
            if not self.inside[i]:
                assert child_id not in targeted, f"child {i} outside the target was targeted"

    def check_barrier(self, state: RolloutState, records: Snapshot) -> None:
        """(b): the first ShouldEnd appears only when the quorum of the live, targeted,
        unfinished children waits on the stage, on an active rollout; anyone told to end was
        waiting."""
        for i, record in records.items():
            if record is None or record.stages[WAITING_STAGE].status is not SS.SHOULD_END:
                continue
            old = stage_name(self.prev.get(i), WAITING_STAGE)
            assert old in ("InProgress", "SuccessWaiting", "ShouldEnd"), (
                f"child {i} told to end {WAITING_STAGE} from {old}"
            )
        ending = any(
            r is not None and r.stages[WAITING_STAGE].status is SS.SHOULD_END
            for r in records.values()
        )
        if not ending or self.barrier_opened:
            return
        # The first ShouldEnd: the barrier opened during the last call, in the state seen now.
        self.barrier_opened = True
        assert state is RolloutState.ACTIVE, f"a barrier opened on a {state.value} rollout"
        present = [r for r in records.values() if r is not None]
        seen = self.run(self.manager.store.last_seen(r.child_id for r in present))
        now = self.clock.now
        taking_part = [
            r
            for r in present
            if r.status in (RS.TODO, RS.DOING)
            and not r.stages[WAITING_STAGE].status.is_final
            and now - seen.get(r.child_id, -1e18) <= LOST_AFTER
        ]
        ready = sum(1 for r in taking_part if r.stages[WAITING_STAGE].status >= SS.SUCCESS_WAITING)
        assert taking_part, "ShouldEnd with no child taking part"
        assert ready >= self.quorum * len(taking_part), (
            f"ShouldEnd with {ready} of {len(taking_part)} children ready (quorum {self.quorum})"
        )


RolloutMachine.TestCase.settings = settings(
    # 100 rather than 50: most generated runs are short, and the deep states (a barrier that
    # opens, a pause at the wrong moment) need the long ones; a green run takes a few seconds.
    max_examples=100,
    # no "explain" phase: it reruns a failing trace thousands of times (minutes, not seconds)
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRolloutMachine = RolloutMachine.TestCase


# -- random polygons ---------------------------------------------------------------------------


@st.composite
def targeting_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[dict[str, Any]], int]:
    match = draw(st.sampled_from(["intersects", "within"]))
    lon = draw(st.floats(-150.0, 150.0))
    lat = draw(st.floats(-60.0, 60.0))
    target = draw(polygons(center=(lon, lat), max_radius=6.0, hole=None))
    near = polygons(lon=(lon - 8, lon + 8), lat=(lat - 8, lat + 8), max_radius=3.0, hole=None)
    central = polygons(center=(lon, lat), max_radius=0.5, hole=None)
    children = draw(
        st.lists(
            st.one_of(near, central, multipolygons(max_radius=2.0), st.just(target)),
            min_size=1,
            max_size=6,
        )
    )
    early = draw(st.integers(0, len(children)))
    return match, target, children, early


@settings(max_examples=50, deadline=None)
@given(case=targeting_cases())
def test_poll_offers_the_release_exactly_to_the_children_the_target_reaches(
    case: tuple[str, dict[str, Any], list[dict[str, Any]], int],
) -> None:
    match, target, children, early = case
    target_shape = shape(target)

    def reaches(area: dict[str, Any]) -> bool:
        child = shape(area)
        return bool(
            child.within(target_shape) if match == "within" else child.intersects(target_shape)
        )

    async def scenario() -> None:
        manager = RolloutManager()
        ids = [f"c{i}" for i in range(len(children))]
        for child_id, area in zip(ids[:early], children[:early], strict=True):
            assert (await manager.poll(child_id, area, 0)).new_release == ""
        await manager.create_rollout(BUNDLE, target, match=match)  # type: ignore[arg-type]
        for child_id, area in zip(ids, children, strict=True):  # late ones register here
            answer = await manager.poll(child_id, area, 0)
            expected = RELEASE if reaches(area) else ""
            assert answer.new_release == expected, (child_id, match, area)
        for child_id, area in zip(ids, children, strict=True):  # and again, registered
            answer = await manager.poll(child_id, area, 0)
            assert answer.new_release == (RELEASE if reaches(area) else "")
            if not reaches(area):  # and cannot fetch it
                with pytest.raises(NotFoundError):
                    await manager.get_release(child_id, RELEASE)

    asyncio.run(scenario())
