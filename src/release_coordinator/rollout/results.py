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

The records do not validate themselves (like :mod:`release_coordinator.rollout.strategy`'s):
:func:`parse_result` is the gate for values that come from the wire. Nothing here does I/O.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, TypeGuard

import attrs

from release_coordinator.errors import ValidationError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.problems import Problems, short
from release_coordinator.problems import kind as kind_of
from release_coordinator.rollout.strategy import (
    CompareWith,
    EndConditionName,
    MetricName,
    Stage,
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

#: At most this many stage summaries in one ``/result`` body.
MAX_SUMMARIES: Final = 100
#: Longest id, release id or stage name accepted in a ``/result`` body.
MAX_TEXT: Final = 256
#: Call counts are Go ``int64`` on the agents (and on a parent a relay reports to).
MAX_CALLS: Final = 2**63 - 1
#: Integer release ids (``"release_id": 0``) are taken up to this bound.
_MAX_INT_ID: Final = 2**63 - 1
#: At most this many problems are listed; the rest are summed up in one last problem.
#: The largest finite float: times above it are infinite.
_MAX_FLOAT: Final = sys.float_info.max
#: What a time must be, for problem messages.
_MS: Final = "a time in ms >= 0"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@attrs.frozen
class _Keys:
    """The key names of one encoding."""

    name: str
    proxy: str
    f1: str
    f2: str
    f1_err: str
    f2_err: str
    median: str
    minimum: str
    maximum: str

    @property
    def distinctive(self) -> tuple[str, ...]:
        return (self.proxy, self.f1, self.f2, self.f1_err, self.f2_err)


_DOCUMENTED: Final = _Keys(
    "documented",
    "ProxyTimes",
    "F1TimesSummary",
    "F2TimesSummary",
    "F1ErrRate",
    "F2ErrRate",
    "Median",
    "Minimum",
    "Maximum",
)
_ORIGINAL: Final = _Keys(
    "original",
    "proxy_times",
    "f1_times_summary",
    "f2_times_summary",
    "f1_err_rate",
    "f2_err_rate",
    "median",
    "minimum",
    "maximum",
)

#: Every wire form of a stage status: its number, its digits, its protocol name.
_STATUS_BY_WIRE: Final[dict[int | str, StageStatus]] = {}
for _status in StageStatus:
    _STATUS_BY_WIRE[int(_status)] = _status
    _STATUS_BY_WIRE[str(int(_status))] = _status
    _STATUS_BY_WIRE[_status.wire_name] = _status
del _status
_STATUS_ALLOWED: Final = ", ".join(f"{int(s)}={s.wire_name}" for s in StageStatus)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final[Any] = _Missing()

# The decoders below take the path of a value as ``where`` (the enclosing path) and ``key`` and
# join them only when they record a problem: a valid body builds no path strings. Each has a
# fast path for the plain types ``json.loads`` gives, and falls back to the full checks.


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


def _text(value: object, where: str, key: str, p: Problems, *, required: bool) -> str:
    """A string of at most :data:`MAX_TEXT` characters (non-empty when ``required``).

    Missing or null is ``""`` (a problem when required); anything else wrong is a problem.
    """
    if type(value) is str and 0 < len(value) <= MAX_TEXT:
        return value
    if value is _MISSING or value is None:
        if required:
            p.add(_join(where, key), "is required")
        return ""
    if not isinstance(value, str):
        p.add(_join(where, key), f"must be a string, not {kind_of(value)}")
        return ""
    if len(value) > MAX_TEXT:
        p.add(_join(where, key), f"is longer than {MAX_TEXT} characters")
        return ""
    if required and not value:
        p.add(_join(where, key), "must not be empty")
    return str(value)


def _release_id(value: object, p: Problems) -> str:
    """``release_id``: a non-empty string, or a non-negative integer (``0`` means ``"0"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _MAX_INT_ID:
            return str(int(value))
        p.add("release_id", f"{short(value)} is not a release id (an integer 0..2**63-1)")
        return ""
    if value is _MISSING or value is None or isinstance(value, str):
        return _text(value, "", "release_id", p, required=True)
    p.add("release_id", f"must be a string or an integer, not {kind_of(value)}")
    return ""


def _plain_number(value: object, high: float) -> float | None:
    """``value`` as a float if it is a plain int or float in 0..high, else None (no problem)."""
    if type(value) is float:
        return value if 0.0 <= value <= high else None  # NaN fails the comparison
    if type(value) is int and 0 <= value <= high:
        return float(value)
    return None


def _checked_number(value: object, path: str, p: Problems, high: float, what: str) -> float | None:
    """The full checks behind :func:`_plain_number`: a float, or None after a problem."""
    if value is _MISSING:
        p.add(path, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(path, f"must be a number, not {kind_of(value)}")
        return None
    try:
        number = float(value)
    except OverflowError:
        p.add(path, f"{short(value)} is too large")
        return None
    if not math.isfinite(number):
        p.add(path, f"must be a finite number, not {number!r}")
        return None
    if not 0.0 <= number <= high:
        p.add(path, f"{number!r} is not {what}")
        return None
    return number


def _times(value: object, where: str, key: str, keys: _Keys, p: Problems) -> TimesSummary | None:
    """A ``{median, minimum, maximum}`` object of the encoding ``keys``; None after problems."""
    if not _is_mapping(value):
        if value is _MISSING:
            p.add(_join(where, key), "is required")
        else:
            p.add(
                _join(where, key),
                f"must be an object with {keys.median}, {keys.minimum}, {keys.maximum},"
                f" not {kind_of(value)}",
            )
        return None
    raw_median = value.get(keys.median, _MISSING)
    raw_minimum = value.get(keys.minimum, _MISSING)
    raw_maximum = value.get(keys.maximum, _MISSING)
    median = _plain_number(raw_median, _MAX_FLOAT)
    minimum = _plain_number(raw_minimum, _MAX_FLOAT)
    maximum = _plain_number(raw_maximum, _MAX_FLOAT)
    if median is None or minimum is None or maximum is None:
        path = _join(where, key)
        if median is None:
            median = _checked_number(raw_median, f"{path}.{keys.median}", p, _MAX_FLOAT, _MS)
        if minimum is None:
            minimum = _checked_number(raw_minimum, f"{path}.{keys.minimum}", p, _MAX_FLOAT, _MS)
        if maximum is None:
            maximum = _checked_number(raw_maximum, f"{path}.{keys.maximum}", p, _MAX_FLOAT, _MS)
        if median is None or minimum is None or maximum is None:
            return None
    if not minimum <= median <= maximum:
        p.add(
            _join(where, key),
            f"{keys.minimum} <= {keys.median} <= {keys.maximum} does not hold"
            f" ({minimum!r}, {median!r}, {maximum!r})",
        )
        return None
    return TimesSummary(median, minimum, maximum)


def _rate(value: object, where: str, key: str, p: Problems) -> float | None:
    """An error rate in 0..1, or None after a problem."""
    rate = _plain_number(value, 1.0)
    if rate is None:
        rate = _checked_number(value, _join(where, key), p, 1.0, "an error rate in 0..1")
    return rate


def _count(value: object, where: str, key: str, p: Problems) -> int:
    """A call count: an integer 0..MAX_CALLS (an integral float too); missing or null is 0."""
    if type(value) is int and 0 <= value <= MAX_CALLS:
        return value
    if value is _MISSING or value is None:
        return 0
    path = _join(where, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(path, f"must be an integer, not {kind_of(value)}")
        return 0
    if isinstance(value, float):
        if not value.is_integer():
            p.add(path, f"must be a whole number of calls, not {value!r}")
            return 0
        value = int(value)
    if not 0 <= value <= MAX_CALLS:
        p.add(path, f"{short(value)} is not a call count in 0..2**63-1")
        return 0
    return int(value)


def _calls(item: Mapping[str, Any], snake: str, camel: str, where: str, p: Problems) -> int:
    """The count under ``snake`` (``f1_calls``) or ``camel`` (``F1Calls``); both must agree."""
    raw_camel = item.get(camel, _MISSING)
    if raw_camel is _MISSING:
        return _count(item.get(snake, _MISSING), where, snake, p)
    raw_snake = item.get(snake, _MISSING)
    if raw_snake is _MISSING:
        return _count(raw_camel, where, camel, p)
    a = _count(raw_snake, where, snake, p)
    b = _count(raw_camel, where, camel, p)
    if a != b:
        p.add(_join(where, camel), f"{b} disagrees with {snake} = {a}")
    return a


def _stage_status(value: object, where: str, p: Problems) -> StageStatus | None:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        status = _STATUS_BY_WIRE.get(value)
        if status is not None:
            return status
    if value is _MISSING:
        p.add(_join(where, "status"), "is required")
    else:
        p.add(
            _join(where, "status"),
            f"{short(value)} is not a stage status; expected one of {_STATUS_ALLOWED}",
        )
    return None


def _encoding_of(item: Mapping[str, Any], where: str, p: Problems) -> _Keys | None:
    """The encoding a summary's keys say, or None after a problem."""
    documented = any(key in item for key in _DOCUMENTED.distinctive)
    original = any(key in item for key in _ORIGINAL.distinctive)
    if documented and original:
        p.add(
            where,
            "mixes the documented keys (ProxyTimes, F1ErrRate, ...) with the original ones"
            " (proxy_times, f1_err_rate, ...); use one encoding",
        )
        return None
    if documented:
        return _DOCUMENTED
    if original:
        return _ORIGINAL
    p.add(
        where,
        "has the keys of neither encoding: expected ProxyTimes, F1TimesSummary,"
        " F2TimesSummary, F1ErrRate, F2ErrRate (documented) or proxy_times, f1_times_summary,"
        " f2_times_summary, f1_err_rate, f2_err_rate (original)",
    )
    return None


def _stage_report(
    item: Mapping[str, Any], where: str, keys: _Keys, top_next: str, p: Problems
) -> StageReport | None:
    """One summary of the encoding ``keys``; None when it had problems (all recorded).

    ``top_next`` is the body's top-level next stage when this is the last summary of an
    original body, else ``""``.
    """
    before = p.count
    get = item.get
    proxy = _times(get(keys.proxy, _MISSING), where, keys.proxy, keys, p)
    f1 = _times(get(keys.f1, _MISSING), where, keys.f1, keys, p)
    f2 = _times(get(keys.f2, _MISSING), where, keys.f2, keys, p)
    f1_err = _rate(get(keys.f1_err, _MISSING), where, keys.f1_err, p)
    f2_err = _rate(get(keys.f2_err, _MISSING), where, keys.f2_err, p)
    f1_calls = _calls(item, "f1_calls", "F1Calls", where, p)
    f2_calls = _calls(item, "f2_calls", "F2Calls", where, p)
    status = _stage_status(get("status", _MISSING), where, p)
    stage_name = _text(get("stage_name", _MISSING), where, "stage_name", p, required=False)
    raw_next = get("next_stage", _MISSING)
    if keys is _DOCUMENTED:
        next_stage = _text(raw_next, where, "next_stage", p, required=False)
    else:
        next_stage = top_next
        if raw_next is not _MISSING and raw_next is not None and raw_next != "":
            p.add(
                _join(where, "next_stage"),
                "the original encoding carries next_stage at the top level (for the last"
                " summary), not per summary",
            )
    if (
        proxy is None
        or f1 is None
        or f2 is None
        or f1_err is None
        or f2_err is None
        or status is None
        or p.count != before
    ):
        return None
    summary = StageSummary(proxy, f1, f2, f1_err, f2_err, f1_calls, f2_calls)
    return StageReport(stage_name or None, status, next_stage, summary)


def parse_result(body: object) -> ResultReport:
    """The report held by a ``POST /result`` body (already JSON-decoded, untrusted).

    Both encodings of the protocol are accepted (see the module's docstring); which one a
    summary uses is told by its keys, and every summary of one body must use the same one.

    * ``id`` is a non-empty string; ``release_id`` a non-empty string or an integer >= 0
      (``0`` becomes ``"0"``); strings are at most :data:`MAX_TEXT` characters.
    * ``stage_summaries`` is a list of 1..:data:`MAX_SUMMARIES` summaries (an empty list is
      refused: the original manager crashed on it).
    * Times are milliseconds, finite, >= 0, with ``minimum <= median <= maximum``; error rates
      are in 0..1; numbers are JSON numbers (int or float), never booleans, NaN or infinities.
    * ``status`` is a stage status by number (``4``), digits (``"4"``) or protocol name
      (``"Completed"``, case-sensitive), in either encoding.
    * ``next_stage``: per summary in the documented encoding; at the top level in the original
      one, where it belongs to the last summary (the others get ``""``). Giving it in the other
      encoding's place (non-empty) is refused as mixing the encodings. Missing or null is ``""``.
    * ``stage_name`` is read in either encoding (an extension for the documented one); missing,
      null or ``""`` becomes ``None``.
    * ``f1_calls``/``f2_calls`` (or ``F1Calls``/``F2Calls``; both forms must agree) are
      integers 0..2**63-1, 0 when missing.
    * Unknown keys are ignored, at every level: old agents send extra fields.

    Raises :class:`~release_coordinator.errors.ValidationError` whose ``problems`` list every
    problem (up to 100, then a count of the rest) with its path, e.g.
    ``stage_summaries[1].proxy_times.median``; no other exception escapes for bad input.
    A valid body costs one pass over its values and builds no strings.
    """
    if not _is_mapping(body):
        problem = f"must be a JSON object, not {kind_of(body)}"
        raise ValidationError("invalid result", [("", problem)])
    p = Problems()
    child_id = _text(body.get("id", _MISSING), "", "id", p, required=True)
    release_id = _release_id(body.get("release_id", _MISSING), p)
    top_next = _text(body.get("next_stage", _MISSING), "", "next_stage", p, required=False)
    raw = body.get("stage_summaries", _MISSING)
    reports: list[StageReport] = []
    encoding: _Keys | None = None
    first_at = -1
    if raw is _MISSING or raw is None:
        p.add("stage_summaries", "is required")
    elif not isinstance(raw, (list, tuple)):
        p.add("stage_summaries", f"must be a list, not {kind_of(raw)}")
    elif not raw:
        p.add("stage_summaries", "must not be empty: report at least one stage summary")
    elif len(raw) > MAX_SUMMARIES:
        p.add("stage_summaries", f"has {len(raw)} summaries, more than {MAX_SUMMARIES}")
    else:
        last = len(raw) - 1
        for i, item in enumerate(raw):
            where = f"stage_summaries[{i}]"
            if not _is_mapping(item):
                p.add(where, f"must be an object, not {kind_of(item)}")
                continue
            keys = _encoding_of(item, where, p)
            if keys is None:
                continue
            if encoding is None:
                encoding, first_at = keys, i
            elif keys is not encoding:
                p.add(
                    where,
                    f"uses the {keys.name} encoding, but stage_summaries[{first_at}] uses the"
                    f" {encoding.name} one; one body uses one encoding",
                )
                continue
            report = _stage_report(item, where, keys, top_next if i == last else "", p)
            if report is not None:
                reports.append(report)
    if encoding is _DOCUMENTED and top_next:
        p.add(
            "next_stage",
            "a top-level next_stage belongs to the original encoding; documented summaries"
            " carry their own next_stage",
        )
    p.raise_if_any("invalid result")
    return ResultReport(child_id, release_id, tuple(reports))


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _check_encodable(report: ResultReport, encoding: str) -> None:
    if not report.reports:
        raise ValidationError(
            f"cannot encode the result in the {encoding} encoding",
            [("reports", "must not be empty: the protocol refuses an empty stage_summaries")],
        )


def to_original(report: ResultReport) -> dict[str, Any]:
    """The body the original agent would send for ``report``.

    The original encoding has one ``next_stage``, at the top level, for the last summary; a
    report whose earlier stage reports name a next stage cannot be written in it and raises
    :class:`~release_coordinator.errors.ValidationError`, as does a report without stage
    reports. A ``stage_name`` of None is written as ``""``. ``parse_result(to_original(r)) ==
    r`` for every report :func:`parse_result` can return that this function accepts.
    """
    _check_encodable(report, "original")
    last = len(report.reports) - 1
    problems = [
        (f"reports[{i}].next_stage", "only the last stage report may name a next stage here")
        for i, stage in enumerate(report.reports)
        if i != last and stage.next_stage
    ]
    if problems:
        raise ValidationError("cannot encode the result in the original encoding", problems)
    summaries = []
    for stage in report.reports:
        item: dict[str, Any] = {"stage_name": stage.stage_name or ""}
        item.update(stage.summary.to_original())
        item["status"] = int(stage.status)
        summaries.append(item)
    return {
        "id": report.child_id,
        "release_id": report.release_id,
        "next_stage": report.reports[last].next_stage,
        "stage_summaries": summaries,
    }


def to_documented(report: ResultReport) -> dict[str, Any]:
    """The body in the documented encoding for ``report``.

    The documented encoding has no stage names: they are left out, so ``parse_result`` gives
    back ``stage_name=None`` (the receiver takes the child's stage in progress); otherwise
    ``parse_result(to_documented(r))`` equals ``r``. Statuses are written by name
    (``"Completed"``), ``release_id`` as a string, call counts as ``f1_calls``/``f2_calls``.
    Raises :class:`~release_coordinator.errors.ValidationError` for a report without stage
    reports.
    """
    _check_encodable(report, "documented")
    summaries = []
    for stage in report.reports:
        item = stage.summary.to_documented()
        item["status"] = stage.status.wire_name
        item["next_stage"] = stage.next_stage
        summaries.append(item)
    return {"id": report.child_id, "release_id": report.release_id, "stage_summaries": summaries}


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
