"""The records of a release strategy, its vocabulary, and the text forms of its scalars.

The frozen attrs classes (:class:`Strategy`, :class:`Function`, :class:`FunctionVersion`,
:class:`Stage`, :class:`Variant`, :class:`MetricCondition`, :class:`Threshold`,
:class:`EndCondition`, :class:`EndAction`, :class:`Rollback`) with their ``to_mapping`` forms,
the enums of the document's words, and the parsers and formatters of thresholds (``"<=0.01"``)
and durations (``"1m30s"``). The records do not validate themselves: see
:mod:`release_coordinator.rollout.strategy.rules`. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, Literal, TypeVar, cast

import attrs

from release_coordinator.errors import NotFoundError, StrategyError
from release_coordinator.problems import short

__all__ = [
    "FINAL_ACTIONS",
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
    "format_duration",
    "parse_duration",
    "parse_duration_text",
    "parse_threshold_text",
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

#: Thresholds and durations longer than this are refused without being parsed.
_MAX_SCALAR_TEXT: Final = 100
#: Threshold values with an integral magnitude below this are written without a fraction.
_PLAIN_INT_BELOW: Final = 1e16

_V = TypeVar("_V")

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


def _strictly(parse: Callable[[str], _V], text: object, message: str) -> _V:
    """``parse(text)`` for a public parser: a non-string or a ValueError is a StrategyError."""
    if not isinstance(text, str):
        raise StrategyError(message, problems=[("", "must be a string")])
    try:
        return parse(text)
    except ValueError as exc:
        raise StrategyError(message, problems=[("", str(exc))]) from None


def parse_threshold_text(text: str) -> Threshold:
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
        return _strictly(parse_threshold_text, text, "invalid threshold")

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


def parse_duration_text(text: str) -> timedelta:
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
    return _strictly(parse_duration_text, text, "invalid duration")


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
        return None if target in FINAL_ACTIONS else target

    def to_mapping(self) -> dict[str, Any]:
        """The end action as the document writes it: ``{onSuccess, onFailure}``."""
        return {"onSuccess": str(self.on_success), "onFailure": str(self.on_failure)}


FINAL_ACTIONS: Final = frozenset(a.value for a in FinalAction)


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
