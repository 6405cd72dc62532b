"""Canary judgement by the manager: the new version (f2) against the old one (f1), from the
counts and summaries children report.

A rollout's policy may carry a :class:`Judgement` (``"judgement"`` in the policy's JSON). The
manager then judges every ``WaitForSignal`` stage before it opens the stage's barrier: it
compares the two versions across the children ready on the stage (their call-weighted
aggregate, each child on its own, or each group: :attr:`Judgement.scope`) and reaches a
:class:`CanaryVerdict`, ``pass``, ``fail`` or ``inconclusive``, that the manager acts on (see
:mod:`~release_coordinator.rollout.judging`).

**What is computed** (:func:`judge`), for a summary with ``n1 = f1_calls`` and
``n2 = f2_calls``:

1. *Too few calls*: if ``n1 < min_calls`` or ``n2 < min_calls`` the verdict is
   ``inconclusive`` (summaries without call counts, from old agents, count 0 calls).
2. *Error rates*, a one-sided pooled two-proportion z-test of "the new version fails more
   often than the old one": ``x1 = round(f1_err_rate * n1)`` and ``x2 = round(f2_err_rate *
   n2)`` errors, ``p = (x1 + x2) / (n1 + n2)``, ``se = sqrt(p (1 - p) (1/n1 + 1/n2))``,
   ``z = (x2/n2 - x1/n1) / se`` and the p-value ``P(Z >= z)`` of the standard normal
   (``statistics.NormalDist``). The error rates *fail* when the p-value is at most
   ``1 - confidence``. With no error at all, or every call an error (``se = 0``), nothing
   tells the versions apart: ``z = 0``, p-value 0.5.
3. *Latency*: the new version's median response time against the old one's: *fail* when
   ``f2 median > f1 median * (1 + latency_threshold)`` (an old median of 0 fails any new
   median above 0). ``latency_threshold`` None judges no latency.
4. ``fail`` if either test fails, else ``pass``.

**Limits.** The z-test is the normal approximation of the difference of two binomial
proportions: it is fair when both variants have enough calls *and* enough errors (the usual
rule: ``n * p >= 5`` for each variant). :attr:`Judgement.min_calls` (at least
:data:`MIN_CALLS_FLOOR`) is the only size rule enforced; with rare errors and few calls the
test is conservative (it rarely shows the new version worse). It assumes independent calls,
which calls from one child are not quite. An aggregate's medians are estimates (the
call-weighted median of the children's medians, see
:func:`~release_coordinator.rollout.results.aggregate`), so the latency test compares
estimates, not true medians, and it has no significance level of its own: it is a relative
threshold on medians, which hold up to the few slow calls that move a mean. Nothing here does
I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from statistics import NormalDist
from typing import Any, Literal

import attrs

from release_coordinator.errors import ConfigurationError, Problem, ValidationError
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.results import StageSummary, aggregate

__all__ = [
    "MAX_NAMED",
    "MIN_CALLS_FLOOR",
    "REST",
    "CanaryVerdict",
    "Judgement",
    "StageJudgement",
    "Verdict",
    "error_test",
    "group_of",
    "judge",
    "judgement_json",
    "parse_judgement",
    "stage_judgement",
    "units_of",
]

#: The least ``min_calls`` a :class:`Judgement` accepts (the z-test needs calls to mean much).
MIN_CALLS_FLOOR = 10

_NORMAL = NormalDist()

Scope = Literal["rollout", "child", "group"]
OnInconclusive = Literal["rollback", "proceed"]
_SCOPES: tuple[Scope, ...] = ("rollout", "child", "group")
_ON_INCONCLUSIVE: tuple[OnInconclusive, ...] = ("rollback", "proceed")


class Verdict(StrEnum):
    """What a judgement concluded."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


def _confidence(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0.5 < value < 1):
        raise ConfigurationError(f"{attribute.name} must be within (0.5, 1), not {value!r}")


def _min_calls(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_CALLS_FLOOR <= value < 2**31
    ):
        raise ConfigurationError(
            f"{attribute.name} must be an integer of at least {MIN_CALLS_FLOOR}, not {value!r}"
        )


def _threshold(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and 0 <= value < math.inf):
        raise ConfigurationError(f"{attribute.name} must be a number >= 0 or None, not {value!r}")


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0 <= value < math.inf):
        raise ConfigurationError(
            f"{attribute.name} must be a number of seconds >= 0, not {value!r}"
        )


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(_: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"{attribute.name} must be one of {', '.join(choices)}, not {value!r}"
            )

    return check


_THRESHOLD: float | None = 0.2  # typed as the field is


@attrs.frozen(kw_only=True)
class Judgement:
    """How the manager judges a ``WaitForSignal`` stage before it ends it (see the module
    documentation for the statistics).

    ``confidence``: of the one-sided error-rate test, within (0.5, 1) (0.95: the new version's
    errors fail the stage when a rate that high would come by chance at most 5% of the time
    with equal rates). ``min_calls``: the calls *each* version needs before anything is
    concluded (fewer: inconclusive). ``latency_threshold``: how much slower (relative) the new
    median may be (0.2: up to 20% slower passes); None: latency is not judged. ``max_wait``:
    seconds an inconclusive stage waits, counted from when the first child began to wait on
    the stage's barrier, before ``on_inconclusive`` applies: ``rollback`` (the default: what
    cannot be shown sound is rolled back) or ``proceed``. ``scope``: ``rollout`` judges the
    aggregate of every child ready on the stage, and a failure rolls the whole rollout back;
    ``child`` judges each child ready on the stage on its own summary (a relay's summary is
    its subtree's: a region), and a failure rolls back that child only; ``group`` judges the
    aggregate of each group of ready children (a LocationSequential policy's group areas,
    see :func:`group_of`; with no groups, or another policy, all of them form one group), and
    a failure rolls back that group's ready children only.
    """

    confidence: float = attrs.field(default=0.95, validator=_confidence)
    min_calls: int = attrs.field(default=200, validator=_min_calls)
    latency_threshold: float | None = attrs.field(default=_THRESHOLD, validator=_threshold)
    max_wait: float = attrs.field(default=300.0, validator=_seconds)
    on_inconclusive: OnInconclusive = attrs.field(
        default="rollback", validator=_one_of(_ON_INCONCLUSIVE)
    )
    scope: Scope = attrs.field(default="rollout", validator=_one_of(_SCOPES))


@attrs.frozen
class CanaryVerdict:
    """A judgement's outcome with the numbers it rests on (see :func:`judge`).

    ``reason`` says in words why (every failing test, or the missing calls). ``z`` and
    ``p_value`` are the error-rate test's (None when inconclusive); ``latency_ratio`` is the
    new median over the old one (None when inconclusive or not judged; ``inf`` for an old
    median of 0 and a new one above it).
    """

    verdict: Verdict
    reason: str
    old_calls: int
    new_calls: int
    old_error_rate: float
    new_error_rate: float
    old_median: float
    new_median: float
    z: float | None = None
    p_value: float | None = None
    latency_ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The verdict as the operator API shows it (an infinite ratio as null)."""
        ratio = self.latency_ratio
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "old_calls": self.old_calls,
            "new_calls": self.new_calls,
            "old_error_rate": self.old_error_rate,
            "new_error_rate": self.new_error_rate,
            "old_median": self.old_median,
            "new_median": self.new_median,
            "z": self.z,
            "p_value": self.p_value,
            "latency_ratio": ratio if ratio is None or math.isfinite(ratio) else None,
        }


def error_test(
    old_calls: int, old_errors: int, new_calls: int, new_errors: int
) -> tuple[float, float]:
    """The pooled two-proportion z statistic of "the new version fails more often" and its
    one-sided p-value ``P(Z >= z)``; ``(0.0, 0.5)`` when the pooled rate is 0 or 1. Needs
    calls > 0 on both sides and errors within 0..calls."""
    pooled = (old_errors + new_errors) / (old_calls + new_calls)
    variance = pooled * (1 - pooled) * (1 / old_calls + 1 / new_calls)
    if variance <= 0:
        return 0.0, 0.5
    z = (new_errors / new_calls - old_errors / old_calls) / math.sqrt(variance)
    return z, _NORMAL.cdf(-z)


def _errors(rate: float, calls: int) -> int:
    return min(max(round(rate * calls), 0), calls)


def _ratio(new: float, old: float) -> float:
    if old > 0:
        return new / old
    return math.inf if new > 0 else 1.0


def judge(judgement: Judgement, summary: StageSummary) -> CanaryVerdict:
    """The verdict on ``summary`` (one child's, or an aggregate) by ``judgement``: see the
    module documentation for what is computed."""
    n1, n2 = summary.f1_calls, summary.f2_calls
    old_median, new_median = summary.f1_times.median, summary.f2_times.median
    numbers = (n1, n2, summary.f1_err_rate, summary.f2_err_rate, old_median, new_median)
    if n1 < judgement.min_calls or n2 < judgement.min_calls:
        return CanaryVerdict(
            Verdict.INCONCLUSIVE,
            f"too few calls: {n1} old and {n2} new, {judgement.min_calls} needed of each",
            *numbers,
        )
    x1, x2 = _errors(summary.f1_err_rate, n1), _errors(summary.f2_err_rate, n2)
    z, p_value = error_test(n1, x1, n2, x2)
    failures = []
    alpha = 1 - judgement.confidence
    if p_value <= alpha:
        failures.append(
            f"error rate {x2 / n2:.4g} new against {x1 / n1:.4g} old (z = {z:.2f}, one-sided "
            f"p = {p_value:.3g} <= {alpha:.3g})"
        )
    ratio: float | None = None
    threshold = judgement.latency_threshold
    if threshold is not None:
        ratio = _ratio(new_median, old_median)
        if new_median > old_median * (1 + threshold):
            failures.append(
                f"median {new_median:.4g} ms new against {old_median:.4g} ms old "
                f"({ratio:.3g}x, more than {1 + threshold:.3g}x)"
            )
    if failures:
        return CanaryVerdict(Verdict.FAIL, "; ".join(failures), *numbers, z, p_value, ratio)
    reason = f"error rate not worse (p = {p_value:.3g})"
    if ratio is not None:
        reason += f", median {ratio:.3g}x the old one"
    return CanaryVerdict(Verdict.PASS, reason, *numbers, z, p_value, ratio)


# -- as JSON (a policy's "judgement") ---------------------------------------------------------

_FIELDS = ("confidence", "min_calls", "latency_threshold", "max_wait", "on_inconclusive", "scope")


def judgement_json(judgement: Judgement) -> dict[str, Any]:
    """A judgement as the API shows it (and :func:`parse_judgement` reads it back)."""
    return {name: getattr(judgement, name) for name in _FIELDS}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def parse_judgement(value: object, path: str = "policy.judgement") -> Judgement | None:
    """A judgement from its JSON form (see :func:`judgement_json`; ``null``: none; fields left
    out take their defaults); ValidationError listing every problem by path."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError("invalid policy", [(path, "must be a JSON object or null")])
    problems: list[Problem] = []
    options: dict[str, Any] = {}
    for key in value:
        if key not in _FIELDS:
            problems.append((f"{path}.{str(key)[:60]}", "is not a field of a judgement"))
    for key in ("confidence", "max_wait"):
        if key in value:
            number = _number(value[key])
            if number is None:
                problems.append((f"{path}.{key}", "must be a number"))
            else:
                options[key] = number
    if "latency_threshold" in value:
        raw = value["latency_threshold"]
        number = None if raw is None else _number(raw)
        if raw is not None and number is None:
            problems.append((f"{path}.latency_threshold", "must be a number or null"))
        else:
            options["latency_threshold"] = number
    if "min_calls" in value:
        calls = value["min_calls"]
        if isinstance(calls, bool) or not isinstance(calls, int):
            problems.append((f"{path}.min_calls", "must be an integer"))
        else:
            options["min_calls"] = calls
    for key, choices in (("on_inconclusive", _ON_INCONCLUSIVE), ("scope", _SCOPES)):
        if key in value:
            if value[key] not in choices:
                problems.append((f"{path}.{key}", f"must be one of {', '.join(choices)}"))
            else:
                options[key] = value[key]
    for key, option in options.items():  # the record's own rules (ranges), field by field
        try:
            Judgement(**{key: option})
        except ConfigurationError as error:
            problems.append((f"{path}.{key}", error.message))
    if problems:
        raise ValidationError("invalid policy", problems)
    return Judgement(**options)


# -- a stage's judgement, as reports show it ------------------------------------------------

#: The most failing units (children or groups) a :class:`StageJudgement` names.
MAX_NAMED = 20

#: The group of the children in none of a LocationSequential policy's group areas.
REST = "rest"


def group_of(groups: Sequence[Area], area: Area) -> str:
    """The name of the group (scope ``group``) of a child with ``area``, among a
    LocationSequential policy's group ``groups``: ``group-<k>`` (from 1) for the first area it
    intersects, :data:`REST` for none (and for every child, with no groups)."""
    for k, group in enumerate(groups):
        if group.intersects(area):
            return f"group-{k + 1}"
    return REST


@attrs.frozen
class StageJudgement:
    """A stage's judgement over what its children reported on it (a report's row).

    ``verdict`` is over the call-weighted aggregate of every child's summary of the stage.
    With the ``child`` and ``group`` scopes, ``units`` counts the units (children, or groups
    of children) by their own verdict, and ``failing`` names (up to :data:`MAX_NAMED`) those
    whose own verdict is ``fail``, with its reason. What the manager did about it is in the
    children's states and the rollout's ``reason`` (an abort by the judgement says ``canary
    judgement``).
    """

    scope: Scope
    verdict: CanaryVerdict
    units: Mapping[str, int] = attrs.field(factory=dict)
    failing: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            **self.verdict.to_json(),
            "units": dict(self.units),
            "failing": [{"unit": unit, "reason": reason} for unit, reason in self.failing],
        }


def units_of(
    scope: Scope, summaries: Sequence[tuple[str, StageSummary]], group: Callable[[str], str]
) -> dict[str, list[StageSummary]]:
    """The summaries by the unit judged on its own: each child (``child``), each group
    (``group``, named by ``group``), or one unit ``""`` (``rollout``)."""
    units: dict[str, list[StageSummary]] = {}
    for child_id, summary in summaries:
        key = child_id if scope == "child" else group(child_id) if scope == "group" else ""
        units.setdefault(key, []).append(summary)
    return units


def stage_judgement(
    judgement: Judgement | None,
    summaries: Sequence[tuple[str, StageSummary]],
    group: Callable[[str], str] = lambda _child: REST,
) -> StageJudgement | None:
    """The judgement of one stage over ``(child id, summary)`` pairs (``group`` names a
    child's group, for the ``group`` scope); None without a judgement or without
    summaries."""
    if judgement is None or not summaries:
        return None
    combined = aggregate([s for _, s in summaries])
    assert combined is not None
    verdict = judge(judgement, combined)
    if judgement.scope == "rollout":
        return StageJudgement(judgement.scope, verdict)
    counts: dict[str, int] = {}
    failing: list[tuple[str, str]] = []
    for unit, parts in units_of(judgement.scope, summaries, group).items():
        own = judge(judgement, aggregate(parts) or combined)
        counts[own.verdict.value] = counts.get(own.verdict.value, 0) + 1
        if own.verdict is Verdict.FAIL and len(failing) < MAX_NAMED:
            failing.append((unit, own.reason))
    return StageJudgement(judgement.scope, verdict, counts, tuple(failing))
