"""A pacing's rate (rollout.pacing.RateLimit) and a wave's soak time (rollout.admission), as
pure functions of time: properties over random histories."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.admission import admit, success_share
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import ChildRelease, ChildStage, Outcome
from release_coordinator.rollout.pacing import Pacing, Ramp, RateLimit
from release_coordinator.rollout.policies import Waves

steps = st.lists(
    st.tuples(
        st.floats(0.0, 90.0),  # seconds since the last step
        st.integers(0, 50),  # children the policy would admit now
        st.none() | st.floats(0.0, 1.0),  # the success share then
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(1, 20),
    factor=st.floats(1.1, 5.0),
    threshold=st.floats(0.1, 1.0),
    most=st.none() | st.integers(20, 200),
    history=steps,
)
def test_a_rate_never_offers_more_than_it_allows_in_any_60_seconds(
    start: int,
    factor: float,
    threshold: float,
    most: int | None,
    history: list[tuple[float, int, float | None]],
) -> None:
    pacing = Pacing(ramp=Ramp(start, factor, threshold), max_per_minute=most)
    now = 1000.0
    limit = RateLimit(pacing, now)
    offers: list[tuple[float, int]] = []
    grew_while_failing = False
    for gap, wanted, share in history:
        now += gap
        before = limit.rate
        granted = min(wanted, limit.budget(now, share))
        if limit.rate > before:
            assert share is not None, "grew before any child finished"
            assert share >= threshold, "grew without the success share"
            assert limit.rate <= before * factor + 1e-9
        if share is not None and share < threshold:
            grew_while_failing |= limit.rate > before
        limit.spend(now, granted)
        if limit.exhausted(now):  # (nobody more now, whatever the children do)
            assert limit.budget(now, 1.0) == 0
        offers.append((now, granted))
        minutes = math.floor((now - 1000.0) / 60.0)
        bound = min(most or math.inf, start * factor ** min(minutes, 60))
        recent = sum(n for t, n in offers if now - t < 60.0)
        assert recent <= bound, (recent, bound)
        assert recent <= (most or math.inf)
    assert not grew_while_failing


def test_a_maximum_alone_is_a_steady_rate() -> None:
    limit = RateLimit(Pacing(max_per_minute=5), 0.0)
    assert limit.budget(0.0, None) == 5
    limit.spend(0.0, 5)
    assert limit.budget(59.9, 1.0) == 0
    assert limit.frees_at() == 60.0
    assert limit.budget(60.0, 1.0) == 5  # never grows: no ramp


def no_area(child: str) -> Area:
    raise AssertionError(f"a waves policy never asks for an area ({child})")


def finished(child: str, at: float, *, ok: bool) -> ChildRelease:
    status = ReleaseStatus.DONE if ok else ReleaseStatus.FAILED
    stage = ChildStage(StageStatus.COMPLETED if ok else StageStatus.FAILURE, None, at, at - 5)
    outcome = Outcome.ROLLED_OUT if ok else Outcome.ROLLED_BACK
    return ChildRelease("r", child, status, {"s": stage}, outcome, True)


@settings(max_examples=200, deadline=None)
@given(
    finishes=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=10),
    soak=st.floats(1.0, 600.0),
    later=st.floats(0.0, 2000.0),
)
def test_a_wave_soaks_from_the_finish_that_met_its_threshold(
    finishes: list[float], soak: float, later: float
) -> None:
    eligible = [f"c{i}" for i in range(100)]
    states = {f"c{i}": finished(f"c{i}", at, ok=True) for i, at in enumerate(finishes)}
    policy = Waves(sizes=(0.1, 1.0), success_threshold=0.5, soak_time=soak)
    need = max(1, math.ceil(0.5 * len(states)))
    met = sorted(finishes)[need - 1]
    decision = admit(
        policy, eligible, states, lost=lambda _: False, area_of=no_area, now=met + later
    )
    if later < soak:
        assert decision.admit == ()
        assert decision.until == met + soak
    else:
        assert decision.admit
        assert set(decision.admit).isdisjoint(states)
    assert success_share(states) == 1.0
    states["bad"] = finished("bad", 0.0, ok=False)
    assert success_share(states) == len(finishes) / (len(finishes) + 1)
