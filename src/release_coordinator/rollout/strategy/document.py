"""The release strategy document: YAML text and plain data to records, and records to YAML.

:class:`_Decoder` turns decoded YAML into (possibly partial) records, recording the shape
problems (a missing or unknown key, a wrong type, an unparsable threshold or duration);
:func:`parse_strategy_mapping` then applies the rules of
:mod:`release_coordinator.rollout.strategy.rules` and raises one
:class:`~release_coordinator.errors.StrategyError`; :func:`parse_strategy` reads the YAML
text first, and :func:`dump_strategy` writes a valid strategy back. Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Collection
from typing import Any, Final, TypeVar

import yaml

from release_coordinator.errors import StrategyError
from release_coordinator.problems import Problems, short
from release_coordinator.problems import kind as kind_of
from release_coordinator.rollout.strategy.records import (
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
    Variant,
    VariantName,
    parse_duration_text,
    parse_threshold_text,
)
from release_coordinator.rollout.strategy.rules import INVALID, Rules, too_many, validate_strategy

__all__ = ["dump_strategy", "parse_strategy", "parse_strategy_mapping"]

_E = TypeVar("_E", bound=enum.StrEnum)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _refuse(message: str) -> StrategyError:
    return StrategyError("invalid release strategy", problems=[("", message)])


# --------------------------------------------------------------------------------------------
# Decoding (plain data -> records); shape only, the rules do the rest
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
        """The known keys of the mapping ``value`` (missing ones as INVALID), else None."""
        if value is INVALID:
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
                out[key] = INVALID
        return out

    def listed(self, value: Any, path: str, item: Callable[[Any, str], Any]) -> Any:
        """A tuple of the decoded items of the list ``value``, else INVALID."""
        if value is INVALID:
            return INVALID
        if not isinstance(value, list):
            self.add(path, f"must be a list, not {kind_of(value)}")
            return INVALID
        if len(value) > MAX_LIST_ITEMS:
            self.add(path, too_many(len(value)))
            return INVALID
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
            return INVALID
        return Function(
            name=m["name"],
            base_version=self.version(m["base_version"], f"{path}.base_version"),
            new_version=self.version(m["new_version"], f"{path}.new_version"),
        )

    def version(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _VERSION_KEYS)
        if m is None:
            return INVALID
        return FunctionVersion(path=m["path"], env=_member(Env, m["env"]))

    def stage(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _STAGE_KEYS)
        if m is None:
            return INVALID
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
            return INVALID
        return Variant(
            name=_member(VariantName, m["name"]), traffic_percentage=m["trafficPercentage"]
        )

    def metric(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _METRIC_KEYS, optional=("compareWith",))
        if m is None:
            return INVALID
        return MetricCondition(
            name=_member(MetricName, m["name"]),
            threshold=self.threshold(m["threshold"], f"{path}.threshold"),
            compare_with=_member(CompareWith, m["compareWith"]),
        )

    def threshold(self, value: Any, path: str) -> Any:
        if value is INVALID:
            return INVALID
        if not isinstance(value, str):
            self.add(path, f"must be a string such as '<=0.01', not {kind_of(value)}")
            return INVALID
        try:
            return parse_threshold_text(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return INVALID

    def end_condition(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _END_CONDITION_KEYS)
        if m is None:
            return INVALID
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
                    threshold = INVALID
                else:
                    threshold = int(match.group(1))
            elif name is EndConditionName.MIN_DURATION:
                try:
                    threshold = parse_duration_text(threshold)
                except ValueError as exc:
                    self.add(f"{path}.threshold", str(exc))
                    threshold = INVALID
        return EndCondition(name=name, threshold=threshold)

    def end_action(self, value: Any, path: str) -> Any:
        m = self.mapping(value, path, _END_ACTION_KEYS)
        if m is None:
            return INVALID
        return EndAction(on_success=m["onSuccess"], on_failure=m["onFailure"])

    def rollback(self, value: Any) -> Any:
        m = self.mapping(value, "rollback", _ROLLBACK_KEYS)
        if m is None:
            return INVALID
        action = self.mapping(m["action"], "rollback.action", _ROLLBACK_ACTION_KEYS)
        if action is None:
            return INVALID
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
        Rules(problems, available_paths).strategy(strategy)
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
