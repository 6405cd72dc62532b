"""A policy's decision at one moment: which eligible children are admitted now, or why the
rollout aborts (the policies themselves are records in :mod:`.policies`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs

from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import ChildRelease
from release_coordinator.rollout.policies import (
    GlobalIncremental,
    LocationSequential,
    Policy,
    Waves,
)

__all__ = [
    "Admission",
    "admit",
    "failure_condition",
    "sequential_groups",
    "success_share",
    "wave_ends",
]


@attrs.frozen
class Admission:
    """What a policy decided: children to offer the release to now, or a reason to abort."""

    admit: tuple[str, ...] = ()
    abort: str = ""
    #: When the decision may change by time alone (a wave's soak time ends), on the manager's
    #: clock; None if only the children's progress changes it.
    until: float | None = None


_FINISHED = frozenset({ReleaseStatus.DONE, ReleaseStatus.FAILED})
ROLLED_OUT = "rolled_out"  # Outcome.ROLLED_OUT (a StrEnum): compared by value
EXCLUDED = "excluded"  # Outcome.EXCLUDED: an excluded child counts for no threshold


def _counted(states: Mapping[str, ChildRelease]) -> list[ChildRelease]:
    """The children a policy's thresholds count: every admitted one but the excluded."""
    return [s for s in states.values() if s.outcome != EXCLUDED]


def admit(
    policy: Policy,
    eligible: Sequence[str],
    states: Mapping[str, ChildRelease],
    *,
    lost: Callable[[str], bool],
    area_of: Callable[[str], Area],
    now: float | None = None,
) -> Admission:
    """The policy's decision. ``eligible`` in eligibility order; ``states`` of the children
    admitted so far (the others are not in it). ``now`` (the manager's clock) judges a
    wave's ``soak_time`` (None: not judged). The policy's ``pacing`` (rate, schedule) is
    applied by the manager on top of this decision."""
    if isinstance(policy, GlobalIncremental):
        return Admission(tuple(c for c in eligible if c not in states))
    if isinstance(policy, LocationSequential):
        return _sequential(policy, eligible, states, lost, area_of)
    return _waves(policy, eligible, states, now)


def _done(child: str, states: Mapping[str, ChildRelease], lost: Callable[[str], bool]) -> bool:
    state = states.get(child)
    return state is not None and (state.status in _FINISHED or lost(child))


def _sequential(
    policy: LocationSequential,
    eligible: Sequence[str],
    states: Mapping[str, ChildRelease],
    lost: Callable[[str], bool],
    area_of: Callable[[str], Area],
) -> Admission:
    for group in sequential_groups(policy, eligible, area_of):
        if not group:
            continue
        if all(_done(child, states, lost) for child in group):
            continue
        return Admission(tuple(c for c in group if c not in states))
    return Admission()


def sequential_groups(
    policy: LocationSequential, eligible: Sequence[str], area_of: Callable[[str], Area]
) -> list[list[str]]:
    """The groups of a LocationSequential policy, in order: per area of ``groups`` (a child in
    the first its area intersects), then the children in none; each child alone without
    ``groups``."""
    if not policy.groups:
        return [[child] for child in eligible]
    groups: list[list[str]] = [[] for _ in range(len(policy.groups) + 1)]
    for child in eligible:
        area = area_of(child)
        index = next(
            (i for i, g in enumerate(policy.groups) if g.intersects(area)), len(policy.groups)
        )
        groups[index].append(child)
    return groups


def wave_ends(policy: Waves, eligible: int) -> list[int]:
    """How many of ``eligible`` children each wave of a Waves policy reaches (growing)."""
    return [max(1, math.ceil(share * eligible)) for share in policy.sizes]


def finished_at(state: ChildRelease) -> float:
    """When a finished child finished (its last stage change, on the manager's clock)."""
    return max((s.changed_at for s in state.stages.values()), default=0.0)


def success_share(states: Mapping[str, ChildRelease]) -> float | None:
    """Of the finished children, the share that rolled out (None: none finished yet)."""
    finished = rolled_out = 0
    for state in _counted(states):
        if state.status in _FINISHED:
            finished += 1
            rolled_out += state.status is ReleaseStatus.DONE and state.outcome == ROLLED_OUT
    return rolled_out / finished if finished else None


def failure_condition(policy: Waves, states: Mapping[str, ChildRelease]) -> str:
    """Why the policy's error condition holds (more than ``failure_threshold`` of the finished
    children failed, after at least ``min_finished`` finished), or "" when it does not.
    Excluded children are not counted."""
    finished = [s for s in _counted(states) if s.status in _FINISHED]
    failed = sum(1 for s in finished if s.status is ReleaseStatus.FAILED)
    if (
        finished
        and len(finished) >= policy.min_finished
        and (failed / len(finished) > policy.failure_threshold)
    ):
        return (
            f"{failed} of {len(finished)} finished children failed "
            f"(more than {policy.failure_threshold:.0%})"
        )
    return ""


def _waves(
    policy: Waves,
    eligible: Sequence[str],
    states: Mapping[str, ChildRelease],
    now: float | None = None,
) -> Admission:
    failing = failure_condition(policy, states)
    if failing:  # the policy's error_action applies (abort, or pause)
        return Admission(abort=failing)
    counted = _counted(states)  # (excluded children count for no threshold)
    finished = [s for s in counted if s.status in _FINISHED]
    admitted = len(states)
    succeeded = sum(
        1 for s in finished if s.status is ReleaseStatus.DONE and s.outcome == ROLLED_OUT
    )
    if counted and succeeded < policy.success_threshold * len(counted):
        return Admission()  # the current wave is still proving itself
    if counted and policy.soak_time and now is not None:
        # Soaking: the threshold was met by the `need`-th success; the next wave waits
        # soak_time after it (from the stored finish times: the same after a restart).
        need = max(1, math.ceil(policy.success_threshold * len(counted)))
        times = sorted(
            finished_at(s)
            for s in finished
            if s.status is ReleaseStatus.DONE and s.outcome == ROLLED_OUT
        )
        until = times[need - 1] + policy.soak_time if len(times) >= need else None
        if until is not None and now < until:
            return Admission(until=until)
    # The next wave: the first whose size passes what was admitted so far; the last wave is
    # everyone, children that became eligible late included.
    sizes = wave_ends(policy, len(eligible))
    wanted = next((size for size in sizes if size > admitted), len(eligible))
    return Admission(tuple(c for c in eligible[:wanted] if c not in states))
