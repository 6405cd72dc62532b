"""What-if on the real fleet: which registered children a draft rollout would reach now.

:meth:`RolloutManager.what_if <release_coordinator.rollout.manager.RolloutManager.what_if>`
(``GET /rollouts/{id}/what-if``) matches the draft's target against the registered children
with the manager's own geo index (as starting it would), and groups them as its policy would
admit them: per *area* (a LocationSequential policy's groups, in order, then the children in
none; one per child without groups; the target otherwise) and per *wave* (a Waves policy's
sizes; one wave, everyone, otherwise). Relays (children with children of their own,
``number_of_children > 0``) are counted apart, since the rollout reaches their fleets too. Lists
of ids are bounded (``limit``); the counts are whole. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from release_coordinator.rollout.admission import sequential_groups, wave_ends
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import Rollout
from release_coordinator.rollout.policies import LocationSequential, Waves

__all__ = ["WHAT_IF_LIMIT", "WhatIf", "WhatIfGroup", "build_what_if"]

#: How many ids a what-if lists per group by default (the counts are always whole).
WHAT_IF_LIMIT = 100


@attrs.frozen
class WhatIfGroup:
    """An area or a wave of a what-if: how many children it holds (``count``), how many of
    them are relays (``relay_count``), and the first ids of both (at most the limit)."""

    name: str
    count: int
    relay_count: int
    children: tuple[str, ...]
    relays: tuple[str, ...]


@attrs.frozen
class WhatIf:
    """Which registered children a rollout would reach if it started now (see the module
    documentation): ``eligible`` in all, ``relays`` among them, ``lost`` among them (not
    polling lately: offered, they would not fetch until they come back), per ``areas`` and
    ``waves``; ``note`` says what the answer assumes."""

    rollout: Rollout
    eligible: int
    relays: int
    lost: int
    areas: tuple[WhatIfGroup, ...]
    waves: tuple[WhatIfGroup, ...]
    children: tuple[str, ...]
    note: str


def _group(
    name: str, members: Sequence[str], relay: Callable[[str], bool], limit: int
) -> WhatIfGroup:
    relays = [c for c in members if relay(c)]
    return WhatIfGroup(
        name, len(members), len(relays), tuple(members[:limit]), tuple(relays[:limit])
    )


def build_what_if(
    rollout: Rollout,
    eligible: Sequence[str],
    *,
    children_of: Mapping[str, int],
    area_of: Callable[[str], Area],
    lost: Callable[[str], bool],
    limit: int = WHAT_IF_LIMIT,
    note: str = "",
) -> WhatIf:
    """The what-if of ``rollout`` over ``eligible`` (in eligibility order); ``children_of``
    gives each child's ``number_of_children``."""

    def relay(child: str) -> bool:
        return children_of.get(child, 0) > 0

    policy = rollout.policy
    if isinstance(policy, LocationSequential):
        groups = sequential_groups(policy, eligible, area_of)
        if policy.groups:
            names = [f"groups[{i}]" for i in range(len(policy.groups))] + ["outside every group"]
            pairs = list(zip(names, groups, strict=True))
        else:
            pairs = [(g[0], g) for g in groups]
        areas = tuple(_group(n, g, relay, limit) for n, g in pairs[:limit])
    else:
        areas = (_group("target", eligible, relay, limit),)
    if isinstance(policy, Waves) and eligible:
        waves: list[WhatIfGroup] = []
        start = 0
        for i, end in enumerate(wave_ends(policy, len(eligible))):
            if end <= start:
                continue  # as large as the wave before: nobody new
            waves.append(_group(f"waves[{i}]", eligible[start:end], relay, limit))
            start = end
        if start < len(eligible):  # the last wave is everyone
            waves.append(_group(f"waves[{len(policy.sizes)}]", eligible[start:], relay, limit))
        wave_groups = tuple(waves)
    else:
        wave_groups = (_group("everyone", eligible, relay, limit),)
    return WhatIf(
        rollout=rollout,
        eligible=len(eligible),
        relays=sum(1 for c in eligible if relay(c)),
        lost=sum(1 for c in eligible if lost(c)),
        areas=areas,
        waves=wave_groups,
        children=tuple(eligible[:limit]),
        note=note,
    )
