"""The records of a stage result: times, a stage's summary, a stage's report, a whole body.

Frozen attrs classes that do not validate themselves: :func:`~.codec.parse_result` is the gate
for values that come from the wire. :class:`StageStatus` and :class:`ReleaseStatus` are
re-exported from :mod:`release_coordinator.fsm.rollout`.
"""

from __future__ import annotations

from typing import Any

import attrs

from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.strategy import CompareWith

__all__ = [
    "ReleaseStatus",
    "ResultReport",
    "StageReport",
    "StageStatus",
    "StageSummary",
    "TimesSummary",
]


@attrs.frozen
class TimesSummary:
    """Response times of one function (or of the proxy in front of both versions), in ms.

    Values from :func:`parse_result` are finite, >= 0, and ``minimum <= median <= maximum``.
    """

    median: float
    minimum: float
    maximum: float

    def value(self, compare_with: CompareWith) -> float:
        """The summary value a ``responseTime`` condition compares with."""
        if compare_with == CompareWith.MINIMUM:
            return self.minimum
        if compare_with == CompareWith.MAXIMUM:
            return self.maximum
        return self.median

    def to_documented(self) -> dict[str, float]:
        """``{"Median", "Minimum", "Maximum"}``, as the documented encoding writes it."""
        return {"Median": self.median, "Minimum": self.minimum, "Maximum": self.maximum}

    def to_original(self) -> dict[str, float]:
        """``{"median", "minimum", "maximum"}``, as the original agent writes it."""
        return {"median": self.median, "minimum": self.minimum, "maximum": self.maximum}


@attrs.frozen
class StageSummary:
    """What a child measured during one stage.

    ``f1`` is the base version, ``f2`` the new one; ``proxy_times`` are the times seen by the
    proxy that splits the calls between them. Error rates are in 0..1; calls are 0 when the
    child did not report them.
    """

    proxy_times: TimesSummary
    f1_times: TimesSummary
    f2_times: TimesSummary
    f1_err_rate: float
    f2_err_rate: float
    f1_calls: int = 0
    f2_calls: int = 0

    @property
    def total_calls(self) -> int:
        """Calls of the stage's function across both versions (``f1_calls + f2_calls``)."""
        return self.f1_calls + self.f2_calls

    def to_documented(self) -> dict[str, Any]:
        """The summary in the documented encoding's keys (without ``status``/``next_stage``)."""
        return {
            "ProxyTimes": self.proxy_times.to_documented(),
            "F1TimesSummary": self.f1_times.to_documented(),
            "F2TimesSummary": self.f2_times.to_documented(),
            "F1ErrRate": self.f1_err_rate,
            "F2ErrRate": self.f2_err_rate,
            "f1_calls": self.f1_calls,
            "f2_calls": self.f2_calls,
        }

    def to_original(self) -> dict[str, Any]:
        """The summary in the original agent's keys (without ``stage_name``/``status``)."""
        return {
            "proxy_times": self.proxy_times.to_original(),
            "f1_times_summary": self.f1_times.to_original(),
            "f2_times_summary": self.f2_times.to_original(),
            "f1_err_rate": self.f1_err_rate,
            "f2_err_rate": self.f2_err_rate,
            "f1_calls": self.f1_calls,
            "f2_calls": self.f2_calls,
        }


@attrs.frozen
class StageReport:
    """One stage's report: its status, the stage that follows, and the summary.

    ``stage_name`` is None when the body did not name the stage (the documented encoding has no
    stage name): the receiver then takes the child's stage in progress. ``next_stage`` is ``""``
    when the report names none (the child rolled out or back, or the stage is not over); it may
    also be ``"rollout"`` or ``"rollback"``.
    """

    stage_name: str | None
    status: StageStatus
    next_stage: str
    summary: StageSummary


@attrs.frozen
class ResultReport:
    """A whole ``/result`` body: who reports (``child_id``), on which release, what."""

    child_id: str
    release_id: str
    reports: tuple[StageReport, ...]
