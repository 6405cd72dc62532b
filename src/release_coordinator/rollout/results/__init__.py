"""Stage results of an edge rollout: ``POST /result`` bodies, their records, aggregation and
judgement.

A child reports the summary of one or more stages of a release (protocol ``edge-rollout.md``,
section ``POST /result``). Two encodings are on the wire and both are accepted:

* the *documented* one::

    {"id": "child-1", "release_id": 0 | "0",
     "stage_summaries": [{"ProxyTimes": {"Median": 12.0, "Minimum": 3.0, "Maximum": 40.0},
                          "F1TimesSummary": {...}, "F2TimesSummary": {...},
                          "F1ErrRate": 0.0, "F2ErrRate": 0.01,
                          "status": "Completed", "next_stage": "ab-50"}]}

* the *original* agent's::

    {"id": "child-1", "release_id": "0", "next_stage": "ab-50",
     "stage_summaries": [{"stage_name": "canary-10",
                          "proxy_times": {"median": 12.0, "minimum": 3.0, "maximum": 40.0},
                          "f1_times_summary": {...}, "f2_times_summary": {...},
                          "f1_err_rate": 0.0, "f2_err_rate": 0.01, "status": 4}]}

  where the top-level ``next_stage`` belongs to the *last* summary of the list.

Either may carry call counts per summary (``f1_calls``/``f2_calls``, or ``F1Calls``/``F2Calls``),
which weigh aggregates; without them they are 0.

The module offers:

* the records :class:`TimesSummary`, :class:`StageSummary`, :class:`StageReport` and
  :class:`ResultReport` (frozen attrs classes);
* :func:`parse_result`, the strict decoder of an untrusted, already JSON-decoded body, which
  raises one :class:`~release_coordinator.errors.ValidationError` listing every problem with its
  path (``stage_summaries[1].proxy_times.median``);
* :func:`to_original` and :func:`to_documented`, the encoders a relay or a simulated agent uses
  to report upward, with ``parse_result(to_original(r)) == r``;
* :func:`aggregate`, the call-weighted summary of many children's summaries of one stage, in the
  same shape as a child's summary;
* :func:`evaluate` and :func:`end_conditions_met`, which judge a summary against a stage of the
  release strategy;
* :class:`StageStatus` and :class:`ReleaseStatus`, re-exported from
  :mod:`release_coordinator.fsm.rollout` (one enum per status, so ``is`` comparisons hold across
  the library).

The package's modules, one job each: :mod:`~release_coordinator.rollout.results.records` (the
records), :mod:`~release_coordinator.rollout.results.codec` (decoding and encoding a body) and
:mod:`~release_coordinator.rollout.results.judge` (aggregating and judging summaries).

The records do not validate themselves (like :mod:`release_coordinator.rollout.strategy`'s):
:func:`parse_result` is the gate for values that come from the wire. Nothing here does I/O.
"""

from __future__ import annotations

from release_coordinator.rollout.results.codec import (
    MAX_CALLS,
    MAX_SUMMARIES,
    MAX_TEXT,
    parse_result,
    to_documented,
    to_original,
)
from release_coordinator.rollout.results.judge import aggregate, end_conditions_met, evaluate
from release_coordinator.rollout.results.records import (
    ReleaseStatus,
    ResultReport,
    StageReport,
    StageStatus,
    StageSummary,
    TimesSummary,
)

__all__ = [
    "MAX_CALLS",
    "MAX_SUMMARIES",
    "MAX_TEXT",
    "ReleaseStatus",
    "ResultReport",
    "StageReport",
    "StageStatus",
    "StageSummary",
    "TimesSummary",
    "aggregate",
    "end_conditions_met",
    "evaluate",
    "parse_result",
    "to_documented",
    "to_original",
]
