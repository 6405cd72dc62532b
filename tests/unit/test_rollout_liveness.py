"""A rollout never waits forever: every call a child makes counts as being seen (a barrier of
any length opens), children that went away or hung time out under the policy's
``child_timeout``, and operator actions are judged again from the fresh state when the
rollout moved meanwhile (a repeated abort answers with the aborted rollout)."""

from __future__ import annotations

from typing import Any

import pytest

from release_coordinator.errors import ConcurrentUpdateError, InvalidTransitionError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome, ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import (
    DEFAULT_CHILD_TIMEOUT,
    GlobalIncremental,
    LocationSequential,
    Waves,
    parse_policy,
    policy_json,
)
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import RolloutStore

from .test_rollout_manager import (
    EUROPE,
    INSIDE,
    Clock,
    archive,
    bundle,
    fetched,
    result,
    square,
)

pytestmark = pytest.mark.anyio

LOST_AFTER = 30.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    """A manager over every store adapter (memory, SQLite, PostgreSQL)."""
    return RolloutManager(rollout_store, lost_after=LOST_AFTER, clock=clock)


# -- every call of a child counts as being seen --------------------------------------------------


async def test_a_barrier_longer_than_lost_after_opens(
    manager: RolloutManager, clock: Clock
) -> None:
    # The bug as found: children in a WaitForSignal stage call only /end_stage (and /result),
    # never /poll; one needs 70 s in the canary and says nothing meanwhile, with lost_after
    # 30 s. The two that wait keep asking, so they are not lost: once the slow one is (after
    # 30 s of silence), the barrier opens for them; when the slow one reports it is back and
    # told to end at once, and the rollout completes.
    await manager.create_rollout(bundle(), EUROPE)
    a, b, slow = await fetched(manager, INSIDE, square(6, 46), square(7, 47))
    for child in (a, b):
        await manager.submit_result(result(child, "canary-10", 2))
    for _ in range(3):  # 30 s: nobody lost yet, the slow one holds the barrier
        clock.now += 10
        await manager.tick()
        for child in (a, b):
            assert not (await manager.end_stage(child, "42", "canary-10")).end_stage
    clock.now += 10
    await manager.tick()
    assert (await manager.report("42")).lost == (slow,)
    for child in (a, b):
        assert (await manager.end_stage(child, "42", "canary-10")).end_stage
        await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
        await manager.submit_result(result(child, "ab-50", 4, "rollout"))
    clock.now += 30
    await manager.tick()
    await manager.submit_result(result(slow, "canary-10", 2))  # its first call in 70 s
    assert (await manager.report("42")).lost == ()
    assert (await manager.end_stage(slow, "42", "canary-10")).end_stage
    await manager.submit_result(result(slow, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(slow, "ab-50", 4, "rollout"))
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    assert (await manager.report("42")).outcomes == {"rolled_out": 3}


async def test_each_call_of_the_protocol_counts_as_seen(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    seen_at = clock.now
    calls = {
        "release": lambda: manager.get_release(child, "42"),
        "functions": lambda: manager.get_functions("42", child),
        "result": lambda: manager.submit_result(result(child, "canary-10", 2)),
        "end_stage": lambda: manager.end_stage(child, "42", "canary-10"),
    }
    for name, call in calls.items():
        clock.now += LOST_AFTER + 1
        assert await manager.store.last_seen([child]) == {child: seen_at}, name
        await call()
        seen_at = clock.now
        assert await manager.store.last_seen([child]) == {child: seen_at}, name
        assert (await manager.report("42")).lost == (), name
    clock.now += 5
    await manager.get_functions("42")  # the protocol's request names no child: nobody seen
    assert await manager.store.last_seen([child]) == {child: seen_at}


async def test_a_lost_child_that_calls_again_is_back(manager: RolloutManager, clock: Clock) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    a, b = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(a, "canary-10", 2))
    clock.now += LOST_AFTER + 1
    await manager.end_stage(a, "42", "canary-10")
    await manager.tick()  # b is lost now and no longer holds the barrier: it opened
    assert (await manager.report("42")).lost == (b,)
    await manager.end_stage(b, "42", "canary-10")  # b calls (about a stage it is not waiting on)
    assert (await manager.report("42")).lost == ()


# -- children that went away or hung time out ------------------------------------------------------


def limited(seconds: float | None, **options: Any) -> GlobalIncremental:
    return GlobalIncremental(child_timeout=seconds, **options)


async def test_a_child_offered_the_release_that_never_fetches_times_out(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=limited(100))
    gone = (await manager.poll("", INSIDE, 0)).id  # offered, never fetches (keeps polling)
    (done,) = await fetched(manager, square(6, 46))
    await manager.submit_result(result(done, "canary-10", 2))
    clock.now += 50
    await manager.poll(gone, INSIDE, 0)
    await manager.tick()
    assert (await manager.store.child_release("42", gone)).status is ReleaseStatus.TODO
    clock.now += 51  # 101 s after the offer
    await manager.poll(gone, INSIDE, 0)
    await manager.tick()
    state = await manager.store.child_release("42", gone)
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.TIMED_OUT)
    assert (await manager.poll(gone, INSIDE, 0)).new_release == ""  # not offered any more
    # Only `done` takes part in the barrier now: it opens, and the rollout completes after it.
    assert (await manager.end_stage(done, "42", "canary-10")).end_stage
    await manager.submit_result(result(done, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(done, "ab-50", 4, "rollout"))
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.COMPLETED
    assert "1 done, 1 failed" in rollout.reason
    assert (await manager.report("42")).outcomes == {"rolled_out": 1, "timed_out": 1}


async def test_a_child_in_a_stage_times_out_past_its_min_duration(
    manager: RolloutManager, clock: Clock
) -> None:
    text = bundle().strategy_text.replace(
        '- {name: minCalls, threshold: "20"}',
        '- {name: minCalls, threshold: "20"}\n      - {name: minDuration, threshold: "5m"}',
    )
    await manager.create_rollout(
        ReleaseBundle.from_parts(text, archive()), EUROPE, policy=limited(60)
    )
    (hung,) = await fetched(manager, INSIDE)  # in the canary, polls but never reports
    clock.now += 300 + 59  # the canary's 5 minutes, and 59 s more
    await manager.poll(hung, INSIDE, 0)
    await manager.tick()
    assert (await manager.store.child_release("42", hung)).status is ReleaseStatus.DOING
    clock.now += 11  # the limit is looked at every 10 s (a quarter of it, at most 10 s)
    await manager.poll(hung, INSIDE, 0)
    await manager.tick()
    state = await manager.store.child_release("42", hung)
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.TIMED_OUT)
    assert state.stages["canary-10"].status is StageStatus.ERROR
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    # It comes back: the manager gave up on it, so it rolls back, and its report is refused
    # with the reason.
    assert (await manager.end_stage(hung, "42", "canary-10")).to_json() == {
        "end_stage": True,
        "action": "rollback",
    }
    with pytest.raises(InvalidTransitionError, match="timed the child out"):
        await manager.submit_result(result(hung, "canary-10", 2))


async def test_a_child_waiting_on_a_barrier_never_times_out(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=limited(10))
    waiting, slow = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(waiting, "canary-10", 2))
    for _ in range(3):  # slow keeps polling while its canary goes on: it times out, waiting not
        clock.now += 5
        for child, area in ((waiting, INSIDE), (slow, square(6, 46))):
            await manager.poll(child, area, 0)
        await manager.tick()
    assert (await manager.store.child_release("42", slow)).outcome is Outcome.TIMED_OUT
    waited = await manager.store.child_release("42", waiting)
    assert waited.status is ReleaseStatus.DOING
    assert (await manager.end_stage(waiting, "42", "canary-10")).end_stage  # the barrier opened


async def test_no_limit_when_asked_and_told_to_end_counts_from_the_signal(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=limited(None))
    (child,) = await fetched(manager, INSIDE)
    clock.now += 10 * DEFAULT_CHILD_TIMEOUT
    await manager.poll(child, INSIDE, 0)
    await manager.tick()
    assert (await manager.store.child_release("42", child)).status is ReleaseStatus.DOING

    far = square(30, 30, 5)  # a second rollout where only `other` is
    await manager.create_rollout(bundle("43"), far, policy=limited(20))
    other = (await manager.poll("", square(31, 31), 0)).id
    await manager.get_release(other, "43")
    child = other
    waiting = result(child, "canary-10", 2)
    waiting["release_id"] = "43"
    await manager.submit_result(waiting)
    assert (await manager.end_stage(child, "43", "canary-10")).end_stage  # ShouldEnd now
    clock.now += 15
    await manager.tick()
    assert (await manager.store.child_release("43", child)).status is ReleaseStatus.DOING
    clock.now += 10  # 25 s after the signal, never completed
    await manager.tick()
    assert (await manager.store.child_release("43", child)).outcome is Outcome.TIMED_OUT


async def test_timed_out_children_count_as_failed_for_waves(
    manager: RolloutManager, clock: Clock
) -> None:
    policy = Waves(sizes=(0.5, 1.0), failure_threshold=0.4, min_finished=2, child_timeout=30)
    for k in range(4):
        await manager.poll("", square(1 + k, 41), 0)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)  # wave 1: two of the four
    clock.now += 31
    await manager.tick()  # both admitted children never fetched: timed out, 2 of 2 failed
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.ABORTED
    assert (await manager.report("42")).outcomes == {"timed_out": 2}


def test_child_timeout_in_json() -> None:
    assert GlobalIncremental().child_timeout == DEFAULT_CHILD_TIMEOUT == 3600.0
    for policy in (
        GlobalIncremental(child_timeout=None),
        LocationSequential(child_timeout=12.5),
        Waves(child_timeout=90),
    ):
        assert parse_policy(policy_json(policy)) == policy
    assert parse_policy({"type": "waves"}).child_timeout == DEFAULT_CHILD_TIMEOUT
    assert parse_policy({"child_timeout": None}).child_timeout is None
    for bad in ("1m", 0, -1, True, float("inf")):
        with pytest.raises(Exception, match="child_timeout"):
            parse_policy({"child_timeout": bad})


# -- operator actions against a rollout that moved meanwhile ---------------------------------------


class RacingStore(MemoryRolloutStore):
    """A memory store where, just before the next compare-and-set of a rollout's state, the
    rollout moves by ``first`` (another process, or the manager's own completion, did)."""

    first: tuple[RolloutState, RolloutState] | None = None

    async def set_rollout_state(
        self, rollout_id: str, from_states: Any, to_state: Any, **kw: Any
    ) -> Any:
        if self.first is not None:
            moved, self.first = self.first, None
            await super().set_rollout_state(rollout_id, {moved[0]}, moved[1])
        return await super().set_rollout_state(rollout_id, from_states, to_state, **kw)


async def test_actions_are_judged_again_from_the_fresh_state() -> None:
    store = RacingStore()
    manager = RolloutManager(store)
    await manager.create_rollout(bundle(), EUROPE)
    store.first = (RolloutState.ACTIVE, RolloutState.PAUSED)  # paused by another process
    aborted = await manager.abort("42", reason="bad canary")  # allowed from paused too
    assert (aborted.state, aborted.reason) == (RolloutState.ABORTED, "bad canary")
    again = await manager.abort("42", reason="twice")  # idempotent: the current state
    assert (again.state, again.reason) == (RolloutState.ABORTED, "bad canary")

    await manager.create_rollout(bundle("43"), EUROPE)
    store.first = (RolloutState.ACTIVE, RolloutState.COMPLETED)  # completed meanwhile
    with pytest.raises(InvalidTransitionError) as refused:
        await manager.pause("43")  # not allowed from the fresh state: refused with it
    assert not isinstance(refused.value, ConcurrentUpdateError)
    assert "from state 'completed'" in refused.value.message
    assert "<" not in refused.value.message  # wire names, never Python reprs


async def test_over_http_the_archive_request_names_its_child() -> None:
    from .test_rollout_app import OPS, Node, as_json

    node = Node()
    try:
        c = node.client
        assert (await c.post("/rollouts", json=as_json(), headers=OPS)).status_code == 201
        child = await node.fetched()
        seen = await node.manager.store.last_seen([child])
        node.clock.now += 5
        archive = await c.get("/release/functions/42", params={"childID": child})
        assert archive.status_code == 200
        assert archive.content.startswith(b"PK")
        assert await node.manager.store.last_seen([child]) == {child: seen[child] + 5}
        node.clock.now += 5
        assert (await c.get("/release/functions/42")).status_code == 200  # as the protocol has it
        assert await node.manager.store.last_seen([child]) == {child: seen[child] + 5}
    finally:
        await node.client.aclose()


async def test_an_operator_promotes_a_waiting_stage(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    waiting, slow = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(waiting, "canary-10", 2))
    assert not (await manager.end_stage(waiting, "42", "canary-10")).end_stage  # 1 of 2
    with pytest.raises(InvalidTransitionError, match="only a WaitForSignal stage"):
        await manager.promote("42", "ab-50")
    with pytest.raises(NotFoundError):
        await manager.promote("42", "nope")
    await manager.pause("42")
    with pytest.raises(InvalidTransitionError, match="only an active rollout"):
        await manager.promote("42", "canary-10")
    await manager.resume("42")
    promoted = await manager.promote("42", "canary-10")
    assert promoted.state is RolloutState.ACTIVE
    assert (await manager.end_stage(waiting, "42", "canary-10")).end_stage
    await manager.submit_result(result(slow, "canary-10", 2))  # waits later: told at once
    assert (await manager.end_stage(slow, "42", "canary-10")).end_stage
    await manager.promote("42", "canary-10")  # again: nothing changes
    assert (await manager.barrier("42", "canary-10")).open


async def test_a_gated_rollout_is_promoted_by_its_parent_only() -> None:
    manager = RolloutManager()
    await manager.create_rollout(bundle(), EUROPE, gated=True)
    with pytest.raises(InvalidTransitionError, match="parent"):
        await manager.promote("42", "canary-10")
