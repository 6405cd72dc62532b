"""Hypothesis strategies for GeoJSON areas, valid and invalid, shared by the tests.

Valid areas are star-shaped polygons around a random (lon, lat) center: vertices at increasing
angles (at least one in each quadrant, so every angular gap is below 180 degrees and the center
lies in the polygon's kernel) and random radii. Such a ring is always simple, closed and inside
the WGS84 ranges. With equal radii the polygon is convex.

    polygon_coordinates()  the ``coordinates`` of a Polygon (exterior ring, optional hole)
    polygons()             GeoJSON Polygon mappings
    multipolygons()        GeoJSON MultiPolygon mappings with 2-3 disjoint parts
    areas_geojson()        any of the above
    broken_areas()         (invalid GeoJSON, a path that must be among the reported problems)
    json_values()          arbitrary JSON-like junk, biased towards GeoJSON-looking shapes
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "areas_geojson",
    "broken_areas",
    "json_values",
    "multipolygons",
    "polygon_coordinates",
    "polygons",
    "star_ring",
]

Ring = list[list[float]]
STEPS = 24  # angular grid: 15 degrees
_QUARTER = STEPS // 4


def star_ring(
    lon: float, lat: float, radius: float, angle_steps: list[int], radii: list[float]
) -> Ring:
    """A closed counter-clockwise ring; ``radii`` are fractions of ``radius`` per vertex."""
    ring = [
        [
            lon + radius * r * math.cos(2 * math.pi * step / STEPS),
            lat + radius * r * math.sin(2 * math.pi * step / STEPS),
        ]
        for step, r in zip(angle_steps, radii, strict=True)
    ]
    ring.append(list(ring[0]))
    return ring


@st.composite
def _angle_steps(draw: st.DrawFn) -> list[int]:
    steps: set[int] = set()
    for quarter in range(4):
        low = quarter * _QUARTER
        steps |= draw(st.sets(st.integers(low, low + _QUARTER - 1), min_size=1, max_size=3))
    return sorted(steps)


@st.composite
def centers(
    draw: st.DrawFn,
    *,
    lon: tuple[float, float] = (-180.0, 180.0),
    lat: tuple[float, float] = (-90.0, 90.0),
    margin: float = 1.0,
) -> tuple[float, float]:
    """A (lon, lat) in the given ranges, and ``margin`` (plus a little) inside WGS84's."""
    pad = margin * 1.01 + 1e-9
    return (
        draw(st.floats(max(lon[0], -180.0 + pad), min(lon[1], 180.0 - pad), allow_nan=False)),
        draw(st.floats(max(lat[0], -90.0 + pad), min(lat[1], 90.0 - pad), allow_nan=False)),
    )


@st.composite
def polygon_coordinates(
    draw: st.DrawFn,
    *,
    center: tuple[float, float] | None = None,
    lon: tuple[float, float] = (-180.0, 180.0),
    lat: tuple[float, float] = (-90.0, 90.0),
    max_radius: float = 1.0,
    convex: bool | None = None,
    hole: bool | None = False,
    reverse: bool | None = None,
) -> list[Ring]:
    """Coordinates of a valid Polygon: a star-shaped (or convex) ring, maybe with a hole.

    The center is ``center`` or drawn in ``lon`` x ``lat`` (kept far enough from the WGS84
    limits); the radius is up to ``max_radius`` degrees.

    ``None`` for ``convex``, ``hole`` or ``reverse`` (ring orientation) lets Hypothesis choose.
    """
    radius = draw(st.floats(max_radius / 20, max_radius, allow_nan=False))
    lon0, lat0 = center if center is not None else draw(centers(lon=lon, lat=lat, margin=radius))
    steps = draw(_angle_steps())
    with_hole = draw(st.booleans()) if hole is None else hole
    is_convex = with_hole or (draw(st.booleans()) if convex is None else convex)
    radii = [1.0] * len(steps) if is_convex else [draw(st.integers(2, 10)) / 10 for _ in steps]
    rings = [star_ring(lon0, lat0, radius, steps, radii)]
    if with_hole:
        # every gap is below 165 degrees, so the shell contains the disc of radius
        # radius * cos(82.5 deg) ~ 0.13 * radius around the center; the hole stays inside it.
        hole_steps = [0, 6, 12, 18]
        hole_ring = star_ring(lon0, lat0, radius * 0.05, hole_steps, [1.0] * 4)
        rings.append(hole_ring[::-1])  # clockwise, as RFC 7946 wants
    flip = draw(st.booleans()) if reverse is None else reverse
    if flip:
        rings = [ring[::-1] for ring in rings]
    return rings


def polygons(**kwargs: Any) -> st.SearchStrategy[dict[str, Any]]:
    """GeoJSON Polygon mappings; keyword arguments as for :func:`polygon_coordinates`."""
    return polygon_coordinates(**kwargs).map(lambda c: {"type": "Polygon", "coordinates": c})


@st.composite
def multipolygons(draw: st.DrawFn, *, max_radius: float = 1.0) -> dict[str, Any]:
    """A MultiPolygon of 2-3 disjoint star polygons side by side along the longitude."""
    count = draw(st.integers(2, 3))
    spacing = 3 * max_radius
    pad = max_radius * 1.01 + 1e-9
    lon0 = draw(st.floats(-180.0 + pad, 180.0 - pad - spacing * (count - 1), allow_nan=False))
    lat0 = draw(st.floats(-90.0 + pad, 90.0 - pad, allow_nan=False))
    parts = [
        draw(
            polygon_coordinates(center=(lon0 + i * spacing, lat0), max_radius=max_radius, hole=None)
        )
        for i in range(count)
    ]
    return {"type": "MultiPolygon", "coordinates": parts}


def areas_geojson(max_radius: float = 1.0) -> st.SearchStrategy[dict[str, Any]]:
    """Any valid area: Polygon (with or without hole) or MultiPolygon."""
    return st.one_of(
        polygons(max_radius=max_radius, hole=None),
        multipolygons(max_radius=max_radius),
    )


_BAD_NUMBERS = [
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    "1.0",
    [1.0],
    {"x": 1},
]


@st.composite
def broken_areas(draw: st.DrawFn) -> tuple[Any, str]:
    """An invalid area and one path (under ``geographic_area``) that must be reported."""
    root = "geographic_area"
    coordinates = draw(polygon_coordinates(max_radius=2.0, hole=False, reverse=False))
    ring: list[Any] = coordinates[0]
    middle = draw(st.integers(1, len(ring) - 2))  # never the first/last (closing) position
    kind = draw(
        st.sampled_from(
            [
                "open_ring",
                "short_ring",
                "longitude",
                "latitude",
                "bad_number",
                "short_position",
                "long_position",
                "position_not_list",
                "ring_not_list",
                "wrong_type",
                "missing_type",
                "missing_coordinates",
                "bowtie",
                "hole_outside",
                "empty_polygon",
                "empty_multipolygon",
                "not_a_mapping",
                "overlapping_parts",
            ]
        )
    )
    polygon: dict[str, Any] = {"type": "Polygon", "coordinates": coordinates}
    if kind == "open_ring":
        del ring[-1]
        return polygon, f"{root}.coordinates[0]"
    if kind == "short_ring":
        coordinates[0] = [ring[0], ring[1], list(ring[0])]
        return polygon, f"{root}.coordinates[0]"
    if kind == "longitude":
        ring[middle][0] = draw(
            st.one_of(
                st.floats(180.0, 1e300, exclude_min=True),
                st.floats(-1e300, -180.0, exclude_max=True),
            )
        )
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "latitude":
        ring[middle][1] = draw(
            st.one_of(
                st.floats(90.0, 1e300, exclude_min=True), st.floats(-1e300, -90.0, exclude_max=True)
            )
        )
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "bad_number":
        ring[middle][draw(st.integers(0, 1))] = draw(st.sampled_from(_BAD_NUMBERS))
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "short_position":
        ring[middle] = ring[middle][:1] if draw(st.booleans()) else []
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "long_position":
        ring[middle] = [*ring[middle], 0.0, 0.0]
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "position_not_list":
        ring[middle] = draw(st.sampled_from([None, 1.5, "1,2", {"lon": 1, "lat": 2}]))
        return polygon, f"{root}.coordinates[0][{middle}]"
    if kind == "ring_not_list":
        coordinates[0] = draw(st.sampled_from([None, 3, "ring", {"a": 1}]))
        return polygon, f"{root}.coordinates[0]"
    if kind == "wrong_type":
        polygon["type"] = draw(
            st.sampled_from(["Point", "LineString", "GeometryCollection", "polygon", 7, None])
        )
        return polygon, f"{root}.type"
    if kind == "missing_type":
        del polygon["type"]
        return polygon, f"{root}.type"
    if kind == "missing_coordinates":
        del polygon["coordinates"]
        return polygon, f"{root}.coordinates"
    # a base point with room around it for the fixed-size shapes below
    lon = min(max(ring[0][0], -170.0), 170.0)
    lat = min(max(ring[0][1], -80.0), 80.0)
    if kind == "bowtie":
        bowtie = [[lon, lat], [lon + 1, lat + 1], [lon + 1, lat], [lon, lat + 1], [lon, lat]]
        return {"type": "Polygon", "coordinates": [bowtie]}, f"{root}.coordinates"
    if kind == "hole_outside":
        shell = [[lon, lat], [lon + 1, lat], [lon + 1, lat + 1], [lon, lat + 1], [lon, lat]]
        far = [[lon + 5, lat], [lon + 6, lat], [lon + 6, lat + 1], [lon + 5, lat]]
        return {"type": "Polygon", "coordinates": [shell, far]}, f"{root}.coordinates"
    if kind == "empty_polygon":
        return {"type": "Polygon", "coordinates": []}, f"{root}.coordinates"
    if kind == "empty_multipolygon":
        return {"type": "MultiPolygon", "coordinates": []}, f"{root}.coordinates"
    if kind == "not_a_mapping":
        return draw(st.sampled_from([None, [], "Polygon", 3, [polygon]])), root
    # overlapping_parts: the same polygon twice
    return {"type": "MultiPolygon", "coordinates": [coordinates, coordinates]}, (
        f"{root}.coordinates"
    )


def json_values() -> st.SearchStrategy[Any]:
    """Arbitrary JSON-like values, biased so that some look like (broken) GeoJSON."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**400), 10**400),
        st.integers(-200, 200),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["Polygon", "MultiPolygon", "Feature", "Point"]),
    )
    keys = st.one_of(
        st.sampled_from(["type", "coordinates", "geometry", "properties"]), st.text(max_size=4)
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.tuples(children, children),
            st.dictionaries(keys, children, max_size=4),
        ),
        max_leaves=40,
    )
