"""Collecting the problems of one untrusted input, and describing untrusted values in them.

Every parser of untrusted input (strategies, areas, archives, result bodies) lists *every*
problem it finds with its path, in one :class:`~release_coordinator.errors.ValidationError`.
:class:`Problems` collects them, keeping the first :data:`MAX_PROBLEMS` so that a hostile input
cannot make the error unbounded; :func:`short` and :func:`kind` describe a value in a message
without echoing it whole.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping

from release_coordinator.errors import Problem, ValidationError

__all__ = ["MAX_PROBLEMS", "Problems", "kind", "short"]

#: The most problems one error lists; the rest are counted in a last entry.
MAX_PROBLEMS = 100


class Problems:
    """Collects ``(path, message)`` problems, keeping the first :data:`MAX_PROBLEMS`."""

    __slots__ = ("dropped", "items")

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.dropped = 0

    def add(self, path: str, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append((path, message))
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def count(self) -> int:
        """Every problem found, kept or dropped (grows with each :meth:`add`)."""
        return len(self.items) + self.dropped

    def listed(self) -> list[Problem]:
        """The problems kept, and a last ``("", "N further problem(s) not listed")`` entry
        when some were dropped."""
        if not self.dropped:
            return list(self.items)
        return [*self.items, ("", f"{self.dropped} further problem(s) not listed")]

    def raise_if_any(
        self, message: str, error: Callable[[str, list[Problem]], ValidationError] = ValidationError
    ) -> None:
        """Raise ``error(message, problems)`` when any problem was found."""
        if self.items:
            raise error(message, self.listed())


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlevel = 2


def short(value: object) -> str:
    """A short, safe repr of an untrusted value (bounded, whatever its size or depth)."""
    return _repr.repr(value)


def kind(value: object) -> str:
    """What a decoded JSON/YAML value is, in words: ``"a string"``, ``"an object"`` ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
