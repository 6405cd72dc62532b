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

Every key of the document is required except ``compareWith``, which ``responseTime`` conditions
need and ``errorRate`` conditions must not have; ``metrics_conditions`` and ``end_conditions`` may
be empty lists. Unknown keys are refused, so a typo never passes silently. Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable, Collection
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, Literal, TypeVar, cast

import attrs
import yaml

from release_coordinator.errors import NotFoundError, StrategyError
from release_coordinator.problems import Problems, short
from release_coordinator.problems import kind as kind_of

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


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


class StageType(enum.StrEnum):
    """How a stage ends: by itself (``A/B``) or when the parent signals (``WaitForSignal``)."""

    AB = "A/B"
    WAIT_FOR_SIGNAL = "WaitForSignal"


class Env(enum.StrEnum):
    """The runtime a function version is written for."""

    NODEJS = "nodejs"
    PYTHON = "python"
    GO = "go"


class VariantName(enum.StrEnum):
    """The two versions of a function a stage splits traffic between."""

    BASE_VERSION = "base_version"
    NEW_VERSION = "new_version"


class MetricName(enum.StrEnum):
    """What a metric condition measures: the error rate (0..1) or the response time (ms)."""

    ERROR_RATE = "errorRate"
    RESPONSE_TIME = "responseTime"


class CompareWith(enum.StrEnum):
    """Which summary of the response times a ``responseTime`` condition is judged on."""

    MEDIAN = "Median"
    MINIMUM = "Minimum"
    MAXIMUM = "Maximum"


class EndConditionName(enum.StrEnum):
    """What a stage must have seen before it may end: enough calls, enough time."""

    MIN_CALLS = "minCalls"
    MIN_DURATION = "minDuration"


class FinalAction(enum.StrEnum):
    """The end actions that finish the release instead of naming a next stage."""

    ROLLOUT = "rollout"
    ROLLBACK = "rollback"


Operator = Literal["<", "<=", ">", ">=", "="]
"""A threshold's comparison operator."""

OPERATORS: Final[tuple[Operator, ...]] = ("<", "<=", ">", ">=", "=")
"""Every operator a :class:`Threshold` may use."""

MAX_LIST_ITEMS: Final = 256
"""At most this many functions, stages, variants or conditions in one list of a strategy."""

#: At most this many problems are listed; the rest are summed up in one last problem.
#: Thresholds and durations longer than this are refused without being parsed.
_MAX_SCALAR_TEXT: Final = 100
#: minCalls is a Go int64 on the agents.
_MAX_CALLS: Final = 2**63 - 1
#: An integer threshold value beyond this is not exactly a float, so would not round-trip.
_MAX_EXACT_INT: Final = 2**53
#: Threshold values with an integral magnitude below this are written without a fraction.
_PLAIN_INT_BELOW: Final = 1e16

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)

# --------------------------------------------------------------------------------------------
# Thresholds and durations
# --------------------------------------------------------------------------------------------

_NUMBER: Final = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_THRESHOLD_RE: Final = re.compile(rf"\s*(<=|>=|<|>|=)\s*({_NUMBER})\s*", re.ASCII)


def _format_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < _PLAIN_INT_BELOW:
        return str(int(value))
    return repr(float(value))


def _parse_threshold(text: str) -> Threshold:
    """The threshold ``text`` means; ValueError with a message when it does not parse."""
    if len(text) > _MAX_SCALAR_TEXT:
        raise ValueError(f"threshold is longer than {_MAX_SCALAR_TEXT} characters")
    match = _THRESHOLD_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"threshold {short(text)} is not an operator (<, <=, >, >=, =) followed by a"
            " number, e.g. '<=0.01'"
        )
    value = float(match.group(2))
    if not math.isfinite(value):
        raise ValueError(f"threshold {short(text)} is out of range")
    return Threshold(cast(Operator, match.group(1)), value)


@attrs.frozen
class Threshold:
    """A bound such as ``<=0.01``: an operator and a number.

    :meth:`parse` reads the text form (spaces around the operator are allowed); ``str()`` gives
    the canonical text back (``"<150"``, ``"<=0.01"``, ``">=3"``, ``"=0"``).
    """

    op: Operator
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """The threshold written as ``text``; :class:`StrategyError` if it does not parse."""
        if not isinstance(text, str):
            raise StrategyError("invalid threshold", problems=[("", "must be a string")])
        try:
            return _parse_threshold(text)
        except ValueError as exc:
            raise StrategyError("invalid threshold", problems=[("", str(exc))]) from None

    def holds(self, x: float) -> bool:
        """Whether the measured value ``x`` satisfies the threshold (NaN never does)."""
        if self.op == "<":
            return x < self.value
        if self.op == "<=":
            return x <= self.value
        if self.op == ">":
            return x > self.value
        if self.op == ">=":
            return x >= self.value
        return x == self.value

    def __str__(self) -> str:
        return f"{self.op}{_format_number(self.value)}"


_DURATION_PART: Final = r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|μs)"  # µ and μ as Go takes them
_DURATION_RE: Final = re.compile(rf"(?:{_DURATION_PART})+", re.ASCII)
_DURATION_PART_RE: Final = re.compile(_DURATION_PART, re.ASCII)
_UNIT_MICROSECONDS: Final = {
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
    "us": 1,
    "µs": 1,
    "μs": 1,
}
_FORMAT_UNITS: Final = (
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
)


def _parse_duration(text: str) -> timedelta:
    """The duration ``text`` means; ValueError with a message when it does not parse."""
    if len(text) > _MAX_SCALAR_TEXT:
        raise ValueError(f"duration is longer than {_MAX_SCALAR_TEXT} characters")
    stripped = text.strip()
    if stripped == "0":
        return timedelta(0)
    if _DURATION_RE.fullmatch(stripped) is None:
        raise ValueError(
            f"duration {short(text)} is not a number with a unit (h, m, s, ms, us),"
            " e.g. '30s', '5m', '1m30s', '250ms'"
        )
    total = Decimal(0)
    for number, unit in _DURATION_PART_RE.findall(stripped):
        total += Decimal(number) * _UNIT_MICROSECONDS[unit]
    microseconds = int(total.to_integral_value(rounding=ROUND_HALF_EVEN))
    try:
        return timedelta(microseconds=microseconds)
    except OverflowError:
        raise ValueError(f"duration {short(text)} is too long") from None


def _format_duration(duration: timedelta) -> str:
    remaining = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_duration(text: str) -> timedelta:
    """The duration written as ``text``: numbers with units ``h``, ``m``, ``s``, ``ms``, ``us``.

    ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"``, ``"1m30s"``, ``"1.5s"`` and ``"0"`` are
    durations (Go's ``time.ParseDuration`` syntax, without signs). Raises :class:`StrategyError`
    for anything else, including a number without a unit.
    """
    if not isinstance(text, str):
        raise StrategyError("invalid duration", problems=[("", "must be a string")])
    try:
        return _parse_duration(text)
    except ValueError as exc:
        raise StrategyError("invalid duration", problems=[("", str(exc))]) from None


def format_duration(duration: timedelta) -> str:
    """The canonical text of ``duration`` (``"1m30s"``, ``"250ms"``, ``"0s"``).

    :func:`parse_duration` reads it back to the same ``timedelta``. Raises
    :class:`StrategyError` for a negative duration.
    """
    if not isinstance(duration, timedelta) or duration < timedelta(0):
        raise StrategyError(
            "invalid duration", problems=[("", "must be a duration (timedelta) >= 0")]
        )
    return _format_duration(duration)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@attrs.frozen
class FunctionVersion:
    """One version of a function: its folder in the function archive and its runtime."""

    path: str
    env: Env

    def to_mapping(self) -> dict[str, Any]:
        """The version as the document writes it: ``{path, env}``."""
        return {"path": str(self.path), "env": str(self.env)}


@attrs.frozen
class Function:
    """A public function and the two versions a release moves it between."""

    name: str
    base_version: FunctionVersion
    new_version: FunctionVersion

    def version(self, variant: VariantName | str) -> FunctionVersion:
        """The version a variant (``base_version`` or ``new_version``) names.

        Raises :class:`~release_coordinator.errors.NotFoundError` for any other name.
        """
        if variant == VariantName.BASE_VERSION:
            return self.base_version
        if variant == VariantName.NEW_VERSION:
            return self.new_version
        raise NotFoundError("function version", variant)

    def to_mapping(self) -> dict[str, Any]:
        """The function as the document writes it."""
        return {
            "name": str(self.name),
            "base_version": self.base_version.to_mapping(),
            "new_version": self.new_version.to_mapping(),
        }


@attrs.frozen
class Variant:
    """The share of a stage's traffic (whole percent) that one version receives."""

    name: VariantName
    traffic_percentage: int

    def to_mapping(self) -> dict[str, Any]:
        """The variant as the document writes it: ``{name, trafficPercentage}``."""
        return {"name": str(self.name), "trafficPercentage": int(self.traffic_percentage)}


@attrs.frozen
class MetricCondition:
    """A condition the new version must meet for the stage to succeed.

    ``errorRate`` is a rate in 0..1 and takes no ``compare_with``; ``responseTime`` is in
    milliseconds and needs ``compare_with`` (which summary of the times is judged).
    """

    name: MetricName
    threshold: Threshold
    compare_with: CompareWith | None = None

    def to_mapping(self) -> dict[str, Any]:
        """The condition as the document writes it (``compareWith`` only when set)."""
        out: dict[str, Any] = {"name": str(self.name), "threshold": str(self.threshold)}
        if self.compare_with is not None:
            out["compareWith"] = str(self.compare_with)
        return out


@attrs.frozen
class EndCondition:
    """What a stage must have seen before it ends.

    ``minCalls`` carries an ``int`` >= 0 (calls); ``minDuration`` a ``timedelta`` >= 0.
    """

    name: EndConditionName
    threshold: int | timedelta

    def to_mapping(self) -> dict[str, Any]:
        """The condition as the document writes it (the threshold always as a string)."""
        if isinstance(self.threshold, timedelta):
            text = _format_duration(self.threshold)
        else:
            text = str(int(self.threshold))
        return {"name": str(self.name), "threshold": text}


@attrs.frozen
class EndAction:
    """What follows a stage: ``rollout``, ``rollback`` or the name of another stage."""

    on_success: str
    on_failure: str

    def next_stage(self, success: bool) -> str | None:
        """The name of the stage that follows, or None when the release ends here."""
        target = self.on_success if success else self.on_failure
        return None if target in _FINAL_ACTIONS else target

    def to_mapping(self) -> dict[str, Any]:
        """The end action as the document writes it: ``{onSuccess, onFailure}``."""
        return {"onSuccess": str(self.on_success), "onFailure": str(self.on_failure)}


_FINAL_ACTIONS: Final = frozenset(a.value for a in FinalAction)


@attrs.frozen
class Stage:
    """One step of a release: a traffic split for one function, judged and then ended."""

    name: str
    type: StageType
    func_name: str
    variants: tuple[Variant, ...]
    metrics_conditions: tuple[MetricCondition, ...]
    end_conditions: tuple[EndCondition, ...]
    end_action: EndAction

    @property
    def min_calls(self) -> int:
        """The ``minCalls`` end condition, 0 when there is none."""
        for condition in self.end_conditions:
            if condition.name == EndConditionName.MIN_CALLS:
                return int(cast(int, condition.threshold))
        return 0

    @property
    def min_duration(self) -> timedelta:
        """The ``minDuration`` end condition, zero when there is none."""
        for condition in self.end_conditions:
            if condition.name == EndConditionName.MIN_DURATION:
                return cast(timedelta, condition.threshold)
        return timedelta(0)

    def to_mapping(self) -> dict[str, Any]:
        """The stage as the document writes it."""
        return {
            "name": str(self.name),
            "type": str(self.type),
            "func_name": str(self.func_name),
            "variants": [v.to_mapping() for v in self.variants],
            "metrics_conditions": [c.to_mapping() for c in self.metrics_conditions],
            "end_conditions": [c.to_mapping() for c in self.end_conditions],
            "end_action": self.end_action.to_mapping(),
        }


@attrs.frozen
class Rollback:
    """What a roll-back returns to: ``rollback: {action: {function: base_version}}``."""

    function: VariantName

    def to_mapping(self) -> dict[str, Any]:
        """The roll-back as the document writes it."""
        return {"action": {"function": str(self.function)}}


@attrs.frozen
class Strategy:
    """A release strategy: the functions it changes, its stages (the first runs first) and
    what a roll-back returns to. ``id`` equals the release id."""

    id: str
    name: str
    type: str
    functions: tuple[Function, ...]
    stages: tuple[Stage, ...]
    rollback: Rollback

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; :class:`~release_coordinator.errors.NotFoundError` if none."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise NotFoundError("stage", name)

    def function(self, name: str) -> Function:
        """The function called ``name``; :class:`~release_coordinator.errors.NotFoundError` if
        none."""
        for function in self.functions:
            if function.name == name:
                return function
        raise NotFoundError("function", name)

    @property
    def first_stage(self) -> Stage:
        """The stage a child starts with."""
        if not self.stages:
            raise NotFoundError("stage", "<first>")
        return self.stages[0]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The names of the stages, in document order."""
        return tuple(stage.name for stage in self.stages)

    @property
    def wait_for_signal_stages(self) -> tuple[Stage, ...]:
        """The stages of type ``WaitForSignal``, in document order."""
        return tuple(s for s in self.stages if s.type == StageType.WAIT_FOR_SIGNAL)

    def version_paths(self) -> tuple[str, ...]:
        """Every archive folder the strategy names, once each, in document order."""
        seen: dict[str, None] = {}
        for function in self.functions:
            seen.setdefault(function.base_version.path)
            seen.setdefault(function.new_version.path)
        return tuple(seen)

    def to_mapping(self) -> dict[str, Any]:
        """The strategy as plain data in the document's key names and order.

        The strategy is assumed valid (:func:`dump_strategy` checks it first).
        """
        return {
            "id": str(self.id),
            "name": str(self.name),
            "type": str(self.type),
            "functions": [f.to_mapping() for f in self.functions],
            "stages": [s.to_mapping() for s in self.stages],
            "rollback": self.rollback.to_mapping(),
        }


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _refuse(message: str) -> StrategyError:
    return StrategyError("invalid release strategy", problems=[("", message)])


class _Invalid:
    """Stands in a partly decoded strategy for a value already reported as a problem."""

    def __repr__(self) -> str:
        return "<invalid>"


#: The decoder puts this where a value could not be decoded; the rules skip it.
_INVALID: Final[Any] = _Invalid()


# --------------------------------------------------------------------------------------------
# The rules (one set, for parsed and Python-built strategies)
# --------------------------------------------------------------------------------------------


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


class _Rules:
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
        if value is _INVALID:
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
        if value is _INVALID:
            return None
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        allowed = ", ".join(repr(m.value) for m in kind)
        self.add(path, f"{short(value)} is not a {what}; expected one of {allowed}")
        return None

    def items(
        self, value: object, path: str, kind: type[_T], what: str
    ) -> list[tuple[int, _T]] | None:
        """The well-typed items of the tuple ``value`` with their index, else None."""
        if value is _INVALID:
            return None
        if not isinstance(value, tuple):
            self.add(path, f"must be a tuple of {what}, not {kind_of(value)}")
            return None
        if len(value) > MAX_LIST_ITEMS:
            self.add(path, _too_many(len(value)))
            return None
        found: list[tuple[int, _T]] = []
        for index, item in enumerate(value):
            if item is _INVALID:
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
        if value is _INVALID:
            return
        if not isinstance(value, FunctionVersion):
            self.add(path, f"must be a FunctionVersion, not {kind_of(value)}")
            return
        folder = self.text(value.path, f"{path}.path")
        if folder is not None:
            problem = _version_path_problem(folder)
            if problem is not None:
                self.add(f"{path}.path", problem)
            elif self.available is not None and folder not in self.available:
                self.add(f"{path}.path", f"folder {short(folder)} is not in the function archive")
        self.choice(value.env, f"{path}.env", Env, "runtime")

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
            elif name in _FINAL_ACTIONS:
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
            if share is _INVALID:
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
            if compare is _INVALID or name is None:
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
        if value is _INVALID:
            return
        if not isinstance(value, Threshold):
            self.add(path, f"must be a Threshold such as '<=0.01', not {kind_of(value)}")
            return
        if value.op not in OPERATORS:
            self.add(path, f"operator {short(value.op)} is not one of <, <=, >, >=, =")
        number = value.value
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
            if threshold is _INVALID:
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
        action = stage.end_action
        if action is _INVALID:
            return None
        if not isinstance(action, EndAction):
            self.add(path, f"must be an EndAction, not {kind_of(action)}")
            return None
        targets: list[tuple[str, str]] | None = []
        for key, target in (("onSuccess", action.on_success), ("onFailure", action.on_failure)):
            text = self.text(target, f"{path}.{key}")
            if text is None:
                targets = None
                continue
            if text in _FINAL_ACTIONS:
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
        if value is _INVALID:
            return
        if not isinstance(value, Rollback):
            self.add("rollback", f"must be a Rollback, not {kind_of(value)}")
            return
        self.choice(value.function, "rollback.action.function", VariantName, "version name")


def _too_many(count: int) -> str:
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
    _Rules(problems, available_paths).strategy(strategy)
    problems.raise_if_any("invalid release strategy", StrategyError)


# --------------------------------------------------------------------------------------------
# Decoding (plain data -> records); shape only, the rules above do the rest
# --------------------------------------------------------------------------------------------

_STRATEGY_KEYS: Final = ("id", "name", "type", "functions", "stages", "rollback")
_FUNCTION_KEYS: Final = ("name", "base_version", "new_version")
_VERSION_KEYS: Final = ("path", "env")
_STAGE_KEYS: Final = (
    "name",
    "type",
    "func_name",
    "variants",
    "metrics_conditions",
    "end_conditions",
    "end_action",
)
_VARIANT_KEYS: Final = ("name", "trafficPercentage")
_METRIC_KEYS: Final = ("name", "threshold", "compareWith")
_END_CONDITION_KEYS: Final = ("name", "threshold")
_END_ACTION_KEYS: Final = ("onSuccess", "onFailure")
_ROLLBACK_KEYS: Final = ("action",)
_ROLLBACK_ACTION_KEYS: Final = ("function",)
_CALLS_RE: Final = re.compile(r"\s*(\d{1,20})\s*", re.ASCII)


def _member(kind: type[_E], value: Any) -> Any:
    """The member of ``kind`` named by ``value``, or ``value`` itself for the rules to refuse."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return value
    return value


class _Decoder:
    """Turns decoded YAML into (possibly partial) records, recording shape problems."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def add(self, path: str, message: str) -> None:
        self.problems.add(path, message)

    def mapping(
        self, value: Any, path: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """The known keys of the mapping ``value`` (missing ones as _INVALID), else None."""
        if value is _INVALID:
            return None
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, not {kind_of(value)}")
            return None
        for key in value:
            if isinstance(key, str) and key in keys:
                continue
            shown = key if isinstance(key, str) else short(key)
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, keys, n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
            self.add(
                _join(path, shown),
                f"unknown key{hint}; expected one of {', '.join(keys)}",
            )
        out: dict[str, Any] = {}
        for key in keys:
            if key in value:
                out[key] = value[key]
            elif key in optional:
                out[key] = None
            else:
                self.add(_join(path, key), "required key is missing")
                out[key] = _INVALID
        return out

    def listed(self, value: Any, path: str, item: Callable[[Any, str], Any]) -> Any:
        """A tuple of the decoded items of the list ``value``, else _INVALID."""
        if value is _INVALID:
            return _INVALID
        if not isinstance(value, list):
            self.add(path, f"must be a list, not {kind_of(value)}")
            return _INVALID
        if len(value) > MAX_LIST_ITEMS:
            self.add(path, _too_many(len(value)))
            return _INVALID
        return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))

    def strategy(self, value: Any) -> Strategy | None:
        if value is None:
            self.add("", "the document is empty; expected a mapping")
            return None
        m = self.mapping(value, "", _STRATEGY_KEYS)
        if m is None:
            return None
        ident = m["id"]
        if isinstance(ident, int) and not isinstance(ident, bool):
            ident = str(ident)
        return Strategy(
            id=ident,
            name=m["name"],
            type=m["type"],
            functions=self.listed(m["functions"], "functions", self.function),
            stages=self.listed(m["stages"], "stages", self.stage),
            rollback=self.rollback(m["rollback"]),
        )

    def function(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _FUNCTION_KEYS)
        if m is None:
            return _INVALID
        return Function(
            name=m["name"],
            base_version=self.version(m["base_version"], f"{path}.base_version"),
            new_version=self.version(m["new_version"], f"{path}.new_version"),
        )

    def version(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _VERSION_KEYS)
        if m is None:
            return _INVALID
        return FunctionVersion(path=m["path"], env=_member(Env, m["env"]))

    def stage(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _STAGE_KEYS)
        if m is None:
            return _INVALID
        return Stage(
            name=m["name"],
            type=_member(StageType, m["type"]),
            func_name=m["func_name"],
            variants=self.listed(m["variants"], f"{path}.variants", self.variant),
            metrics_conditions=self.listed(
                m["metrics_conditions"], f"{path}.metrics_conditions", self.metric
            ),
            end_conditions=self.listed(
                m["end_conditions"], f"{path}.end_conditions", self.end_condition
            ),
            end_action=self.end_action(m["end_action"], f"{path}.end_action"),
        )

    def variant(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _VARIANT_KEYS)
        if m is None:
            return _INVALID
        return Variant(
            name=_member(VariantName, m["name"]), traffic_percentage=m["trafficPercentage"]
        )

    def metric(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _METRIC_KEYS, optional=("compareWith",))
        if m is None:
            return _INVALID
        return MetricCondition(
            name=_member(MetricName, m["name"]),
            threshold=self.threshold(m["threshold"], f"{path}.threshold"),
            compare_with=_member(CompareWith, m["compareWith"]),
        )

    def threshold(self, value: Any, path: str) -> Any:
        if value is _INVALID:
            return _INVALID
        if not isinstance(value, str):
            self.add(path, f"must be a string such as '<=0.01', not {kind_of(value)}")
            return _INVALID
        try:
            return _parse_threshold(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return _INVALID

    def end_condition(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _END_CONDITION_KEYS)
        if m is None:
            return _INVALID
        name = _member(EndConditionName, m["name"])
        threshold = m["threshold"]
        if isinstance(threshold, str):
            if name is EndConditionName.MIN_CALLS:
                match = _CALLS_RE.fullmatch(threshold)
                if match is None:
                    self.add(
                        f"{path}.threshold",
                        f"{short(threshold)} is not a whole number of calls such as '200'",
                    )
                    threshold = _INVALID
                else:
                    threshold = int(match.group(1))
            elif name is EndConditionName.MIN_DURATION:
                try:
                    threshold = _parse_duration(threshold)
                except ValueError as exc:
                    self.add(f"{path}.threshold", str(exc))
                    threshold = _INVALID
        return EndCondition(name=name, threshold=threshold)

    def end_action(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _END_ACTION_KEYS)
        if m is None:
            return _INVALID
        return EndAction(on_success=m["onSuccess"], on_failure=m["onFailure"])

    def rollback(self, value: Any) -> Any:
        m = self.mapping(value, "rollback", _ROLLBACK_KEYS)
        if m is None:
            return _INVALID
        action = self.mapping(m["action"], "rollback.action", _ROLLBACK_ACTION_KEYS)
        if action is None:
            return _INVALID
        return Rollback(function=_member(VariantName, action["function"]))


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_strategy_mapping(obj: Any, *, available_paths: Collection[str] | None = None) -> Strategy:
    """The strategy held by already-decoded data (dicts, lists, strings, numbers).

    Applies the same checks as :func:`parse_strategy` and raises one
    :class:`~release_coordinator.errors.StrategyError` listing every problem.
    """
    problems = Problems()
    strategy = _Decoder(problems).strategy(obj)
    if strategy is not None:
        _Rules(problems, available_paths).strategy(strategy)
    problems.raise_if_any("invalid release strategy", StrategyError)
    assert strategy is not None
    return strategy


def _yaml_problem(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = exc.problem or exc.context or "malformed"
        return f"not valid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, RecursionError):
        return "not valid YAML: nested too deeply"
    return f"not valid YAML: {short(str(exc))}"


def parse_strategy(
    text: str | bytes,
    *,
    available_paths: Collection[str] | None = None,
    max_bytes: int = 256 * 1024,
) -> Strategy:
    """The strategy written in the YAML document ``text`` (str, or UTF-8 bytes).

    The document is read with ``yaml.safe_load`` and must be at most ``max_bytes`` bytes long.
    ``available_paths`` are the version folders of the release's function archive; when given,
    every version path must be one of them. Anything wrong (not YAML, not a mapping, a missing
    or unknown key, a wrong type, a broken rule of the protocol) raises one
    :class:`~release_coordinator.errors.StrategyError` whose ``problems`` list every problem
    with its path; no other exception escapes for bad input.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        if len(data) > max_bytes:
            raise _refuse(f"the document has {len(data)} bytes, more than {max_bytes}")
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    elif isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise _refuse(f"the document has {size} bytes, more than {max_bytes}")
        decoded = text
    else:
        raise _refuse(f"expected YAML text (str or bytes), not {type(text).__name__}")
    try:
        obj = yaml.safe_load(decoded)
    except Exception as exc:  # PyYAML also raises ValueError etc. on odd scalars
        raise _refuse(_yaml_problem(exc)) from None
    return parse_strategy_mapping(obj, available_paths=available_paths)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding Unicode line breaks.

    PyYAML would write U+0085 (NEL) raw inside a single-quoted scalar, where reading folds it to
    a space; in double quotes it is escaped and survives.
    """


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if any(ch in data for ch in "\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_str(data)


_Dumper.add_representer(str, _represent_str)


def dump_strategy(strategy: Strategy) -> str:
    """The YAML document of a valid strategy, keys in the protocol's names and order.

    ``parse_strategy(dump_strategy(s)) == s``. The strategy is validated first, so an invalid
    one raises :class:`~release_coordinator.errors.StrategyError` instead of being written.
    """
    validate_strategy(strategy)
    out = yaml.dump(
        strategy.to_mapping(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )
    return str(out)
