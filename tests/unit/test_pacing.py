"""Rate and time controls of rollouts (rollout.pacing, rollout.pacer): ramps, maximum per
minute, scheduled starts, maintenance windows, deadlines, a wave's soak time, and the
next-poll hint; over every store, and through the HTTP API."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from release_coordinator.errors import ConfigurationError, ValidationError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.models import RolloutState
from release_coordinator.rollout.pacing import (
    WEEK,
    Pacing,
    PollHints,
    Ramp,
    Window,
    format_time,
    pacing_json,
    parse_pacing,
    parse_time,
)
from release_coordinator.rollout.policies import GlobalIncremental, Waves, parse_policy, policy_json
from release_coordinator.rollout.relay import Relay
from release_coordinator.storage.rollout_base import RolloutStore
from release_coordinator.transports.memory import InProcessParent

from .test_rollout_app import OPS, Node, as_json, assert_error, problem_paths
from .test_rollout_manager import EUROPE, Clock, bundle, finish, result, square

#: Monday 7 December 2026, 00:00 UTC.
MONDAY = dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0


def at(day: int, hour: float) -> float:
    """Day ``day`` (0: that Monday) at ``hour`` UTC."""
    return MONDAY + day * 86400.0 + hour * HOUR


# -- windows, times and their JSON -------------------------------------------------------------

windows = st.builds(
    Window,
    start=st.integers(0, 1439),
    duration=st.floats(1.0, WEEK),
    days=st.frozensets(st.integers(0, 6), min_size=1),
)
times = st.floats(0.0, 4e9)


def open_by_brute_force(window: Window, t: float) -> bool:
    """Whether ``t`` is inside an opening of ``window``, trying every opening of two weeks."""
    base = math.floor(t / 86400.0) * 86400.0
    for k in range(-8, 1):
        day = base + k * 86400.0
        weekday = dt.datetime.fromtimestamp(day, dt.UTC).weekday()
        start = day + window.start * 60.0
        if weekday in window.days and start <= t < start + window.duration:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(window=windows, t=times)
def test_a_window_is_open_exactly_inside_its_openings(window: Window, t: float) -> None:
    assert (window.open_until(t) is not None) is open_by_brute_force(window, t)
    nxt = window.next_opening(t)
    assert t < nxt <= t + 8 * 86400.0
    assert window.open_until(nxt) is not None
    assert dt.datetime.fromtimestamp(nxt, dt.UTC).weekday() in window.days


@st.composite
def pacings(draw: st.DrawFn) -> Pacing:
    ramp = draw(
        st.none()
        | st.builds(
            Ramp,
            start_per_minute=st.integers(1, 50),
            factor=st.floats(1.01, 100.0),
            success_threshold=st.floats(0.01, 1.0),
        )
    )
    most = draw(st.none() | st.integers(50, 10**6))
    start = draw(st.none() | st.integers(0, 2 * 10**9).map(float))
    deadline = draw(st.none() | st.integers(1, 10**9).map(float))
    if start is not None and deadline is not None:
        deadline += start
    return Pacing(
        ramp=ramp,
        max_per_minute=most,
        start_at=start,
        windows=tuple(draw(st.lists(windows, max_size=3))),
        deadline=deadline,
        on_deadline=draw(st.sampled_from(["stop", "cancel", "abort"])),
    )


@settings(max_examples=200, deadline=None)
@given(pacing=pacings(), t=times)
def test_a_pacing_reads_back_what_it_shows_and_opens_when_it_says(pacing: Pacing, t: float) -> None:
    assert parse_pacing(json.loads(json.dumps(pacing_json(pacing)))) == pacing
    opens = pacing.opens_at(t)
    if pacing.is_open(t):
        assert opens == t
    if opens is not None:
        assert opens >= t
        assert pacing.is_open(opens)
    elif pacing.deadline is None:
        pytest.fail("a pacing without a deadline always opens again")


def test_times_are_rfc3339_and_utc() -> None:
    assert format_time(MONDAY) == "2026-12-07T00:00:00Z"
    assert parse_time("2026-12-07T00:00:00Z") == MONDAY
    assert parse_time("2026-12-07T01:00:00+01:00") == MONDAY
    assert parse_time("2026-12-07T00:00:00") == MONDAY  # no offset: UTC
    assert parse_time(MONDAY) == MONDAY
    for bad in ("tomorrow", "", True, None, math.nan, "2026-13-01T00:00:00Z", [1]):
        assert parse_time(bad) is None


def test_a_policy_keeps_its_pacing_and_soak_time_as_json() -> None:
    pacing = Pacing(
        ramp=Ramp(5, 1.5, 0.95),
        max_per_minute=100,
        start_at=at(0, 2),
        windows=(Window(120, 7200.0, frozenset({5, 6})), Window(23 * 60, 3 * HOUR)),
        deadline=at(14, 0),
        on_deadline="cancel",
    )
    for policy in (
        GlobalIncremental(pacing=pacing),
        Waves(sizes=(0.1, 1.0), soak_time=600.0, pacing=pacing),
        Waves(soak_time=30.0),
    ):
        shown = json.loads(json.dumps(policy_json(policy)))
        assert parse_policy(shown) == policy
    shown = policy_json(GlobalIncremental(pacing=pacing))["pacing"]
    assert shown["windows"][0] == {"days": ["sat", "sun"], "start": "02:00", "duration": 7200.0}
    assert shown["windows"][1]["days"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert shown["start_at"] == "2026-12-07T02:00:00Z"
    assert shown["ramp"] == {"start_per_minute": 5, "factor": 1.5, "success_threshold": 0.95}
    # unpaced policies show no pacing (and no soak time): as before
    assert "pacing" not in policy_json(GlobalIncremental())
    assert "soak_time" not in policy_json(Waves())
    # days by their full names, any case; every day by default
    parsed = parse_pacing(
        {"windows": [{"days": ["Saturday", "SUN"], "start": "00:00", "duration": 60}]}
    )
    assert parsed.windows == (Window(0, 60.0, frozenset({5, 6})),)


BAD_PACINGS: list[tuple[Any, set[str]]] = [
    ([], {"policy.pacing"}),
    ({"speed": 3}, {"policy.pacing.speed"}),
    ({"max_per_minute": -1}, {"policy.pacing.max_per_minute"}),
    ({"max_per_minute": 2.5}, {"policy.pacing.max_per_minute"}),
    ({"ramp": {"start_per_minute": 0}}, {"policy.pacing.ramp.start_per_minute"}),
    ({"ramp": {"start_per_minute": 5, "factor": 1}}, {"policy.pacing.ramp.factor"}),
    (
        {"ramp": {"start_per_minute": 5, "success_threshold": 1.5, "grow": 1}},
        {"policy.pacing.ramp.success_threshold", "policy.pacing.ramp.grow"},
    ),
    ({"ramp": 5}, {"policy.pacing.ramp"}),
    ({"ramp": {"start_per_minute": 50}, "max_per_minute": 10}, {"policy.pacing"}),
    ({"start_at": "soon"}, {"policy.pacing.start_at"}),
    ({"start_at": -5}, {"policy.pacing.start_at"}),  # before the epoch
    ({"deadline": 1e12}, {"policy.pacing.deadline"}),  # after the year 9999
    ({"deadline": "9999-12-31T23:59:59-01:00"}, {"policy.pacing.deadline"}),
    ({"deadline": "2026-12-07T00:00:00Z", "start_at": "2026-12-08T00:00:00Z"}, {"policy.pacing"}),
    ({"on_deadline": "explode"}, {"policy.pacing.on_deadline"}),
    ({"windows": {"start": "02:00"}}, {"policy.pacing.windows"}),
    ({"windows": [5]}, {"policy.pacing.windows[0]"}),
    (
        {"windows": [{"start": "24:00", "duration": 0}]},
        {"policy.pacing.windows[0].start", "policy.pacing.windows[0].duration"},
    ),
    (
        {"windows": [{"start": "2:00", "duration": 60}, {"start": "02:00", "duration": 1e9}]},
        {"policy.pacing.windows[0].start", "policy.pacing.windows[1].duration"},
    ),
    (
        {"windows": [{"start": "02:00", "duration": 60, "days": ["someday"]}]},
        {"policy.pacing.windows[0].days"},
    ),
    (
        {"windows": [{"start": "02:00", "duration": 60, "days": []}]},
        {"policy.pacing.windows[0].days"},
    ),
    (
        {"windows": [{"start": "02:00", "duration": 60, "cron": "* * *"}]},
        {"policy.pacing.windows[0].cron"},
    ),
]


@pytest.mark.parametrize(("pacing", "paths"), BAD_PACINGS)
def test_a_bad_pacing_is_refused_with_every_problem_by_path(pacing: Any, paths: set[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_policy({"type": "global_incremental", "pacing": pacing})
    assert {path for path, _ in caught.value.problems} == paths


def test_a_bad_soak_time_or_record_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_policy({"type": "waves", "soak_time": -5})
    assert caught.value.problems[0][0] == "policy.soak_time"
    with pytest.raises(ValidationError):  # a waves field only
        parse_policy({"type": "global_incremental", "soak_time": 5})
    for make in (
        lambda: Waves(soak_time=math.inf),
        lambda: Ramp(0),
        lambda: Ramp(1, factor=0.5),
        lambda: Window(-1, 60.0),
        lambda: Window(0, 0.0),
        lambda: Window(0, 60.0, frozenset({7})),
        lambda: Pacing(max_per_minute=0),
        lambda: Pacing(start_at=-1.0),
        lambda: Pacing(deadline=math.nan),
        lambda: PollHints(busy=10, idle=5),
    ):
        with pytest.raises(ConfigurationError):
            make()


@st.composite
def junk(draw: st.DrawFn) -> Any:
    leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    return draw(
        st.recursive(
            leaf,
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        )
    )


@settings(max_examples=300, deadline=None)
@given(
    value=st.fixed_dictionaries(
        {},
        optional={
            "ramp": junk(),
            "max_per_minute": junk(),
            "start_at": junk(),
            "windows": junk()
            | st.lists(st.dictionaries(st.sampled_from(["days", "start", "duration"]), junk())),
            "deadline": junk(),
            "on_deadline": junk(),
        },
    )
)
def test_any_pacing_json_parses_or_is_refused_with_paths(value: dict[str, Any]) -> None:
    problems: list[tuple[str, str]] = []
    try:
        pacing = parse_pacing(value)
    except ValidationError as error:
        problems = error.problems
    if problems:
        assert all(path.startswith("policy.pacing") for path, _ in problems)
    else:
        assert parse_pacing(json.loads(json.dumps(pacing_json(pacing)))) == pacing


# -- the manager ---------------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.now = at(0, 1)  # Monday 01:00 UTC (the injected clock is wall-clock time)
    return c


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    return RolloutManager(rollout_store, lost_after=3600, clock=clock)


CHILDREN = {f"c{i}": square(1 + i, 42 + i % 5) for i in range(8)}


async def register(manager: RolloutManager, children: dict[str, Any] = CHILDREN) -> None:
    for child, area in children.items():
        await manager.poll(child, area, 0)


async def offered(manager: RolloutManager) -> set[str]:
    return set(await manager.store.targeted("42"))


async def test_a_scheduled_start_offers_nothing_before_it(
    manager: RolloutManager, clock: Clock
) -> None:
    await register(manager)
    pacing = Pacing(start_at=at(0, 2))
    rollout = await manager.create_rollout(
        bundle(), EUROPE, policy=GlobalIncremental(pacing=pacing)
    )
    assert rollout.state is RolloutState.ACTIVE
    assert await offered(manager) == set()
    answer = await manager.poll("c0", CHILDREN["c0"], 0)
    assert answer.new_release == ""
    assert answer.next_poll == 900  # held for an hour: the longest hint
    clock.now = at(0, 2) - 60
    await manager.tick()
    assert await offered(manager) == set()
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 60  # until it starts
    clock.now = at(0, 2)
    await manager.tick()
    assert await offered(manager) == set(CHILDREN)
    answer = await manager.poll("c0", CHILDREN["c0"], 0)
    assert answer.new_release == "42"
    assert answer.next_poll == 5  # offered: soon
    assert answer.to_json()["next_poll"] == 5
    # stored with the rollout, as given: a manager restarted over the store reads it back
    again = RolloutManager(manager.store, clock=clock)
    assert (await again.get_rollout("42")).policy == GlobalIncremental(pacing=pacing)


async def test_nothing_new_is_offered_outside_a_window(
    manager: RolloutManager, clock: Clock
) -> None:
    # every day 02:00-04:00 UTC
    pacing = Pacing(windows=(Window(120, 2 * HOUR),))
    policy = Waves(sizes=(0.2, 1.0), success_threshold=1.0, quorum=0.01, pacing=pacing)
    await register(manager)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    assert await offered(manager) == set()
    clock.now = at(0, 2.5)
    await manager.tick()
    first = await offered(manager)
    assert len(first) == 2  # the first wave, inside the window
    one, two = sorted(first)
    await finish(manager, one, "42")
    await manager.get_release(two, "42")  # running
    clock.now = at(0, 4)  # closed: nothing new; the child running it goes on
    await manager.submit_result(result(two, "canary-10", 2))
    await manager.tick()
    assert await offered(manager) == first
    # a late child registers outside the window: not offered
    await manager.poll("late", square(3, 44), 0)
    assert await offered(manager) == first
    assert (await manager.poll("late", square(3, 44), 0)).next_poll == 900
    assert (await manager.poll(two, CHILDREN[two], 0)).next_poll == 5  # running it
    assert (await manager.end_stage(two, "42", "canary-10")).end_stage  # running ones go on
    await manager.submit_result(result(two, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(two, "ab-50", 4))
    await manager.tick()
    assert await offered(manager) == first  # the wave succeeded, but the window is closed
    clock.now = at(1, 2)  # Tuesday 02:00: open again
    await manager.tick()
    assert await offered(manager) == {*CHILDREN, "late"}


async def test_offers_not_fetched_are_withdrawn_when_the_window_closes(
    manager: RolloutManager, clock: Clock
) -> None:
    pacing = Pacing(windows=(Window(60, HOUR, frozenset({0})),))  # Mondays 01:00-02:00
    await register(manager)
    await manager.create_rollout(
        bundle(), EUROPE, policy=GlobalIncremental(quorum=0.01, pacing=pacing)
    )
    assert await offered(manager) == set(CHILDREN)
    await manager.get_release("c0", "42")
    clock.now = at(0, 2)
    await manager.tick()
    assert await offered(manager) == {"c0"}  # the others never fetched it: withdrawn
    assert (await manager.poll("c1", CHILDREN["c1"], 0)).new_release == ""
    state = await manager.store.child_release("42", "c0")
    assert state.status is ReleaseStatus.DOING
    clock.now = at(7, 1)  # next Monday
    await manager.tick()
    assert await offered(manager) == set(CHILDREN)


async def test_a_ramp_grows_while_the_success_share_holds(
    manager: RolloutManager, clock: Clock
) -> None:
    children = {f"c{i}": square(1 + i % 15, 42 + i // 15) for i in range(30)}
    await register(manager, children)
    pacing = Pacing(ramp=Ramp(2, factor=2.0, success_threshold=0.5), max_per_minute=6)
    await manager.create_rollout(
        bundle(), EUROPE, policy=GlobalIncremental(quorum=0.01, pacing=pacing)
    )
    await manager.tick()  # (over a shared store, the ticks offer rate-limited rollouts)
    first = await offered(manager)
    assert len(first) == 2
    clock.now += 30
    await manager.tick()
    assert len(await offered(manager)) == 2  # 2 a minute
    clock.now += 30
    await manager.tick()
    assert len(await offered(manager)) == 4  # a minute on, nobody finished: still 2 a minute
    for child in sorted(first):
        await finish(manager, child, "42")
    clock.now += 60
    await manager.tick()
    assert len(await offered(manager)) == 8  # all finished rolled out: 4 a minute
    a, b, c = sorted((await offered(manager)) - first)[:3]
    await finish(manager, a, "42", ok=False)
    await finish(manager, b, "42", ok=False)
    await finish(manager, c, "42", ok=False)  # 2 of 5 rolled out: below half
    clock.now += 60
    await manager.tick()
    assert len(await offered(manager)) == 12  # held at 4 a minute
    clock.now += 1
    await manager.tick()
    assert len(await offered(manager)) == 12  # (and the minute is a sliding one)


async def test_a_maximum_per_minute_without_a_ramp(manager: RolloutManager, clock: Clock) -> None:
    await register(manager)
    policy = GlobalIncremental(quorum=0.01, pacing=Pacing(max_per_minute=3))
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    await manager.tick()  # (over a shared store, the ticks offer rate-limited rollouts)
    assert len(await offered(manager)) == 3
    await manager.poll("c9", square(9, 49), 0)  # a newcomer waits for the rate too
    assert len(await offered(manager)) == 3
    clock.now += 60
    await manager.tick()
    assert len(await offered(manager)) == 6
    clock.now += 60
    await manager.tick()
    assert len(await offered(manager)) == 9


async def test_a_paced_rollout_offers_newcomers_when_everyone_was_offered(
    manager: RolloutManager, clock: Clock
) -> None:
    await register(manager)
    policy = GlobalIncremental(quorum=0.01, pacing=Pacing(max_per_minute=100))
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    await manager.tick()
    assert await offered(manager) == set(CHILDREN)
    await finish(manager, "c0", "42")
    await manager.poll("c0", square(-60, 10), 0)  # finished, then moved out of the target
    await manager.poll("new", square(9, 49), 0)  # as many eligible as before, one new
    await manager.tick()
    assert "new" in await offered(manager)
    reads = 0
    original = manager.store.child_releases

    async def counted(rollout_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await original(rollout_id)

    manager.store.child_releases = counted  # type: ignore[method-assign]
    await manager.tick()
    await manager.tick()
    assert reads <= 1  # everyone eligible is offered it: the ticks need not read them all


async def test_a_wave_soaks_before_the_next_one(manager: RolloutManager, clock: Clock) -> None:
    await register(manager)
    policy = Waves(sizes=(0.25, 1.0), success_threshold=1.0, soak_time=600.0, quorum=0.01)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    first = await offered(manager)
    assert len(first) == 2
    for child in sorted(first):
        await finish(manager, child, "42")
    assert await offered(manager) == first  # the threshold is met: soaking
    clock.now += 599
    await manager.tick()
    assert await offered(manager) == first
    clock.now += 1
    await manager.tick()
    assert await offered(manager) == set(CHILDREN)


@pytest.mark.parametrize("action", ["stop", "cancel", "abort"])
async def test_a_deadline_ends_the_rollout(
    manager: RolloutManager, clock: Clock, action: str
) -> None:
    await register(manager)
    pacing = Pacing(max_per_minute=4, deadline=at(0, 1) + 120, on_deadline=action)  # type: ignore[arg-type]
    await manager.create_rollout(
        bundle(), EUROPE, policy=GlobalIncremental(quorum=0.01, pacing=pacing)
    )
    await manager.tick()  # (over a shared store, the ticks offer rate-limited rollouts)
    first = sorted(await offered(manager))
    assert len(first) == 4
    await finish(manager, first[0], "42")
    await manager.get_release(first[1], "42")  # running it at the deadline
    clock.now += 120
    await manager.tick()
    rollout = await manager.get_rollout("42")
    if action == "abort":
        assert rollout.state is RolloutState.ABORTED
        assert rollout.reason == "deadline passed"
        assert (await manager.end_stage(first[1], "42", "canary-10")).action == "rollback"
        return
    assert rollout.state is RolloutState.ACTIVE  # first[1] still runs it
    # nothing new past the deadline; with cancel, the offers not fetched are withdrawn
    assert await offered(manager) == set(first if action == "stop" else first[:2])
    if action == "stop":  # those offered keep it: they finish it
        await finish(manager, first[2], "42")
        await finish(manager, first[3], "42", ok=False)
    await finish(manager, first[1], "42")
    await manager.tick()
    rollout = await manager.get_rollout("42")
    assert rollout.state is RolloutState.COMPLETED
    assert rollout.reason.startswith("deadline passed: ")
    assert "eligible children not reached were left out" in rollout.reason


async def test_poll_hints_are_short_in_a_stage_and_bounded(
    manager: RolloutManager, clock: Clock
) -> None:
    manager.poll_hints = PollHints(busy=2, idle=20, longest=100)
    await register(manager)
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 20  # idle
    await manager.create_rollout(bundle(), EUROPE)
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 2  # offered
    await manager.get_release("c0", "42")
    await manager.submit_result(result("c0", "canary-10", 2))
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 2  # in a stage
    await manager.submit_result(result("c0", "canary-10", 5, "rollback"))
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 20  # finished
    later = Pacing(start_at=at(3, 0))
    await manager.create_rollout(bundle("43"), EUROPE, policy=GlobalIncremental(pacing=later))
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 20  # 42 still reaches it
    await manager.abort("42")
    assert (await manager.poll("c0", CHILDREN["c0"], 0)).next_poll == 100  # 43 waits: longest


# -- over HTTP -------------------------------------------------------------------------------------


async def test_the_http_api_takes_shows_and_refuses_pacings() -> None:
    node = Node()
    try:
        node.clock.now = at(0, 1)
        c = node.client
        pacing = {
            "ramp": {"start_per_minute": 10},
            "windows": [{"days": ["sat"], "start": "02:00", "duration": 3600}],
            "deadline": "2026-12-20T00:00:00Z",
        }
        policy = {"type": "waves", "sizes": [0.5, 1], "soak_time": 300, "pacing": pacing}
        created = await c.post("/rollouts", json=as_json(policy=policy), headers=OPS)
        assert created.status_code == 201, created.text
        shown = created.json()["policy"]
        assert shown["soak_time"] == 300
        assert shown["pacing"]["ramp"] == {
            "start_per_minute": 10,
            "factor": 2.0,
            "success_threshold": 0.9,
        }
        assert shown["pacing"]["deadline"] == "2026-12-20T00:00:00Z"
        assert shown["pacing"]["on_deadline"] == "stop"
        answer = await node.poll("c1")
        assert answer.json()["new_release"] == ""  # Monday: outside Saturday's window
        assert answer.json()["next_poll"] == 900
        bad = {
            "type": "global_incremental",
            "pacing": {"max_per_minute": -3, "windows": [{"start": "25:00", "duration": 60}]},
        }
        error = assert_error(
            await c.post("/rollouts", json=as_json("43", policy=bad), headers=OPS), 422, "invalid"
        )
        assert problem_paths(error) == {
            "policy.pacing.max_per_minute",
            "policy.pacing.windows[0].start",
        }
        assert (await c.get("/rollouts/43", headers=OPS)).status_code == 404  # nothing stored
    finally:
        await node.client.aclose()


# -- relays ----------------------------------------------------------------------------------------


class CountingParent(InProcessParent):
    def __init__(self, manager: RolloutManager) -> None:
        super().__init__(manager)
        self.polls = 0

    async def poll(self, child_id: str, area: dict[str, Any], number_of_children: int) -> Any:
        self.polls += 1
        return await super().poll(child_id, area, number_of_children)


async def test_a_relay_can_follow_its_parents_hint(clock: Clock) -> None:
    top = RolloutManager(lost_after=3600, clock=clock)
    top.poll_hints = PollHints(busy=2, idle=40, longest=600)
    local = RolloutManager(lost_after=3600, clock=clock)
    parent = CountingParent(top)
    relay = Relay(local, parent, relay_id="west", area=Area.from_geojson(EUROPE), follow_hints=True)
    await local.poll("leaf", square(3, 44), 0)
    await relay._round()
    assert parent.polls == 1
    for _ in range(3):  # within the idle hint: no poll upward
        clock.now += 10
        await relay._round()
    assert parent.polls == 1
    await relay.sync()  # an explicit sync always polls
    assert parent.polls == 2
    await top.create_rollout(bundle(), EUROPE)
    clock.now += 40
    await relay._round()  # the hint passed: polls, adopts the release
    assert parent.polls == 3
    assert (await local.get_rollout("42")).state is RolloutState.ACTIVE
    await relay._round()  # relaying a release: every round polls
    assert parent.polls == 4
    plain = Relay(
        RolloutManager(clock=clock),
        CountingParent(top),
        relay_id="east",
        area=Area.from_geojson(EUROPE),
    )
    await plain._round()
    await plain._round()  # without follow_hints: every round
    assert isinstance(plain.parent, CountingParent)
    assert plain.parent.polls == 2


HUGE = 10**400  # past any float: float() of it raises OverflowError


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"type": "global_incremental", "pacing": {"start_at": HUGE}}, "policy.pacing.start_at"),
        ({"type": "global_incremental", "pacing": {"deadline": HUGE}}, "policy.pacing.deadline"),
        (
            {
                "type": "global_incremental",
                "pacing": {"windows": [{"start": "02:00", "duration": HUGE}]},
            },
            "policy.pacing.windows[0].duration",
        ),
        (
            {
                "type": "global_incremental",
                "pacing": {"ramp": {"start_per_minute": 1, "factor": HUGE}},
            },
            "policy.pacing.ramp.factor",
        ),
        ({"type": "waves", "soak_time": HUGE}, "policy.soak_time"),
        ({"type": "global_incremental", "quorum": HUGE}, "policy.quorum"),
        ({"type": "global_incremental", "barrier_timeout": HUGE}, "policy.barrier_timeout"),
    ],
)
def test_an_integer_past_any_float_is_refused_by_path(policy: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_policy(policy)
    assert path in {p for p, _ in caught.value.problems}, caught.value.problems


async def fail(manager: RolloutManager, child: str) -> None:
    await manager.get_release(child, "42")
    await manager.submit_result(result(child, "canary-10", 5, "rollback"))


async def test_a_retry_is_offered_under_the_pacing_or_refused(
    manager: RolloutManager, clock: Clock
) -> None:
    from release_coordinator.errors import ConflictError

    # every day 02:00-04:00 UTC, at most 2 offers a minute, a deadline on Tuesday 00:00
    pacing = Pacing(windows=(Window(120, 2 * HOUR),), max_per_minute=2, deadline=at(1, 0))
    await register(manager)
    await manager.create_rollout(bundle(), EUROPE, policy=GlobalIncremental(pacing=pacing))
    clock.now = at(0, 2.5)
    await manager.tick()
    first = sorted(await offered(manager))
    assert len(first) == 2
    for child in first:
        await fail(manager, child)
    # the minute's two offers are spent: a retry of both would pass the rate
    with pytest.raises(ConflictError, match="would pass its rate"):
        await manager.retry("42")
    clock.now += 61
    before = await manager.store.child_releases("42")
    clock.now = at(0, 5)  # the window closed: nothing is offered, a retry neither
    with pytest.raises(ConflictError, match="offers nothing now"):
        await manager.retry("42")
    assert await manager.store.child_releases("42") == before  # nothing changed
    clock.now = at(0, 3)  # open again (Monday, 03:00)
    assert sorted((await manager.retry("42")).retried) == first
    for child in first:  # they fail again
        await fail(manager, child)
    clock.now = at(1, 1)  # past the deadline
    with pytest.raises(ConflictError, match="deadline has passed"):
        await manager.retry("42")
