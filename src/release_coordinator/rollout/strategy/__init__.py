"""Release strategy documents: typed records, YAML parsing, validation and dumping.

A release strategy (protocol ``edge-rollout.md``, section *Release strategy document*) tells an
edge child how to try the new version of a function live: in stages, each sending a share of the
traffic to the new version, judged by metric conditions, ended by end conditions (or, for
``WaitForSignal`` stages, by the parent), and followed by another stage, a roll-out or a
roll-back::

    id: "42"
    name: checkout-gradual
    type: minor
    functions:
      - name: checkout
        base_version: {path: fns/checkout_v1, env: nodejs}
        new_version:  {path: fns/checkout_v2, env: nodejs}
    stages:
      - name: canary-10
        type: WaitForSignal
        func_name: checkout
        variants: [{name: base_version, trafficPercentage: 90},
                   {name: new_version, trafficPercentage: 10}]
        metrics_conditions: [{name: errorRate, threshold: "<=0.01"},
                             {name: responseTime, threshold: "<150", compareWith: Median}]
        end_conditions: [{name: minDuration, threshold: 30s}, {name: minCalls, threshold: "200"}]
        end_action: {onSuccess: rollout, onFailure: rollback}
    rollback: {action: {function: base_version}}

The module offers:

* the records (:class:`Strategy`, :class:`Function`, :class:`FunctionVersion`, :class:`Stage`,
  :class:`Variant`, :class:`MetricCondition`, :class:`Threshold`, :class:`EndCondition`,
  :class:`EndAction`, :class:`Rollback`), frozen attrs classes that may also be built in Python;
* :func:`parse_strategy` (YAML text) and :func:`parse_strategy_mapping` (decoded data), which
  refuse a bad document with one :class:`~release_coordinator.errors.StrategyError` listing
  every problem with its path in the document, e.g. ``stages[1].variants[0].trafficPercentage``;
* :func:`validate_strategy`, the one set of rules, applied by the parsers and to strategies built
  in Python;
* :func:`dump_strategy` and :meth:`Strategy.to_mapping`, with
  ``parse_strategy(dump_strategy(s)) == s`` for every valid strategy ``s``;
* :func:`parse_duration` / :func:`format_duration` for durations such as ``"1m30s"``.

The package's modules, one job each: :mod:`~release_coordinator.rollout.strategy.records`
(the records, their vocabulary and the text forms of thresholds and durations),
:mod:`~release_coordinator.rollout.strategy.rules` (the rules, :func:`validate_strategy`) and
:mod:`~release_coordinator.rollout.strategy.document` (decoding and dumping the document).

Every key of the document is required except ``compareWith``, which ``responseTime`` conditions
need and ``errorRate`` conditions must not have; ``metrics_conditions`` and ``end_conditions`` may
be empty lists. Unknown keys are refused, so a typo never passes silently. Nothing here does I/O.
"""

from __future__ import annotations

from release_coordinator.rollout.strategy.document import (
    dump_strategy,
    parse_strategy,
    parse_strategy_mapping,
)
from release_coordinator.rollout.strategy.records import (
    MAX_LIST_ITEMS,
    OPERATORS,
    CompareWith,
    EndAction,
    EndCondition,
    EndConditionName,
    Env,
    FinalAction,
    Function,
    FunctionVersion,
    MetricCondition,
    MetricName,
    Operator,
    Rollback,
    Stage,
    StageType,
    Strategy,
    Threshold,
    Variant,
    VariantName,
    format_duration,
    parse_duration,
)
from release_coordinator.rollout.strategy.rules import validate_strategy

__all__ = [
    "MAX_LIST_ITEMS",
    "OPERATORS",
    "CompareWith",
    "EndAction",
    "EndCondition",
    "EndConditionName",
    "Env",
    "FinalAction",
    "Function",
    "FunctionVersion",
    "MetricCondition",
    "MetricName",
    "Operator",
    "Rollback",
    "Stage",
    "StageType",
    "Strategy",
    "Threshold",
    "Variant",
    "VariantName",
    "dump_strategy",
    "format_duration",
    "parse_duration",
    "parse_strategy",
    "parse_strategy_mapping",
    "validate_strategy",
]
