"""The RolloutManager through its child-protocol methods and operator actions."""

from __future__ import annotations

import asyncio
import io
import zipfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator.errors import (
    GeoJSONError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome, ReleaseBundle, RolloutState
from release_coordinator.rollout.policies import GlobalIncremental
from release_coordinator.storage.rollout_base import RolloutStore

pytestmark = pytest.mark.anyio

STRATEGY = """\
id: "42"
name: checkout-gradual
type: minor
functions:
  - name: checkout
    base_version: {path: fns/checkout_v1, env: nodejs}
    new_version: {path: fns/checkout_v2, env: nodejs}
stages:
  - name: canary-10
    type: WaitForSignal
    func_name: checkout
    variants:
      - {name: base_version, trafficPercentage: 90}
      - {name: new_version, trafficPercentage: 10}
    metrics_conditions:
      - {name: errorRate, threshold: "<=0.01"}
    end_conditions:
      - {name: minCalls, threshold: "20"}
    end_action: {onSuccess: ab-50, onFailure: rollback}
  - name: ab-50
    type: A/B
    func_name: checkout
    variants:
      - {name: base_version, trafficPercentage: 50}
      - {name: new_version, trafficPercentage: 50}
    metrics_conditions: [{name: errorRate, threshold: "<0.05"}]
    end_conditions: [{name: minCalls, threshold: "10"}]
    end_action: {onSuccess: rollout, onFailure: rollback}
rollback: {action: {function: base_version}}
"""


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:  # fixed timestamps: the same bytes every time
        for name, text in (
            ("fns/checkout_v1/index.js", "module.exports = () => 'v1'"),
            ("fns/checkout_v2/index.js", "module.exports = () => 'v2'"),
        ):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


def bundle(release_id: str = "42") -> ReleaseBundle:
    return ReleaseBundle.from_parts(STRATEGY.replace('id: "42"', f'id: "{release_id}"'), archive())


def square(lon: float, lat: float, size: float = 1.0) -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [
            [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
        ],
    }


EUROPE = square(0, 40, 20)
INSIDE = square(5, 45)
OUTSIDE = square(-80, 10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def summary(**extra: Any) -> dict[str, Any]:
    times = {"median": 12.0, "minimum": 3.0, "maximum": 40.0}
    return {
        "proxy_times": times,
        "f1_times_summary": times,
        "f2_times_summary": times,
        "f1_err_rate": 0.0,
        "f2_err_rate": 0.0,
        "f1_calls": 90,
        "f2_calls": 10,
        **extra,
    }


def result(child: str, stage: str, status: int, next_stage: str = "", **extra: Any) -> Any:
    return {
        "id": child,
        "release_id": "42",
        "next_stage": next_stage,
        "stage_summaries": [{"stage_name": stage, "status": status, **summary(**extra)}],
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    """A manager over every store adapter (memory, SQLite, PostgreSQL)."""
    return RolloutManager(rollout_store, lost_after=30, clock=clock)


async def fetched(manager: RolloutManager, *areas: dict[str, Any]) -> list[str]:
    ids = []
    for area in areas:
        answer = await manager.poll("", area, 0)
        assert answer.new_release == "42"
        await manager.get_release(answer.id, "42")
        ids.append(answer.id)
    return ids


# -- poll and targeting ------------------------------------------------------------------------


async def test_poll_registers_and_offers_by_area(manager: RolloutManager) -> None:
    first = await manager.poll("", INSIDE, 0)
    assert first.id
    assert first.new_release == ""
    await manager.create_rollout(bundle(), EUROPE)
    assert (await manager.poll(first.id, INSIDE, 0)).new_release == "42"
    outside = await manager.poll("", OUTSIDE, 0)
    assert outside.new_release == ""
    named = await manager.poll("edge-berlin", square(13, 52, 0.5), 3)
    assert named.id == "edge-berlin"  # an unknown id is registered as given
    assert named.new_release == "42"  # joined mid-rollout, offered too
    assert (await manager.store.get_child("edge-berlin")).number_of_children == 3


async def test_an_area_key_stands_in_for_the_area(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    first = await manager.poll("c1", INSIDE, 0, area_key=b"inside")
    assert first.new_release == "42"
    # The same key: the area is taken as known (the caller promises equal keys, equal areas).
    assert (await manager.poll("c1", "not even GeoJSON", 0, area_key=b"inside")).id == "c1"
    # Another key: the area is parsed and judged again; a move out of the target withdraws.
    moved = await manager.poll("c1", OUTSIDE, 0, area_key=b"outside")
    assert moved.new_release == ""
    assert (await manager.store.get_child("c1")).area == Area.from_geojson(OUTSIDE)
    with pytest.raises(GeoJSONError):
        await manager.poll("c1", "x", 0, area_key=b"bad")
    # Without a key, the area's JSON is the fingerprint (a key's never matches one).
    back = await manager.poll("c1", INSIDE, 0)
    assert back.new_release == "42"
    assert (await manager.poll("c1", INSIDE, 0, area_key=b"outside")).new_release == "42"


async def test_bad_polls_are_refused_and_register_nothing(manager: RolloutManager) -> None:
    open_ring = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}
    for area in (open_ring, {"type": "Point", "coordinates": [0, 0]}, square(200, 0), "x"):
        with pytest.raises(GeoJSONError):
            await manager.poll("c1", area, 0)
    for bad_id, count in ((3, 0), ("c1", -1), ("c1", True), ("x" * 300, 0)):
        with pytest.raises(ValidationError):
            await manager.poll(bad_id, INSIDE, count)
    assert await manager.store.list_children() == []


async def test_containment_priority_and_creation_order(manager: RolloutManager) -> None:
    edge = square(19.5, 45, 1)  # straddles the east border of EUROPE
    await manager.create_rollout(bundle("a"), EUROPE, match="within")
    await manager.create_rollout(bundle("b"), EUROPE)
    await manager.create_rollout(bundle("c"), EUROPE)
    straddling = await manager.poll("", edge, 0)
    assert straddling.new_release == "b"  # not within "a"; "b" before "c"
    await manager.create_rollout(bundle("urgent"), EUROPE, priority=5)
    assert (await manager.poll(straddling.id, edge, 0)).new_release == "urgent"
    inside = await manager.poll("", INSIDE, 0)
    assert inside.new_release == "urgent"


async def test_moving_away_withdraws_what_was_not_fetched(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    child = (await manager.poll("", INSIDE, 0)).id
    assert (await manager.poll(child, OUTSIDE, 0)).new_release == ""
    assert (await manager.poll(child, INSIDE, 0)).new_release == "42"


# -- fetching ------------------------------------------------------------------------------------


async def test_release_and_functions(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    child = (await manager.poll("", INSIDE, 0)).id
    text = await manager.get_release(child, "42")
    assert text == STRATEGY
    assert await manager.get_functions("42") == archive()
    state = await manager.store.child_release("42", child)
    assert state.status is ReleaseStatus.DOING
    assert state.stages["canary-10"].status is StageStatus.IN_PROGRESS
    assert state.stages["ab-50"].status is StageStatus.PENDING
    with pytest.raises(ValidationError):
        await manager.get_release(child, "")
    with pytest.raises(NotFoundError):
        await manager.get_release(child, "nope")
    with pytest.raises(NotFoundError):
        await manager.get_functions("nope")
    stranger = (await manager.poll("", OUTSIDE, 0)).id
    with pytest.raises(NotFoundError):
        await manager.get_release(stranger, "42")


async def test_child_that_crashes_after_fetching_is_offered_again(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    assert (await manager.poll(child, INSIDE, 0)).new_release == "42"  # no result yet
    assert await manager.get_release(child, "42") == STRATEGY
    await manager.submit_result(result(child, "canary-10", 2))
    assert (await manager.poll(child, INSIDE, 0)).new_release == ""  # acknowledged


# -- results and barriers ------------------------------------------------------------------------


async def test_global_barrier_then_rollout(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    a, b = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(a, "canary-10", 2))
    assert not (await manager.end_stage(a, "42", "canary-10")).end_stage  # b not ready
    with pytest.raises(InvalidTransitionError, match="ShouldEnd"):
        await manager.submit_result(result(a, "canary-10", 4, "ab-50"))  # not told to end
    await manager.submit_result(result(b, "canary-10", 2))
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage
    assert (await manager.end_stage(b, 42, "canary-10")).to_json() == {"end_stage": True}
    for child in (a, b):
        await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
        await manager.submit_result(result(child, "ab-50", 4))
    report = await manager.report("42")
    assert report.statuses == {"Done": 2}
    assert report.outcomes == {"rolled_out": 2}
    canary = report.stages[0]
    assert canary.counts == {"Completed": 2}
    assert canary.aggregate is not None
    assert canary.aggregate.f2_calls == 20


async def test_results_that_the_protocol_refuses(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    before = await manager.store.child_release("42", child)
    with pytest.raises(ValidationError):  # an empty summary list (crashed the original)
        await manager.submit_result({"id": child, "release_id": "42", "stage_summaries": []})
    with pytest.raises(InvalidTransitionError, match="Pending"):  # a result for a Pending stage
        await manager.submit_result(result(child, "ab-50", 4))
    with pytest.raises(InvalidTransitionError, match="WaitForSignal"):
        await manager.submit_result(result(child, "ab-50", 2))
    with pytest.raises(NotFoundError):
        await manager.submit_result(result(child, "no-such-stage", 4))
    with pytest.raises(NotFoundError):
        await manager.submit_result(result("ghost", "canary-10", 2))
    assert await manager.store.child_release("42", child) == before


async def test_rollback_as_next_stage_and_its_outcome(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    await manager.submit_result(result(child, "canary-10", 5, "rollback", f2_err_rate=0.3))
    state = await manager.store.child_release("42", child)
    assert state.status is ReleaseStatus.FAILED
    assert state.outcome is Outcome.ROLLED_BACK
    assert state.stages["canary-10"].status is StageStatus.FAILURE
    assert (await manager.poll(child, INSIDE, 0)).new_release == ""


async def test_identical_repeat_changes_nothing(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    await manager.submit_result(result(child, "canary-10", 2))
    once = await manager.store.child_release("42", child)
    await manager.submit_result(result(child, "canary-10", 2))
    assert await manager.store.child_release("42", child) == once


async def test_a_report_sent_again_with_a_fresh_summary_is_a_repeat(
    manager: RolloutManager,
) -> None:
    # A child whose answer was lost (its request timed out) reports again, measured afresh:
    # the first report stands and the repeat is answered alike, also once the release ended
    # (found by the soak test: a failed child got 409 for ever and never finished).
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, INSIDE)
    failed = result(child, "canary-10", 5, "rollback", f2_err_rate=0.3)
    assert await manager.submit_result(failed) == ""
    once = await manager.store.child_release("42", child)
    assert once.status is ReleaseStatus.FAILED
    again = result(child, "canary-10", 5, "rollback", f2_err_rate=0.4)
    assert again != failed
    assert await manager.submit_result(again) == ""
    assert await manager.store.child_release("42", child) == once
    # A report that is not a repeat is still refused once the release ended.
    with pytest.raises(InvalidTransitionError):
        await manager.submit_result(result(child, "canary-10", 2))


async def test_lost_child_no_longer_holds_the_barrier(
    manager: RolloutManager, clock: Clock
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    a, b = await fetched(manager, INSIDE, square(6, 46))
    await manager.submit_result(result(a, "canary-10", 2))
    await manager.tick()
    assert not (await manager.end_stage(a, "42", "canary-10")).end_stage
    clock.now += 31  # b went quiet; a keeps polling
    await manager.poll(a, INSIDE, 0)
    await manager.tick()
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage
    assert (await manager.report("42")).lost == (b,)


async def test_quorum_and_barrier_timeout(manager: RolloutManager, clock: Clock) -> None:
    policy = GlobalIncremental(quorum=0.6, barrier_timeout=10)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    a, b, c = await fetched(manager, INSIDE, square(6, 46), square(7, 47))
    await manager.submit_result(result(a, "canary-10", 2))
    assert not (await manager.end_stage(a, "42", "canary-10")).end_stage  # 1 of 3
    await manager.submit_result(result(b, "canary-10", 2))
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage  # 2 of 3 >= 60%
    await manager.submit_result(result(c, "canary-10", 2))  # late: told at once
    assert (await manager.end_stage(c, "42", "canary-10")).end_stage

    await manager.create_rollout(bundle("slow"), EUROPE, policy=policy)
    ids = []
    for child in (a, b, c):
        assert (await manager.poll(child, INSIDE, 0)).new_release == "slow"
        await manager.get_release(child, "slow")
        ids.append(child)
    slow = result(a, "canary-10", 2)
    slow["release_id"] = "slow"
    await manager.submit_result(slow)
    clock.now += 11
    for child in ids:
        await manager.poll(child, INSIDE, 0)
    await manager.tick()
    rollout = await manager.get_rollout("slow")
    assert rollout.state.value == "aborted"
    assert "time-out" in rollout.reason
    assert (await manager.end_stage(b, "slow", "canary-10")).to_json() == {
        "end_stage": True,
        "action": "rollback",
    }


async def test_pause_resume_abort(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (fetcher,) = await fetched(manager, INSIDE)
    waiting = (await manager.poll("", square(8, 48), 0)).id
    await manager.pause("42")
    assert (await manager.poll(waiting, square(8, 48), 0)).new_release == ""
    await manager.resume("42")
    assert (await manager.poll(waiting, square(8, 48), 0)).new_release == "42"
    await manager.abort("42", reason="bad canary")
    assert (await manager.poll(waiting, square(8, 48), 0)).new_release == ""
    answer = await manager.end_stage(fetcher, "42", "canary-10")
    assert answer.action == "rollback"
    with pytest.raises(InvalidTransitionError):
        await manager.resume("42")


async def test_report_per_area(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    await fetched(manager, INSIDE, square(15, 55))
    north = await manager.report("42", area=_area(square(10, 50, 10)))
    assert len(north.children) == 1
    assert len((await manager.report("42")).children) == 2


def _area(geojson: dict[str, Any]) -> Any:
    return Area.from_geojson(geojson)


# -- properties ----------------------------------------------------------------------------------

coords = st.floats(-170, 160, allow_nan=False)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=st.tuples(coords, st.floats(-80, 60), st.floats(1, 15)),
    child=st.tuples(coords, st.floats(-80, 60), st.floats(0.1, 5)),
)
async def test_a_child_gets_the_release_exactly_when_its_area_reaches_the_target(
    target: tuple[float, float, float], child: tuple[float, float, float]
) -> None:
    manager = RolloutManager()
    target_area = square(*target)
    child_area = square(*child)
    await manager.create_rollout(bundle(), target_area)
    answer = await manager.poll("", child_area, 0)
    reaches = _area(child_area).intersects(_area(target_area))
    assert (answer.new_release == "42") is reaches


# -- other policies -----------------------------------------------------------------------------


async def finish(manager: RolloutManager, child: str, release: str, *, ok: bool = True) -> None:
    """Fetch and run the release to its end on ``child`` (canary waits, then A/B)."""
    await manager.get_release(child, release)
    body = result(child, "canary-10", 2)
    body["release_id"] = release
    await manager.submit_result(body)
    if not ok:
        failed = result(child, "canary-10", 5, "rollback", f2_err_rate=0.5)
        failed["release_id"] = release
        await manager.submit_result(failed)
        return
    assert (await manager.end_stage(child, release, "canary-10")).end_stage
    for stage, status, nxt in (("canary-10", 4, "ab-50"), ("ab-50", 4, "")):
        body = result(child, stage, status, nxt)
        body["release_id"] = release
        await manager.submit_result(body)


async def offered(manager: RolloutManager, children: dict[str, dict[str, Any]]) -> set[str]:
    return {c for c, area in children.items() if (await manager.poll(c, area, 0)).new_release}


async def test_location_sequential_by_area(manager: RolloutManager) -> None:
    from release_coordinator import LocationSequential

    west, east = square(0, 40, 10), square(10, 40, 10)
    children = {"w1": square(2, 42), "w2": square(4, 44), "e1": square(12, 42), "x": square(2, 55)}
    for child, area in children.items():
        await manager.poll(child, area, 0)
    policy = LocationSequential(groups=(_area(west), _area(east)))
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    assert await offered(manager, children) == {"w1", "w2"}
    await finish(manager, "w2", "42", ok=False)  # failed counts as finished ...
    assert await offered(manager, children) == {"w1"}  # ... but the west is not done yet
    await finish(manager, "w1", "42")  # the barrier no longer waits for the failed w2
    assert await offered(manager, children) == {"e1"}
    await finish(manager, "e1", "42")
    assert await offered(manager, children) == {"x"}  # in no group: last


async def test_location_sequential_child_by_child_skips_the_lost(
    manager: RolloutManager, clock: Clock
) -> None:
    from release_coordinator import LocationSequential

    children = {"a": square(2, 42), "b": square(4, 44), "c": square(6, 46)}
    for child, area in children.items():
        await manager.poll(child, area, 0)
    await manager.create_rollout(bundle(), EUROPE, policy=LocationSequential())
    assert await offered(manager, children) == {"a"}
    await manager.get_release("a", "42")  # a fetches, then goes quiet
    clock.now += 31
    await manager.poll("b", children["b"], 0)
    await manager.tick()
    assert (await manager.poll("b", children["b"], 0)).new_release == "42"


async def test_waves_advance_on_success_and_abort_on_failures(manager: RolloutManager) -> None:
    from release_coordinator import Waves

    children = {f"c{i}": square(1 + i, 42 + i % 5) for i in range(10)}
    for child, area in children.items():
        await manager.poll(child, area, 0)
    policy = Waves(
        sizes=(0.1, 0.5, 1.0), success_threshold=1.0, failure_threshold=0.3, min_finished=3
    )
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    assert await offered(manager, children) == {"c0"}  # 10% of 10
    await finish(manager, "c0", "42")
    assert await offered(manager, children) == {"c1", "c2", "c3", "c4"}  # up to 50%
    await finish(manager, "c1", "42", ok=False)
    await finish(manager, "c2", "42", ok=False)  # 2 of 3 finished failed > 30%
    rollout = await manager.get_rollout("42")
    assert rollout.state.value == "aborted"
    assert "2 of 3 finished children failed" in rollout.reason
    assert await offered(manager, children) == set()


async def test_a_rollout_completes_when_every_child_it_reached_finished(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    a, b = await fetched(manager, INSIDE, square(6, 46))
    await finish(manager, b, "42", ok=False)
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE  # a still runs it
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE
    await manager.submit_result(result(a, "canary-10", 2))
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage
    await manager.submit_result(result(a, "canary-10", 4, "ab-50"))
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE
    await manager.submit_result(result(a, "ab-50", 4))  # the last child ends: completed
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.COMPLETED
    assert rollout.reason == "every child it reached finished it: 1 done, 1 failed"
    assert (await manager.list_rollouts(states={RolloutState.ACTIVE})) == []
    # offered to nobody from now on, not even a child registering in its area later
    late = await manager.poll("", square(7, 47), 0)
    assert late.new_release == ""
    assert (await manager.poll(a, INSIDE, 0)).new_release == ""
    # a final state: the operator can neither pause nor abort it
    for action in (manager.pause, manager.abort, manager.resume):
        with pytest.raises(InvalidTransitionError):
            await action("42")
    await manager.submit_result(result(a, "ab-50", 4))  # a repeated last report is harmless
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    report = await manager.report("42")
    assert report.statuses == {"Done": 1, "Failed": 1}


async def test_a_rollout_that_reached_nobody_or_is_paused_does_not_complete(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE  # nobody yet
    (a,) = await fetched(manager, INSIDE)
    await manager.pause("42")
    await finish(manager, a, "42", ok=False)
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.PAUSED
    await manager.resume("42")
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED


async def test_a_sequential_rollout_completes_after_its_last_group(
    manager: RolloutManager,
) -> None:
    from release_coordinator import LocationSequential

    children = {"a": square(2, 42), "b": square(4, 44)}
    for child, area in children.items():
        await manager.poll(child, area, 0)
    await manager.create_rollout(bundle(), EUROPE, policy=LocationSequential())
    assert await offered(manager, children) == {"a"}
    await finish(manager, "a", "42")  # everybody offered it finished, but b is still to come
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE
    assert await offered(manager, children) == {"b"}
    await finish(manager, "b", "42")
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED


async def test_registrations_at_once_are_written_together(
    manager: RolloutManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    (mover,) = await fetched(manager, INSIDE)
    await manager.create_rollout(bundle("43"), EUROPE)  # (mover: 43 is offered, not fetched)
    saves: list[int] = []
    save_children = manager.store.save_children

    async def counted(children: Any) -> None:
        saves.append(len(children))
        await save_children(children)

    monkeypatch.setattr(manager.store, "save_children", counted)
    polls = [manager.poll(f"c{i}", square(1 + i % 10, 41 + i % 5), 0) for i in range(40)]
    polls.append(manager.poll(mover, OUTSIDE, 0))  # moves away from both rollouts
    polls += [manager.poll("twice", INSIDE, 0), manager.poll("twice", OUTSIDE, 0)]
    answers = await asyncio.gather(*polls)
    assert len(saves) < len(polls)  # batched (the first poll's batch, then everyone else's)
    assert sum(saves) == 42  # each child once: "twice" as last given
    assert [a.new_release for a in answers[:40]] == ["42"] * 40  # each offered, in order
    assert answers[40].new_release == "42"  # (fetched, not finished: still its release)
    assert [(a.id, a.new_release) for a in answers[41:]] == [("twice", ""), ("twice", "")]
    assert (await manager.store.get_child("twice")).area == Area.from_geojson(OUTSIDE)
    everyone = {f"c{i}" for i in range(40)}
    assert set(await manager.store.targeted("42")) == everyone | {mover}  # it fetched 42
    assert set(await manager.store.targeted("43")) == everyone  # 43 withdrawn from the mover


async def test_a_failed_batch_of_registrations_fails_its_polls_only(
    manager: RolloutManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from release_coordinator.errors import StorageError

    await manager.create_rollout(bundle(), EUROPE)
    save_children = manager.store.save_children

    async def broken(children: Any) -> None:
        raise StorageError("the disk is full")

    monkeypatch.setattr(manager.store, "save_children", broken)
    answers = await asyncio.gather(
        *(manager.poll(f"c{i}", INSIDE, 0) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(a, StorageError) for a in answers)
    assert await manager.children() == []
    monkeypatch.setattr(manager.store, "save_children", save_children)
    assert (await manager.poll("c1", INSIDE, 0)).new_release == "42"  # the writer goes on
    # a batch that fails after its children were saved: their next poll still targets them
    target = manager.store.target

    async def broken_target(rollout_id: str, child_ids: Any, **events: Any) -> list[str]:
        raise StorageError("the disk is full")

    monkeypatch.setattr(manager.store, "target", broken_target)
    with pytest.raises(StorageError):
        await manager.poll("c2", INSIDE, 0)
    assert [c.id for c in await manager.children()] == ["c1", "c2"]
    monkeypatch.setattr(manager.store, "target", target)
    assert (await manager.poll("c2", INSIDE, 0)).new_release == "42"


def test_policies_refuse_nonsense() -> None:
    from release_coordinator import ConfigurationError, Waves

    for bad in (
        {"sizes": ()},
        {"sizes": (0.5, 0.2)},
        {"sizes": (0, 1)},
        {"failure_threshold": 0},
        {"quorum": 1.5},
        {"barrier_timeout": -1},
    ):
        with pytest.raises(ConfigurationError):
            Waves(**bad)  # type: ignore[arg-type]


async def test_a_child_that_ends_early_after_a_completed_stage_rolled_out(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=GlobalIncremental())
    (child,) = await fetched(manager, INSIDE)
    await manager.submit_result(result(child, "canary-10", 2))
    assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await manager.submit_result(result(child, "canary-10", 4, ""))  # ends, skipping ab-50
    state = await manager.store.child_release("42", child)
    assert state.status is ReleaseStatus.DONE
    assert state.outcome is Outcome.ROLLED_OUT
