"""The rules of a release strategy: one set, for parsed strategies and ones built in Python.

:class:`Rules` checks a (possibly partly decoded) :class:`~.records.Strategy` and records every
problem with its path in the document's key names; :func:`validate_strategy` applies it and
raises one :class:`~release_coordinator.errors.StrategyError`. The decoder of
:mod:`release_coordinator.rollout.strategy.document` leaves :data:`INVALID` where a value could
not be decoded; the rules skip it (it was reported already).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from datetime import timedelta
from typing import Any, Final, TypeVar

from release_coordinator.errors import StrategyError
from release_coordinator.problems import Problems, short
from release_coordinator.problems import kind as kind_of
from release_coordinator.rollout.strategy.records import (
    FINAL_ACTIONS,
    MAX_LIST_ITEMS,
    OPERATORS,
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
)

__all__ = ["INVALID", "Rules", "too_many", "validate_strategy"]

#: minCalls is a Go int64 on the agents.
_MAX_CALLS: Final = 2**63 - 1
#: An integer threshold value beyond this is not exactly a float, so would not round-trip.
_MAX_EXACT_INT: Final = 2**53

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)


class _Invalid:
    """Stands in a partly decoded strategy for a value already reported as a problem."""

    def __repr__(self) -> str:
        return "<invalid>"


#: The decoder puts this where a value could not be decoded; the rules skip it.
INVALID: Final[Any] = _Invalid()


def _version_path_problem(path: str) -> str | None:
    """Why ``path`` is not a version folder ``fns/<name>``, or None."""
    head, sep, folder = path.partition("/")
    if head != "fns" or not sep:
        return f"{short(path)} is not a version folder of the form 'fns/<name>'"
    if folder in ("", ".", "..") or "/" in folder:
        return f"{short(path)} is not a version folder of the form 'fns/<name>'"
    if "\\" in folder or any(ch < " " or ch == "\x7f" for ch in folder):
        return f"{short(path)} contains a backslash or a control character"
    return None


class Rules:
    """Checks a (possibly partly decoded) strategy and records every problem found."""

    def __init__(self, problems: Problems, available_paths: Collection[str] | None) -> None:
        self.problems = problems
        self.available: frozenset[str] | None = None
        if available_paths is not None:
            self.available = frozenset(str(p).rstrip("/") for p in available_paths)

    def add(self, path: str, message: str) -> None:
        self.problems.add(path, message)

    # -- building blocks ---------------------------------------------------------------------

    def text(self, value: object, path: str, *, empty_ok: bool = False) -> str | None:
        """``value`` if it is a (non-empty) string, else None after recording why."""
        if value is INVALID:
            return None
        if not isinstance(value, str):
            self.add(path, f"must be a string, not {kind_of(value)}")
            return None
        if not value and not empty_ok:
            self.add(path, "must not be empty")
            return None
        return value

    def choice(self, value: object, path: str, kind: type[_E], what: str) -> _E | None:
        """The member of ``kind`` that ``value`` names, else None after recording why."""
        if value is INVALID:
            return None
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        allowed = ", ".join(repr(m.value) for m in kind)
        self.add(path, f"{short(value)} is not a {what}; expected one of {allowed}")
        return None

    def record(self, value: object, path: str, kind: type[_T], what: str) -> _T | None:
        """``value`` if it is a ``kind`` record, else None after recording why (``what`` is
        the kind in words, e.g. ``"a Rollback"``); INVALID is None without a problem."""
        if value is INVALID:
            return None
        if not isinstance(value, kind):
            self.add(path, f"must be {what}, not {kind_of(value)}")
            return None
        return value

    def items(
        self, value: object, path: str, kind: type[_T], what: str
    ) -> list[tuple[int, _T]] | None:
        """The well-typed items of the tuple ``value`` with their index, else None."""
        if value is INVALID:
            return None
        if not isinstance(value, tuple):
            self.add(path, f"must be a tuple of {what}, not {kind_of(value)}")
            return None
        if len(value) > MAX_LIST_ITEMS:
            self.add(path, too_many(len(value)))
            return None
        found: list[tuple[int, _T]] = []
        for index, item in enumerate(value):
            if item is INVALID:
                continue
            if not isinstance(item, kind):
                self.add(f"{path}[{index}]", f"must be a {what}, not {kind_of(item)}")
                continue
            found.append((index, item))
        return found

    # -- the strategy --------------------------------------------------------------------------

    def strategy(self, strategy: object) -> None:
        if not isinstance(strategy, Strategy):
            self.add("", f"must be a Strategy, not {kind_of(strategy)}")
            return
        self.text(strategy.id, "id")
        self.text(strategy.name, "name")
        self.text(strategy.type, "type", empty_ok=True)
        function_names = self.functions(strategy.functions)
        self.stages(strategy.stages, function_names)
        self.rollback(strategy.rollback)

    def functions(self, value: object) -> frozenset[str] | None:
        """Checks the functions; their names when every one of them is known."""
        found = self.items(value, "functions", Function, "Function")
        if found is None:
            return None
        assert isinstance(value, tuple)
        if not value:
            self.add("functions", "at least one function is required")
        complete = len(found) == len(value)
        first_index: dict[str, int] = {}
        for index, function in found:
            path = f"functions[{index}]"
            name = self.text(function.name, f"{path}.name")
            if name is None:
                complete = False
            elif name in first_index:
                self.add(
                    f"{path}.name",
                    f"function {short(name)} is already defined by functions[{first_index[name]}]",
                )
            else:
                first_index[name] = index
            self.version(function.base_version, f"{path}.base_version")
            self.version(function.new_version, f"{path}.new_version")
        return frozenset(first_index) if complete else None

    def version(self, value: object, path: str) -> None:
        version = self.record(value, path, FunctionVersion, "a FunctionVersion")
        if version is None:
            return
        folder = self.text(version.path, f"{path}.path")
        if folder is not None:
            problem = _version_path_problem(folder)
            if problem is not None:
                self.add(f"{path}.path", problem)
            elif self.available is not None and folder not in self.available:
                self.add(f"{path}.path", f"folder {short(folder)} is not in the function archive")
        self.choice(version.env, f"{path}.env", Env, "runtime")

    def stages(self, value: object, function_names: frozenset[str] | None) -> None:
        found = self.items(value, "stages", Stage, "Stage")
        if found is None:
            return
        assert isinstance(value, tuple)
        if not value:
            self.add("stages", "at least one stage is required")
            return
        # Names first: end actions refer to them.
        complete = len(found) == len(value)
        first_index: dict[str, int] = {}
        for index, stage in found:
            path = f"stages[{index}].name"
            name = self.text(stage.name, path)
            if name is None:
                complete = False
            elif name in FINAL_ACTIONS:
                self.add(path, f"{name!r} is reserved for the end action; choose another name")
            elif name in first_index:
                self.add(path, f"stage name {short(name)} repeats stages[{first_index[name]}].name")
            else:
                first_index[name] = index
        stage_names = frozenset(first_index) if complete else None
        edges: dict[str, list[tuple[str, str]]] = {}
        for index, stage in found:
            path = f"stages[{index}]"
            self.choice(stage.type, f"{path}.type", StageType, "stage type")
            func_name = self.text(stage.func_name, f"{path}.func_name")
            if (
                func_name is not None
                and function_names is not None
                and func_name not in function_names
            ):
                known = ", ".join(sorted(map(repr, function_names)))
                self.add(
                    f"{path}.func_name", f"{short(func_name)} names no function; known: {known}"
                )
            self.variants(stage.variants, f"{path}.variants")
            self.metrics(stage.metrics_conditions, f"{path}.metrics_conditions")
            self.end_conditions(stage.end_conditions, f"{path}.end_conditions")
            targets = self.end_action(stage, f"{path}.end_action", stage_names)
            if targets is None:
                complete = False
            elif isinstance(stage.name, str) and first_index.get(stage.name) == index:
                edges[stage.name] = targets
        if complete and stage_names is not None:
            self.graph(found, first_index, edges)

    def variants(self, value: object, path: str) -> None:
        found = self.items(value, path, Variant, "Variant")
        if found is None:
            return
        assert isinstance(value, tuple)
        total: int | None = 0 if len(found) == len(value) else None
        seen: dict[VariantName, int] = {}
        for index, variant in found:
            item = f"{path}[{index}]"
            name = self.choice(variant.name, f"{item}.name", VariantName, "variant name")
            if name is not None:
                if name in seen:
                    self.add(f"{item}.name", f"variant {name.value!r} repeats {path}[{seen[name]}]")
                else:
                    seen[name] = index
            share = variant.traffic_percentage
            if share is INVALID:
                total = None
            elif not isinstance(share, int) or isinstance(share, bool):
                self.add(
                    f"{item}.trafficPercentage",
                    f"must be a whole number of percent, not {kind_of(share)}",
                )
                total = None
            elif not 0 <= share <= 100:
                self.add(f"{item}.trafficPercentage", f"{share} is outside 0..100")
                total = None
            elif total is not None:
                total += share
        if total is not None and total != 100:
            self.add(path, f"traffic percentages sum to {total}, not 100")

    def metrics(self, value: object, path: str) -> None:
        found = self.items(value, path, MetricCondition, "MetricCondition")
        if found is None:
            return
        for index, condition in found:
            item = f"{path}[{index}]"
            name = self.choice(condition.name, f"{item}.name", MetricName, "metric")
            self.threshold(condition.threshold, f"{item}.threshold")
            compare = condition.compare_with
            if compare is INVALID or name is None:
                continue
            if name is MetricName.ERROR_RATE:
                if compare is not None:
                    self.add(f"{item}.compareWith", "is not allowed for errorRate")
            elif compare is None:
                self.add(
                    f"{item}.compareWith",
                    "is required for responseTime: one of 'Median', 'Minimum', 'Maximum'",
                )
            else:
                self.choice(compare, f"{item}.compareWith", CompareWith, "compareWith value")

    def threshold(self, value: object, path: str) -> None:
        threshold = self.record(value, path, Threshold, "a Threshold such as '<=0.01'")
        if threshold is None:
            return
        if threshold.op not in OPERATORS:
            self.add(path, f"operator {short(threshold.op)} is not one of <, <=, >, >=, =")
        number = threshold.value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            self.add(path, f"value must be a number, not {kind_of(number)}")
        elif isinstance(number, int):
            if abs(number) > _MAX_EXACT_INT:
                self.add(path, f"value {number} is too large (at most {_MAX_EXACT_INT})")
        elif not math.isfinite(number):
            self.add(path, f"value {number} is not a finite number")

    def end_conditions(self, value: object, path: str) -> None:
        found = self.items(value, path, EndCondition, "EndCondition")
        if found is None:
            return
        seen: dict[EndConditionName, int] = {}
        for index, condition in found:
            item = f"{path}[{index}]"
            name = self.choice(condition.name, f"{item}.name", EndConditionName, "end condition")
            if name is None:
                continue
            if name in seen:
                self.add(f"{item}.name", f"{name.value!r} repeats {path}[{seen[name]}]")
            else:
                seen[name] = index
            threshold = condition.threshold
            if threshold is INVALID:
                continue
            if name is EndConditionName.MIN_CALLS:
                if isinstance(threshold, bool) or not isinstance(threshold, int):
                    self.add(
                        f"{item}.threshold",
                        f"must be a whole number of calls such as '200', not {kind_of(threshold)}",
                    )
                elif not 0 <= threshold <= _MAX_CALLS:
                    self.add(f"{item}.threshold", f"{threshold} is outside 0..{_MAX_CALLS}")
            elif not isinstance(threshold, timedelta):
                self.add(
                    f"{item}.threshold",
                    f"must be a duration such as '30s', not {kind_of(threshold)}",
                )
            elif threshold < timedelta(0):
                self.add(f"{item}.threshold", "must not be negative")

    def end_action(
        self, stage: Stage, path: str, stage_names: frozenset[str] | None
    ) -> list[tuple[str, str]] | None:
        """Checks the end action; the (key, stage name) pairs it leads to, None if unknown."""
        action = self.record(stage.end_action, path, EndAction, "an EndAction")
        if action is None:
            return None
        targets: list[tuple[str, str]] | None = []
        for key, target in (("onSuccess", action.on_success), ("onFailure", action.on_failure)):
            text = self.text(target, f"{path}.{key}")
            if text is None:
                targets = None
                continue
            if text in FINAL_ACTIONS:
                continue
            if stage_names is None:
                targets = None
                continue
            if text == stage.name:
                self.add(f"{path}.{key}", f"names the stage itself ({short(text)})")
            elif text not in stage_names:
                self.add(
                    f"{path}.{key}",
                    f"{short(text)} is neither 'rollout', 'rollback' nor a stage name",
                )
            elif targets is not None:
                targets.append((key, text))
        return targets

    def graph(
        self,
        stages: list[tuple[int, Stage]],
        first_index: dict[str, int],
        edges: dict[str, list[tuple[str, str]]],
    ) -> None:
        """Every stage is reachable from the first one, and no stage leads back to itself."""
        first = stages[0][1].name
        reached = {first}
        pending = [first]
        while pending:
            for _key, target in edges.get(pending.pop(), []):
                if target not in reached:
                    reached.add(target)
                    pending.append(target)
        for name, index in first_index.items():
            if name not in reached:
                self.add(
                    f"stages[{index}]",
                    f"stage {short(name)} cannot be reached from the first stage {short(first)}",
                )
        # Loops: the per-child stage status cannot go back to a finished stage.
        done: set[str] = set()
        for start in first_index:
            if start in done:
                continue
            trail: list[str] = [start]
            on_trail = {start}
            iterators = [iter(edges.get(start, []))]
            while iterators:
                step = next(iterators[-1], None)
                if step is None:
                    iterators.pop()
                    finished = trail.pop()
                    on_trail.discard(finished)
                    done.add(finished)
                    continue
                key, target = step
                if target in on_trail:
                    loop = " -> ".join([*trail[trail.index(target) :], target])
                    self.add(
                        f"stages[{first_index[trail[-1]]}].end_action.{key}",
                        f"leads back to stage {short(target)}: stages must not loop ({loop})",
                    )
                elif target not in done:
                    trail.append(target)
                    on_trail.add(target)
                    iterators.append(iter(edges.get(target, [])))

    def rollback(self, value: object) -> None:
        rollback = self.record(value, "rollback", Rollback, "a Rollback")
        if rollback is None:
            return
        self.choice(rollback.function, "rollback.action.function", VariantName, "version name")


def too_many(count: int) -> str:
    return f"has {count} items, at most {MAX_LIST_ITEMS} are allowed"


def validate_strategy(
    strategy: Strategy, *, available_paths: Collection[str] | None = None
) -> None:
    """Check a strategy (parsed or built in Python) against every rule of the protocol.

    ``available_paths`` are the version folders of the function archive (``"fns/<name>"``, a
    trailing ``/`` allowed); when given, every version path must be one of them. Raises one
    :class:`~release_coordinator.errors.StrategyError` listing every problem with its path in
    the document's key names (``stages[1].variants[0].trafficPercentage``). Records must hold
    tuples, not lists, so that a valid strategy survives :func:`dump_strategy` unchanged.
    """
    problems = Problems()
    Rules(problems, available_paths).strategy(strategy)
    problems.raise_if_any("invalid release strategy", StrategyError)
