"""The map of a simulated fleet: its regions (:class:`Region`, :func:`grid_regions`), and how
an area is cut into strips for relays and dotted with small squares for leaves."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import attrs
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError
from release_coordinator.rollout.geo import Area

__all__ = ["DEFAULT_BBOX", "Region", "grid_regions"]

#: The default map of a :class:`~release_coordinator.rollout.simulate.FleetConfig` (west, south,
#: east, north): Europe, roughly.
DEFAULT_BBOX: tuple[float, float, float, float] = (-10.0, 35.0, 30.0, 60.0)


def to_area(value: Area | Mapping[str, Any]) -> Area:
    """``value`` as an :class:`Area` (GeoJSON is parsed)."""
    return value if isinstance(value, Area) else Area.from_geojson(value, path="area")


@attrs.frozen
class Region:
    """A named area of the simulated map (GeoJSON or :class:`Area`)."""

    name: str
    area: Area = attrs.field(converter=to_area)


def grid_regions(
    count: int, bbox: tuple[float, float, float, float] = DEFAULT_BBOX
) -> tuple[Region, ...]:
    """``count`` rectangular regions ``r1``, ``r2`` ... laid out in a grid over ``bbox``
    (west, south, east, north), row by row from the north-west corner."""
    if count < 1:
        raise ConfigurationError(f"a grid needs at least one region, not {count!r}")
    west, south, east, north = bbox
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    width, height = (east - west) / columns, (north - south) / rows
    regions = []
    for i in range(count):
        row, column = divmod(i, columns)
        x0, y1 = west + column * width, north - row * height
        cell = box(x0, y1 - height, x0 + width, y1)
        regions.append(Region(f"r{i + 1}", Area.from_geometry(cell, path=f"region r{i + 1}")))
    return tuple(regions)


def split(total: int, parts: int) -> list[int]:
    """``total`` shared out as evenly as can be into ``parts`` whole numbers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def split_area(area: Area, parts: int, *, vertical: bool) -> list[Area]:
    """``area`` cut into ``parts`` strips of its bounding box (pieces that are not polygons,
    which odd shapes may give, fall back to the whole area)."""
    if parts <= 1:
        return [area]
    x0, y0, x1, y1 = area.bounds
    pieces = []
    for k in range(parts):
        if vertical:
            cell = box(x0 + (x1 - x0) * k / parts, y0, x0 + (x1 - x0) * (k + 1) / parts, y1)
        else:
            cell = box(x0, y0 + (y1 - y0) * k / parts, x1, y0 + (y1 - y0) * (k + 1) / parts)
        piece = area.geometry.intersection(cell)
        try:
            if not isinstance(piece, Polygon | MultiPolygon):
                raise ConfigurationError("not a polygon")
            pieces.append(Area.from_geometry(piece))
        except ReleaseCoordinatorError:
            pieces.append(area)
    return pieces


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    """The GeoJSON polygon of the square of side ``size`` at (``lon``, ``lat``)."""
    x0, y0, x1, y1 = (round(v, 6) for v in (lon, lat, lon + size, lat + size))
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def squares_in(area: Area, count: int, rng: random.Random) -> list[tuple[float, float, float]]:
    """``count`` small squares (lon, lat, size) at random places inside ``area``."""
    geometry = area.geometry
    shapely.prepare(geometry)
    x0, y0, x1, y1 = area.bounds
    size = min(0.4 * math.sqrt(float(geometry.area) / max(count, 1)), (x1 - x0) / 4, (y1 - y0) / 4)
    size = max(size, 1e-4)
    squares = []
    for _ in range(count):
        for _attempt in range(50):
            lon, lat = rng.uniform(x0, x1 - size), rng.uniform(y0, y1 - size)
            if geometry.contains(box(lon, lat, lon + size, lat + size)):
                squares.append((lon, lat, size))
                break
        else:  # a thin or odd shape: a tiny square at a point surely inside it
            point = geometry.representative_point()
            tiny = size / 100
            squares.append((float(point.x) - tiny / 2, float(point.y) - tiny / 2, tiny))
    return squares
