"""Orchestration policies: which eligible children get a rollout now, and when to give up.

A rollout's *eligible* children are those its target reaches; a policy decides which of them
are *admitted* (offered the release) at each moment, from the children's states. The stage
barrier of ``WaitForSignal`` stages (``quorum``, ``barrier_timeout``) is common to every policy
and is judged among the admitted children.

So is the per-child time limit, ``child_timeout`` (seconds; :data:`DEFAULT_CHILD_TIMEOUT`, one
hour, unless told; ``None``: no limit): a child offered the release that has not fetched it
that long after the offer, or that stays in a stage that long past the stage's
``minDuration`` (or that long after it was told to end a ``WaitForSignal`` stage) without
reporting, *times out*: its release is ``Failed`` with the outcome ``timed_out``, its stage
``Error``, and it counts as failed for the policy. A child waiting on a barrier never times out
(the barrier's own ``barrier_timeout`` covers that). So a rollout never waits forever for a
child that went away or hung.

- :class:`GlobalIncremental` admits everyone at once (the original's *global incremental*).
- :class:`LocationSequential` admits one group (an area, or a single child) at a time, the next
  once every child of the previous one has finished the whole release (or is lost).
- :class:`Waves` admits growing shares of the children, advancing once a wave's successes
  reach a threshold, and aborts (or pauses: ``error_action``) when the failure share passes a
  threshold after a minimum number of children finished.

What a policy decides at a moment is :func:`release_coordinator.rollout.admission.admit`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from release_coordinator.errors import ConfigurationError, GeoJSONError, Problem, ValidationError
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.judgement import Judgement, judgement_json, parse_judgement
from release_coordinator.rollout.pacing import (
    NO_PACING,
    Pacing,
    _number,
    pacing_json,
    parse_pacing,
)

__all__ = [
    "DEFAULT_CHILD_TIMEOUT",
    "ERROR_ACTIONS",
    "MAX_GROUPS",
    "MAX_WAVES",
    "ErrorAction",
    "GlobalIncremental",
    "LocationSequential",
    "Policy",
    "Waves",
    "parse_policy",
    "policy_json",
]


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigurationError(f"{attribute.name} must be within (0, 1], not {value!r}")


def _timeout(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _soak(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"{attribute.name} must be a non-negative number, not {value!r}")


#: The default per-child time limit (seconds) of every policy: see the module documentation.
DEFAULT_CHILD_TIMEOUT = 3600.0
_DEFAULT_LIMIT: float | None = DEFAULT_CHILD_TIMEOUT  # typed as the field is


@attrs.frozen
class GlobalIncremental:
    """Every eligible child at once; a ``WaitForSignal`` stage ends for all together once
    ``quorum`` of the children taking part wait on it (see the module docstring)."""

    quorum: float = attrs.field(default=1.0, validator=_fraction)
    barrier_timeout: float | None = attrs.field(default=None, validator=_timeout)
    child_timeout: float | None = attrs.field(default=_DEFAULT_LIMIT, validator=_timeout)
    #: Canary judgement by the manager (None: none): see :mod:`.judgement`.
    judgement: Judgement | None = None
    #: Rate and time controls (ramp, schedule, windows, deadline): see :mod:`.pacing`.
    pacing: Pacing = NO_PACING
    #: Stages an operator approves before any child starts them: see :mod:`.approvals`.
    approvals: tuple[str, ...] = ()


@attrs.frozen
class LocationSequential:
    """One group after another: ``groups`` are areas (a child belongs to the first one its area
    intersects; children in none form a last group), or, when empty, each child is its own
    group, in registration order. The next group gets the release once every child of the
    current one has finished it (or is lost)."""

    groups: tuple[Area, ...] = ()
    quorum: float = attrs.field(default=1.0, validator=_fraction)
    barrier_timeout: float | None = attrs.field(default=None, validator=_timeout)
    child_timeout: float | None = attrs.field(default=_DEFAULT_LIMIT, validator=_timeout)
    #: Canary judgement by the manager (None: none): see :mod:`.judgement`.
    judgement: Judgement | None = None
    #: Rate and time controls (ramp, schedule, windows, deadline): see :mod:`.pacing`.
    pacing: Pacing = NO_PACING
    #: Stages an operator approves before any child starts them: see :mod:`.approvals`.
    approvals: tuple[str, ...] = ()


#: What a Waves policy's error condition does: ``abort`` (every child rolls back) or ``pause``
#: (the operator decides: retry or exclude the failed children, then resume; or abort).
ErrorAction = Literal["abort", "pause"]
ERROR_ACTIONS: tuple[ErrorAction, ...] = ("abort", "pause")


def _error_action(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ERROR_ACTIONS:
        raise ConfigurationError(f"{attribute.name} must be abort or pause, not {value!r}")


def _sizes(
    _: object, attribute: attrs.Attribute[tuple[float, ...]], value: tuple[float, ...]
) -> None:
    if not value or any(not 0 < s <= 1 for s in value) or list(value) != sorted(value):
        raise ConfigurationError(
            f"{attribute.name} must be growing fractions within (0, 1], not {value!r}"
        )


@attrs.frozen
class Waves:
    """Growing waves: wave k holds the first ``sizes[k]`` share of the eligible children (in
    eligibility order; the last wave is everyone). The next wave starts once
    ``success_threshold`` of the children admitted so far finished and rolled out; the rollout
    aborts once more than ``failure_threshold`` of the finished children failed, after at least
    ``min_finished`` finished (pauses instead with ``error_action="pause"``; excluded children
    count for neither threshold). With ``soak_time``, the next wave waits that many seconds more
    after the current one met the threshold (measured from the finish that met it)."""

    sizes: tuple[float, ...] = attrs.field(default=(0.01, 0.1, 0.5, 1.0), validator=_sizes)
    success_threshold: float = attrs.field(default=0.9, validator=_fraction)
    failure_threshold: float = attrs.field(default=0.2, validator=_fraction)
    min_finished: int = 1
    quorum: float = attrs.field(default=1.0, validator=_fraction)
    barrier_timeout: float | None = attrs.field(default=None, validator=_timeout)
    child_timeout: float | None = attrs.field(default=_DEFAULT_LIMIT, validator=_timeout)
    #: Canary judgement by the manager (None: none): see :mod:`.judgement`.
    judgement: Judgement | None = None
    #: Seconds to wait, once a wave met ``success_threshold``, before the next wave starts.
    soak_time: float = attrs.field(default=0.0, validator=_soak)
    #: Rate and time controls (ramp, schedule, windows, deadline): see :mod:`.pacing`.
    pacing: Pacing = NO_PACING
    #: Stages an operator approves before any child starts them: see :mod:`.approvals`.
    approvals: tuple[str, ...] = ()
    #: What the error condition (``failure_threshold`` passed) does: ``abort`` the rollout,
    #: or ``pause`` it for the operator (see :data:`ERROR_ACTIONS`).
    error_action: ErrorAction = attrs.field(default="abort", validator=_error_action)


Policy = GlobalIncremental | LocationSequential | Waves


# -- as JSON (the HTTP API and the SQL store) ------------------------------------------------

#: The most areas of a LocationSequential policy, and waves of a Waves policy.
MAX_GROUPS = 1000
MAX_WAVES = 100
#: The most stages a policy's ``approvals`` name.
MAX_APPROVALS = 100


def policy_json(policy: Policy) -> dict[str, Any]:
    """A policy as the API shows it (and :func:`parse_policy` reads it back)."""
    common: dict[str, Any] = {
        "quorum": policy.quorum,
        "barrier_timeout": policy.barrier_timeout,
        "child_timeout": policy.child_timeout,
    }
    if policy.judgement is not None:  # shown only when set, as pacing
        common["judgement"] = judgement_json(policy.judgement)
    if policy.pacing.is_set:  # shown only when set: policies without one read as before
        common["pacing"] = pacing_json(policy.pacing)
    if policy.approvals:  # shown only when set (rollout.approvals)
        common["approvals"] = list(policy.approvals)
    if isinstance(policy, GlobalIncremental):
        return {"type": "global_incremental", **common}
    if isinstance(policy, LocationSequential):
        groups = [g.to_geojson() for g in policy.groups]
        return {"type": "location_sequential", "groups": groups, **common}
    return {
        "type": "waves",
        "sizes": list(policy.sizes),
        "success_threshold": policy.success_threshold,
        "failure_threshold": policy.failure_threshold,
        "min_finished": policy.min_finished,
        **({"soak_time": policy.soak_time} if policy.soak_time else {}),
        **({"error_action": policy.error_action} if policy.error_action != "abort" else {}),
        **common,
    }


_POLICY_FIELDS = {
    "global_incremental": {
        "quorum",
        "barrier_timeout",
        "child_timeout",
        "judgement",
        "pacing",
        "approvals",
    },
    "location_sequential": {
        "groups",
        "quorum",
        "barrier_timeout",
        "child_timeout",
        "judgement",
        "pacing",
        "approvals",
    },
    "waves": {
        "sizes",
        "success_threshold",
        "failure_threshold",
        "min_finished",
        "soak_time",
        "error_action",
        "quorum",
        "barrier_timeout",
        "child_timeout",
        "pacing",
        "judgement",
        "approvals",
    },
}


def parse_policy(value: object, path: str = "policy") -> Policy:
    """A policy from its JSON form (see :func:`policy_json`); ValidationError listing every
    problem by path. ``null`` is the default policy (global incremental)."""
    if value is None:
        return GlobalIncremental()
    problems: list[Problem] = []

    def refuse(where: str, message: str) -> None:
        problems.append((f"{path}.{where}" if where else path, message))

    if not isinstance(value, Mapping):
        raise ValidationError("invalid policy", [(path, "must be a JSON object")])
    kind = value.get("type", "global_incremental")
    if not isinstance(kind, str) or kind not in _POLICY_FIELDS:
        raise ValidationError(
            "invalid policy", [(f"{path}.type", f"must be one of {', '.join(_POLICY_FIELDS)}")]
        )
    for key in value:
        if key != "type" and key not in _POLICY_FIELDS[kind]:
            refuse(str(key)[:60], f"is not a field of a {kind} policy")
    options: dict[str, Any] = {}

    def take_number(key: str, message: str) -> None:
        number = _number(value[key])
        if number is None:
            refuse(key, message)
        else:
            options[key] = number

    for key in ("quorum", "success_threshold", "failure_threshold"):
        if value.get(key) is not None and key in _POLICY_FIELDS[kind]:
            take_number(key, "must be a number")
    if value.get("barrier_timeout") is not None:
        take_number("barrier_timeout", "must be a number of seconds or null")
    if "child_timeout" in value:  # null: no limit; left out: the default
        if value["child_timeout"] is None:
            options["child_timeout"] = None
        else:
            take_number("child_timeout", "must be a number of seconds or null")
    if value.get("pacing") is not None:  # rate and time controls (rollout.pacing)
        try:
            options["pacing"] = parse_pacing(value["pacing"], f"{path}.pacing")
        except ValidationError as error:
            problems.extend(error.problems)
    if value.get("judgement") is not None:  # canary judgement (rollout.judgement)
        try:
            options["judgement"] = parse_judgement(value["judgement"], f"{path}.judgement")
        except ValidationError as error:
            problems.extend(error.problems)
    if value.get("approvals") is not None:  # stages approved before they open (.approvals)
        approvals = value["approvals"]
        if (
            not isinstance(approvals, list)
            or len(approvals) > MAX_APPROVALS
            or not all(isinstance(a, str) and a for a in approvals)
        ):
            refuse("approvals", f"must be a list of at most {MAX_APPROVALS} stage names")
        else:
            options["approvals"] = tuple(dict.fromkeys(approvals))
    if kind == "waves" and value.get("error_action") is not None:  # abort (default) or pause
        if value["error_action"] not in ERROR_ACTIONS:
            refuse("error_action", "must be abort or pause")
        else:
            options["error_action"] = value["error_action"]
    if kind == "waves" and value.get("soak_time") is not None:
        soak = _number(value["soak_time"])
        if soak is None or soak < 0:
            refuse("soak_time", "must be a non-negative number of seconds")
        else:
            options["soak_time"] = soak
    if kind == "waves":
        sizes = value.get("sizes")
        if sizes is not None:
            numbers = [_number(s) for s in sizes] if isinstance(sizes, list) else [None]
            if not numbers or len(numbers) > MAX_WAVES or None in numbers:
                refuse("sizes", f"must be a list of 1 to {MAX_WAVES} numbers")
            else:
                options["sizes"] = tuple(n for n in numbers if n is not None)
        least = value.get("min_finished")
        if least is not None:
            if isinstance(least, bool) or not isinstance(least, int) or not 0 <= least < 2**31:
                refuse("min_finished", "must be a non-negative integer")
            else:
                options["min_finished"] = least
    if kind == "location_sequential":
        groups = value.get("groups")
        if groups is not None:
            if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
                refuse("groups", f"must be a list of at most {MAX_GROUPS} GeoJSON areas")
            else:
                areas = []
                for i, group in enumerate(groups):
                    try:
                        areas.append(Area.from_geojson(group, path=f"{path}.groups[{i}]"))
                    except GeoJSONError as error:
                        problems.extend(error.problems)
                options["groups"] = tuple(areas)
    if problems:
        raise ValidationError("invalid policy", problems)
    cls = {"global_incremental": GlobalIncremental, "location_sequential": LocationSequential}
    try:
        if kind == "waves":
            return Waves(**options)
        policy: Policy = cls[kind](**options)
        return policy
    except ConfigurationError as error:  # the policy's own validators
        raise ValidationError("invalid policy", [(path, error.message)]) from None
