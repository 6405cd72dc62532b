"""Hypothesis strategies that build valid rollout strategy records, for reuse across tests.

``valid_strategies()`` draws a :class:`~release_coordinator.rollout.strategy.Strategy` that
passes ``validate_strategy``: unique function and stage names, version folders ``fns/<name>``,
traffic summing to 100, ``compareWith`` exactly on ``responseTime`` conditions, and end actions
that only lead forward (so every stage is reachable from the first and none loops).
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import strategies as st

from release_coordinator.rollout.strategy import (
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
    Rollback,
    Stage,
    StageType,
    Strategy,
    Threshold,
    Variant,
    VariantName,
)

__all__ = [
    "durations",
    "names",
    "thresholds",
    "valid_strategies",
]

_RESERVED = frozenset(action.value for action in FinalAction)

#: Names: mostly readable, sometimes any text at all (YAML must quote or escape it).
names: st.SearchStrategy[str] = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True),
    st.text(min_size=1, max_size=12),
).filter(lambda name: name not in _RESERVED)

_folder_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True).filter(
    lambda name: name not in (".", "..")
)

#: Thresholds with every operator and integral, fractional, tiny and huge values.
thresholds: st.SearchStrategy[Threshold] = st.builds(
    Threshold,
    op=st.sampled_from(OPERATORS),
    value=st.one_of(
        st.integers(-(10**6), 10**6).map(float),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
)

#: Durations from zero to a few years, to the microsecond.
durations: st.SearchStrategy[timedelta] = st.one_of(
    st.integers(0, 3 * 3600).map(lambda s: timedelta(seconds=s)),
    st.integers(0, 10**14).map(lambda us: timedelta(microseconds=us)),
)


@st.composite
def _function(draw: st.DrawFn, name: str) -> Function:
    def version() -> FunctionVersion:
        return FunctionVersion(
            path=f"fns/{draw(_folder_names)}", env=draw(st.sampled_from(list(Env)))
        )

    return Function(name=name, base_version=version(), new_version=version())


@st.composite
def _variants(draw: st.DrawFn) -> tuple[Variant, ...]:
    base = VariantName.BASE_VERSION
    new = VariantName.NEW_VERSION
    shape = draw(st.sampled_from(["both", "both-reversed", "base-only", "new-only"]))
    if shape == "base-only":
        return (Variant(base, 100),)
    if shape == "new-only":
        return (Variant(new, 100),)
    share = draw(st.integers(0, 100))
    both = (Variant(base, 100 - share), Variant(new, share))
    return both if shape == "both" else both[::-1]


_metric_conditions = st.one_of(
    st.builds(MetricCondition, name=st.just(MetricName.ERROR_RATE), threshold=thresholds),
    st.builds(
        MetricCondition,
        name=st.just(MetricName.RESPONSE_TIME),
        threshold=thresholds,
        compare_with=st.sampled_from(list(CompareWith)),
    ),
)


@st.composite
def _end_conditions(draw: st.DrawFn) -> tuple[EndCondition, ...]:
    chosen: list[EndCondition] = []
    if draw(st.booleans()):
        chosen.append(EndCondition(EndConditionName.MIN_CALLS, draw(st.integers(0, 2**63 - 1))))
    if draw(st.booleans()):
        chosen.append(EndCondition(EndConditionName.MIN_DURATION, draw(durations)))
    if draw(st.booleans()):
        chosen.reverse()
    return tuple(chosen)


@st.composite
def valid_strategies(draw: st.DrawFn, max_stages: int = 4) -> Strategy:
    """A random valid Strategy (1..3 functions, 1..``max_stages`` stages)."""
    function_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    functions = tuple(draw(_function(name)) for name in function_names)
    stage_names = draw(st.lists(names, min_size=1, max_size=max_stages, unique=True))
    finals = [FinalAction.ROLLOUT.value, FinalAction.ROLLBACK.value]
    stages: list[Stage] = []
    for index, stage_name in enumerate(stage_names):
        later = stage_names[index + 1 :]
        # One of the two end actions leads to the next stage, so every stage is reachable; the
        # other may jump to any later stage or end the release. Only forward edges: no loops.
        other = draw(st.sampled_from(finals + later))
        if not later:
            on_success, on_failure = draw(st.sampled_from(finals)), other
        elif draw(st.booleans()):
            on_success, on_failure = later[0], other
        else:
            on_success, on_failure = other, later[0]
        stages.append(
            Stage(
                name=stage_name,
                type=draw(st.sampled_from(list(StageType))),
                func_name=draw(st.sampled_from(function_names)),
                variants=draw(_variants()),
                metrics_conditions=tuple(draw(st.lists(_metric_conditions, max_size=3))),
                end_conditions=draw(_end_conditions()),
                end_action=EndAction(on_success=on_success, on_failure=on_failure),
            )
        )
    return Strategy(
        id=draw(st.one_of(st.integers(0, 10**6).map(str), names)),
        name=draw(names),
        type=draw(st.one_of(st.sampled_from(["minor", "major", "patch", ""]), st.text(max_size=8))),
        functions=functions,
        stages=tuple(stages),
        rollback=Rollback(draw(st.sampled_from(list(VariantName)))),
    )
