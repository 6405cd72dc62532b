"""Aggregating and judging stage summaries.

:func:`aggregate` is the call-weighted summary of many children's summaries of one stage;
:func:`evaluate` and :func:`end_conditions_met` judge a summary against a stage of the release
strategy. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from release_coordinator.rollout.results.records import StageSummary, TimesSummary
from release_coordinator.rollout.strategy import CompareWith, EndConditionName, MetricName, Stage

__all__ = ["aggregate", "end_conditions_met", "evaluate"]


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def _weights(raw: Sequence[int]) -> Sequence[int]:
    """``raw``, or equal weights when every weight is 0."""
    return raw if any(raw) else [1] * len(raw)


def _weighted_median(values: Sequence[float], weights: Sequence[int]) -> float:
    """The weighted median of ``values`` (weights >= 0, at least one > 0).

    The smallest value whose cumulative weight reaches half the total; when the cumulative
    weight lands exactly on half, the midpoint between that value and the next value with
    weight. Integer weights keep it exact and independent of the input order.
    """
    merged: dict[float, int] = {}
    for value, weight in zip(values, weights, strict=True):
        if weight:
            merged[value] = merged.get(value, 0) + weight
    points = sorted(merged.items())
    total = sum(merged.values())
    cumulative = 0
    for i, (value, weight) in enumerate(points):
        cumulative += weight
        if 2 * cumulative > total:
            return value
        if 2 * cumulative == total:
            upper = points[i + 1][0] if i + 1 < len(points) else value
            return value + (upper - value) / 2
    return points[-1][0]  # not reached: the loop ends once the cumulative weight is the total


def _aggregate_times(times: Sequence[TimesSummary], weights: Sequence[int]) -> TimesSummary:
    median = _weighted_median([t.median for t in times], weights)
    minimum = min(t.minimum for t in times)
    maximum = max(t.maximum for t in times)
    # Each child has minimum <= median <= maximum, so the bounds hold; clamp against rounding.
    return TimesSummary(min(max(median, minimum), maximum), minimum, maximum)


def _weighted_rate(rates: Sequence[float], weights: Sequence[int]) -> float:
    """The weight-weighted mean of ``rates``, clamped to the rates that carry weight."""
    total = sum(weights)
    mean = math.fsum(r * w for r, w in zip(rates, weights, strict=True)) / total
    carried = [r for r, w in zip(rates, weights, strict=True) if w]
    return min(max(mean, min(carried)), max(carried))


def aggregate(summaries: Sequence[StageSummary]) -> StageSummary | None:
    """One summary for many children's summaries of one stage, weighted by calls.

    The result has the shape of a child's summary, so a relay can report it upward; None for no
    summaries.

    * ``minimum`` is the least of the minimums and ``maximum`` the greatest of the maximums:
      exact.
    * ``median`` is an *estimate*: the call-weighted median of the children's medians (weights:
      ``f1_calls`` for the f1 times, ``f2_calls`` for the f2 times, ``total_calls`` for the proxy
      times; when the weighted cumulative count lands exactly on half, the midpoint of the two
      neighbouring medians). The true median of all calls cannot be had from per-child
      summaries: the estimate lies between the children's medians and is exact only when the
      children's distributions are alike. It is not associative either: the estimate over
      aggregates of parts of a fleet may differ from the estimate over the whole fleet.
    * Error rates are call-weighted means (errors over calls, with ``errors = rate * calls``),
      summed with :func:`math.fsum` and kept within the children's rates; exact up to rounding.
    * Calls are sums.

    A child with 0 calls of a function has weight 0 for that function (its medians and rates do
    not count) but its minimum and maximum still bound the result; when every child has 0
    calls of a function, all weigh the same (old agents report no call counts at all).
    The result does not depend on the order of ``summaries``.
    """
    if not summaries:
        return None
    if len(summaries) == 1:
        return summaries[0]
    f1_w = _weights([s.f1_calls for s in summaries])
    f2_w = _weights([s.f2_calls for s in summaries])
    proxy_w = _weights([s.total_calls for s in summaries])
    return StageSummary(
        proxy_times=_aggregate_times([s.proxy_times for s in summaries], proxy_w),
        f1_times=_aggregate_times([s.f1_times for s in summaries], f1_w),
        f2_times=_aggregate_times([s.f2_times for s in summaries], f2_w),
        f1_err_rate=_weighted_rate([s.f1_err_rate for s in summaries], f1_w),
        f2_err_rate=_weighted_rate([s.f2_err_rate for s in summaries], f2_w),
        f1_calls=sum(s.f1_calls for s in summaries),
        f2_calls=sum(s.f2_calls for s in summaries),
    )


# --------------------------------------------------------------------------------------------
# Judgement
# --------------------------------------------------------------------------------------------


def evaluate(stage: Stage, summary: StageSummary) -> bool:
    """Whether every metric condition of ``stage`` holds for the new version (f2).

    ``errorRate`` is judged on ``f2_err_rate``; ``responseTime`` on the f2 times' ``Median``,
    ``Minimum`` or ``Maximum`` as its ``compareWith`` says (``Median`` if unset, which a valid
    strategy never leaves it). No conditions hold trivially. The numbers are judged as they
    are: whether the new version saw enough calls to judge is :func:`end_conditions_met`'s
    question.
    """
    for condition in stage.metrics_conditions:
        if condition.name == MetricName.ERROR_RATE:
            measured = summary.f2_err_rate
        elif condition.name == MetricName.RESPONSE_TIME:
            measured = summary.f2_times.value(condition.compare_with or CompareWith.MEDIAN)
        else:  # an unknown metric never holds
            return False
        if not condition.threshold.holds(measured):
            return False
    return True


def end_conditions_met(stage: Stage, summary: StageSummary, elapsed: timedelta) -> bool:
    """Whether every end condition of ``stage`` is met after ``elapsed`` time in the stage.

    ``minCalls`` counts the calls of the stage's function across both versions,
    ``summary.total_calls`` (``f1_calls + f2_calls``): the proxy sees every call, and the
    traffic split decides how many reach each version, so the total is what the stage's author
    controls. ``minDuration`` compares with ``elapsed``. Conditions the stage does not have are
    not checked (no conditions: met). A summary without call counts (old agents) has 0 calls,
    so a ``minCalls`` above 0 is never met by it.
    """
    for condition in stage.end_conditions:
        threshold = condition.threshold
        if isinstance(threshold, timedelta):
            if condition.name == EndConditionName.MIN_DURATION and elapsed < threshold:
                return False
        elif condition.name == EndConditionName.MIN_CALLS and summary.total_calls < threshold:
            return False
    return True
