"""A Waves policy with ``error_action="pause"`` under random children and operator actions (a
hypothesis state machine): children fetch, roll out or fail; the operator excludes, retries,
pauses, resumes and aborts. After every step:

(a) the rollout is aborted only by the operator (the policy pauses instead);
(b) the policy pauses it only when its error condition holds (``failure_condition``), with
    that condition as the rollout's reason, logged as the policy's decision;
(c) a resume is accepted only when the error condition does not hold, and refused (changing
    nothing) when it does;
(d) an excluded child is never offered the rollout again and counts for no threshold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from release_coordinator.errors import ConflictError, InvalidTransitionError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.admission import failure_condition
from release_coordinator.rollout.events import RolloutEventKind
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.policies import Waves

from .test_rollout_manager import EUROPE, Clock, bundle, result, square

T = TypeVar("T")
REFUSED = (ConflictError, InvalidTransitionError, NotFoundError)


class ErrorActionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.manager = RolloutManager(lost_after=1e9, clock=Clock())
        self.ids: list[str] = []
        self.excluded: set[str] = set()
        self.operator_aborted = False
        self.operator_paused = False
        self.policy = Waves()

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def states(self) -> dict[str, Any]:
        return {s.child_id: s for s in self.run(self.manager.store.child_releases("42"))}

    def rollout(self) -> Any:
        return self.run(self.manager.get_rollout("42"))

    @initialize(
        n=st.integers(3, 6),
        threshold=st.sampled_from([0.1, 0.3, 0.5]),
        least=st.integers(1, 2),
    )
    def setup(self, n: int, threshold: float, least: int) -> None:
        self.ids = [self.run(self.manager.poll("", square(5 + i, 45), 0)).id for i in range(n)]
        self.policy = Waves(
            sizes=(0.34, 1.0),
            success_threshold=0.5,
            failure_threshold=threshold,
            min_finished=least,
            error_action="pause",
        )
        self.run(self.manager.create_rollout(bundle(), EUROPE, policy=self.policy))

    # -- children ---------------------------------------------------------------------------
    @rule(index=st.integers(0, 5), ok=st.booleans())
    def child_step(self, index: int, ok: bool) -> None:
        """A child polls, fetches what it is offered, then rolls out or fails."""
        child = self.ids[index % len(self.ids)]
        before = self.rollout().state
        answer = self.run(self.manager.poll(child, square(5, 45), 0))
        if child in self.excluded:  # (d)
            assert answer.new_release == "", f"excluded {child} offered the rollout again"
        state = self.states().get(child)
        if state is None:
            return
        if state.status is ReleaseStatus.TODO and answer.new_release == "42":
            self.run(self.manager.get_release(child, "42"))
            state = self.states()[child]
        if state.status is not ReleaseStatus.DOING or state.outcome is Outcome.EXCLUDED:
            return
        live = state.live_stage
        if live is None:
            return
        # A well-behaved child: it fails its live stage, or takes the next step of it, and
        # stops at a rollback.
        if not ok:
            self.run(self.manager.submit_result(result(child, live, 5, "rollback")))
        elif live == "canary-10":
            waiting = state.stages[live].status is not StageStatus.IN_PROGRESS
            if waiting or self.run(self.manager.submit_result(result(child, live, 2))) == "":
                told = self.run(self.manager.end_stage(child, "42", live))
                if told.end_stage and told.action == "":
                    self.run(self.manager.submit_result(result(child, live, 4, "ab-50")))
        else:
            self.run(self.manager.submit_result(result(child, live, 4, "rollout")))
        self.check_policy_pause(before)

    def check_policy_pause(self, before: RolloutState) -> None:
        """(b) A pause that no operator asked for is the policy's, for its error condition."""
        rollout = self.rollout()
        if before is RolloutState.ACTIVE and rollout.state is RolloutState.PAUSED:
            assert failure_condition(self.policy, self.states()) == rollout.reason
            decisions = self.run(
                self.manager.list_events(rollout_id="42", kinds={RolloutEventKind.POLICY})
            )
            assert decisions[-1].message == f"rollout paused: {rollout.reason}"

    # -- the operator -------------------------------------------------------------------------
    @rule(index=st.integers(0, 5))
    def exclude(self, index: int) -> None:
        child = self.ids[index % len(self.ids)]
        before = self.rollout().state
        try:
            self.run(self.manager.exclude("42", child, actor="op"))
        except REFUSED:
            return
        self.excluded.add(child)
        self.check_policy_pause(before)

    @rule()
    def retry(self) -> None:
        try:
            done = self.run(self.manager.retry("42", actor="op"))
        except REFUSED:
            return
        assert not set(done.retried) & self.excluded, "an excluded child was retried"

    @rule()
    def resume(self) -> None:
        before = self.rollout()
        holds = failure_condition(self.policy, self.states())
        try:
            self.run(self.manager.resume("42", actor="op"))
        except REFUSED:
            # (c) refused on a paused rollout only while the error condition holds
            assert before.state is not RolloutState.PAUSED or holds, "resume refused for nothing"
            assert self.rollout() == before
            return
        assert before.state is RolloutState.PAUSED
        assert not holds, f"resumed while {holds}"
        self.operator_paused = False
        self.check_policy_pause(RolloutState.ACTIVE)

    @rule()
    def pause(self) -> None:
        try:
            self.run(self.manager.pause("42", actor="op"))
        except REFUSED:
            return
        self.operator_paused = True

    @rule(really=st.integers(0, 5))
    def abort(self, really: int) -> None:
        if really:  # an abort ends the story: keep it rare
            return
        try:
            self.run(self.manager.abort("42", actor="op"))
        except REFUSED:  # completed
            assert self.rollout().state is RolloutState.COMPLETED
            return
        self.operator_aborted = True

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def aborted_only_by_the_operator(self) -> None:
        if not self.ids:
            return
        if self.rollout().state is RolloutState.ABORTED:  # (a)
            assert self.operator_aborted, f"aborted by the policy: {self.rollout().reason}"

    @invariant()
    def excluded_stay_excluded(self) -> None:
        states = self.states() if self.ids else {}
        for child in self.excluded:  # (d)
            assert states[child].outcome is Outcome.EXCLUDED
            assert self.run(self.manager.store.first_offer(child)) != "42"


ErrorActionMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestErrorActionMachine = ErrorActionMachine.TestCase
