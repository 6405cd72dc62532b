"""The wire form of a ``POST /result`` body: the strict decoder and the two encoders.

:func:`parse_result` decodes an untrusted, already JSON-decoded body in either encoding (the
documented one or the original agent's) and raises one
:class:`~release_coordinator.errors.ValidationError` listing every problem with its path;
:func:`to_original` and :func:`to_documented` write a report back. A valid body costs one pass
over its values and builds no strings.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import attrs

from release_coordinator.errors import ValidationError
from release_coordinator.problems import Problems, short
from release_coordinator.problems import kind as kind_of
from release_coordinator.rollout.results.records import (
    ResultReport,
    StageReport,
    StageStatus,
    StageSummary,
    TimesSummary,
)

__all__ = ["MAX_CALLS", "MAX_SUMMARIES", "MAX_TEXT", "parse_result", "to_documented", "to_original"]

#: At most this many stage summaries in one ``/result`` body.
MAX_SUMMARIES: Final = 100
#: Longest id, release id or stage name accepted in a ``/result`` body.
MAX_TEXT: Final = 256
#: Call counts are Go ``int64`` on the agents (and on a parent a relay reports to).
MAX_CALLS: Final = 2**63 - 1
#: Integer release ids (``"release_id": 0``) are taken up to this bound.
_MAX_INT_ID: Final = 2**63 - 1
#: The largest finite float: times above it are infinite.
_MAX_FLOAT: Final = sys.float_info.max
#: What a time must be, for problem messages.
_MS: Final = "a time in ms >= 0"

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
