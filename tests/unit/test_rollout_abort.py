"""An abort reaches every child that runs the release: at its next ``/poll`` (the ``aborted``
extra), at ``/end_stage`` and at ``/result`` (answered ``{"action": "rollback"}`` and recorded
as the abort's, never as a roll-out); and the function archive is served only for a release
that is offered, to the children it is meant for."""

from __future__ import annotations

import pytest

from release_coordinator.errors import NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.kit import SimulatedLeaf
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome
from release_coordinator.rollout.relay import Relay
from release_coordinator.storage.rollout_base import RolloutStore
from release_coordinator.transports.memory import InProcessParent

from .test_rollout_manager import EUROPE, INSIDE, OUTSIDE, Clock, bundle, fetched, result, square

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    """A manager over every store adapter (memory, SQLite, PostgreSQL)."""
    return RolloutManager(rollout_store, lost_after=30, clock=clock)


async def test_a_child_running_an_aborted_release_learns_it_at_its_next_poll(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    running, done = await fetched(manager, INSIDE, square(6, 46))
    for child in (running, done):
        await manager.submit_result(result(child, "canary-10", 2))
    todo = (await manager.poll("", square(7, 47), 0)).id  # offered, never fetched
    await manager.submit_result(result(done, "canary-10", 4, "ab-50"))  # now in the A/B stage
    assert (await manager.poll(running, INSIDE, 0)).aborted == ()
    await manager.abort("42", reason="bad canary")
    answer = await manager.poll(running, INSIDE, 0)
    assert (answer.new_release, answer.aborted) == ("", ("42",))
    assert answer.to_json() == {
        "id": running,
        "new_release": "",
        "aborted": ["42"],
        "next_poll": 5,  # (the hint: it still runs a release)
    }
    assert (await manager.poll(todo, square(7, 47), 0)).aborted == ()  # it never ran it
    # A child in the A/B stage that reports "rolled out" after the abort: told to roll back,
    # recorded as the abort's (the complaint of issue #12), and no longer told at its polls.
    assert await manager.submit_result(result(done, "ab-50", 4, "rollout")) == "rollback"
    state = await manager.store.child_release("42", done)
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.ABORTED)
    assert (await manager.poll(done, square(6, 46), 0)).aborted == ()
    # One that reports its roll-back: recorded rolled back.
    assert await manager.submit_result(result(running, "canary-10", 5, "rollback")) == "rollback"
    state = await manager.store.child_release("42", running)
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.ROLLED_BACK)
    assert (await manager.poll(running, INSIDE, 0)).aborted == ()
    # A repeated report changes nothing and is answered the same.
    assert await manager.submit_result(result(running, "canary-10", 5, "rollback")) == "rollback"
    assert (await manager.report("42")).outcomes == {"aborted": 1, "rolled_back": 1}


async def test_a_child_that_rolled_out_before_the_abort_keeps_it(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    child, slow = await fetched(manager, INSIDE, square(6, 46))
    for each in (child, slow):
        await manager.submit_result(result(each, "canary-10", 2))
    assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
    finished = result(child, "ab-50", 4, "rollout")
    assert await manager.submit_result(finished) == ""
    await manager.abort("42")  # slow still runs it
    assert (await manager.poll(child, INSIDE, 0)).aborted == ()  # done before: nothing to do
    assert (await manager.poll(slow, square(6, 46), 0)).aborted == ("42",)
    assert await manager.submit_result(finished) == ""  # a repeat: no roll-back asked
    assert (await manager.store.child_release("42", child)).outcome is Outcome.ROLLED_OUT


async def test_a_restarted_manager_still_names_the_aborted_release(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    await manager.abort("42")
    again = RolloutManager(manager.store, lost_after=30, clock=clock)
    await again.load()
    assert (await again.poll(child, INSIDE, 0)).aborted == ("42",)


async def test_the_archive_is_served_only_for_an_offered_release(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE, start=False)
    with pytest.raises(NotFoundError):
        await manager.get_functions("42")  # a draft
    await manager.start("42")
    (child,) = await fetched(manager, INSIDE)
    far = (await manager.poll("", OUTSIDE, 0)).id
    assert (await manager.get_functions("42", child)).startswith(b"PK")
    assert (await manager.get_functions("42")).startswith(b"PK")  # old agents name nobody
    with pytest.raises(NotFoundError, match="release for child"):
        await manager.get_functions("42", far)  # not meant for it
    with pytest.raises(NotFoundError):
        await manager.get_functions("7", child)
    await manager.abort("42")
    with pytest.raises(NotFoundError):
        await manager.get_functions("42", child)


async def test_leaves_learn_an_abort_at_their_poll_and_roll_back() -> None:
    top = RolloutManager(lost_after=1e9)
    leaf = SimulatedLeaf(InProcessParent(top), INSIDE, calls_per_step=40, seed=1)
    await top.create_rollout(bundle(), EUROPE)
    await leaf.step()  # fetched, in the canary (its minCalls not reached yet)
    assert leaf.stage is not None
    await top.abort("42")
    await leaf.step()
    assert leaf.outcome == "rolled_back"
    state = await top.store.child_release("42", leaf.id)
    assert (state.status, state.outcome) == (ReleaseStatus.FAILED, Outcome.ROLLED_BACK)


async def test_an_abort_at_the_top_reaches_a_leaf_below_a_relay_at_its_polls() -> None:
    top = RolloutManager(lost_after=1e9)
    relay = Relay(RolloutManager(lost_after=1e9), InProcessParent(top), relay_id="r")
    leaf = SimulatedLeaf(InProcessParent(relay.manager), INSIDE, calls_per_step=40, seed=1)
    await leaf.step()  # registered below the relay
    await relay.sync()  # the relay registered at the top
    await top.create_rollout(bundle(), EUROPE)
    await relay.sync()  # adopted
    await leaf.step()  # fetched from the relay
    assert leaf.stage is not None
    await top.abort("42")
    await relay.sync()  # its poll names the abort: aborted below too
    await leaf.step()  # and the leaf's poll names it
    assert leaf.outcome == "rolled_back"
    await relay.sync()  # reports the roll-back upward
    assert (await top.store.child_release("42", relay.id)).status is ReleaseStatus.FAILED


async def test_children_get_the_archive_digest_with_the_release() -> None:
    import base64
    import hashlib

    from .test_rollout_app import OPS, Node, as_json

    node = Node()
    try:
        c = node.client
        assert (await c.post("/rollouts", json=as_json(), headers=OPS)).status_code == 201
        child = (await node.poll("", INSIDE)).json()["id"]
        release = await c.get("/release", params={"childID": child, "releaseID": "42"})
        archive = await c.get("/release/functions/42", params={"childID": child})
        digest = hashlib.sha256(archive.content).hexdigest()
        assert release.headers["x-archive-sha256"] == digest
        assert release.headers["x-archive-size"] == str(len(archive.content))
        assert archive.headers["etag"] == f'"{digest}"'
        assert archive.headers["repr-digest"] == (
            "sha-256=:" + base64.b64encode(hashlib.sha256(archive.content).digest()).decode() + ":"
        )
    finally:
        await c.aclose()


async def test_a_leaf_whose_fetch_failed_tries_again() -> None:
    top = RolloutManager(lost_after=1e9)
    leaf = SimulatedLeaf(InProcessParent(top), INSIDE, calls_per_step=40, seed=1)
    await top.create_rollout(bundle(), EUROPE)
    real = top.get_functions
    calls = 0

    async def failing_once(release_id: object, child_id: object = "") -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise NotFoundError("release", "42")  # say, a moment's trouble at the parent
        return await real(release_id, child_id)

    top.get_functions = failing_once  # type: ignore[method-assign]
    with pytest.raises(NotFoundError):
        await leaf.step()
    assert (leaf.release_id, leaf.strategy) == ("", None)
    await leaf.step()  # offered again, fetched this time
    assert leaf.release_id == "42"
    assert leaf.stage is not None
