"""The GeoJSON parser of areas: untrusted JSON to a valid shapely Polygon or MultiPolygon.

:func:`parse_geojson` checks a decoded GeoJSON value (a ``Polygon``, a ``MultiPolygon`` or a
``Feature`` carrying one) and raises one :class:`~release_coordinator.errors.GeoJSONError`
listing every problem with its path; :meth:`release_coordinator.rollout.geo.Area.from_geojson`
wraps its result. The decisions it takes (positions of 2 or 3 numbers, closed rings, at most
:data:`MAX_POSITIONS` positions, validity by shapely) are listed in
:mod:`release_coordinator.rollout.geo`.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.validation import explain_validity

from release_coordinator.errors import GeoJSONError
from release_coordinator.problems import Problems

__all__ = ["MAX_POSITIONS", "parse_geojson"]

MAX_POSITIONS: Final = 100_000
"""Default limit on the number of positions of one area."""

_KINDS: Final = ("Polygon", "MultiPolygon")
_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4
_repr.maxlevel = 2


def _describe(value: object) -> str:
    """A short name of a JSON value's kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return f"the string {_repr.repr(value)}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))


def _looks_like_position(value: object) -> bool:
    """A list of 2 or 3 numbers: used to spot coordinates nested one level too shallow."""
    return (
        isinstance(value, (list, tuple))
        and 2 <= len(value) <= 3
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )


_SHALLOW: Final = "(one level of [] missing?)"


class _PositionBudget:
    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit


class _TooManyPositionsError(Exception):
    """Internal: the position budget ran out; turned into one problem by the caller."""


def _parse_number(value: object) -> float | str:
    """The value as a finite float, or a message saying why it is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"expected a number, got {_describe(value)}"
    try:
        number = float(value)
    except (ArithmeticError, ValueError, TypeError):
        return "number is too large"
    if not math.isfinite(number):
        return f"expected a finite number, got {number!r}"
    return number


def _parse_position(value: object, path: str, problems: Problems) -> tuple[float, float] | None:
    if not _is_list(value):
        problems.add(path, f"expected a position [longitude, latitude], got {_describe(value)}")
        return None
    assert isinstance(value, (list, tuple))
    if len(value) < 2:
        problems.add(
            path, f"a position needs 2 numbers [longitude, latitude], got {len(value)} item(s)"
        )
        return None
    if len(value) > 3:
        problems.add(
            path,
            f"a position has at most 3 numbers [longitude, latitude, altitude], got {len(value)}",
        )
        return None
    parsed: list[float] = []
    ok = True
    for label, item in zip(("longitude", "latitude", "altitude"), value, strict=False):
        number = _parse_number(item)
        if isinstance(number, str):
            problems.add(path, f"{label}: {number}")
            ok = False
        else:
            parsed.append(number)
    if not ok:
        return None
    lon, lat = parsed[0], parsed[1]
    if not -180.0 <= lon <= 180.0:
        problems.add(path, f"longitude {lon!r} is outside [-180, 180]")
        ok = False
    if not -90.0 <= lat <= 90.0:
        problems.add(path, f"latitude {lat!r} is outside [-90, 90]")
        ok = False
    return (lon, lat) if ok else None


def _parse_ring(
    value: object, path: str, problems: Problems, budget: _PositionBudget
) -> list[tuple[float, float]] | None:
    if not _is_list(value):
        problems.add(path, f"expected a linear ring (a list of positions), got {_describe(value)}")
        return None
    assert isinstance(value, (list, tuple))
    if _looks_like_position(value):
        problems.add(path, f"expected a linear ring, got a single position {_SHALLOW}")
        return None
    budget.left -= len(value)
    if budget.left < 0:
        raise _TooManyPositionsError
    positions: list[tuple[float, float]] = []
    ok = True
    for j, item in enumerate(value):
        position = _parse_position(item, f"{path}[{j}]", problems)
        if position is None:
            ok = False
        else:
            positions.append(position)
    if len(value) < 4:
        problems.add(path, f"a linear ring needs at least 4 positions, got {len(value)}")
        ok = False
    if ok and positions[0] != positions[-1]:
        problems.add(
            path,
            f"linear ring is not closed: the first position {list(positions[0])} differs "
            f"from the last {list(positions[-1])}",
        )
        ok = False
    return positions if ok else None


_P = TypeVar("_P")


def _parse_list(
    value: object,
    path: str,
    problems: Problems,
    budget: _PositionBudget,
    parse_item: Callable[[object, str, Problems, _PositionBudget], _P | None],
    *,
    items: str,
    empty: str,
    single: str,
    depth: int,
) -> list[_P] | None:
    """The parsed items of the list ``value`` of ``items`` (rings, polygons), or None.

    ``empty`` is the problem of an empty list; ``single`` names what ``value`` is when its
    item ``depth`` levels down (``value[0]``, ``value[0][0]``) is a position: one level of
    nesting too shallow. Every item is parsed, so that every problem is recorded.
    """
    if not _is_list(value):
        problems.add(path, f"expected a list of {items}, got {_describe(value)}")
        return None
    assert isinstance(value, (list, tuple))
    if not value:
        problems.add(path, empty)
        return None
    probe: object = value[0]
    for _ in range(depth - 1):
        probe = probe[0] if isinstance(probe, (list, tuple)) and probe else None
    if _looks_like_position(probe):
        problems.add(path, f"expected a list of {items}, got a single {single} {_SHALLOW}")
        return None
    parsed: list[_P] = []
    ok = True
    for i, item in enumerate(value):
        part = parse_item(item, f"{path}[{i}]", problems, budget)
        if part is None:
            ok = False
        else:
            parsed.append(part)
    return parsed if ok else None


def _parse_polygon(
    value: object, path: str, problems: Problems, budget: _PositionBudget
) -> Polygon | None:
    """Structure checks, then shapely's validity check, of one polygon's coordinates."""
    rings = _parse_list(
        value,
        path,
        problems,
        budget,
        _parse_ring,
        items="linear rings",
        empty="empty polygon: it has no linear ring",
        single="ring",
        depth=1,
    )
    if rings is None:
        return None
    try:
        polygon = Polygon(rings[0], rings[1:])
    except (ValueError, TypeError, shapely.errors.ShapelyError) as exc:  # pragma: no cover
        problems.add(path, f"not a polygon: {exc}")
        return None
    if not polygon.is_valid:
        problems.add(path, f"invalid polygon: {explain_validity(polygon)}")
        return None
    if polygon.is_empty or not polygon.area > 0.0:
        problems.add(path, "empty polygon: it encloses no area")
        return None
    return polygon


def _parse_multipolygon(
    value: object, path: str, problems: Problems, budget: _PositionBudget
) -> MultiPolygon | None:
    parts = _parse_list(
        value,
        path,
        problems,
        budget,
        _parse_polygon,
        items="polygons",
        empty="empty multipolygon: it has no polygon",
        single="polygon",
        depth=2,
    )
    if parts is None:
        return None
    multipolygon = MultiPolygon(parts)
    if not multipolygon.is_valid:
        problems.add(
            path, f"invalid multipolygon (overlapping parts?): {explain_validity(multipolygon)}"
        )
        return None
    return multipolygon


def parse_geojson(
    obj: object, *, path: str = "geographic_area", max_positions: int = MAX_POSITIONS
) -> Polygon | MultiPolygon:
    """The valid geometry of an untrusted GeoJSON value, as sent (not yet re-oriented).

    The checks and problems of :meth:`release_coordinator.rollout.geo.Area.from_geojson`, which
    re-orients the result; raises :class:`GeoJSONError` and nothing else.
    """
    problems = Problems()
    message = "invalid geographic area"
    if not isinstance(obj, Mapping):
        problems.add(path, f"expected a GeoJSON Polygon or MultiPolygon, got {_describe(obj)}")
        problems.raise_if_any(message, GeoJSONError)
    assert isinstance(obj, Mapping)
    try:
        kind = obj.get("type")
        if kind == "Feature":
            geometry = obj.get("geometry")
            path = f"{path}.geometry"
            if not isinstance(geometry, Mapping):
                problems.add(
                    path,
                    "a Feature must carry a Polygon or MultiPolygon geometry, "
                    f"got {_describe(geometry)}",
                )
                problems.raise_if_any(message, GeoJSONError)
            assert isinstance(geometry, Mapping)
            obj = geometry
            kind = obj.get("type")
        coordinates = obj.get("coordinates")
        has_coordinates = "coordinates" in obj
    except GeoJSONError:
        raise
    except Exception as exc:  # a hostile Mapping implementation
        raise GeoJSONError(message, [(path, f"cannot read the object: {exc}")]) from None

    if kind is None:
        problems.add(f"{path}.type", "missing; expected 'Polygon' or 'MultiPolygon'")
    elif not isinstance(kind, str) or kind not in _KINDS:
        problems.add(
            f"{path}.type",
            f"expected 'Polygon' or 'MultiPolygon', got {_repr.repr(kind)}",
        )
    cpath = f"{path}.coordinates"
    if not has_coordinates:
        problems.add(cpath, "missing")
    problems.raise_if_any(message, GeoJSONError)

    budget = _PositionBudget(max_positions)
    geometry_out: Polygon | MultiPolygon | None = None
    try:
        if kind == "Polygon":
            geometry_out = _parse_polygon(coordinates, cpath, problems, budget)
        else:
            geometry_out = _parse_multipolygon(coordinates, cpath, problems, budget)
    except _TooManyPositionsError:
        problems.add(cpath, f"too many positions: at most {budget.limit} are accepted")
    except RecursionError:  # pragma: no cover - nesting depth is fixed, kept as a guard
        problems.add(cpath, "coordinates are nested too deeply")
    problems.raise_if_any(message, GeoJSONError)
    if geometry_out is None:  # pragma: no cover - every None path records a problem
        raise GeoJSONError(message, [(cpath, "not a polygon")])
    return geometry_out
