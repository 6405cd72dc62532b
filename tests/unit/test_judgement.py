"""Canary judgement by the manager: the statistics (rollout.judgement) on the decision's edges,
the policy's ``judgement`` as JSON, and the manager acting on verdicts at a stage's barrier
(rollout.judging) over every store."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from release_coordinator.errors import ValidationError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.judgement import (
    CanaryVerdict,
    Judgement,
    Verdict,
    error_test,
    judge,
    judgement_json,
    parse_judgement,
    stage_judgement,
)
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import Outcome, RolloutState
from release_coordinator.rollout.policies import (
    GlobalIncremental,
    LocationSequential,
    Waves,
    parse_policy,
    policy_json,
)
from release_coordinator.rollout.results import StageSummary, TimesSummary, aggregate
from release_coordinator.rollout.simulate import FleetConfig, simulate
from release_coordinator.storage.rollout_base import RolloutStore

from .test_rollout_manager import EUROPE, Clock, bundle, fetched, square

ERRORS_ONLY = Judgement(latency_threshold=None, min_calls=10)


def summary(
    old_calls: int,
    old_errors: int,
    new_calls: int,
    new_errors: int,
    *,
    old_median: float = 20.0,
    new_median: float = 20.0,
) -> StageSummary:
    def times(median: float) -> TimesSummary:
        return TimesSummary(median, median / 2, median * 3)

    return StageSummary(
        times(old_median),
        times(old_median),
        times(new_median),
        old_errors / old_calls if old_calls else 0.0,
        new_errors / new_calls if new_calls else 0.0,
        old_calls,
        new_calls,
    )


calls = st.integers(10, 100_000)


@st.composite
def counts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n1, n2 = draw(calls), draw(calls)
    return n1, draw(st.integers(0, n1)), n2, draw(st.integers(0, n2))


# -- the statistics ---------------------------------------------------------------------------


def test_the_z_test_is_the_pooled_two_proportion_test() -> None:
    # 10 of 1000 old calls failed, 30 of 1000 new ones: p = 0.02, se = sqrt(.02*.98*2/1000).
    z, p = error_test(1000, 10, 1000, 30)
    assert z == pytest.approx(0.02 / math.sqrt(0.02 * 0.98 * 0.002))
    assert z == pytest.approx(3.1944, abs=1e-4)
    assert p == pytest.approx(0.000701, abs=1e-5)
    verdict = judge(ERRORS_ONLY, summary(1000, 10, 1000, 30))
    assert verdict.verdict is Verdict.FAIL
    assert "error rate 0.03 new against 0.01 old" in verdict.reason
    assert judge(ERRORS_ONLY, summary(1000, 30, 1000, 10)).verdict is Verdict.PASS


def test_no_error_at_all_or_only_errors_tells_nothing() -> None:
    assert error_test(500, 0, 500, 0) == (0.0, 0.5)
    assert error_test(500, 500, 500, 500) == (0.0, 0.5)
    assert judge(ERRORS_ONLY, summary(500, 0, 500, 0)).verdict is Verdict.PASS


@given(counts(), st.integers(1, 1000))
def test_more_new_errors_never_turn_a_fail_into_a_pass(
    numbers: tuple[int, int, int, int], more: int
) -> None:
    n1, x1, n2, x2 = numbers
    worse = min(n2, x2 + more)
    before = judge(ERRORS_ONLY, summary(n1, x1, n2, x2))
    after = judge(ERRORS_ONLY, summary(n1, x1, n2, worse))
    assert after.z is not None
    assert before.z is not None
    if before.verdict is Verdict.FAIL:
        assert after.verdict is Verdict.FAIL
    # and more old errors never turn a pass into a fail
    better = judge(ERRORS_ONLY, summary(n1, min(n1, x1 + more), n2, x2))
    if before.verdict is Verdict.PASS:
        assert better.verdict is Verdict.PASS


@given(counts())
def test_the_verdict_flips_exactly_at_the_confidence_boundary(
    numbers: tuple[int, int, int, int],
) -> None:
    n1, x1, n2, x2 = numbers
    _z, p = error_test(n1, x1, n2, x2)
    for confidence in (0.51, 0.8, 0.9, 0.95, 0.99, 0.999, 1 - p, math.nextafter(1 - p, 0)):
        if not 0.5 < confidence < 1:
            continue
        verdict = judge(
            Judgement(confidence=confidence, latency_threshold=None, min_calls=10),
            summary(n1, x1, n2, x2),
        )
        assert verdict.p_value == p
        expected = Verdict.FAIL if p <= 1 - confidence else Verdict.PASS
        assert verdict.verdict is expected, (confidence, p)


@given(calls, st.integers(0, 10_000), st.floats(0.5, 0.999, exclude_min=True))
def test_equal_versions_pass_and_swapping_them_flips_z(
    n: int, errors: int, confidence: float
) -> None:
    x = min(n, errors)
    judgement = Judgement(confidence=confidence, min_calls=10)
    same = judge(judgement, summary(n, x, n, x))
    assert same.verdict is Verdict.PASS
    assert same.z == 0.0
    z, _ = error_test(n, x, n, min(n, x + 1))
    z_swapped, _ = error_test(n, min(n, x + 1), n, x)
    assert z == pytest.approx(-z_swapped)


@given(counts(), st.integers(10, 10_000))
def test_too_few_calls_is_inconclusive_whatever_the_numbers(
    numbers: tuple[int, int, int, int], least: int
) -> None:
    n1, x1, n2, x2 = numbers
    verdict = judge(Judgement(min_calls=least), summary(n1, x1, n2, x2, new_median=1e6))
    if n1 < least or n2 < least:
        assert verdict.verdict is Verdict.INCONCLUSIVE
        assert verdict.reason.startswith("too few calls")
        assert verdict.z is None
        assert verdict.p_value is None
    else:
        assert verdict.verdict is Verdict.FAIL  # a million ms


@given(st.floats(0.1, 1e4), st.floats(0, 5))
def test_latency_fails_only_above_the_relative_threshold(old: float, threshold: float) -> None:
    judgement = Judgement(latency_threshold=threshold, min_calls=10)
    limit = old * (1 + threshold)
    at = judge(judgement, summary(100, 0, 100, 0, old_median=old, new_median=limit))
    assert at.verdict is Verdict.PASS
    above = math.nextafter(limit, math.inf)
    over = judge(judgement, summary(100, 0, 100, 0, old_median=old, new_median=above))
    assert over.verdict is Verdict.FAIL
    assert "median" in over.reason
    faster = judge(judgement, summary(100, 0, 100, 0, old_median=old, new_median=old / 2))
    assert faster.verdict is Verdict.PASS


def test_twenty_percent_slower_against_a_ten_percent_threshold() -> None:
    judgement = Judgement(latency_threshold=0.1, min_calls=100)
    verdict = judge(judgement, summary(9000, 9, 1000, 1, old_median=22.5, new_median=27.0))
    assert verdict.verdict is Verdict.FAIL
    assert verdict.latency_ratio == pytest.approx(1.2)
    assert verdict.reason.startswith("median 27 ms new against 22.5 ms old (1.2x")
    assert verdict.to_json()["latency_ratio"] == pytest.approx(1.2)
    nothing_old = judge(judgement, summary(100, 0, 100, 0, old_median=0.0, new_median=1.0))
    assert nothing_old.verdict is Verdict.FAIL
    assert nothing_old.to_json()["latency_ratio"] is None  # inf is not JSON


def test_a_stage_judgement_counts_each_childs_verdict() -> None:
    judgement = Judgement(scope="child", min_calls=50)
    pairs = [
        ("a", summary(900, 1, 100, 0)),
        ("b", summary(900, 1, 100, 0, new_median=40.0)),
        ("c", summary(9, 0, 1, 0)),
    ]
    row = stage_judgement(judgement, pairs)
    assert row is not None
    assert dict(row.units) == {"pass": 1, "fail": 1, "inconclusive": 1}
    assert [c for c, _ in row.failing] == ["b"]
    assert row.to_json()["failing"][0]["unit"] == "b"
    assert stage_judgement(None, pairs) is None
    assert stage_judgement(judgement, []) is None


# -- the policy's judgement as JSON ---------------------------------------------------------


def test_a_policy_carries_its_judgement_as_json() -> None:
    judgement = Judgement(confidence=0.99, min_calls=500, latency_threshold=None, scope="child")
    for policy in (
        GlobalIncremental(judgement=judgement),
        LocationSequential(judgement=judgement),
        Waves(judgement=judgement),
    ):
        shown = policy_json(policy)
        assert shown["judgement"] == judgement_json(judgement)
        assert parse_policy(shown) == policy
    assert "judgement" not in policy_json(GlobalIncremental())  # shown only when set
    assert parse_policy({"judgement": None}).judgement is None
    assert parse_policy({"judgement": {}}).judgement == Judgement()
    assert parse_judgement({"max_wait": 0, "on_inconclusive": "proceed"}) == Judgement(
        max_wait=0.0, on_inconclusive="proceed"
    )


@pytest.mark.parametrize(
    ("judgement", "where"),
    [
        ([], "policy.judgement"),
        ({"confidence": 1.0}, "policy.judgement.confidence"),
        ({"confidence": 0.2}, "policy.judgement.confidence"),
        ({"confidence": 0.5}, "policy.judgement.confidence"),
        ({"confidence": "high"}, "policy.judgement.confidence"),
        ({"min_calls": 5}, "policy.judgement.min_calls"),
        ({"min_calls": 2.5}, "policy.judgement.min_calls"),
        ({"latency_threshold": -0.1}, "policy.judgement.latency_threshold"),
        ({"latency_threshold": "20%"}, "policy.judgement.latency_threshold"),
        ({"max_wait": -1}, "policy.judgement.max_wait"),
        ({"max_wait": float("inf")}, "policy.judgement.max_wait"),
        ({"scope": "region"}, "policy.judgement.scope"),
        ({"on_inconclusive": "wait"}, "policy.judgement.on_inconclusive"),
        ({"confidance": 0.9}, "policy.judgement.confidance"),
    ],
)
def test_a_bad_judgement_is_refused_naming_where(judgement: Any, where: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_policy({"type": "waves", "judgement": judgement})
    assert where in [path for path, _ in raised.value.problems], raised.value.problems


# -- the manager acting on verdicts ---------------------------------------------------------

HEALTHY = {"f1_err_rate": 0.001, "f2_err_rate": 0.001, "f1_calls": 9000, "f2_calls": 1000}
ERRORS = {**HEALTHY, "f2_err_rate": 0.05}
FEW = {**HEALTHY, "f1_calls": 90, "f2_calls": 10}


def waiting(child: str, times: tuple[float, float] = (20.0, 20.0), **numbers: Any) -> Any:
    """A SuccessWaiting report on canary-10 (the stage's own errorRate condition holds: the
    manager judges what the child did not)."""

    def t(median: float) -> dict[str, float]:
        return {"median": median, "minimum": median / 2, "maximum": median * 3}

    body = {
        "stage_name": "canary-10",
        "status": 2,
        "proxy_times": t(times[0]),
        "f1_times_summary": t(times[0]),
        "f2_times_summary": t(times[1]),
        **numbers,
    }
    return {"id": child, "release_id": "42", "next_stage": "", "stage_summaries": [body]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def judged_rollout(
    store: RolloutStore, clock: Clock, judgement: Judgement, children: int = 3
) -> tuple[RolloutManager, list[str]]:
    manager = RolloutManager(store, lost_after=3600, clock=clock)
    await manager.create_rollout(bundle(), EUROPE, policy=GlobalIncremental(judgement=judgement))
    ids = await fetched(manager, *(square(2 + 3 * i, 45) for i in range(children)))
    return manager, ids


@pytest.mark.anyio
async def test_a_healthy_stage_passes_and_the_barrier_opens(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    manager, ids = await judged_rollout(rollout_store, clock, Judgement())
    for child in ids:
        await manager.submit_result(waiting(child, **HEALTHY))
    for child in ids:
        assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    row = (await manager.report("42")).stages[0]
    assert row.judgement is not None
    assert row.judgement.verdict.verdict is Verdict.PASS
    assert row.judgement.verdict.new_calls == 3000


@pytest.mark.anyio
async def test_worse_errors_across_the_children_roll_the_rollout_back(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    manager, ids = await judged_rollout(rollout_store, clock, Judgement())
    for child in ids:
        assert (await manager.end_stage(child, "42", "canary-10")).action == ""
        await manager.submit_result(waiting(child, **ERRORS))
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.ABORTED
    assert rollout.reason.startswith("canary judgement, stage 'canary-10': fail: error rate 0.05")
    for child in ids:
        assert (await manager.end_stage(child, "42", "canary-10")).action == "rollback"
    row = (await manager.report("42")).stages[0]
    assert row.judgement is not None
    assert row.judgement.verdict.verdict is Verdict.FAIL


@pytest.mark.anyio
async def test_a_slower_median_rolls_the_rollout_back(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    manager, ids = await judged_rollout(rollout_store, clock, Judgement(latency_threshold=0.1))
    for child in ids:
        await manager.submit_result(waiting(child, (20.0, 24.0), **HEALTHY))
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.ABORTED
    assert "median 24 ms new against 20 ms old" in rollout.reason


@pytest.mark.anyio
@pytest.mark.parametrize("on_inconclusive", ["rollback", "proceed"])
async def test_too_few_calls_wait_up_to_the_limit(
    rollout_store: RolloutStore, clock: Clock, on_inconclusive: str
) -> None:
    judgement = parse_judgement({"max_wait": 60, "on_inconclusive": on_inconclusive})
    assert judgement is not None
    manager, ids = await judged_rollout(rollout_store, clock, judgement)
    for child in ids:
        await manager.submit_result(waiting(child, **FEW))
    for _ in range(5):  # 50 s: held, inconclusive
        clock.now += 10
        await manager.tick()
        for child in ids:
            assert not (await manager.end_stage(child, "42", "canary-10")).end_stage
    row = (await manager.report("42")).stages[0]
    assert row.judgement is not None
    assert row.judgement.verdict.verdict is Verdict.INCONCLUSIVE
    clock.now += 10
    await manager.tick()
    answer = await manager.end_stage(ids[0], "42", "canary-10")
    rollout = await manager.get_rollout("42")
    if on_inconclusive == "proceed":
        assert answer.end_stage
        assert answer.action == ""
        assert rollout.state is RolloutState.ACTIVE
    else:
        assert answer.action == "rollback"
        assert rollout.state is RolloutState.ABORTED
        assert "inconclusive after 60s (too few calls: 270 old and 30 new" in rollout.reason


@pytest.mark.anyio
async def test_more_children_can_settle_an_inconclusive_stage(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    # The quorum is ready on few calls: the barrier waits; the last child's calls settle it.
    judgement = Judgement(min_calls=100)
    manager = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    policy = GlobalIncremental(quorum=0.5, judgement=judgement)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    a, b, c = await fetched(manager, square(2, 45), square(5, 45), square(8, 45))
    await manager.submit_result(waiting(a, **FEW))
    await manager.submit_result(waiting(b, **FEW))
    assert not (await manager.end_stage(a, "42", "canary-10")).end_stage
    await manager.submit_result(waiting(c, **HEALTHY))
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage


@pytest.mark.anyio
async def test_by_child_only_the_failing_child_rolls_back(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    judgement = Judgement(scope="child", latency_threshold=0.1)
    manager, (good, slow, other) = await judged_rollout(rollout_store, clock, judgement)
    await manager.submit_result(waiting(good, **HEALTHY))
    await manager.submit_result(waiting(slow, (20.0, 24.0), **HEALTHY))
    assert not (await manager.end_stage(good, "42", "canary-10")).end_stage
    await manager.submit_result(waiting(other, **HEALTHY))
    # All three were ready: the slow one is rolled back, the barrier opens for the others.
    state = await manager.store.child_release("42", slow)
    assert state.status is ReleaseStatus.FAILED
    assert state.outcome is Outcome.ROLLED_BACK
    assert state.stages["canary-10"].status is StageStatus.FAILURE
    assert (await manager.end_stage(slow, "42", "canary-10")).action == "rollback"
    for child in (good, other):
        answer = await manager.end_stage(child, "42", "canary-10")
        assert answer.end_stage
        assert answer.action == ""
    assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE
    # The child's own report of the roll-back is a repeat: taken, nothing changes.
    body = waiting(slow, **HEALTHY)
    body["stage_summaries"][0]["status"] = 5
    body["next_stage"] = "rollback"
    assert await manager.submit_result(body) == ""
    report = await manager.report("42")
    row = report.stages[0]
    assert row.judgement is not None
    assert dict(row.judgement.units) == {"pass": 2, "fail": 1}
    assert row.judgement.failing[0][0] == slow
    assert report.outcomes == {"rolled_back": 1}


@pytest.mark.anyio
async def test_a_policy_without_judgement_opens_as_before(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    manager = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    await manager.create_rollout(bundle(), EUROPE)
    (child,) = await fetched(manager, square(2, 45))
    await manager.submit_result(waiting(child, (20.0, 39.0), **ERRORS))
    assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    assert (await manager.report("42")).stages[0].judgement is None


@pytest.mark.anyio
async def test_the_judgement_survives_the_store(rollout_store: RolloutStore, clock: Clock) -> None:
    judgement = Judgement(confidence=0.99, min_calls=50, scope="child", max_wait=5)
    await judged_rollout(rollout_store, clock, judgement, children=1)
    again = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    await again.load()
    assert (await again.get_rollout("42")).policy.judgement == judgement


@settings(max_examples=50)
@given(st.lists(st.tuples(counts(), st.floats(1, 100), st.floats(1, 100)), min_size=1, max_size=5))
def test_a_verdict_is_pass_fail_or_inconclusive_with_its_numbers(
    items: list[tuple[tuple[int, int, int, int], float, float]],
) -> None:
    for (n1, x1, n2, x2), old, new in items:
        verdict = judge(Judgement(), summary(n1, x1, n2, x2, old_median=old, new_median=new))
        assert isinstance(verdict, CanaryVerdict)
        assert (verdict.old_calls, verdict.new_calls) == (n1, n2)
        if verdict.verdict is not Verdict.INCONCLUSIVE:
            assert verdict.p_value is not None
            assert 0 <= verdict.p_value <= 1


# -- a simulated fleet: one region's new version 20% slower ----------------------------------

FAST = {"poll_interval": 0.02, "stage_seconds": 0.05, "progress_every": 0.1}
BY_REGION = Judgement(scope="child", latency_threshold=0.1, min_calls=50, confidence=0.99)


@pytest.mark.anyio
async def test_the_top_manager_rolls_the_slower_region_back_and_the_other_out() -> None:
    config = FleetConfig(
        grid=2,
        leaves=40,
        slow=("r2",),
        policy=GlobalIncremental(judgement=BY_REGION),
        **FAST,
    )
    result = await simulate(config)
    assert result.as_expected, result.regions
    r1, r2 = result.regions
    assert (r1.rolled_out, r1.rolled_back) == (20, 0)
    assert r2.rolled_out == 0
    assert r2.rolled_back + r2.never_offered == 20
    canary = result.report.stages[0]
    assert canary.judgement is not None
    assert dict(canary.judgement.units) == {"pass": 1, "fail": 1}
    ((relay, reason),) = canary.judgement.failing
    assert relay.startswith("r2")
    assert "median" in reason
    assert result.report.outcomes == {"rolled_out": 1, "rolled_back": 1}


@pytest.mark.anyio
async def test_without_judgement_the_slower_region_rolls_out() -> None:
    # The stages' absolute conditions (median < 40 ms) let a 20% slower version through.
    result = await simulate(FleetConfig(grid=2, leaves=20, slow=("r2",), **FAST))
    assert result.as_expected
    assert [r.rolled_out for r in result.regions] == [10, 10]


@pytest.mark.anyio
async def test_by_group_a_failing_group_rolls_back_and_the_next_goes(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    west, east = square(0, 40, 10), square(10, 40, 10)
    judgement = Judgement(scope="group", latency_threshold=0.1, min_calls=100)
    manager = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    areas = {"w1": square(2, 45), "w2": square(5, 45), "e1": square(15, 45)}
    for child, area in areas.items():
        await manager.poll(child, area, 0)
    policy = LocationSequential(groups=(Area.from_geojson(west), Area.from_geojson(east)))
    policy = attrs.evolve(policy, judgement=judgement)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    offered = {c: (await manager.poll(c, a, 0)).new_release for c, a in areas.items()}
    assert offered == {"w1": "42", "w2": "42", "e1": ""}  # one group at a time
    for child in ("w1", "w2"):
        await manager.get_release(child, "42")
        await manager.submit_result(waiting(child, (20.0, 23.0), **HEALTHY))
    # group-1 is 15% slower: its two children roll back, and the next group is offered it.
    for child in ("w1", "w2"):
        assert (await manager.end_stage(child, "42", "canary-10")).action == "rollback"
    assert (await manager.poll("e1", areas["e1"], 0)).new_release == "42"
    await manager.get_release("e1", "42")
    await manager.submit_result(waiting("e1", **HEALTHY))
    answer = await manager.end_stage("e1", "42", "canary-10")
    assert answer.end_stage
    assert answer.action == ""
    row = (await manager.report("42")).stages[0]
    assert row.judgement is not None
    assert row.judgement.scope == "group"
    assert dict(row.judgement.units) == {"fail": 1, "pass": 1}
    ((unit, reason),) = row.judgement.failing
    assert unit == "group-1"
    assert "median 23 ms new against 20 ms old" in reason


# -- the manager's decision is the verdict's, whatever the numbers ---------------------------

child_numbers = st.tuples(
    st.integers(0, 3000),  # old calls
    st.floats(0, 0.05),  # old error rate
    st.integers(0, 1000),  # new calls
    st.floats(0, 0.1),  # new error rate
    st.floats(10, 30),  # new median (the old one is 20)
)


def reported(numbers: tuple[int, float, int, float, float]) -> dict[str, Any]:
    n1, r1, n2, r2, _median = numbers
    return {"f1_calls": n1, "f1_err_rate": r1, "f2_calls": n2, "f2_err_rate": r2}


@settings(max_examples=40, deadline=None)
@given(st.lists(child_numbers, min_size=1, max_size=3), st.sampled_from(["rollout", "child"]))
def test_the_manager_acts_as_the_verdict_says(
    numbers: list[tuple[int, float, int, float, float]], scope: str
) -> None:
    from release_coordinator.storage.memory_rollout import MemoryRolloutStore

    judgement = parse_judgement({"scope": scope, "min_calls": 100, "max_wait": 1e9})
    assert judgement is not None

    async def run() -> None:
        manager, ids = await judged_rollout(MemoryRolloutStore(), Clock(), judgement, len(numbers))
        for child, n in zip(ids, numbers, strict=True):
            await manager.submit_result(waiting(child, (20.0, n[4]), **reported(n)))
        states = {c: await manager.store.child_release("42", c) for c in ids}
        summaries = [states[c].stages["canary-10"].summary for c in ids]
        assert all(isinstance(s, StageSummary) for s in summaries)
        rollout = await manager.get_rollout("42")
        answers = [await manager.end_stage(c, "42", "canary-10") for c in ids]
        if scope == "rollout":
            combined = aggregate([s for s in summaries if isinstance(s, StageSummary)])
            assert combined is not None
            verdict = judge(judgement, combined).verdict
            assert (rollout.state is RolloutState.ABORTED) == (verdict is Verdict.FAIL)
            opened = all(a.end_stage and a.action == "" for a in answers)
            assert opened == (verdict is Verdict.PASS)
            return
        own = {
            c: judge(judgement, s).verdict
            for c, s in zip(ids, summaries, strict=True)
            if isinstance(s, StageSummary)
        }
        for child, answer in zip(ids, answers, strict=True):
            rolled_back = states[child].status is ReleaseStatus.FAILED
            assert rolled_back == (own[child] is Verdict.FAIL)
            assert (answer.action == "rollback") == rolled_back
        held = any(v is Verdict.INCONCLUSIVE for v in own.values())
        live = [a for c, a in zip(ids, answers, strict=True) if own[c] is not Verdict.FAIL]
        assert all(a.end_stage != held for a in live)

    asyncio.run(run())


@pytest.mark.anyio
async def test_a_later_group_is_judged_although_the_barrier_is_open(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    # group-1 passes and opens the barrier; group-2's children, waiting later, are held until
    # the quorum of group-2 is ready, then judged together: slower, they roll back.
    west, east = square(0, 40, 10), square(10, 40, 10)
    judgement = Judgement(scope="group", latency_threshold=0.1, min_calls=100)
    manager = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    areas = {"w1": square(2, 45), "e1": square(12, 45), "e2": square(15, 45)}
    for child, area in areas.items():
        await manager.poll(child, area, 0)
    policy = LocationSequential(
        groups=(Area.from_geojson(west), Area.from_geojson(east)), judgement=judgement
    )
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    assert (await manager.poll("w1", areas["w1"], 0)).new_release == "42"
    await manager.get_release("w1", "42")
    await manager.submit_result(waiting("w1", **HEALTHY))
    assert (await manager.end_stage("w1", "42", "canary-10")).end_stage  # group-1 passed
    body = waiting("w1", **HEALTHY)
    body["stage_summaries"][0].update(status=4, stage_name="canary-10")
    body["next_stage"] = "rollout"
    await manager.submit_result(body)  # w1 done: group-2 is offered the release
    for child in ("e1", "e2"):
        assert (await manager.poll(child, areas[child], 0)).new_release == "42"
        await manager.get_release(child, "42")
    await manager.submit_result(waiting("e1", (20.0, 23.0), **HEALTHY))
    answer = await manager.end_stage("e1", "42", "canary-10")
    assert (answer.end_stage, answer.action) == (False, "")  # held: e2 is not ready yet
    await manager.submit_result(waiting("e2", (20.0, 23.0), **HEALTHY))
    for child in ("e1", "e2"):
        assert (await manager.end_stage(child, "42", "canary-10")).action == "rollback"
        state = await manager.store.child_release("42", child)
        assert state.outcome is Outcome.ROLLED_BACK
    assert (await manager.store.child_release("42", "w1")).outcome is Outcome.ROLLED_OUT


@pytest.mark.anyio
async def test_a_child_waiting_after_the_barrier_opened_is_judged_on_its_own(
    rollout_store: RolloutStore, clock: Clock
) -> None:
    judgement = Judgement(scope="child", latency_threshold=0.1, min_calls=100, max_wait=30)
    manager = RolloutManager(rollout_store, lost_after=3600, clock=clock)
    policy = GlobalIncremental(quorum=0.5, judgement=judgement)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    a, b, slow, few = await fetched(
        manager, square(2, 45), square(5, 45), square(8, 45), square(11, 45)
    )
    for child in (a, b):
        await manager.submit_result(waiting(child, **HEALTHY))
    assert (await manager.end_stage(a, "42", "canary-10")).end_stage  # 2 of 4: open
    await manager.submit_result(waiting(slow, (20.0, 24.0), **HEALTHY))
    assert (await manager.end_stage(slow, "42", "canary-10")).action == "rollback"
    await manager.submit_result(waiting(few, **FEW))
    assert not (await manager.end_stage(few, "42", "canary-10")).end_stage  # inconclusive
    clock.now += 30
    await manager.tick()  # max_wait passed: rolled back (on_inconclusive)
    assert (await manager.end_stage(few, "42", "canary-10")).action == "rollback"
    assert (await manager.report("42")).outcomes == {"rolled_back": 2}
