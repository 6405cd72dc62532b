"""Tests of stage results: parsing both ``/result`` encodings, refusals with paths, encoders,
call-weighted aggregation, and judging a summary against a stage."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator.errors import ValidationError
from release_coordinator.fsm import rollout as fsm_rollout
from release_coordinator.rollout.results import (
    MAX_SUMMARIES,
    ReleaseStatus,
    ResultReport,
    StageReport,
    StageStatus,
    StageSummary,
    TimesSummary,
    aggregate,
    end_conditions_met,
    evaluate,
    parse_result,
    to_documented,
    to_original,
)
from release_coordinator.rollout.strategy import (
    CompareWith,
    EndAction,
    EndCondition,
    EndConditionName,
    MetricCondition,
    MetricName,
    Stage,
    StageType,
    Threshold,
    Variant,
    VariantName,
)
from strategies_results import (
    json_values,
    junk_result_bodies,
    result_bodies,
    result_reports,
    stage_summaries,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- fixtures: the protocol's two encodings -------------------------------------------------------


def documented_summary(**extra: Any) -> dict[str, Any]:
    return {
        "ProxyTimes": {"Median": 12.0, "Minimum": 3.0, "Maximum": 40.0},
        "F1TimesSummary": {"Median": 11, "Minimum": 3, "Maximum": 35},
        "F2TimesSummary": {"Median": 14.5, "Minimum": 4.0, "Maximum": 40.0},
        "F1ErrRate": 0.0,
        "F2ErrRate": 0.01,
        "status": "Completed",
        "next_stage": "ab-50",
        **extra,
    }


def documented(*summaries: dict[str, Any], release_id: Any = 0) -> dict[str, Any]:
    return {
        "id": "child-1",
        "release_id": release_id,
        "stage_summaries": list(summaries) or [documented_summary()],
    }


def original_summary(stage: str = "canary-10", **extra: Any) -> dict[str, Any]:
    return {
        "stage_name": stage,
        "proxy_times": {"median": 12.0, "minimum": 3.0, "maximum": 40.0},
        "f1_times_summary": {"median": 11, "minimum": 3, "maximum": 35},
        "f2_times_summary": {"median": 14.5, "minimum": 4.0, "maximum": 40.0},
        "f1_err_rate": 0.0,
        "f2_err_rate": 0.01,
        "status": 4,
        **extra,
    }


def original(*summaries: dict[str, Any], next_stage: str = "ab-50") -> dict[str, Any]:
    return {
        "id": "child-1",
        "release_id": "0",
        "next_stage": next_stage,
        "stage_summaries": list(summaries) or [original_summary()],
    }


EXPECTED_SUMMARY = StageSummary(
    proxy_times=TimesSummary(12.0, 3.0, 40.0),
    f1_times=TimesSummary(11.0, 3.0, 35.0),
    f2_times=TimesSummary(14.5, 4.0, 40.0),
    f1_err_rate=0.0,
    f2_err_rate=0.01,
)


def paths(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [path for path, _ in exc.value.problems]


def refuse(body: Any) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        parse_result(body)
    assert exc.value.problems, "a refusal lists its problems"
    return paths(exc)


# -- statuses ------------------------------------------------------------------------------------


def test_statuses_are_the_state_machines_enums() -> None:
    assert StageStatus is fsm_rollout.StageStatus
    assert ReleaseStatus is fsm_rollout.ReleaseStatus
    assert [(int(s), s.wire_name) for s in StageStatus] == [
        (0, "Pending"),
        (1, "InProgress"),
        (2, "SuccessWaiting"),
        (3, "ShouldEnd"),
        (4, "Completed"),
        (5, "Failure"),
        (6, "Error"),
    ]
    assert [(int(s), s.wire_name) for s in ReleaseStatus] == [
        (0, "No"),
        (1, "Todo"),
        (2, "Doing"),
        (3, "Done"),
        (4, "Failed"),
    ]
    assert StageStatus.from_wire(4) is StageStatus.from_wire("4") is StageStatus.COMPLETED
    assert StageStatus.from_wire("Completed") is StageStatus.COMPLETED
    assert ReleaseStatus.from_wire("Done") is ReleaseStatus.from_wire(3) is ReleaseStatus.DONE
    for bad in (7, "Done", "completed", True, None, 4.0):
        with pytest.raises(ValidationError):
            StageStatus.from_wire(bad)


# -- the documented encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("release_id", [0, "0"])
def test_documented_example_parses(release_id: Any) -> None:
    report = parse_result(documented(release_id=release_id))
    assert report == ResultReport(
        child_id="child-1",
        release_id="0",
        reports=(StageReport(None, StageStatus.COMPLETED, "ab-50", EXPECTED_SUMMARY),),
    )
    assert isinstance(report.reports[0].summary.f1_times.median, float)


def test_documented_status_by_name_number_or_digits_and_optional_next_stage() -> None:
    body = documented(
        documented_summary(status="SuccessWaiting", next_stage=""),
        documented_summary(status=5, next_stage=None),
        documented_summary(status="6"),
    )
    del body["stage_summaries"][2]["next_stage"]
    reports = parse_result(body).reports
    assert [r.status for r in reports] == [
        StageStatus.SUCCESS_WAITING,
        StageStatus.FAILURE,
        StageStatus.ERROR,
    ]
    assert [r.next_stage for r in reports] == ["", "", ""]


def test_documented_takes_a_stage_name_when_given() -> None:
    body = documented(documented_summary(stage_name="canary-10"), documented_summary(stage_name=""))
    assert [r.stage_name for r in parse_result(body).reports] == ["canary-10", None]


# -- the original encoding -----------------------------------------------------------------------


def test_original_example_parses() -> None:
    report = parse_result(original())
    assert report == ResultReport(
        "child-1",
        "0",
        (StageReport("canary-10", StageStatus.COMPLETED, "ab-50", EXPECTED_SUMMARY),),
    )


def test_original_next_stage_lands_on_the_last_summary() -> None:
    body = original(
        original_summary("canary-10", status=4),
        original_summary("ab-50", status=2),
        next_stage="rollout",
    )
    first, last = parse_result(body).reports
    assert (first.stage_name, first.status, first.next_stage) == (
        "canary-10",
        StageStatus.COMPLETED,
        "",
    )
    assert (last.stage_name, last.status, last.next_stage) == (
        "ab-50",
        StageStatus.SUCCESS_WAITING,
        "rollout",
    )


@pytest.mark.parametrize("next_stage", [None, ""])
def test_original_without_next_stage(next_stage: Any) -> None:
    body = original()
    if next_stage is None:
        del body["next_stage"]
    else:
        body["next_stage"] = next_stage
    assert parse_result(body).reports[0].next_stage == ""


def test_original_status_by_name_and_missing_stage_name() -> None:
    body = original(original_summary(status="Failure"))
    del body["stage_summaries"][0]["stage_name"]
    (report,) = parse_result(body).reports
    assert report.status is StageStatus.FAILURE
    assert report.stage_name is None


@pytest.mark.parametrize("release_id", [0, "0", 42, "42", "a-release"])
def test_release_ids(release_id: Any) -> None:
    body = original()
    body["release_id"] = release_id
    assert parse_result(body).release_id == str(release_id)


# -- call counts and unknown keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, (0, 0)),
        ({"f1_calls": 90, "f2_calls": 10}, (90, 10)),
        ({"F1Calls": 90, "F2Calls": 10}, (90, 10)),
        ({"f1_calls": 90, "F1Calls": 90, "f2_calls": None}, (90, 0)),
        ({"f1_calls": 90.0, "f2_calls": 2**63 - 1}, (90, 2**63 - 1)),
    ],
)
def test_call_counts(extra: dict[str, Any], expected: tuple[int, int]) -> None:
    for body in (original(original_summary(**extra)), documented(documented_summary(**extra))):
        summary = parse_result(body).reports[0].summary
        assert (summary.f1_calls, summary.f2_calls) == expected
        assert summary.total_calls == sum(expected)


def test_unknown_keys_are_ignored() -> None:
    body = original(original_summary(agent_version="0.3", cold_starts=[1, 2]))
    body["hostname"] = {"any": "thing"}
    body["stage_summaries"][0]["proxy_times"]["p99"] = "whatever"
    assert parse_result(body) == parse_result(original())


def test_a_tuple_of_summaries_and_any_mapping_are_accepted() -> None:
    body = original()
    body["stage_summaries"] = tuple(body["stage_summaries"])
    assert parse_result(body) == parse_result(original())


# -- refusals ------------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, for value ``...``, deletes) the dotted/indexed ``path``."""

    def mutate(body: dict[str, Any]) -> None:
        parts: list[Any] = []
        for part in path.replace("]", "").replace("[", ".").split("."):
            parts.append(int(part) if part.isdigit() else part)
        target: Any = body
        for part in parts[:-1]:
            target = target[part]
        if value is ...:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value

    return mutate


S0 = "stage_summaries[0]"

ORIGINAL_REFUSALS: list[tuple[str, Any, str]] = [
    # (path to change, new value or ... to delete, path of the expected problem)
    ("stage_summaries", [], "stage_summaries"),
    ("stage_summaries", ..., "stage_summaries"),
    ("stage_summaries", None, "stage_summaries"),
    ("stage_summaries", {"0": {}}, "stage_summaries"),
    ("stage_summaries", [original_summary()] * (MAX_SUMMARIES + 1), "stage_summaries"),
    ("stage_summaries.0", "summary", S0),
    ("stage_summaries.0", {}, S0),
    ("stage_summaries.0", {"stage_name": "x", "status": 4}, S0),
    ("id", ..., "id"),
    ("id", "", "id"),
    ("id", 7, "id"),
    ("id", "x" * 257, "id"),
    ("release_id", ..., "release_id"),
    ("release_id", "", "release_id"),
    ("release_id", -1, "release_id"),
    ("release_id", True, "release_id"),
    ("release_id", 1.0, "release_id"),
    ("release_id", 2**64, "release_id"),
    ("next_stage", 3, "next_stage"),
    ("next_stage", "n" * 257, "next_stage"),
    ("stage_summaries.0.stage_name", 5, f"{S0}.stage_name"),
    ("stage_summaries.0.stage_name", "s" * 257, f"{S0}.stage_name"),
    ("stage_summaries.0.next_stage", "ab-50", f"{S0}.next_stage"),
    ("stage_summaries.0.proxy_times", ..., f"{S0}.proxy_times"),
    ("stage_summaries.0.proxy_times", [1, 2, 3], f"{S0}.proxy_times"),
    ("stage_summaries.0.proxy_times.median", ..., f"{S0}.proxy_times.median"),
    (
        "stage_summaries.0.proxy_times",
        {"Median": 12.0, "Minimum": 3.0, "Maximum": 40.0},
        f"{S0}.proxy_times.median",
    ),
    ("stage_summaries.0.proxy_times.median", True, f"{S0}.proxy_times.median"),
    ("stage_summaries.0.proxy_times.median", "12", f"{S0}.proxy_times.median"),
    ("stage_summaries.0.proxy_times.median", None, f"{S0}.proxy_times.median"),
    ("stage_summaries.0.proxy_times.median", math.nan, f"{S0}.proxy_times.median"),
    ("stage_summaries.0.proxy_times.maximum", math.inf, f"{S0}.proxy_times.maximum"),
    ("stage_summaries.0.proxy_times.median", 10**400, f"{S0}.proxy_times.median"),
    ("stage_summaries.0.f1_times_summary.minimum", -1.0, f"{S0}.f1_times_summary.minimum"),
    ("stage_summaries.0.f2_times_summary.minimum", 41.0, f"{S0}.f2_times_summary"),
    ("stage_summaries.0.f2_times_summary.median", 1.0, f"{S0}.f2_times_summary"),
    ("stage_summaries.0.f1_err_rate", ..., f"{S0}.f1_err_rate"),
    ("stage_summaries.0.f1_err_rate", 1.5, f"{S0}.f1_err_rate"),
    ("stage_summaries.0.f2_err_rate", -0.1, f"{S0}.f2_err_rate"),
    ("stage_summaries.0.f2_err_rate", False, f"{S0}.f2_err_rate"),
    ("stage_summaries.0.f2_err_rate", -math.inf, f"{S0}.f2_err_rate"),
    ("stage_summaries.0.status", ..., f"{S0}.status"),
    ("stage_summaries.0.status", 7, f"{S0}.status"),
    ("stage_summaries.0.status", -1, f"{S0}.status"),
    ("stage_summaries.0.status", "Done", f"{S0}.status"),
    ("stage_summaries.0.status", "completed", f"{S0}.status"),
    ("stage_summaries.0.status", "04", f"{S0}.status"),
    ("stage_summaries.0.status", "\u00b2", f"{S0}.status"),
    ("stage_summaries.0.status", True, f"{S0}.status"),
    ("stage_summaries.0.status", 4.0, f"{S0}.status"),
    ("stage_summaries.0.status", [4], f"{S0}.status"),
    ("stage_summaries.0.f1_calls", -1, f"{S0}.f1_calls"),
    ("stage_summaries.0.f1_calls", 1.5, f"{S0}.f1_calls"),
    ("stage_summaries.0.f1_calls", "3", f"{S0}.f1_calls"),
    ("stage_summaries.0.f2_calls", True, f"{S0}.f2_calls"),
    ("stage_summaries.0.F2Calls", 2**63, f"{S0}.F2Calls"),
    ("stage_summaries.0.F1Calls", math.nan, f"{S0}.F1Calls"),
    ("stage_summaries.0.ProxyTimes", {}, S0),  # mixes the encodings in one summary
]


@pytest.mark.parametrize(("where", "value", "expected"), ORIGINAL_REFUSALS)
def test_original_refusals_name_the_path(where: str, value: Any, expected: str) -> None:
    body = copy.deepcopy(original())
    _set(where, value)(body)
    assert expected in refuse(body)


DOCUMENTED_REFUSALS: list[tuple[str, Any, str]] = [
    ("stage_summaries", [], "stage_summaries"),
    ("release_id", 0.0, "release_id"),
    ("release_id", None, "release_id"),
    ("next_stage", "ab-50", "next_stage"),  # the original's place
    (
        "stage_summaries.0.ProxyTimes",
        {"median": 12.0, "minimum": 3.0, "maximum": 40.0},
        f"{S0}.ProxyTimes.Median",
    ),
    ("stage_summaries.0.ProxyTimes.Median", math.nan, f"{S0}.ProxyTimes.Median"),
    ("stage_summaries.0.F1TimesSummary.Minimum", 50, f"{S0}.F1TimesSummary"),
    ("stage_summaries.0.F1ErrRate", 2, f"{S0}.F1ErrRate"),
    ("stage_summaries.0.status", "Done", f"{S0}.status"),
    ("stage_summaries.0.status", 7, f"{S0}.status"),
    ("stage_summaries.0.next_stage", ["ab-50"], f"{S0}.next_stage"),
    ("stage_summaries.0.f2_err_rate", 0.0, S0),  # mixes the encodings in one summary
]


@pytest.mark.parametrize(("where", "value", "expected"), DOCUMENTED_REFUSALS)
def test_documented_refusals_name_the_path(where: str, value: Any, expected: str) -> None:
    body = copy.deepcopy(documented())
    _set(where, value)(body)
    assert expected in refuse(body)


@pytest.mark.parametrize("body", [None, [], "{}", 4, [documented()]])
def test_a_body_that_is_not_an_object(body: Any) -> None:
    assert refuse(body) == [""]


def test_mixed_encodings_across_summaries() -> None:
    body = original(original_summary(), documented_summary(), original_summary())
    problems = refuse(body)
    assert problems == ["stage_summaries[1]"]
    with pytest.raises(ValidationError, match=r"documented encoding.*stage_summaries\[0\]"):
        parse_result(body)


def test_mixed_encodings_inside_one_summary() -> None:
    summary = {**original_summary(), **documented_summary()}
    with pytest.raises(ValidationError, match="mixes") as exc:
        parse_result(original(summary))
    assert paths(exc) == [S0]


def test_empty_summaries_list_is_refused_not_a_crash() -> None:
    with pytest.raises(ValidationError, match="must not be empty") as exc:
        parse_result({"id": "child-1", "release_id": "42", "stage_summaries": []})
    assert paths(exc) == ["stage_summaries"]


def test_exactly_the_maximum_number_of_summaries_is_accepted() -> None:
    body = original(*[original_summary(f"s{i}") for i in range(MAX_SUMMARIES)])
    assert len(parse_result(body).reports) == MAX_SUMMARIES


def test_every_problem_is_listed_at_once() -> None:
    body = original(
        original_summary(status=9, f1_err_rate=True),
        original_summary(proxy_times={"median": -1, "minimum": 0, "maximum": math.nan}),
    )
    body["id"] = ""
    del body["release_id"]
    assert refuse(body) == [
        "id",
        "release_id",
        f"{S0}.f1_err_rate",
        f"{S0}.status",
        "stage_summaries[1].proxy_times.median",
        "stage_summaries[1].proxy_times.maximum",
    ]


def test_problems_are_capped_with_a_count_of_the_rest() -> None:
    bad = original_summary(f1_err_rate=2, f2_err_rate=2, status=9)
    with pytest.raises(ValidationError) as exc:
        parse_result(original(*[bad] * MAX_SUMMARIES))
    assert len(exc.value.problems) == 101
    assert exc.value.problems[-1] == ("", "200 further problem(s) not listed")


# -- fuzzing: junk never raises anything but ValidationError -------------------------------------


def _parses_or_refuses(body: Any) -> None:
    try:
        report = parse_result(body)
    except ValidationError as exc:
        problems = exc.problems
    else:
        assert isinstance(report, ResultReport)
        assert report.reports
        return
    assert problems
    assert all(isinstance(p, str) and isinstance(m, str) for p, m in problems)


@FAST
@given(json_values())
def test_random_json_parses_or_is_refused(body: Any) -> None:
    _parses_or_refuses(body)


@FAST
@given(junk_result_bodies())
def test_damaged_bodies_parse_or_are_refused(body: Any) -> None:
    _parses_or_refuses(body)


# -- encoders ------------------------------------------------------------------------------------


@FAST
@given(result_bodies())
def test_valid_bodies_parse_to_their_report(case: tuple[dict[str, Any], ResultReport]) -> None:
    body, report = case
    assert parse_result(body) == report
    assert parse_result(json.loads(json.dumps(body))) == report


@FAST
@given(result_reports(only_last_next=True))
def test_original_round_trip(report: ResultReport) -> None:
    body = json.loads(json.dumps(to_original(report), allow_nan=False))
    assert parse_result(body) == report


@FAST
@given(result_reports())
def test_documented_round_trip_without_stage_names(report: ResultReport) -> None:
    body = json.loads(json.dumps(to_documented(report), allow_nan=False))
    unnamed = attrs.evolve(
        report, reports=tuple(attrs.evolve(r, stage_name=None) for r in report.reports)
    )
    assert parse_result(body) == unnamed


def test_encoded_shapes() -> None:
    report = parse_result(original(original_summary(f1_calls=90, f2_calls=10)))
    assert to_original(report) == original(original_summary(f1_calls=90, f2_calls=10))
    summary = documented_summary(f1_calls=90, f2_calls=10)
    assert to_documented(report) == documented(summary, release_id="0")
    assert report.reports[0].summary.to_documented() == {
        k: v for k, v in summary.items() if k not in ("status", "next_stage")
    }


def test_original_cannot_carry_a_next_stage_before_the_last() -> None:
    one = parse_result(original()).reports[0]
    report = ResultReport("c", "1", (one, attrs.evolve(one, next_stage="")))
    with pytest.raises(ValidationError) as exc:
        to_original(report)
    assert paths(exc) == ["reports[0].next_stage"]
    assert to_documented(report)["stage_summaries"][0]["next_stage"] == "ab-50"


def test_encoders_refuse_a_report_without_stages() -> None:
    for encode in (to_original, to_documented):
        with pytest.raises(ValidationError):
            encode(ResultReport("c", "1", ()))


# -- aggregation ---------------------------------------------------------------------------------


def summary(
    median: float,
    calls: tuple[int, int] = (0, 0),
    rates: tuple[float, float] = (0.0, 0.0),
    low: float = 0.0,
    high: float = 1000.0,
) -> StageSummary:
    times = TimesSummary(median, low, high)
    return StageSummary(times, times, times, rates[0], rates[1], calls[0], calls[1])


def test_aggregate_of_nothing_is_none() -> None:
    assert aggregate([]) is None


def test_aggregate_weighs_by_calls() -> None:
    a = summary(10.0, calls=(90, 10), rates=(0.0, 0.1), low=1.0, high=50.0)
    b = summary(30.0, calls=(10, 30), rates=(0.5, 0.0), low=2.0, high=80.0)
    total = aggregate([a, b])
    assert total is not None
    assert (total.f1_calls, total.f2_calls) == (100, 40)
    assert total.f1_times == TimesSummary(10.0, 1.0, 80.0)  # 90 of 100 calls at 10
    assert total.f2_times == TimesSummary(30.0, 1.0, 80.0)  # 30 of 40 calls at 30
    assert total.proxy_times == TimesSummary(10.0, 1.0, 80.0)  # 100 of 140 calls at 10
    assert total.f1_err_rate == pytest.approx(0.05)  # 5 errors in 100 calls
    assert total.f2_err_rate == pytest.approx(0.025)  # 1 error in 40 calls


def test_aggregate_median_on_an_even_split_is_the_midpoint() -> None:
    total = aggregate([summary(10.0, calls=(5, 5)), summary(20.0, calls=(5, 5))])
    assert total is not None
    assert total.f1_times.median == total.f2_times.median == total.proxy_times.median == 15.0


def test_aggregate_children_without_calls_weigh_nothing_but_bound_the_times() -> None:
    busy = summary(10.0, calls=(4, 4), rates=(0.25, 0.5), low=5.0, high=20.0)
    idle = summary(99.0, calls=(0, 0), rates=(1.0, 1.0), low=0.5, high=500.0)
    total = aggregate([idle, busy])
    assert total is not None
    assert total.f2_times == TimesSummary(10.0, 0.5, 500.0)
    assert (total.f1_err_rate, total.f2_err_rate) == (0.25, 0.5)


def test_aggregate_without_any_calls_weighs_all_alike() -> None:
    total = aggregate(
        [summary(10.0, rates=(0.0, 0.3)), summary(20.0, rates=(0.5, 0.3)), summary(40.0)]
    )
    assert total is not None
    assert total.f2_times.median == 20.0
    assert total.f1_err_rate == pytest.approx(0.5 / 3)
    assert total.f2_err_rate == pytest.approx(0.2)
    assert total.total_calls == 0


_summary_lists = st.lists(stage_summaries(), min_size=1, max_size=8)


@FAST
@given(stage_summaries())
def test_aggregate_of_one_is_itself(one: StageSummary) -> None:
    assert aggregate([one]) == one
    twice = aggregate([one, one])
    assert twice == attrs.evolve(one, f1_calls=2 * one.f1_calls, f2_calls=2 * one.f2_calls)


def _times_of(s: StageSummary) -> tuple[tuple[TimesSummary, int], ...]:
    return ((s.proxy_times, s.total_calls), (s.f1_times, s.f1_calls), (s.f2_times, s.f2_calls))


@FAST
@given(_summary_lists)
def test_aggregate_bounds_and_sums(summaries: list[StageSummary]) -> None:
    total = aggregate(summaries)
    assert total is not None
    assert total.f1_calls == sum(s.f1_calls for s in summaries)
    assert total.f2_calls == sum(s.f2_calls for s in summaries)
    for which in range(3):
        times = [_times_of(s)[which][0] for s in summaries]
        combined = _times_of(total)[which][0]
        assert combined.minimum == min(t.minimum for t in times)
        assert combined.maximum == max(t.maximum for t in times)
        assert min(t.median for t in times) <= combined.median <= max(t.median for t in times)
        assert combined.minimum <= combined.median <= combined.maximum
    for rate in ("f1_err_rate", "f2_err_rate"):
        rates = [getattr(s, rate) for s in summaries]
        assert min(rates) <= getattr(total, rate) <= max(rates)
    # The aggregate is a valid child summary: a relay can report it upward.
    report = ResultReport("relay", "1", (StageReport("s", StageStatus.COMPLETED, "", total),))
    assert parse_result(to_original(report)) == report


@FAST
@given(_summary_lists, st.randoms(use_true_random=False))
def test_aggregate_ignores_order(summaries: list[StageSummary], rnd: Any) -> None:
    shuffled = list(summaries)
    rnd.shuffle(shuffled)
    assert aggregate(shuffled) == aggregate(summaries)


@FAST
@given(_summary_lists, st.data())
def test_aggregate_of_aggregates_of_a_partition(
    summaries: list[StageSummary], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=1, max_value=len(summaries)))
    parts = [aggregate(summaries[:cut]), aggregate(summaries[cut:])]
    nested = aggregate([p for p in parts if p is not None])
    flat = aggregate(summaries)
    assert nested is not None
    assert flat is not None
    assert (nested.f1_calls, nested.f2_calls) == (flat.f1_calls, flat.f2_calls)
    for nested_times, flat_times in zip(
        (nested.proxy_times, nested.f1_times, nested.f2_times),
        (flat.proxy_times, flat.f1_times, flat.f2_times),
        strict=True,
    ):
        assert nested_times.minimum == flat_times.minimum
        assert nested_times.maximum == flat_times.maximum
        # The median is an estimate (a weighted median of medians): it is not associative, so
        # the medians of the two ways are not compared.
    # Error rates are call-weighted means: associative up to rounding, as long as calls give the
    # weights (with no calls at all, every child, resp. part, weighs the same, which differs).
    if flat.f1_calls:
        assert nested.f1_err_rate == pytest.approx(flat.f1_err_rate, rel=1e-9, abs=1e-12)
    if flat.f2_calls:
        assert nested.f2_err_rate == pytest.approx(flat.f2_err_rate, rel=1e-9, abs=1e-12)


# -- judging a summary against a stage -----------------------------------------------------------


def stage(metrics: tuple[MetricCondition, ...] = (), ends: tuple[EndCondition, ...] = ()) -> Stage:
    return Stage(
        name="canary-10",
        type=StageType.WAIT_FOR_SIGNAL,
        func_name="checkout",
        variants=(
            Variant(VariantName.BASE_VERSION, 90),
            Variant(VariantName.NEW_VERSION, 10),
        ),
        metrics_conditions=metrics,
        end_conditions=ends,
        end_action=EndAction("rollout", "rollback"),
    )


def rt(threshold: str, compare_with: CompareWith) -> MetricCondition:
    return MetricCondition(MetricName.RESPONSE_TIME, Threshold.parse(threshold), compare_with)


def err(threshold: str) -> MetricCondition:
    return MetricCondition(MetricName.ERROR_RATE, Threshold.parse(threshold))


# EXPECTED_SUMMARY: f2 times median 14.5, minimum 4, maximum 40, f2 error rate 0.01; f1 differs.
@pytest.mark.parametrize(
    ("conditions", "holds"),
    [
        ((), True),
        ((err("<=0.01"),), True),
        ((err("<0.01"),), False),
        ((rt("<15", CompareWith.MEDIAN),), True),
        ((rt("<14.5", CompareWith.MEDIAN),), False),
        ((rt(">=4", CompareWith.MINIMUM),), True),
        ((rt(">4", CompareWith.MINIMUM),), False),
        ((rt("<=40", CompareWith.MAXIMUM),), True),
        ((rt("<40", CompareWith.MAXIMUM),), False),
        ((err("<=0.01"), rt("<15", CompareWith.MEDIAN)), True),
        ((err("<=0.01"), rt("<10", CompareWith.MEDIAN)), False),
        ((MetricCondition(MetricName.RESPONSE_TIME, Threshold.parse("<15")),), True),
    ],
)
def test_evaluate_judges_the_new_version(
    conditions: tuple[MetricCondition, ...], holds: bool
) -> None:
    assert evaluate(stage(conditions), EXPECTED_SUMMARY) is holds


def test_evaluate_ignores_the_base_version() -> None:
    bad_base = attrs.evolve(
        EXPECTED_SUMMARY, f1_err_rate=1.0, f1_times=TimesSummary(900.0, 900.0, 900.0)
    )
    conditions = (err("<=0.01"), rt("<15", CompareWith.MEDIAN))
    assert evaluate(stage(conditions), bad_base)


@pytest.mark.parametrize(
    ("calls", "elapsed", "met"),
    [
        ((150, 50), timedelta(seconds=30), True),  # 200 calls across both versions
        ((150, 49), timedelta(seconds=30), False),
        ((0, 200), timedelta(seconds=30), True),
        ((150, 50), timedelta(seconds=29.999), False),
        ((0, 0), timedelta(hours=1), False),  # an old agent without call counts
    ],
)
def test_end_conditions(calls: tuple[int, int], elapsed: timedelta, met: bool) -> None:
    ends = (
        EndCondition(EndConditionName.MIN_DURATION, timedelta(seconds=30)),
        EndCondition(EndConditionName.MIN_CALLS, 200),
    )
    measured = attrs.evolve(EXPECTED_SUMMARY, f1_calls=calls[0], f2_calls=calls[1])
    assert end_conditions_met(stage(ends=ends), measured, elapsed) is met


def test_without_end_conditions_a_stage_may_always_end() -> None:
    assert end_conditions_met(stage(), EXPECTED_SUMMARY, timedelta(seconds=-1))
