"""The operator's interventions (issue #12, items 1 and 6), over every store: excluding one
child from a rollout (it is never offered it again; a child running it rolls back), retrying
the children that failed or timed out (a completed rollout runs again), and a Waves policy's
``error_action="pause"`` (the rollout pauses instead of aborting, and resumes only once its
error condition no longer holds). Every intervention is in the event log, by its operator."""

from __future__ import annotations

import attrs
import pytest

from release_coordinator.errors import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.events import RolloutEventKind
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.policies import (
    GlobalIncremental,
    LocationSequential,
    Waves,
    parse_policy,
    policy_json,
)
from release_coordinator.rollout.sync import SyncRolloutManager
from release_coordinator.storage.rollout_base import RolloutStore

from .test_rollout_manager import EUROPE, INSIDE, OUTSIDE, Clock, bundle, fetched, result, square

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    """A manager over every store adapter (memory, SQLite, PostgreSQL)."""
    return RolloutManager(rollout_store, lost_after=30, clock=clock)


async def snapshot(manager: RolloutManager) -> object:
    """Everything an intervention could change: the rollout, its children, the event log."""
    rollout = await manager.store.get_rollout("42")
    children = await manager.store.child_releases("42")
    events = [(e.kind, e.message) for e in await manager.list_events(rollout_id="42")]
    return rollout, children, events


# -- exclusion ---------------------------------------------------------------------------------


async def test_an_excluded_child_running_the_release_rolls_back_and_is_never_offered_again(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    running, other = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(running, "canary-10", 2))  # waits on the barrier
    state = await manager.exclude("42", running, reason="flaky modem", actor="ops")
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.EXCLUDED)
    assert state.stages["canary-10"].status is StageStatus.ERROR
    assert await manager.store.child_release("42", running) == state
    # Told to roll back wherever it asks: its poll, /end_stage, /result.
    answer = await manager.poll(running, INSIDE, 0)
    assert (answer.new_release, answer.aborted) == ("", ("42",))
    assert (await manager.end_stage(running, "42", "canary-10")).to_json() == {
        "end_stage": True,
        "action": "rollback",
    }
    assert await manager.submit_result(result(running, "canary-10", 5, "rollback")) == "rollback"
    assert await manager.store.child_release("42", running) == state  # recorded as excluded
    assert (await manager.poll(running, INSIDE, 0)).aborted == ()  # it reported: told
    # Excluding again changes nothing; the other child goes on (the barrier is its alone now).
    before = await snapshot(manager)
    assert await manager.exclude("42", running, actor="ops") == state
    assert await snapshot(manager) == before
    await manager.submit_result(result(other, "canary-10", 2))
    assert (await manager.end_stage(other, "42", "canary-10")).end_stage
    events = await manager.list_events(rollout_id="42", child_id=running)
    request = [e for e in events if e.kind is RolloutEventKind.USER_ACTION]
    assert [(e.message, e.actor) for e in request] == [
        (f"exclusion of child {running} requested by ops: flaky modem", "ops")
    ]
    assert events[-1].message == "excluded from the rollout by the operator"
    assert events.index(request[0]) == len(events) - 3  # then the stage's Error, the release's
    assert (await manager.report("42")).outcomes == {"excluded": 1}


async def test_a_child_not_offered_yet_is_excluded_before_it_is(manager: RolloutManager) -> None:
    # One child per group: the second child is offered the rollout only after the first.
    policy = LocationSequential()
    areas = {(await manager.poll("", square(5 + i, 45), 0)).id: square(5 + i, 45) for i in (0, 1)}
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    offers = {c: (await manager.poll(c, a, 0)).new_release for c, a in areas.items()}
    (first,) = [c for c, offer in offers.items() if offer == "42"]  # (the order is the store's)
    (later,) = [c for c, offer in offers.items() if offer == ""]
    state = await manager.exclude("42", later, actor="ops")
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.EXCLUDED)
    assert all(s.status is StageStatus.PENDING for s in state.stages.values())
    offered = await manager.list_events(rollout_id="42", child_id=later)
    assert [e.message for e in offered if e.kind is RolloutEventKind.TRANSITION] == [
        "excluded from the rollout by the operator"  # never "offered the release"
    ]
    # The first child finishes: the rollout completes, the excluded child never offered it.
    await manager.get_release(first, "42")
    await manager.submit_result(result(first, "canary-10", 2))
    assert (await manager.end_stage(first, "42", "canary-10")).end_stage
    await manager.submit_result(result(first, "canary-10", 4, "ab-50"))
    assert (await manager.poll(later, areas[later], 0)).new_release == ""
    await manager.submit_result(result(first, "ab-50", 4, "rollout"))
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    assert (await manager.poll(later, areas[later], 0)).new_release == ""


async def test_exclusions_that_cannot_be_are_refused_with_nothing_changed(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    outside = (await manager.poll("", OUTSIDE, 0)).id
    await manager.submit_result(result(child, "canary-10", 2))
    assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(child, "ab-50", 4, "rollout"))  # Done: rolled out
    before = await snapshot(manager)
    with pytest.raises(InvalidTransitionError, match="nothing left to cancel"):
        await manager.exclude("42", child)
    with pytest.raises(ConflictError, match="does not reach child"):
        await manager.exclude("42", outside)
    with pytest.raises(NotFoundError):
        await manager.exclude("42", "nobody")
    with pytest.raises(NotFoundError):
        await manager.exclude("43", child)
    with pytest.raises(ValidationError) as refused:
        await manager.exclude("42", "")
    assert refused.value.problems[0][0] == "child_id"
    assert await snapshot(manager) == before


async def test_no_child_of_an_aborted_rollout_is_excluded_or_retried(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    await manager.abort("42")
    await manager.submit_result(result(child, "canary-10", 5, "rollback"))
    before = await snapshot(manager)
    with pytest.raises(InvalidTransitionError, match="offered to nobody"):
        await manager.exclude("42", child)
    with pytest.raises(InvalidTransitionError, match="create a new rollout"):
        await manager.retry("42")
    assert await snapshot(manager) == before


# -- retry -------------------------------------------------------------------------------------


async def test_retry_offers_a_completed_rollout_again_to_its_failed_children(
    manager: RolloutManager, clock: Clock
) -> None:
    policy = GlobalIncremental(child_timeout=60.0)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    failed, quiet, good = await fetched(manager, INSIDE, square(6, 46), square(7, 47))
    await manager.submit_result(result(failed, "canary-10", 5, "rollback"))
    await manager.submit_result(result(good, "canary-10", 2))
    clock.now += 120.0  # quiet times out (in its stage for over 60 s)
    await manager.poll(good, square(7, 47), 0)
    await manager.tick()
    assert (await manager.store.child_release("42", quiet)).outcome is Outcome.TIMED_OUT
    assert (await manager.end_stage(good, "42", "canary-10")).end_stage
    await manager.submit_result(result(good, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(good, "ab-50", 4, "rollout"))
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    done = await manager.retry("42", actor="ops")
    assert done.rollout.state is RolloutState.ACTIVE
    assert set(done.retried) == {failed, quiet}
    for child in (failed, quiet):
        state = await manager.store.child_release("42", child)
        assert (state.status, state.outcome) == (ReleaseStatus.TODO, Outcome.NONE)
        assert all(s.status is StageStatus.PENDING for s in state.stages.values())
        assert (await manager.poll(child, INSIDE, 0)).new_release == "42"
    assert (await manager.store.child_release("42", good)).outcome is Outcome.ROLLED_OUT
    users = await manager.list_events(rollout_id="42", kinds={RolloutEventKind.USER_ACTION})
    assert (users[-1].message, users[-1].actor) == ("retry of 2 children requested by ops", "ops")
    states = [e.state for e in await manager.list_events(rollout_id="42") if e.child_id is None]
    assert states[-1] == "active"  # the rollout's transition, after the request
    # The retried children run it again, now to the end: the rollout completes again.
    for child in (failed, quiet):
        await manager.get_release(child, "42")
        await manager.submit_result(result(child, "canary-10", 2))
        assert (await manager.end_stage(child, "42", "canary-10")).end_stage
        await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
        await manager.submit_result(result(child, "ab-50", 4, "rollout"))
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    assert (await manager.report("42")).outcomes == {"rolled_out": 3}


async def test_retry_of_named_children_refuses_what_cannot_be_retried(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    failed, excluded, running = await fetched(manager, INSIDE, square(6, 46), square(7, 47))
    await manager.submit_result(result(failed, "canary-10", 5, "rollback"))
    await manager.exclude("42", excluded)
    before = await snapshot(manager)
    with pytest.raises(InvalidTransitionError, match="never offered the rollout again"):
        await manager.retry("42", [excluded])
    with pytest.raises(InvalidTransitionError, match="only a child whose release failed"):
        await manager.retry("42", [failed, running])  # all or nothing
    with pytest.raises(NotFoundError):
        await manager.retry("42", ["nobody"])
    with pytest.raises(ValidationError) as refused:
        await manager.retry("42", [failed, ""])
    assert refused.value.problems == [("children[1]", "must be a child's id (1 to 200 characters)")]
    with pytest.raises(ValidationError):
        await manager.retry("42", [])
    assert await snapshot(manager) == before
    done = await manager.retry("42", [failed])
    assert (done.rollout.state, done.retried) == (RolloutState.ACTIVE, (failed,))
    # Nothing failed any more (the excluded child is never retried): a clear 409.
    before = await snapshot(manager)
    with pytest.raises(ConflictError, match="no child to retry"):
        await manager.retry("42")
    assert await snapshot(manager) == before


async def test_a_draft_has_nothing_to_retry(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE, start=False)
    with pytest.raises(InvalidTransitionError, match="start it"):
        await manager.retry("42")


# -- error action: pause -----------------------------------------------------------------------


WAVES = Waves(sizes=(0.5, 1.0), success_threshold=0.5, failure_threshold=0.3, min_finished=1)


async def test_a_waves_policy_with_error_action_pause_pauses_instead_of_aborting(
    manager: RolloutManager,
) -> None:
    policy = attrs.evolve(WAVES, error_action="pause")
    ids = [(await manager.poll("", square(5 + i, 45), 0)).id for i in range(4)]
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    first = [c for c in ids if (await manager.poll(c, square(5, 45), 0)).new_release == "42"]
    assert len(first) == 2  # the first wave: half
    await manager.get_release(first[0], "42")
    await manager.submit_result(result(first[0], "canary-10", 5, "rollback"))
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.PAUSED
    assert rollout.reason == "1 of 1 finished children failed (more than 30%)"
    policy_events = await manager.list_events(rollout_id="42", kinds={RolloutEventKind.POLICY})
    assert policy_events[-1].message == f"rollout paused: {rollout.reason}"
    assert policy_events[-1].state == "paused"
    # Resuming while the condition holds would pause it again at once: refused, saying why.
    before = await snapshot(manager)
    with pytest.raises(InvalidTransitionError, match="retry or exclude the failed children"):
        await manager.resume("42")
    assert await snapshot(manager) == before
    # The operator excludes the failed child (it counts for no threshold) and resumes.
    await manager.exclude("42", first[0], actor="ops")
    assert (await manager.resume("42", actor="ops")).state is RolloutState.ACTIVE
    await manager.get_release(first[1], "42")
    await manager.submit_result(result(first[1], "canary-10", 2))
    assert (await manager.end_stage(first[1], "42", "canary-10")).end_stage
    await manager.submit_result(result(first[1], "canary-10", 4, "ab-50"))
    await manager.submit_result(result(first[1], "ab-50", 4, "rollout"))
    assert len(await manager.store.targeted("42")) == 4  # the next wave went
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE


async def test_a_retry_clears_the_error_condition_of_a_paused_rollout(
    manager: RolloutManager,
) -> None:
    policy = attrs.evolve(WAVES, error_action="pause")
    ids = [(await manager.poll("", square(5 + i, 45), 0)).id for i in range(2)]
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    first = [c for c in ids if (await manager.poll(c, square(5, 45), 0)).new_release == "42"]
    await manager.get_release(first[0], "42")
    await manager.submit_result(result(first[0], "canary-10", 5, "rollback"))
    assert (await manager.get_rollout("42")).state is RolloutState.PAUSED
    done = await manager.retry("42")
    assert (done.rollout.state, done.retried) == (RolloutState.PAUSED, (first[0],))
    assert (await manager.resume("42")).state is RolloutState.ACTIVE


async def test_the_default_error_action_still_aborts(manager: RolloutManager) -> None:
    ids = [(await manager.poll("", square(5 + i, 45), 0)).id for i in range(2)]
    await manager.create_rollout(bundle(), EUROPE, policy=WAVES)
    first = [c for c in ids if (await manager.poll(c, square(5, 45), 0)).new_release == "42"]
    await manager.get_release(first[0], "42")
    await manager.submit_result(result(first[0], "canary-10", 5, "rollback"))
    assert (await manager.get_rollout("42")).state is RolloutState.ABORTED


def test_error_action_in_the_policy_json() -> None:
    paused = parse_policy({"type": "waves", "error_action": "pause"})
    assert isinstance(paused, Waves)
    assert paused.error_action == "pause"
    assert policy_json(paused)["error_action"] == "pause"
    assert parse_policy(policy_json(paused)) == paused
    assert "error_action" not in policy_json(Waves())  # the default reads as before
    with pytest.raises(ValidationError) as refused:
        parse_policy({"type": "waves", "error_action": "stop"})
    assert refused.value.problems == [("policy.error_action", "must be abort or pause")]
    with pytest.raises(ValidationError) as refused:
        parse_policy({"type": "global_incremental", "error_action": "pause"})
    assert refused.value.problems == [
        ("policy.error_action", "is not a field of a global_incremental policy")
    ]


def test_the_blocking_facade_retries_and_excludes() -> None:
    with SyncRolloutManager(tick_interval=None) as manager:
        manager.create_rollout(bundle(), EUROPE)
        child = manager.poll("", INSIDE).id
        manager.get_release(child, "42")
        manager.submit_result(result(child, "canary-10", 5, "rollback"))
        assert manager.retry("42", actor="ops").retried == (child,)
        state = manager.exclude("42", child, reason="gone", actor="ops")
        assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.EXCLUDED)
