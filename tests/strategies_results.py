"""Hypothesis strategies for stage results (``POST /result``), for reuse across tests.

* ``times_summaries()``, ``stage_summaries()``, ``stage_reports()``, ``result_reports()`` draw
  valid records, i.e. records :func:`~release_coordinator.rollout.results.parse_result` can
  return (finite times >= 0 with minimum <= median <= maximum, rates in 0..1, call counts that
  fit an int64);
* ``result_bodies()`` draws valid ``/result`` bodies in either encoding, with their report;
* ``json_values()`` draws any JSON value, and ``junk_result_bodies()`` valid bodies with one
  part replaced by junk or removed, which reach far deeper into the decoder than random JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from release_coordinator.rollout.results import (
    MAX_CALLS,
    ResultReport,
    StageReport,
    StageStatus,
    StageSummary,
    TimesSummary,
    to_documented,
    to_original,
)

__all__ = [
    "calls",
    "error_rates",
    "json_values",
    "junk_result_bodies",
    "milliseconds",
    "result_bodies",
    "result_reports",
    "stage_reports",
    "stage_summaries",
    "times_summaries",
    "wire_texts",
]

#: Times in ms: mostly everyday values, sometimes anything finite and >= 0.
milliseconds: st.SearchStrategy[float] = st.one_of(
    st.floats(min_value=0.0, max_value=10_000.0),
    st.sampled_from([0.0, -0.0, 1.0, 12.5, 1e-300, sys.float_info.max]),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)

#: Error rates in 0..1.
error_rates: st.SearchStrategy[float] = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.01]),
    st.floats(min_value=0.0, max_value=1.0),
)

#: Call counts; often 0 (old agents send none), small, or large but summable without leaving
#: an int64 across a few hundred children.
calls: st.SearchStrategy[int] = st.one_of(
    st.just(0),
    st.integers(min_value=0, max_value=1_000),
    st.integers(min_value=0, max_value=MAX_CALLS // 1_000),
)

#: Ids and stage names as a child may send them (1..40 characters of any text).
wire_texts: st.SearchStrategy[str] = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True),
    st.text(min_size=1, max_size=40),
)


@st.composite
def times_summaries(draw: st.DrawFn) -> TimesSummary:
    """Valid response times: ``minimum <= median <= maximum``, all finite and >= 0."""
    low, mid, high = sorted(draw(st.lists(milliseconds, min_size=3, max_size=3)))
    return TimesSummary(median=mid, minimum=low, maximum=high)


def stage_summaries() -> st.SearchStrategy[StageSummary]:
    """Valid stage summaries."""
    return st.builds(
        StageSummary,
        proxy_times=times_summaries(),
        f1_times=times_summaries(),
        f2_times=times_summaries(),
        f1_err_rate=error_rates,
        f2_err_rate=error_rates,
        f1_calls=calls,
        f2_calls=calls,
    )


def stage_reports(*, named: bool = True, next_stage: bool = True) -> st.SearchStrategy[StageReport]:
    """Valid stage reports; ``named=False`` leaves ``stage_name`` None, ``next_stage=False``
    leaves ``next_stage`` empty."""
    return st.builds(
        StageReport,
        stage_name=wire_texts if named else st.none(),
        status=st.sampled_from(StageStatus),
        next_stage=(st.just("") | wire_texts) if next_stage else st.just(""),
        summary=stage_summaries(),
    )


@st.composite
def result_reports(
    draw: st.DrawFn, *, named: bool = True, max_reports: int = 3, only_last_next: bool = False
) -> ResultReport:
    """Valid result reports of 1..``max_reports`` stage reports.

    ``only_last_next=True`` gives a next stage to the last report only, as the original
    encoding can carry it; ``named=False`` leaves every stage name None, as the documented
    encoding does.
    """
    count = draw(st.integers(min_value=1, max_value=max_reports))
    reports = [
        draw(stage_reports(named=named, next_stage=not only_last_next or i == count - 1))
        for i in range(count)
    ]
    release_id = draw(st.one_of(st.integers(min_value=0, max_value=10**6).map(str), wire_texts))
    return ResultReport(child_id=draw(wire_texts), release_id=release_id, reports=tuple(reports))


@st.composite
def result_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], ResultReport]:
    """A valid body in either encoding, with the report :func:`parse_result` must return."""
    if draw(st.booleans()):
        report = draw(result_reports(only_last_next=True))
        return to_original(report), report
    report = draw(result_reports(named=False))
    return to_documented(report), report


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value (as ``json.loads`` gives it), including NaN and infinities."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["Completed", "4", "median", "ProxyTimes", "proxy_times", ""]),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "id",
                        "release_id",
                        "next_stage",
                        "stage_summaries",
                        "stage_name",
                        "status",
                        "ProxyTimes",
                        "proxy_times",
                        "Median",
                        "median",
                        "minimum",
                        "maximum",
                        "F2ErrRate",
                        "f2_err_rate",
                        "f1_calls",
                        "F1Calls",
                    ]
                )
                | st.text(max_size=8),
                inner,
                max_size=5,
            )
        ),
        max_leaves=max_leaves,
    )


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a part of a JSON value (keys and indexes)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_places(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_places(item, (*path, index)))
    return found


def _edit(value: Any, path: tuple[Any, ...], change: Callable[[Any, Any], None]) -> Any:
    """A copy of ``value`` where ``change(container, key)`` was applied at ``path``."""
    if not path:
        raise ValueError("the root has no container")
    if isinstance(value, dict):
        copy: Any = dict(value)
    else:
        copy = list(value)
    head, rest = path[0], path[1:]
    if rest:
        copy[head] = _edit(copy[head], rest, change)
    else:
        change(copy, head)
    return copy


@st.composite
def junk_result_bodies(draw: st.DrawFn) -> Any:
    """A valid body with one part replaced by a junk JSON value, or removed, or the whole body
    replaced by junk."""
    body, _ = draw(result_bodies())
    places = _places(body)
    path = draw(st.sampled_from(places))
    if not path:
        return draw(json_values())
    if draw(st.booleans()):
        junk = draw(json_values(max_leaves=8))

        def replace(container: Any, key: Any) -> None:
            container[key] = junk

        return _edit(body, path, replace)

    def remove(container: Any, key: Any) -> None:
        del container[key]

    return _edit(body, path, remove)
