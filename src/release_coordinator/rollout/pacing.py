"""Rate and time controls of a rollout's policy: a ramp, a maximum per minute, a scheduled
start, maintenance windows and a deadline (the ``pacing`` of every policy), and the next-poll
hints a manager gives its children.

Modelled on AWS IoT Jobs (``jobExecutionsRolloutConfig``: ``exponentialRate``,
``maximumPerMinute``; ``schedulingConfig``: ``startTime``, ``endTime``, ``endBehavior``,
``maintenanceWindows``), with windows written as days of the week, a start time and a duration
rather than as a cron expression, and every bad value refused with its path:

- :class:`Ramp`: at most ``start_per_minute`` children are offered the release in any 60
  seconds at first; every minute, while the share of the finished children that rolled out
  holds at ``success_threshold`` or above, the rate grows by ``factor`` (up to the pacing's
  ``max_per_minute``).
- ``max_per_minute``: never more than that many children offered in any 60 seconds.
- ``start_at`` (seconds since the epoch, UTC): a started rollout offers nothing before it.
- ``windows`` (:class:`Window`, UTC, weekly): outside every window nothing new is offered, and
  children offered it that have not fetched it yet are withdrawn at the first tick outside (they
  are offered it again in the next window). Children already running it carry on.
- ``deadline`` (seconds since the epoch, UTC) and ``on_deadline``: past the deadline nothing
  new is offered, and the rollout ends: ``stop`` (the default, IoT's ``STOP_ROLLOUT``): children
  offered it keep it and the rollout completes once they finished, the children not reached
  left out; ``cancel`` (``CANCEL``): children offered it that have not fetched it are
  withdrawn, those running it finish it; ``abort`` (``FORCE_CANCEL``): the rollout is aborted
  with the reason ``deadline passed`` (children running it roll back).

Times of the schedule are wall-clock times: the manager's clock when it is one (over a shared
store, or an injected clock, which must then count seconds since the epoch), else
``time.time``. The rate's 60 seconds are counted on the manager's clock.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from release_coordinator.errors import ConfigurationError, Problem, ValidationError

__all__ = [
    "MAX_WINDOWS",
    "DeadlineAction",
    "Pacing",
    "PollHints",
    "Ramp",
    "Window",
    "format_time",
    "pacing_json",
    "parse_pacing",
    "parse_time",
]

#: The most maintenance windows of a policy.
MAX_WINDOWS = 100
#: The latest time a schedule may name (9999-12-31T23:59:59Z); the earliest is the epoch.
MAX_TIME = 253402300799.0
WEEK = 7 * 86400.0
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EVERY_DAY = frozenset(range(7))

DeadlineAction = Literal["stop", "cancel", "abort"]
DEADLINE_ACTIONS: tuple[DeadlineAction, ...] = ("stop", "cancel", "abort")


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise ConfigurationError(f"{attribute.name} must be a positive integer, not {value!r}")


@attrs.frozen
class Ramp:
    """An exponential ramp (see the module documentation): ``start_per_minute`` children a
    minute at first, times ``factor`` every minute while the success share holds at
    ``success_threshold`` or above."""

    start_per_minute: int = attrs.field(validator=_positive_int)
    factor: float = 2.0
    success_threshold: float = 0.9

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.factor) and 1 < self.factor <= 100):
            raise ConfigurationError(f"factor must be within (1, 100], not {self.factor!r}")
        if not 0 < self.success_threshold <= 1:
            raise ConfigurationError(
                f"success_threshold must be within (0, 1], not {self.success_threshold!r}"
            )


def _day_set(days: Iterable[int]) -> frozenset[int]:
    return frozenset(days)


@attrs.frozen
class Window:
    """A weekly maintenance window, UTC: it opens ``start`` minutes after midnight on each of
    ``days`` (0 is Monday; all by default) and stays open ``duration`` seconds (at most a week;
    a window may run past midnight, into the next day)."""

    start: int
    duration: float
    days: frozenset[int] = attrs.field(default=_EVERY_DAY, converter=_day_set)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.start, bool) or not isinstance(self.start, int):
            raise ConfigurationError(f"start must be minutes after midnight, not {self.start!r}")
        if not 0 <= self.start < 1440:
            raise ConfigurationError(f"start must be within [0, 1440) minutes, not {self.start}")
        if not (math.isfinite(self.duration) and 0 < self.duration <= WEEK):
            raise ConfigurationError(
                f"duration must be within (0, {WEEK:g}] seconds, not {self.duration!r}"
            )
        if not self.days or any(d not in _EVERY_DAY for d in self.days):
            raise ConfigurationError(f"days must be some of 0 (Monday) to 6, not {self.days!r}")

    def _openings(self, at: float, back: int, ahead: int) -> list[float]:
        """The window's openings (seconds since the epoch) on the days around ``at``."""
        midnight = math.floor(at / 86400.0) * 86400.0
        weekday = dt.datetime.fromtimestamp(midnight, dt.UTC).weekday()
        return [
            midnight + k * 86400.0 + self.start * 60.0
            for k in range(-back, ahead + 1)
            if (weekday + k) % 7 in self.days
        ]

    def open_until(self, at: float) -> float | None:
        """When the window closes, if it is open at ``at``; else None."""
        ends = [o + self.duration for o in self._openings(at, 8, 0) if o <= at < o + self.duration]
        return max(ends) if ends else None

    def next_opening(self, at: float) -> float:
        """The first opening after ``at``."""
        return min(o for o in self._openings(at, 0, 8) if o > at)


def _window_tuple(windows: Iterable[Window]) -> tuple[Window, ...]:
    return tuple(windows)


@attrs.frozen
class Pacing:
    """A policy's rate and time controls (see the module documentation); the default paces
    nothing."""

    ramp: Ramp | None = None
    max_per_minute: int | None = None
    start_at: float | None = None
    windows: tuple[Window, ...] = attrs.field(default=(), converter=_window_tuple)
    deadline: float | None = None
    on_deadline: DeadlineAction = "stop"

    def __attrs_post_init__(self) -> None:
        if self.max_per_minute is not None:
            _positive_int(self, attrs.fields(Pacing).max_per_minute, self.max_per_minute)  # type: ignore[arg-type]
            if self.ramp is not None and self.ramp.start_per_minute > self.max_per_minute:
                raise ConfigurationError(
                    f"ramp.start_per_minute ({self.ramp.start_per_minute}) must not exceed "
                    f"max_per_minute ({self.max_per_minute})"
                )
        for name in ("start_at", "deadline"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_TIME:
                raise ConfigurationError(
                    f"{name} must be seconds since the epoch up to {MAX_TIME:.0f} "
                    f"(9999-12-31T23:59:59Z), not {value!r}"
                )
        if (
            self.start_at is not None
            and self.deadline is not None
            and not self.deadline > self.start_at
        ):
            raise ConfigurationError("deadline must be later than start_at")
        if len(self.windows) > MAX_WINDOWS:
            raise ConfigurationError(f"at most {MAX_WINDOWS} windows")
        if self.on_deadline not in DEADLINE_ACTIONS:
            raise ConfigurationError(
                f"on_deadline must be one of {', '.join(DEADLINE_ACTIONS)}, not "
                f"{self.on_deadline!r}"
            )

    @property
    def limits_rate(self) -> bool:
        return self.ramp is not None or self.max_per_minute is not None

    @property
    def is_set(self) -> bool:
        return self != NO_PACING

    def past_deadline(self, at: float) -> bool:
        return self.deadline is not None and at >= self.deadline

    def is_open(self, at: float) -> bool:
        """Whether something new may be offered at ``at`` (wall-clock): after the start,
        before the deadline, inside a window (if any)."""
        if self.start_at is not None and at < self.start_at:
            return False
        if self.past_deadline(at):
            return False
        return not self.windows or any(w.open_until(at) is not None for w in self.windows)

    def opens_at(self, at: float) -> float | None:
        """When something new may next be offered, from ``at`` on (``at`` itself if now);
        None if never again (the deadline comes first)."""
        if self.past_deadline(at):
            return None
        t = max(at, self.start_at) if self.start_at is not None else at
        if self.windows and not any(w.open_until(t) is not None for w in self.windows):
            t = min(w.next_opening(t) for w in self.windows)
        if self.deadline is not None and t >= self.deadline:
            return None
        return t


NO_PACING = Pacing()


class RateLimit:
    """The sliding 60 seconds of a rollout's rate (a ramp's, or a maximum per minute): how
    many more children may be offered now. Kept by the manager, in memory."""

    def __init__(self, pacing: Pacing, now: float) -> None:
        self.pacing = pacing
        ramp = pacing.ramp
        self.rate = float(ramp.start_per_minute if ramp else pacing.max_per_minute or 1)
        self.grown_at = now
        self.offers: collections.deque[tuple[float, int]] = collections.deque()

    @property
    def cap(self) -> float:
        return float(self.pacing.max_per_minute) if self.pacing.max_per_minute else math.inf

    def budget(self, now: float, success_share: float | None) -> int:
        """How many may be offered at ``now``; ``success_share``: of the finished children,
        the share that rolled out (None: none finished yet), which grows a ramp's rate."""
        ramp = self.pacing.ramp
        if ramp is not None and now - self.grown_at >= 60.0:
            self.grown_at = now
            if success_share is not None and success_share >= ramp.success_threshold:
                self.rate = min(self.cap, self.rate * ramp.factor)
        while self.offers and now - self.offers[0][0] >= 60.0:
            self.offers.popleft()
        return max(0, int(min(self.rate, self.cap)) - sum(n for _, n in self.offers))

    def exhausted(self, now: float) -> bool:
        """Whether nobody may be offered at ``now`` whatever the children did (no budget left,
        and a ramp's rate is not due to grow)."""
        if self.pacing.ramp is not None and now - self.grown_at >= 60.0:
            return False
        while self.offers and now - self.offers[0][0] >= 60.0:
            self.offers.popleft()
        return sum(n for _, n in self.offers) >= int(min(self.rate, self.cap))

    def spend(self, now: float, count: int) -> None:
        if count:
            self.offers.append((now, count))

    def frees_at(self) -> float | None:
        """When the oldest offer of the last 60 seconds leaves them (on the manager's clock)."""
        return self.offers[0][0] + 60.0 if self.offers else None


@attrs.frozen
class PollHints:
    """The next-poll hints (seconds) a manager gives in ``/poll`` answers (``next_poll``):
    ``busy`` for a child offered a release or running one, ``idle`` for the others, up to
    ``longest`` for a child whose rollouts all wait for a window or a scheduled start (until it
    opens)."""

    busy: float = 5.0
    idle: float = 30.0
    longest: float = 900.0

    def __attrs_post_init__(self) -> None:
        if not (0 < self.busy <= self.idle <= self.longest and math.isfinite(self.longest)):
            raise ConfigurationError(
                "poll hints must be finite and 0 < busy <= idle <= longest, not "
                f"{self.busy}, {self.idle}, {self.longest}"
            )


# -- as JSON -------------------------------------------------------------------------------------

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_FIELDS = {"ramp", "max_per_minute", "start_at", "windows", "deadline", "on_deadline"}
_RAMP_FIELDS = {"start_per_minute", "factor", "success_threshold"}
_WINDOW_FIELDS = {"days", "start", "duration"}
_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def format_time(at: float) -> str:
    """Seconds since the epoch as RFC 3339 text, UTC (``2026-12-03T12:00:00Z``)."""
    text = dt.datetime.fromtimestamp(at, dt.UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def parse_time(value: object) -> float | None:
    """RFC 3339 / ISO 8601 date and time (an offset, or ``Z``; none means UTC), or a number
    of seconds since the epoch; None if it is neither, or before the epoch, or after the year
    9999."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer past any float
            return None
        return number if 0 <= number <= MAX_TIME else None
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        at = parsed.timestamp()
    except (OverflowError, ValueError):  # (an offset past the year 9999)
        return None
    return at if 0 <= at <= MAX_TIME else None


def pacing_json(pacing: Pacing) -> dict[str, Any]:
    """A pacing as the API shows it (and :func:`parse_pacing` reads it back)."""
    ramp = pacing.ramp
    return {
        "ramp": None
        if ramp is None
        else {
            "start_per_minute": ramp.start_per_minute,
            "factor": ramp.factor,
            "success_threshold": ramp.success_threshold,
        },
        "max_per_minute": pacing.max_per_minute,
        "start_at": None if pacing.start_at is None else format_time(pacing.start_at),
        "windows": [
            {
                "days": [DAY_NAMES[d] for d in sorted(w.days)],
                "start": f"{w.start // 60:02d}:{w.start % 60:02d}",
                "duration": w.duration,
            }
            for w in pacing.windows
        ],
        "deadline": None if pacing.deadline is None else format_time(pacing.deadline),
        "on_deadline": pacing.on_deadline,
    }


def _number(value: object) -> float | None:
    """A JSON number as a finite float (None: not a number, a bool, infinite, or an integer
    past any float); the policies' parser reads its numbers with it too."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past any float
        return None
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        return None
    return value


def _day(value: object) -> int | None:
    if isinstance(value, str):
        name = value.strip().lower()
        if name in DAY_NAMES:
            return DAY_NAMES.index(name)
        if name in _LONG_DAYS:
            return _LONG_DAYS.index(name)
    return None


def _window(value: object, where: str, problems: list[Problem]) -> Window | None:
    if not isinstance(value, Mapping):
        problems.append((where, "must be an object with start (HH:MM, UTC) and duration"))
        return None
    before = len(problems)
    for key in value:
        if key not in _WINDOW_FIELDS:
            problems.append((f"{where}.{str(key)[:60]}", "is not a field of a window"))
    start = value.get("start")
    match = _TIME.match(start) if isinstance(start, str) else None
    if match is None:
        problems.append((f"{where}.start", "must be a time of day HH:MM (UTC), e.g. 02:30"))
    duration = _number(value.get("duration"))
    if duration is None or not 0 < duration <= WEEK:
        problems.append((f"{where}.duration", f"must be a number of seconds within (0, {WEEK:g}]"))
    days = value.get("days")
    numbers: set[int] = set(_EVERY_DAY)
    if days is not None:
        found = [_day(d) for d in days] if isinstance(days, list) and days else [None]
        if None in found:
            problems.append(
                (f"{where}.days", f"must be a non-empty list of days: {', '.join(DAY_NAMES)}")
            )
        else:
            numbers = {d for d in found if d is not None}
    if len(problems) > before or match is None or duration is None:
        return None
    return Window(int(match[1]) * 60 + int(match[2]), duration, frozenset(numbers))


def parse_pacing(value: object, path: str = "policy.pacing") -> Pacing:
    """A pacing from its JSON form (see :func:`pacing_json`); ValidationError listing every
    problem by path. ``null`` (or ``{}``) paces nothing."""
    if value is None:
        return NO_PACING
    if not isinstance(value, Mapping):
        raise ValidationError("invalid policy", [(path, "must be a JSON object or null")])
    problems: list[Problem] = []

    def refuse(where: str, message: str) -> None:
        problems.append((f"{path}.{where}", message))

    for key in value:
        if key not in _FIELDS:
            refuse(str(key)[:60], "is not a field of a pacing")
    options: dict[str, Any] = {}
    ramp = value.get("ramp")
    if ramp is not None:
        if not isinstance(ramp, Mapping):
            refuse("ramp", "must be an object: start_per_minute, factor, success_threshold")
        else:
            for key in ramp:
                if key not in _RAMP_FIELDS:
                    refuse(f"ramp.{str(key)[:60]}", "is not a field of a ramp")
            start = _int(ramp.get("start_per_minute"))
            if start is None:
                refuse("ramp.start_per_minute", "must be a positive integer")
            factor = _number(ramp.get("factor", 2.0))
            if factor is None or not 1 < factor <= 100:
                refuse("ramp.factor", "must be a number within (1, 100]")
            share = _number(ramp.get("success_threshold", 0.9))
            if share is None or not 0 < share <= 1:
                refuse("ramp.success_threshold", "must be a number within (0, 1]")
            if start is not None and factor is not None and share is not None:
                with_ramp = not any(p[0].startswith(f"{path}.ramp") for p in problems)
                if with_ramp:
                    options["ramp"] = Ramp(start, factor, share)
    if value.get("max_per_minute") is not None:
        most = _int(value["max_per_minute"])
        if most is None:
            refuse("max_per_minute", "must be a positive integer or null")
        else:
            options["max_per_minute"] = most
    for key in ("start_at", "deadline"):
        if value.get(key) is not None:
            at = parse_time(value[key])
            if at is None:
                refuse(
                    key,
                    "must be a date and time (RFC 3339, e.g. 2026-12-03T02:00:00Z, from 1970 to "
                    "9999) or null",
                )
            else:
                options[key] = at
    windows = value.get("windows")
    if windows is not None:
        if not isinstance(windows, list) or len(windows) > MAX_WINDOWS:
            refuse("windows", f"must be a list of at most {MAX_WINDOWS} windows")
        else:
            found = [_window(w, f"{path}.windows[{i}]", problems) for i, w in enumerate(windows)]
            options["windows"] = tuple(w for w in found if w is not None)
    action = value.get("on_deadline")
    if action is not None:
        if action not in DEADLINE_ACTIONS:
            refuse("on_deadline", f"must be one of {', '.join(DEADLINE_ACTIONS)}")
        else:
            options["on_deadline"] = action
    if problems:
        raise ValidationError("invalid policy", problems)
    try:
        return Pacing(**options)
    except ConfigurationError as error:  # the record's own checks (start before deadline, ...)
        raise ValidationError("invalid policy", [(path, error.message)]) from None
