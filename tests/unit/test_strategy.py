"""Tests of release strategy documents: parsing, the refusal rules, dumping and round trips."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator.errors import NotFoundError, StrategyError
from release_coordinator.rollout.strategy import (
    MAX_LIST_ITEMS,
    CompareWith,
    EndAction,
    EndCondition,
    EndConditionName,
    Env,
    Function,
    FunctionVersion,
    MetricCondition,
    MetricName,
    Rollback,
    Stage,
    StageType,
    Strategy,
    Threshold,
    Variant,
    VariantName,
    dump_strategy,
    format_duration,
    parse_duration,
    parse_strategy,
    parse_strategy_mapping,
    validate_strategy,
)
from strategies_rollout import durations, thresholds, valid_strategies

EXAMPLE = """\
id: "42"                      # string; equals the release id
name: checkout-gradual
type: minor                   # free text
functions:
  - name: checkout            # public function name
    base_version: {path: fns/checkout_v1, env: nodejs}   # env: nodejs | python | go
    new_version:  {path: fns/checkout_v2, env: nodejs}
stages:
  - name: canary-10           # unique
    type: WaitForSignal       # A/B | WaitForSignal (others are refused)
    func_name: checkout       # one of functions[].name
    variants:                 # trafficPercentage over base_version/new_version sums to 100
      - {name: base_version, trafficPercentage: 90}
      - {name: new_version, trafficPercentage: 10}
    metrics_conditions:       # all must hold; threshold is an operator (<,<=,>,>=,=) and a number
      - {name: errorRate, threshold: "<=0.01"}
      - {name: responseTime, threshold: "<150", compareWith: Median}  # Median|Minimum|Maximum, ms
    end_conditions:
      - {name: minDuration, threshold: 30s}
      - {name: minCalls, threshold: "200"}
    end_action: {onSuccess: ab-50, onFailure: rollback}  # rollout | rollback | a stage name
  - name: ab-50
    type: A/B
    func_name: checkout
    variants: [{name: base_version, trafficPercentage: 50}, {name: new_version, trafficPercentage: 50}]
    metrics_conditions: [{name: errorRate, threshold: "<0.05"}]
    end_conditions: [{name: minCalls, threshold: "100"}]
    end_action: {onSuccess: rollout, onFailure: rollback}
rollback: {action: {function: base_version}}
"""  # noqa: E501 (the protocol's text, verbatim)

ARCHIVE = ("fns/checkout_v1", "fns/checkout_v2")


def example() -> dict[str, Any]:
    """A fresh decoded copy of the protocol's example, to mutate."""
    data = yaml.safe_load(EXAMPLE)
    assert isinstance(data, dict)
    return data


def refused(obj: Any, **kwargs: Any) -> StrategyError:
    """The StrategyError that parsing ``obj`` (text or decoded data) raises."""
    parse = parse_strategy if isinstance(obj, (str, bytes)) else parse_strategy_mapping
    with pytest.raises(StrategyError) as info:
        parse(obj, **kwargs)
    assert info.value.problems, "a refusal must list its problems"
    return info.value


def paths(err: StrategyError) -> list[str]:
    return [path for path, _ in err.problems]


def message_at(err: StrategyError, path: str) -> str:
    found = [message for p, message in err.problems if p == path]
    assert found, f"no problem at {path!r}: {err.problems}"
    return found[0]


def python_example() -> Strategy:
    """The protocol's example, built in Python."""
    version = FunctionVersion
    return Strategy(
        id="42",
        name="checkout-gradual",
        type="minor",
        functions=(
            Function(
                name="checkout",
                base_version=version("fns/checkout_v1", Env.NODEJS),
                new_version=version("fns/checkout_v2", Env.NODEJS),
            ),
        ),
        stages=(
            Stage(
                name="canary-10",
                type=StageType.WAIT_FOR_SIGNAL,
                func_name="checkout",
                variants=(
                    Variant(VariantName.BASE_VERSION, 90),
                    Variant(VariantName.NEW_VERSION, 10),
                ),
                metrics_conditions=(
                    MetricCondition(MetricName.ERROR_RATE, Threshold("<=", 0.01)),
                    MetricCondition(
                        MetricName.RESPONSE_TIME, Threshold("<", 150), CompareWith.MEDIAN
                    ),
                ),
                end_conditions=(
                    EndCondition(EndConditionName.MIN_DURATION, timedelta(seconds=30)),
                    EndCondition(EndConditionName.MIN_CALLS, 200),
                ),
                end_action=EndAction(on_success="ab-50", on_failure="rollback"),
            ),
            Stage(
                name="ab-50",
                type=StageType.AB,
                func_name="checkout",
                variants=(
                    Variant(VariantName.BASE_VERSION, 50),
                    Variant(VariantName.NEW_VERSION, 50),
                ),
                metrics_conditions=(MetricCondition(MetricName.ERROR_RATE, Threshold("<", 0.05)),),
                end_conditions=(EndCondition(EndConditionName.MIN_CALLS, 100),),
                end_action=EndAction(on_success="rollout", on_failure="rollback"),
            ),
        ),
        rollback=Rollback(VariantName.BASE_VERSION),
    )


# --------------------------------------------------------------------------------------------
# The example
# --------------------------------------------------------------------------------------------


def test_example_parses_with_every_field() -> None:
    s = parse_strategy(EXAMPLE, available_paths=ARCHIVE)

    assert (s.id, s.name, s.type) == ("42", "checkout-gradual", "minor")
    (fn,) = s.functions
    assert fn.name == "checkout"
    assert fn.base_version == FunctionVersion("fns/checkout_v1", Env.NODEJS)
    assert fn.new_version == FunctionVersion("fns/checkout_v2", Env.NODEJS)
    assert fn.version("new_version") is fn.new_version

    canary, ab = s.stages
    assert canary.name == "canary-10"
    assert canary.type is StageType.WAIT_FOR_SIGNAL
    assert canary.func_name == "checkout"
    assert canary.variants == (
        Variant(VariantName.BASE_VERSION, 90),
        Variant(VariantName.NEW_VERSION, 10),
    )
    error_rate, response_time = canary.metrics_conditions
    assert error_rate.name is MetricName.ERROR_RATE
    assert error_rate.threshold == Threshold("<=", 0.01)
    assert error_rate.compare_with is None
    assert response_time.name is MetricName.RESPONSE_TIME
    assert str(response_time.threshold) == "<150"
    assert response_time.compare_with is CompareWith.MEDIAN
    assert canary.end_conditions == (
        EndCondition(EndConditionName.MIN_DURATION, timedelta(seconds=30)),
        EndCondition(EndConditionName.MIN_CALLS, 200),
    )
    assert canary.min_calls == 200
    assert canary.min_duration == timedelta(seconds=30)
    assert canary.end_action == EndAction("ab-50", "rollback")
    assert canary.end_action.next_stage(success=True) == "ab-50"
    assert canary.end_action.next_stage(success=False) is None

    assert ab.type is StageType.AB
    assert [v.traffic_percentage for v in ab.variants] == [50, 50]
    assert ab.metrics_conditions == (MetricCondition(MetricName.ERROR_RATE, Threshold("<", 0.05)),)
    assert ab.min_calls == 100
    assert ab.min_duration == timedelta(0)
    assert ab.end_action == EndAction("rollout", "rollback")

    assert s.rollback == Rollback(VariantName.BASE_VERSION)
    assert s == python_example()


def test_example_helpers() -> None:
    s = parse_strategy(EXAMPLE)
    assert s.first_stage.name == "canary-10"
    assert s.stage("ab-50") is s.stages[1]
    assert s.function("checkout") is s.functions[0]
    assert s.stage_names == ("canary-10", "ab-50")
    assert s.version_paths() == ARCHIVE
    assert s.wait_for_signal_stages == (s.stages[0],)
    with pytest.raises(NotFoundError):
        s.stage("nope")
    with pytest.raises(NotFoundError):
        s.function("nope")


def test_example_round_trip_and_key_order() -> None:
    s = parse_strategy(EXAMPLE)
    text = dump_strategy(s)
    assert parse_strategy(text) == s
    assert parse_strategy(text.encode()) == s
    decoded = yaml.safe_load(text)
    assert list(decoded) == ["id", "name", "type", "functions", "stages", "rollback"]
    assert list(decoded["stages"][0]) == [
        "name",
        "type",
        "func_name",
        "variants",
        "metrics_conditions",
        "end_conditions",
        "end_action",
    ]
    assert decoded["id"] == "42"
    assert decoded["stages"][0]["end_conditions"] == [
        {"name": "minDuration", "threshold": "30s"},
        {"name": "minCalls", "threshold": "200"},
    ]
    assert s.to_mapping() == decoded


def test_python_built_strategy_validates_and_dumps() -> None:
    s = python_example()
    validate_strategy(s, available_paths=ARCHIVE)
    assert parse_strategy(dump_strategy(s)) == s


def test_int_id_is_normalised_to_str() -> None:
    data = example()
    data["id"] = 42
    assert parse_strategy_mapping(data).id == "42"
    assert parse_strategy(EXAMPLE.replace('id: "42"', "id: 42")).id == "42"


def test_archive_folders_with_trailing_slash_are_accepted() -> None:
    s = parse_strategy(EXAMPLE, available_paths=["fns/checkout_v1/", "fns/checkout_v2/"])
    assert s.version_paths() == ARCHIVE


# --------------------------------------------------------------------------------------------
# Refusals: the document as a whole
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "id: [1, 2\n",  # unclosed flow sequence
        "a: b: c\n",
        "\t- x\n",
        "a: 1\n---\nb: 2\n",  # two documents
        "a: 2001-13-45\n",  # PyYAML raises ValueError for an impossible date
        "a: =\n",  # the YAML 1.1 "value" tag, which safe_load cannot construct
    ],
)
def test_refuses_text_that_is_not_yaml(text: str) -> None:
    err = refused(text)
    assert paths(err) == [""]
    assert "YAML" in err.problems[0][1]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- 1\n- 2\n", "just text\n", "42\n"])
def test_refuses_a_document_that_is_not_a_mapping(text: str) -> None:
    err = refused(text)
    assert paths(err) == [""]


def test_refuses_a_document_that_is_too_large() -> None:
    err = refused(EXAMPLE, max_bytes=100)
    assert paths(err) == [""]
    assert "more than 100" in err.problems[0][1]
    err = refused(EXAMPLE.encode(), max_bytes=100)
    assert paths(err) == [""]


def test_refuses_bytes_that_are_not_utf8() -> None:
    err = refused(EXAMPLE.encode("utf-16"))
    assert paths(err) == [""]
    assert "UTF-8" in err.problems[0][1]


def test_refuses_input_that_is_not_text() -> None:
    with pytest.raises(StrategyError):
        parse_strategy(42)  # type: ignore[arg-type]


def test_deep_nesting_is_refused_not_crashing() -> None:
    err = refused("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert paths(err) == [""]


def test_self_referencing_alias_is_refused() -> None:
    err = refused("id: &a [*a]\n")
    assert "id" in paths(err)


# --------------------------------------------------------------------------------------------
# Refusals: keys and types
# --------------------------------------------------------------------------------------------


def test_refuses_missing_required_keys_all_at_once() -> None:
    data = example()
    del data["rollback"]
    del data["stages"][0]["func_name"]
    del data["stages"][1]["end_action"]["onFailure"]
    del data["functions"][0]["new_version"]["env"]
    del data["stages"][0]["metrics_conditions"][1]["threshold"]
    err = refused(data)
    for path in (
        "rollback",
        "stages[0].func_name",
        "stages[1].end_action.onFailure",
        "functions[0].new_version.env",
        "stages[0].metrics_conditions[1].threshold",
    ):
        assert message_at(err, path) == "required key is missing"


def test_refuses_values_of_the_wrong_type_all_at_once() -> None:
    data = example()
    data["name"] = 5
    data["type"] = None
    data["stages"][1]["variants"][0]["trafficPercentage"] = "50"
    data["stages"][0]["variants"] = "base_version"
    data["functions"][0]["base_version"] = []
    data["stages"][1]["end_action"] = "rollout"
    data["stages"][1]["metrics_conditions"] = {"name": "errorRate"}
    data["rollback"]["action"]["function"] = True
    err = refused(data)
    assert set(paths(err)) >= {
        "name",
        "type",
        "stages[1].variants[0].trafficPercentage",
        "stages[0].variants",
        "functions[0].base_version",
        "stages[1].end_action",
        "stages[1].metrics_conditions",
        "rollback.action.function",
    }
    assert "string" in message_at(err, "name")
    assert "list" in message_at(err, "stages[0].variants")


@pytest.mark.parametrize("bad", [50.0, True, "50", None])
def test_refuses_a_traffic_percentage_that_is_not_an_integer(bad: object) -> None:
    data = example()
    data["stages"][0]["variants"][0]["trafficPercentage"] = bad
    err = refused(data)
    assert "stages[0].variants[0].trafficPercentage" in paths(err)


def test_refuses_unknown_keys_and_lists_them() -> None:
    data = example()
    data["stagess"] = []
    data["stages"][0]["trafic"] = 10
    data["functions"][0]["base_version"]["threads"] = 1
    data["stages"][1]["end_action"]["onSucess"] = "rollout"
    raw: dict[Any, Any] = data
    raw[7] = "x"
    err = refused(data)
    assert set(paths(err)) >= {
        "stagess",
        "stages[0].trafic",
        "functions[0].base_version.threads",
        "stages[1].end_action.onSucess",
        "7",
    }
    assert "did you mean 'stages'" in message_at(err, "stagess")
    assert "did you mean 'onSuccess'" in message_at(err, "stages[1].end_action.onSucess")


@pytest.mark.parametrize("bad", [True, 4.2, None, "", [1]])
def test_refuses_a_bad_id(bad: object) -> None:
    data = example()
    data["id"] = bad
    assert "id" in paths(refused(data))


# --------------------------------------------------------------------------------------------
# Refusals: the protocol's rules
# --------------------------------------------------------------------------------------------


def test_refuses_a_repeated_stage_name() -> None:
    data = example()
    data["stages"][1]["name"] = "canary-10"
    err = refused(data)
    assert "repeats stages[0].name" in message_at(err, "stages[1].name")


@pytest.mark.parametrize("reserved", ["rollout", "rollback"])
def test_refuses_a_stage_named_like_an_end_action(reserved: str) -> None:
    data = example()
    data["stages"][1]["name"] = reserved
    data["stages"][0]["end_action"]["onSuccess"] = reserved
    assert "stages[1].name" in paths(refused(data))


def test_refuses_an_unknown_func_name() -> None:
    data = example()
    data["stages"][1]["func_name"] = "chekout"
    err = refused(data)
    assert "'checkout'" in message_at(err, "stages[1].func_name")


@pytest.mark.parametrize(
    "bad",
    ["checkout_v1", "/fns/checkout_v1", "fns/", "fns/a/b", "fns/..", "fns/.", "fns/a\\b", "src/x"],
)
def test_refuses_a_version_path_that_is_not_a_version_folder(bad: str) -> None:
    data = example()
    data["functions"][0]["new_version"]["path"] = bad
    assert "functions[0].new_version.path" in paths(refused(data))


def test_refuses_a_version_path_missing_from_the_archive() -> None:
    err = refused(EXAMPLE, available_paths=["fns/checkout_v1"])
    assert paths(err) == ["functions[0].new_version.path"]
    assert "not in the function archive" in err.problems[0][1]


def test_refuses_an_unknown_env() -> None:
    data = example()
    data["functions"][0]["base_version"]["env"] = "rust"
    err = refused(data)
    assert "'nodejs'" in message_at(err, "functions[0].base_version.env")


@pytest.mark.parametrize("bad", ["Canary", "a/b", "AB", 1])
def test_refuses_an_unknown_stage_type(bad: object) -> None:
    data = example()
    data["stages"][0]["type"] = bad
    assert "stages[0].type" in paths(refused(data))


def test_refuses_traffic_that_does_not_sum_to_100() -> None:
    data = example()
    data["stages"][1]["variants"][1]["trafficPercentage"] = 40
    err = refused(data)
    assert "sum to 90" in message_at(err, "stages[1].variants")


def test_refuses_empty_variants() -> None:
    data = example()
    data["stages"][1]["variants"] = []
    assert "stages[1].variants" in paths(refused(data))


@pytest.mark.parametrize("bad", [-10, 110])
def test_refuses_traffic_outside_0_to_100(bad: int) -> None:
    data = example()
    data["stages"][0]["variants"][0]["trafficPercentage"] = bad
    data["stages"][0]["variants"][1]["trafficPercentage"] = 100 - bad
    err = refused(data)
    assert "stages[0].variants[0].trafficPercentage" in paths(err)
    assert "stages[0].variants[1].trafficPercentage" in paths(err)


def test_refuses_a_variant_named_twice_or_unknown() -> None:
    data = example()
    data["stages"][0]["variants"][1]["name"] = "base_version"
    data["stages"][1]["variants"][1]["name"] = "newer_version"
    err = refused(data)
    assert "repeats" in message_at(err, "stages[0].variants[1].name")
    assert "stages[1].variants[1].name" in paths(err)


@pytest.mark.parametrize(
    "bad", ["~0.01", "<", "<=abc", "", "0.01", "==1", "!=1", "< inf", "<nan", "<1e999", 0.01, None]
)
def test_refuses_a_threshold_that_does_not_parse(bad: object) -> None:
    data = example()
    data["stages"][0]["metrics_conditions"][0]["threshold"] = bad
    assert "stages[0].metrics_conditions[0].threshold" in paths(refused(data))


def test_refuses_a_bad_compare_with() -> None:
    data = example()
    data["stages"][0]["metrics_conditions"][1]["compareWith"] = "Mean"
    err = refused(data)
    assert "'Median'" in message_at(err, "stages[0].metrics_conditions[1].compareWith")


def test_refuses_response_time_without_compare_with() -> None:
    data = example()
    del data["stages"][0]["metrics_conditions"][1]["compareWith"]
    err = refused(data)
    assert "required" in message_at(err, "stages[0].metrics_conditions[1].compareWith")


def test_refuses_error_rate_with_compare_with() -> None:
    data = example()
    data["stages"][1]["metrics_conditions"][0]["compareWith"] = "Median"
    err = refused(data)
    assert "not allowed" in message_at(err, "stages[1].metrics_conditions[0].compareWith")


def test_refuses_an_unknown_metric() -> None:
    data = example()
    data["stages"][1]["metrics_conditions"][0]["name"] = "latency"
    assert "stages[1].metrics_conditions[0].name" in paths(refused(data))


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", 1.5, -1, True, None, "9" * 30, 2**63])
def test_refuses_a_bad_min_calls(bad: object) -> None:
    data = example()
    data["stages"][1]["end_conditions"][0]["threshold"] = bad
    assert "stages[1].end_conditions[0].threshold" in paths(refused(data))


@pytest.mark.parametrize(
    "bad", ["30", "5 m", "-1s", "1d", "s", "", 30, None, "9" * 30 + "h", "1" + "0" * 200 + "s"]
)
def test_refuses_a_bad_min_duration(bad: object) -> None:
    data = example()
    data["stages"][0]["end_conditions"][0]["threshold"] = bad
    assert "stages[0].end_conditions[0].threshold" in paths(refused(data))


def test_refuses_an_unknown_or_repeated_end_condition() -> None:
    data = example()
    data["stages"][0]["end_conditions"][1]["name"] = "minDuration"
    data["stages"][0]["end_conditions"][1]["threshold"] = "1m"
    data["stages"][1]["end_conditions"][0]["name"] = "maxCalls"
    err = refused(data)
    assert "repeats" in message_at(err, "stages[0].end_conditions[1].name")
    assert "stages[1].end_conditions[0].name" in paths(err)


def test_refuses_an_end_action_naming_a_missing_stage() -> None:
    data = example()
    data["stages"][0]["end_action"]["onSuccess"] = "ab-5O"
    data["stages"][1]["end_action"]["onFailure"] = "roll back"
    err = refused(data)
    assert "stages[0].end_action.onSuccess" in paths(err)
    assert "stages[1].end_action.onFailure" in paths(err)


def test_refuses_an_end_action_naming_its_own_stage() -> None:
    data = example()
    data["stages"][1]["end_action"]["onFailure"] = "ab-50"
    err = refused(data)
    assert "itself" in message_at(err, "stages[1].end_action.onFailure")


def test_refuses_an_unreachable_stage() -> None:
    data = example()
    orphan = copy.deepcopy(data["stages"][1])
    orphan["name"] = "orphan"
    data["stages"].append(orphan)
    err = refused(data)
    assert paths(err) == ["stages[2]"]
    assert "cannot be reached" in err.problems[0][1]


def test_refuses_stages_that_loop() -> None:
    data = example()
    data["stages"][1]["end_action"]["onFailure"] = "canary-10"
    err = refused(data)
    assert paths(err) == ["stages[1].end_action.onFailure"]
    assert "canary-10 -> ab-50 -> canary-10" in err.problems[0][1]


def test_refuses_zero_stages() -> None:
    data = example()
    data["stages"] = []
    assert paths(refused(data)) == ["stages"]


def test_refuses_zero_functions() -> None:
    data = example()
    data["functions"] = []
    err = refused(data)
    assert "functions" in paths(err)


def test_refuses_a_duplicated_function_name() -> None:
    data = example()
    data["functions"].append(copy.deepcopy(data["functions"][0]))
    err = refused(data)
    assert paths(err) == ["functions[1].name"]


def test_refuses_a_bad_rollback_function() -> None:
    data = example()
    data["rollback"]["action"]["function"] = "old_version"
    assert paths(refused(data)) == ["rollback.action.function"]


def test_refuses_too_many_items() -> None:
    data = example()
    data["stages"][1]["metrics_conditions"] = [{"name": "errorRate", "threshold": "<1"}] * (
        MAX_LIST_ITEMS + 1
    )
    assert paths(refused(data)) == ["stages[1].metrics_conditions"]


def test_reports_every_problem_at_once() -> None:
    data = example()
    data["name"] = ""
    data["functions"][0]["new_version"]["env"] = "java"
    data["stages"][0]["type"] = "Canary"
    data["stages"][0]["variants"][1]["trafficPercentage"] = 20
    data["stages"][0]["metrics_conditions"][0]["threshold"] = "<=zero"
    data["stages"][0]["end_conditions"][0]["threshold"] = "30 seconds"
    data["stages"][1]["func_name"] = "pay"
    data["stages"][1]["end_action"]["onSuccess"] = "ab-50"
    data["stages"][1]["extra"] = 1
    err = refused(data, available_paths=["fns/checkout_v1"])
    assert set(paths(err)) == {
        "name",
        "functions[0].new_version.env",
        "functions[0].new_version.path",
        "stages[0].type",
        "stages[0].variants",
        "stages[0].metrics_conditions[0].threshold",
        "stages[0].end_conditions[0].threshold",
        "stages[1].func_name",
        "stages[1].end_action.onSuccess",
        "stages[1].extra",
    }
    assert err.details["problems"][0].keys() == {"path", "message"}


def test_problems_are_capped() -> None:
    data = example()
    data.update({f"unknown{i}": i for i in range(150)})
    err = refused(data)
    assert len(err.problems) == 101
    assert "50 further problem(s)" in err.problems[-1][1]


# --------------------------------------------------------------------------------------------
# Python-built strategies
# --------------------------------------------------------------------------------------------


def test_validate_refuses_bad_python_built_strategies() -> None:
    good = python_example()
    canary = good.stages[0]
    bad_stage = Stage(
        name=canary.name,
        type="Canary",  # type: ignore[arg-type]
        func_name=canary.func_name,
        variants=list(canary.variants),  # type: ignore[arg-type]
        metrics_conditions=(MetricCondition(MetricName.ERROR_RATE, Threshold("~", 1.0)),),  # type: ignore[arg-type]
        end_conditions=(EndCondition(EndConditionName.MIN_DURATION, timedelta(seconds=-1)),),
        end_action=canary.end_action,
    )
    bad = Strategy(
        id=42,  # type: ignore[arg-type]
        name=good.name,
        type=good.type,
        functions=good.functions,
        stages=(bad_stage, good.stages[1]),
        rollback=good.rollback,
    )
    with pytest.raises(StrategyError) as info:
        validate_strategy(bad)
    assert set(paths(info.value)) == {
        "id",
        "stages[0].type",
        "stages[0].variants",
        "stages[0].metrics_conditions[0].threshold",
        "stages[0].end_conditions[0].threshold",
    }
    with pytest.raises(StrategyError):
        dump_strategy(bad)
    with pytest.raises(StrategyError):
        validate_strategy("not a strategy")  # type: ignore[arg-type]


def test_plain_strings_for_enum_fields_are_accepted() -> None:
    s = python_example()
    plain = Strategy(
        id=s.id,
        name=s.name,
        type=s.type,
        functions=(
            Function(
                "checkout",
                FunctionVersion("fns/checkout_v1", "nodejs"),  # type: ignore[arg-type]
                FunctionVersion("fns/checkout_v2", "nodejs"),  # type: ignore[arg-type]
            ),
        ),
        stages=s.stages,
        rollback=Rollback("base_version"),  # type: ignore[arg-type]
    )
    validate_strategy(plain)
    assert plain == s
    assert parse_strategy(dump_strategy(plain)) == s


# --------------------------------------------------------------------------------------------
# Thresholds and durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "op", "value", "canonical"),
    [
        ("<=0.01", "<=", 0.01, "<=0.01"),
        ("<150", "<", 150.0, "<150"),
        (">= 3", ">=", 3.0, ">=3"),
        ("=0", "=", 0.0, "=0"),
        (" > -2.5 ", ">", -2.5, ">-2.5"),
        ("<=200 ", "<=", 200.0, "<=200"),
        ("<1e3", "<", 1000.0, "<1000"),
        ("<.5", "<", 0.5, "<0.5"),
        ("<1e20", "<", 1e20, "<1e+20"),
    ],
)
def test_threshold_parse_and_canonical_text(
    text: str, op: str, value: float, canonical: str
) -> None:
    threshold = Threshold.parse(text)
    assert (threshold.op, threshold.value) == (op, value)
    assert str(threshold) == canonical
    assert Threshold.parse(canonical) == threshold


@pytest.mark.parametrize(
    ("text", "holds", "fails"),
    [
        ("<=0.01", [0.0, 0.01], [0.011]),
        ("<150", [149.9], [150.0, 151.0]),
        (">=3", [3.0, 4.0], [2.99]),
        (">3", [3.01], [3.0]),
        ("=0", [0.0], [0.001, -0.001, float("nan")]),
    ],
)
def test_threshold_holds(text: str, holds: list[float], fails: list[float]) -> None:
    threshold = Threshold.parse(text)
    assert all(threshold.holds(x) for x in holds)
    assert not any(threshold.holds(x) for x in fails)


def test_threshold_parse_refuses_with_strategy_error() -> None:
    with pytest.raises(StrategyError):
        Threshold.parse("about 3")
    with pytest.raises(StrategyError):
        Threshold.parse(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("30s", timedelta(seconds=30), "30s"),
        ("5m", timedelta(minutes=5), "5m"),
        ("1h", timedelta(hours=1), "1h"),
        ("250ms", timedelta(milliseconds=250), "250ms"),
        ("1m30s", timedelta(seconds=90), "1m30s"),
        ("90s", timedelta(seconds=90), "1m30s"),
        ("1.5s", timedelta(seconds=1.5), "1s500ms"),
        ("0", timedelta(0), "0s"),
        ("2h45m", timedelta(hours=2, minutes=45), "2h45m"),
        ("48h", timedelta(days=2), "48h"),
        ("7us", timedelta(microseconds=7), "7us"),
    ],
)
def test_durations(text: str, expected: timedelta, canonical: str) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == canonical
    assert parse_duration(canonical) == expected


@pytest.mark.parametrize("bad", ["30", "", "1d", "-5s", "5 s", "s", "1.2.3s", "\u0661s"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(StrategyError):
        parse_duration(bad)


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(StrategyError):
        format_duration(timedelta(seconds=-1))


@settings(max_examples=200, deadline=None)
@given(durations)
def test_duration_round_trip(duration: timedelta) -> None:
    assert parse_duration(format_duration(duration)) == duration


@settings(max_examples=200, deadline=None)
@given(thresholds)
def test_threshold_round_trip(threshold: Threshold) -> None:
    assert Threshold.parse(str(threshold)) == threshold


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_strategies())
def test_dump_parse_round_trip(strategy: Strategy) -> None:
    validate_strategy(strategy, available_paths=strategy.version_paths())
    text = dump_strategy(strategy)
    assert parse_strategy(text) == strategy
    assert parse_strategy(text.encode("utf-8")) == strategy
    assert parse_strategy_mapping(strategy.to_mapping()) == strategy


def _dict_key_paths(node: Any, trail: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every key of every mapping inside ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*trail, key)
            yield from _dict_key_paths(value, (*trail, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _dict_key_paths(value, (*trail, index))


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


def _delete(document: Any, path: tuple[Any, ...]) -> None:
    del _parent(document, path)[path[-1]]


def _retype(document: Any, path: tuple[Any, ...], replacement: Any) -> None:
    _parent(document, path)[path[-1]] = replacement


_REPLACEMENTS: tuple[Any, ...] = (None, [], {}, 3.5, True, [1], {"x": 1})


def _another_type(old: Any, pick: int) -> Any:
    candidates = [new for new in _REPLACEMENTS if type(new) is not type(old)]
    return copy.deepcopy(candidates[pick % len(candidates)])


def _threshold_paths(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        path
        for path in _dict_key_paths(document)
        if path[-1] == "threshold" and "metrics_conditions" in path
    ]


Mutation = Callable[[dict[str, Any]], None]


@st.composite
def _mutations(draw: st.DrawFn, document: dict[str, Any]) -> Mutation:
    key_paths = list(_dict_key_paths(document))
    kind = draw(st.sampled_from(["delete", "retype", "threshold", "unknown-key"]))
    if kind == "threshold" and _threshold_paths(document):
        path = draw(st.sampled_from(_threshold_paths(document)))
        broken = draw(
            st.one_of(
                st.sampled_from(["", "<", "=<1", "1<", "<=x", "<1e999", "<nan", "!=1", "<<1"]),
                st.text(alphabet="<>=!~ .-eE", max_size=6),
            )
        )
        return lambda doc: _retype(doc, path, broken)
    if kind == "unknown-key":
        containers = [()] + [p for p in key_paths if isinstance(_get(document, p), dict)]
        where = draw(st.sampled_from(containers))
        key = draw(st.text(min_size=1, max_size=8))

        def add_key(doc: dict[str, Any]) -> None:
            target = _get(doc, where)
            if key not in target:
                target[key] = 1
            else:
                del target[key]  # an existing key: deleting a required key breaks it too

        return add_key
    path = draw(st.sampled_from(key_paths))
    if kind == "delete":
        return lambda doc: _delete(doc, path)
    replacement = _another_type(_get(document, path), draw(st.integers(0, 100)))
    return lambda doc: _retype(doc, path, replacement)


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for step in path:
        node = node[step]
    return node


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_documents_are_refused(data: st.DataObject) -> None:
    strategy = data.draw(valid_strategies(max_stages=3))
    document = strategy.to_mapping()
    mutations = data.draw(st.lists(_mutations(document), min_size=1, max_size=3))
    for mutate in mutations:
        # An earlier mutation may have removed what this one targets.
        with contextlib.suppress(KeyError, IndexError, TypeError):
            mutate(document)
    if document == strategy.to_mapping():
        return
    err = refused(document)
    assert all(isinstance(p, str) and isinstance(m, str) for p, m in err.problems)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    refused(text)


_yamlish = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from(["id", "stages", "functions", "<=0.01", "30s", "A/B", "rollout"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["id", "name", "type", "functions", "stages", "rollback", "variants"]
                ),
                st.text(max_size=6),
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(_yamlish)
def test_random_values_are_refused(value: Any) -> None:
    refused(value)
    try:
        text = yaml.safe_dump(value, allow_unicode=True)
    except yaml.YAMLError:
        return
    refused(text)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_random_text_is_refused(text: str | bytes) -> None:
    refused(text)
