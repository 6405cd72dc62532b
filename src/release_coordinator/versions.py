"""Semantic versions of data releases (task-service protocol, "Versions").

A new release gets the highest version known with the patch number raised; publishing promotes
a release to the next minor version above the highest known (next major when the release is
marked major). Because both derive from the highest version, and stores compute them under the
same lock or transaction (plus a uniqueness constraint in SQL), two releases never share one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from release_coordinator.errors import ValidationError

__all__ = ["INITIAL_VERSION", "Version", "next_release_version", "published_version"]

_VERSION = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")


@attrs.frozen(order=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text)
        if match is None:
            raise ValidationError(
                "not a semantic version", [("version", f"{text!r} is not MAJOR.MINOR.PATCH")]
            )
        return cls(*(int(g) for g in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


INITIAL_VERSION = Version(0, 0, 0)


def _highest(versions: Iterable[str]) -> Version:
    return max((Version.parse(v) for v in versions), default=INITIAL_VERSION)


def next_release_version(existing: Iterable[str]) -> str:
    """The version of a new release, given every version already held."""
    top = _highest(existing)
    return str(Version(top.major, top.minor, top.patch + 1))


def published_version(existing: Iterable[str], *, major: bool) -> str:
    """The version a release is promoted to when it is published."""
    top = _highest(existing)
    if major:
        return str(Version(top.major + 1, 0, 0))
    return str(Version(top.major, top.minor + 1, 0))
