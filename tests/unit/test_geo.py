"""Tests of geographic areas (GeoJSON validation) and the spatial index that matches them."""

from __future__ import annotations

import copy
import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon

from release_coordinator.errors import (
    ConfigurationError,
    GeoJSONError,
    NotFoundError,
    ValidationError,
)
from release_coordinator.rollout.geo import MAX_PROBLEMS, Area, GeoIndex, MatchMode

try:
    import strategies_geo as sg
except ImportError:  # tests/ is not on sys.path when pytest runs without a conftest there
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import strategies_geo as sg

ROOT = "geographic_area"
MODES: tuple[MatchMode, ...] = ("intersects", "within", "contains")
SQUARE = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]


def polygon(*rings: Any) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def square(lon: float, lat: float, size: float = 1.0) -> list[list[float]]:
    return [
        [lon, lat],
        [lon + size, lat],
        [lon + size, lat + size],
        [lon, lat + size],
        [lon, lat],
    ]


def refuse(obj: Any, **kwargs: Any) -> GeoJSONError:
    with pytest.raises(GeoJSONError) as info:
        Area.from_geojson(obj, **kwargs)
    return info.value


def paths(err: GeoJSONError) -> list[str]:
    return [path for path, _ in err.problems]


def area_of(obj: dict[str, Any]) -> Area:
    return Area.from_geojson(obj)


# ----------------------------------------------------------------------------- valid areas


def test_polygon_is_accepted_and_canonical() -> None:
    area = Area.from_geojson(polygon(SQUARE))
    assert area.kind == "Polygon"
    assert area.bounds == (0.0, 0.0, 1.0, 1.0)
    assert area.to_geojson() == {
        "type": "Polygon",
        "coordinates": [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]],
    }
    json.dumps(area.to_geojson())  # serialisable as is
    assert "Polygon" in repr(area)


def test_orientation_is_canonicalised_to_the_right_hand_rule() -> None:
    clockwise = Area.from_geojson(polygon(SQUARE[::-1]))
    counter = Area.from_geojson(polygon(SQUARE))
    assert clockwise == counter
    assert hash(clockwise) == hash(counter)
    ring = clockwise.to_geojson()["coordinates"][0]
    assert shapely.LinearRing(ring).is_ccw


def test_polygon_with_a_hole() -> None:
    shell = square(0, 0, 10)
    hole = square(2, 2, 2)  # counter-clockwise on input: re-oriented to clockwise
    area = Area.from_geojson(polygon(shell, hole))
    assert area.geometry.area == pytest.approx(100 - 4)
    rings = area.to_geojson()["coordinates"]
    assert len(rings) == 2
    assert shapely.LinearRing(rings[0]).is_ccw
    assert not shapely.LinearRing(rings[1]).is_ccw
    inside_hole = Area.from_geojson(polygon(square(2.5, 2.5, 0.5)))
    assert not area.intersects(inside_hole)
    assert not area.contains(inside_hole)


def test_multipolygon_is_accepted() -> None:
    obj = {"type": "MultiPolygon", "coordinates": [[square(0, 0)], [square(5, 5)]]}
    area = Area.from_geojson(obj)
    assert area.kind == "MultiPolygon"
    assert area.bounds == (0.0, 0.0, 6.0, 6.0)
    assert Area.from_geojson(area.to_geojson()) == area
    single = Area.from_geojson({"type": "MultiPolygon", "coordinates": [[square(0, 0)]]})
    assert single.kind == "MultiPolygon"  # the type is kept as sent


def test_feature_altitude_tuples_and_ints_are_accepted() -> None:
    feature = {"type": "Feature", "properties": {"name": "x"}, "geometry": polygon(SQUARE)}
    assert Area.from_geojson(feature) == Area.from_geojson(polygon(SQUARE))
    with_altitude = polygon([[*p, 100] for p in SQUARE])
    assert Area.from_geojson(with_altitude) == Area.from_geojson(polygon(SQUARE))
    as_tuples = {"type": "Polygon", "coordinates": (tuple(tuple(p) for p in SQUARE),)}
    assert Area.from_geojson(as_tuples) == Area.from_geojson(polygon(SQUARE))


def test_extreme_but_valid_ranges() -> None:
    world = polygon([[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]])
    assert Area.from_geojson(world).bounds == (-180.0, -90.0, 180.0, 90.0)


def test_predicates() -> None:
    big = Area.from_geojson(polygon(square(0, 0, 10)))
    small = Area.from_geojson(polygon(square(1, 1, 1)))
    touching = Area.from_geojson(polygon(square(10, 0, 1)))
    far = Area.from_geojson(polygon(square(50, 50, 1)))
    assert big.contains(small)
    assert small.within(big)
    assert not small.contains(big)
    assert big.intersects(small)
    assert big.intersects(touching)
    assert not big.contains(touching)
    assert not big.intersects(far)
    assert big.contains(big)  # boundaries may touch


@given(sg.areas_geojson())
def test_every_generated_area_is_valid_and_round_trips(obj: dict[str, Any]) -> None:
    area = Area.from_geojson(obj)
    assert area.geometry.is_valid
    again = Area.from_geojson(json.loads(json.dumps(area.to_geojson())))
    assert again == area
    assert again.to_geojson() == area.to_geojson()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        pytest.param(None, ROOT, "got null", id="null"),
        pytest.param([SQUARE], ROOT, "got a list", id="list"),
        pytest.param("Polygon", ROOT, "string", id="string"),
        pytest.param({"coordinates": [SQUARE]}, f"{ROOT}.type", "missing", id="no-type"),
        pytest.param(
            {"type": "Point", "coordinates": [0, 0]}, f"{ROOT}.type", "'Point'", id="point"
        ),
        pytest.param(
            {"type": ["Polygon"], "coordinates": [SQUARE]}, f"{ROOT}.type", "expected", id="list"
        ),
        pytest.param({"type": "Polygon"}, f"{ROOT}.coordinates", "missing", id="no-coords"),
        pytest.param(
            {"type": "Feature", "geometry": None}, f"{ROOT}.geometry", "Feature", id="feature"
        ),
        pytest.param(
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
            f"{ROOT}.geometry.type",
            "'Point'",
            id="feature-point",
        ),
        pytest.param(
            {"type": "Polygon", "coordinates": "x"}, f"{ROOT}.coordinates", "rings", id="str"
        ),
        pytest.param(polygon(), f"{ROOT}.coordinates", "empty polygon", id="empty"),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": []}, f"{ROOT}.coordinates", "empty", id="mp0"
        ),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": [[]]},
            f"{ROOT}.coordinates[0]",
            "empty polygon",
            id="mp-empty-part",
        ),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": [SQUARE]},
            f"{ROOT}.coordinates",
            "one level",
            id="mp-one-level-short",
        ),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": [[square(5, 5)], SQUARE]},
            f"{ROOT}.coordinates[1]",
            "one level",
            id="mp-part-one-level-short",
        ),
        pytest.param(
            {"type": "Polygon", "coordinates": SQUARE},
            f"{ROOT}.coordinates",
            "one level",
            id="polygon-one-level-short",
        ),
        pytest.param(
            polygon(SQUARE, [1.5, 2.5]),
            f"{ROOT}.coordinates[1]",
            "one level",
            id="hole-one-level-short",
        ),
        pytest.param(polygon(7), f"{ROOT}.coordinates[0]", "linear ring", id="ring-number"),
        pytest.param(polygon(SQUARE[:-1]), f"{ROOT}.coordinates[0]", "not closed", id="open-ring"),
        pytest.param(
            polygon([[0, 0], [1, 1], [0, 0]]),
            f"{ROOT}.coordinates[0]",
            "at least 4 positions",
            id="short-ring",
        ),
        pytest.param(
            polygon([*[[0, 0], [1, 0], [1, 1], [0, 0]][:2], [0, 0]]),
            f"{ROOT}.coordinates[0]",
            "at least 4",
            id="three",
        ),
        pytest.param(
            polygon([[0, 0], [1, 0], 5, [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][2]",
            "position",
            id="position-number",
        ),
        pytest.param(
            polygon([[0, 0], [1], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "2 numbers",
            id="one-number",
        ),
        pytest.param(
            polygon([[0, 0], [1, 0, 0, 0], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "at most 3",
            id="four-numbers",
        ),
        pytest.param(
            polygon([[0, 0], [1, math.nan], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "finite",
            id="nan",
        ),
        pytest.param(
            polygon([[0, 0], [math.inf, 0], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "finite",
            id="inf",
        ),
        pytest.param(
            polygon([[0, 0], [1, 0, math.nan], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "altitude",
            id="nan-altitude",
        ),
        pytest.param(
            polygon([[0, 0], [True, 0], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "boolean",
            id="bool",
        ),
        pytest.param(
            polygon([[0, 0], ["1", 0], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "expected a number",
            id="string-number",
        ),
        pytest.param(
            polygon([[0, 0], [10**400, 0], [1, 1], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "too large",
            id="huge-int",
        ),
        pytest.param(
            polygon([[179, 0], [181, 0], [181, 1], [179, 1], [179, 0]]),
            f"{ROOT}.coordinates[0][1]",
            "longitude 181",
            id="longitude",
        ),
        pytest.param(
            polygon([[0, 89], [1, 89], [1, 90.5], [0, 89]]),
            f"{ROOT}.coordinates[0][2]",
            "latitude 90.5",
            id="latitude",
        ),
        pytest.param(
            polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]),
            f"{ROOT}.coordinates",
            "Self-intersection",
            id="bowtie",
        ),
        pytest.param(
            polygon(square(0, 0), square(5, 5)),
            f"{ROOT}.coordinates",
            "Hole lies outside shell",
            id="hole-outside",
        ),
        pytest.param(
            polygon([[0, 0], [1, 0], [2, 0], [0, 0]]),
            f"{ROOT}.coordinates",
            "invalid polygon",
            id="collinear",
        ),
        pytest.param(
            polygon([[0, 0], [0, 0], [0, 0], [0, 0]]),
            f"{ROOT}.coordinates",
            "invalid polygon",
            id="one-point",
        ),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": [[square(0, 0, 2)], [square(1, 1, 2)]]},
            f"{ROOT}.coordinates",
            "invalid multipolygon",
            id="overlapping-parts",
        ),
        pytest.param(
            {"type": "MultiPolygon", "coordinates": [[square(0, 0)], [SQUARE[:-1]]]},
            f"{ROOT}.coordinates[1][0]",
            "not closed",
            id="mp-open-ring",
        ),
    ],
)
def test_each_refusal_names_its_path(obj: Any, path: str, fragment: str) -> None:
    err = refuse(obj)
    assert isinstance(err, ValidationError)
    assert err.http_status == 400
    assert path in paths(err), err.problems
    assert any(fragment in message for p, message in err.problems if p == path), err.problems
    assert err.to_dict()["error"]["code"] == "invalid_area"


def test_the_path_prefix_is_configurable() -> None:
    err = refuse(polygon(SQUARE[:-1]), path="body.area")
    assert paths(err) == ["body.area.coordinates[0]"]


def test_several_problems_are_reported_at_once() -> None:
    obj = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [200, 0], [1, 1], [0, 1], [0, 0]], [[0, 0], [1, 1]]],
            [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],  # bowtie, reported alongside
            [[[0, "a"], [1, None], [1, 1], [0, 1], [0, 1.5]]],
        ],
    }
    err = refuse(obj)
    found = paths(err)
    assert f"{ROOT}.coordinates[0][0][1]" in found  # longitude
    assert f"{ROOT}.coordinates[0][1]" in found  # short ring
    assert f"{ROOT}.coordinates[1]" in found  # self-intersection
    assert f"{ROOT}.coordinates[2][0][0]" in found  # "a"
    assert f"{ROOT}.coordinates[2][0][1]" in found  # None
    assert len(found) >= 5
    assert "coordinates[2][0][0]" in str(err)

    both = refuse({"type": "Circle"})
    assert paths(both) == [f"{ROOT}.type", f"{ROOT}.coordinates"]


def test_problems_are_capped() -> None:
    ring = [[0, 0]] + [[999, 999]] * (2 * MAX_PROBLEMS) + [[0, 0]]
    err = refuse(polygon(ring))
    assert len(err.problems) == MAX_PROBLEMS + 1
    assert "further problem(s) not listed" in err.problems[-1][1]


def test_too_many_positions() -> None:
    ring = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    err = refuse(polygon(ring, ring, ring), max_positions=12)
    assert any("too many positions" in message for _, message in err.problems)
    Area.from_geojson(polygon(ring, square(0.2, 0.2, 0.1)), max_positions=10)


class _HostileMapping(dict[str, Any]):
    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")


def test_a_hostile_mapping_is_refused_cleanly() -> None:
    err = refuse(_HostileMapping(type="Polygon"))
    assert paths(err) == [ROOT]


@given(sg.broken_areas())
def test_broken_areas_are_refused_with_their_path(case: tuple[Any, str]) -> None:
    obj, path = case
    err = refuse(obj)
    assert path in paths(err), err.problems


def _validate(obj: Any) -> Area | GeoJSONError:
    """The area, or the GeoJSONError it raised; any other exception fails the test."""
    try:
        return Area.from_geojson(obj)
    except GeoJSONError as err:
        return err


@given(sg.json_values())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_junk_is_refused_or_accepted_never_crashes(value: Any) -> None:
    for candidate in (
        value,
        {"type": "Polygon", "coordinates": value},
        {"type": "MultiPolygon", "coordinates": value},
        {"type": "Polygon", "coordinates": [value]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], value, [0, 0]]]},
        {"type": "Feature", "geometry": value},
    ):
        outcome = _validate(candidate)
        if isinstance(outcome, Area):
            assert outcome.geometry.is_valid
        else:
            assert outcome.problems
            assert all(isinstance(p, str) and isinstance(m, str) for p, m in outcome.problems)
            assert all(p.startswith(ROOT) for p, _ in outcome.problems)


@given(sg.areas_geojson(), st.data())
def test_mutated_valid_areas_never_crash(obj: dict[str, Any], data: st.DataObject) -> None:
    mutated = copy.deepcopy(obj)
    # walk to a random nested list and replace one item with junk
    node: Any = mutated["coordinates"]
    while isinstance(node, list) and node and data.draw(st.booleans()):
        node = node[data.draw(st.integers(0, len(node) - 1))]
    if isinstance(node, list) and node:
        node[data.draw(st.integers(0, len(node) - 1))] = data.draw(sg.json_values())
    outcome = _validate(mutated)
    assert isinstance(outcome, Area) or outcome.problems


# ------------------------------------------------------------------- from_geometry / union


def test_from_geometry_validates() -> None:
    assert Area.from_geometry(Polygon(SQUARE)) == Area.from_geojson(polygon(SQUARE))
    with_z = Polygon([(x, y, 5.0) for x, y in SQUARE])
    assert Area.from_geometry(with_z) == Area.from_geojson(polygon(SQUARE))
    with np.errstate(invalid="ignore"):
        with_nan = Polygon([(0, 0), (math.nan, 0), (1, 1), (0, 0)])
    for bad, fragment in [
        (Point(0, 0), "Polygon or MultiPolygon"),
        (Polygon(), "empty"),
        (Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]), "Self-intersection"),
        (Polygon(square(179.5, 0)), "longitude"),
        (Polygon(square(0, 89.5)), "latitude"),
        (with_nan, "finite"),
        ("not a geometry", "Polygon or MultiPolygon"),
    ]:
        with pytest.raises(GeoJSONError) as info:
            Area.from_geometry(bad, path="config.area")
        assert info.value.problems[0][0] == "config.area"
        assert fragment in info.value.problems[0][1]


def test_direct_construction_checks_the_type() -> None:
    with pytest.raises(GeoJSONError):
        Area(Point(0, 0))


def test_union() -> None:
    a = Area.from_geojson(polygon(square(0, 0, 2)))
    b = Area.from_geojson(polygon(square(1, 1, 2)))
    far = Area.from_geojson(polygon(square(10, 10, 1)))
    ab = Area.union([a, b])
    assert ab.kind == "Polygon"
    assert ab.geometry.area == pytest.approx(7.0)
    assert ab.contains(a)
    assert ab.contains(b)
    everything = Area.union(iter([a, b, far]))
    assert everything.kind == "MultiPolygon"
    assert everything.contains(far)
    assert everything.contains(ab)
    assert Area.union([a]) == a
    touching = Area.union([a, Area.from_geojson(polygon(square(2, 2, 1)))])
    assert touching.kind == "MultiPolygon"  # they touch at one point only
    with pytest.raises(GeoJSONError):
        Area.union([])


@given(st.lists(sg.areas_geojson(max_radius=2.0), min_size=1, max_size=5))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_union_contains_every_part(objs: list[dict[str, Any]]) -> None:
    areas = [Area.from_geojson(obj) for obj in objs]
    united = Area.union(areas)
    assert united.geometry.is_valid
    for area in areas:
        # exact `contains` may fail on noded coordinates, so compare areas with a tolerance
        assert (
            shapely.difference(area.geometry, united.geometry).area
            <= 1e-9 * max(area.geometry.area, 1e-12) + 1e-12
        )
    Area.from_geojson(united.to_geojson())  # the union is a valid area again


# ----------------------------------------------------------------------------- GeoIndex


def brute_force(model: dict[Any, Area], target: Area, mode: MatchMode) -> list[Any]:
    if mode == "intersects":
        return [k for k, a in model.items() if a.geometry.intersects(target.geometry)]
    if mode == "within":
        return [k for k, a in model.items() if a.geometry.within(target.geometry)]
    return [k for k, a in model.items() if a.geometry.contains(target.geometry)]


def test_index_basics() -> None:
    index: GeoIndex[str] = GeoIndex()
    assert len(index) == 0
    target = Area.from_geojson(polygon(square(0, 0, 10)))
    assert index.match(target) == []
    inside = Area.from_geojson(polygon(square(1, 1)))
    edge = Area.from_geojson(polygon(square(9.5, 9.5)))
    far = Area.from_geojson(polygon(square(50, 50)))
    index.add("inside", inside)
    index.add("edge", edge)
    index.add("far", far)
    assert len(index) == 3
    assert "edge" in index
    assert "nope" not in index
    assert [] not in index  # unhashable: simply not there
    assert index.keys() == ["inside", "edge", "far"]
    assert index.match(target) == ["inside", "edge"]
    assert index.match(target, "within") == ["inside"]
    assert index.match(inside, "contains") == ["inside"]  # an area contains itself
    assert index.query(target, "intersects") == ["inside", "edge"]
    assert index.query(target, "contains") == ["inside"]  # STRtree convention
    assert index.query(inside, "within") == index.match(inside, "contains")

    index.add("inside", far)  # replacing keeps the key's place
    assert index.keys() == ["inside", "edge", "far"]
    assert index.match(target) == ["edge"]
    assert index.match(far, "contains") == ["inside", "far"]

    index.remove("edge")
    assert "edge" not in index
    assert len(index) == 2
    with pytest.raises(NotFoundError):
        index.remove("edge")
    assert index.discard("edge") is False
    assert index.discard("far") is True
    index.add("edge", edge)  # removed then added again: it goes last
    assert index.keys() == ["inside", "edge"]
    assert index.match(target) == ["edge"]

    with pytest.raises(ConfigurationError):
        index.match(target, "covers")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        index.query(target, "touches")  # type: ignore[arg-type]


def test_index_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        GeoIndex(rebuild_min=0)
    with pytest.raises(ConfigurationError):
        GeoIndex(rebuild_fraction=0.0)


def test_index_rebuilds_and_compacts() -> None:
    index: GeoIndex[int] = GeoIndex(rebuild_min=4, rebuild_fraction=0.5)
    areas = {i: Area.from_geojson(polygon(square(i % 20, i // 20, 0.5))) for i in range(200)}
    target = Area.from_geojson(polygon(square(0, 0, 5.2)))
    model: dict[int, Area] = {}
    for i, area in areas.items():
        index.add(i, area)
        model[i] = area
        if i % 17 == 0:
            assert index.match(target) == brute_force(model, target, "intersects")
    index.rebuild()
    slots_before = index._n  # white-box: slots in use, dead ones included
    for i in range(200):  # remove two of every three: enough to compact
        if i % 3:
            index.remove(i)
            del model[i]
        if i % 11 == 0:
            assert index.match(target, "within") == brute_force(model, target, "within")
    assert index._n < slots_before  # compacted
    assert index.keys() == list(model)
    assert index.match(target) == brute_force(model, target, "intersects")
    for i in range(1, 200, 6):
        index.add(i, areas[i])
        model[i] = areas[i]
    assert index.keys() == list(model)
    assert index.match(target) == brute_force(model, target, "intersects")


def region_polygons(max_radius: float) -> st.SearchStrategy[dict[str, Any]]:
    """Polygons crowded in a small region, so that they often intersect."""
    return sg.polygons(lon=(0.0, 12.0), lat=(0.0, 12.0), max_radius=max_radius, hole=None)


@given(
    children=st.lists(region_polygons(3.0), max_size=40),
    target=region_polygons(6.0),
    rebuild_min=st.integers(1, 8),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_index_equals_brute_force(
    children: list[dict[str, Any]], target: dict[str, Any], rebuild_min: int
) -> None:
    index: GeoIndex[int] = GeoIndex(rebuild_min=rebuild_min, rebuild_fraction=0.2)
    model: dict[int, Area] = {}
    target_area = Area.from_geojson(target)
    for i, obj in enumerate(children):
        model[i] = Area.from_geojson(obj)
        index.add(i, model[i])
        if i % 5 == 0:
            for mode in MODES:
                assert index.match(target_area, mode) == brute_force(model, target_area, mode)
    for mode in MODES:
        assert index.match(target_area, mode) == brute_force(model, target_area, mode)


@st.composite
def target_with_center(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[float, float]]:
    """A star-shaped target polygon and the center of its kernel it was drawn around."""
    center = draw(sg.centers(lon=(-50.0, 50.0), lat=(-60.0, 60.0), margin=5.0))
    return draw(sg.polygons(center=center, max_radius=5.0)), center


@given(
    drawn=target_with_center(),
    factors=st.lists(st.floats(0.05, 0.9), min_size=1, max_size=10),
    others=st.lists(sg.polygons(lon=(-50.0, 50.0), lat=(-60.0, 60.0), max_radius=5.0)),
    order=st.randoms(use_true_random=False),
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_children_inside_are_found_and_far_away_never(
    drawn: tuple[dict[str, Any], tuple[float, float]],
    factors: list[float],
    others: list[dict[str, Any]],
    order: Any,
) -> None:
    target, center = drawn
    target_area = Area.from_geojson(target)
    children: list[tuple[str, Area]] = []
    for i, factor in enumerate(factors):
        # a star polygon shrunk towards a point of its kernel lies strictly inside it
        inside = affinity.scale(target_area.geometry, factor, factor, origin=center)
        children.append((f"in{i}", Area.from_geometry(inside)))
    for i, obj in enumerate(others):
        area = Area.from_geojson(obj)
        children.append((f"other{i}", area))
        far = affinity.translate(area.geometry, xoff=120.0)
        children.append((f"far{i}", Area.from_geometry(far)))
    far_target = Area.from_geometry(affinity.translate(target_area.geometry, xoff=120.0))
    children.append(("far-target", far_target))
    order.shuffle(children)

    index: GeoIndex[str] = GeoIndex(rebuild_min=3)
    for key, area in children:
        index.add(key, area)
    model = dict(children)
    intersecting = index.match(target_area, "intersects")
    within = index.match(target_area, "within")
    assert intersecting == brute_force(model, target_area, "intersects")
    assert within == brute_force(model, target_area, "within")
    inside_keys = {f"in{i}" for i in range(len(factors))}
    assert inside_keys <= set(within) <= set(intersecting)
    assert not any(key.startswith("far") for key in intersecting)
    # and from the other side: an index of targets, queried with a child's area
    targets: GeoIndex[str] = GeoIndex()
    targets.add("target", target_area)
    targets.add("far-target", far_target)
    for key, area in children:
        if key in inside_keys:
            assert targets.match(area, "contains") == ["target"]
            assert targets.match(area, "intersects") == ["target"]
        elif key.startswith("far"):
            assert "target" not in targets.match(area, "intersects")


class GeoIndexMachine(RuleBasedStateMachine):
    """Random adds, replacements, removals and queries against a dict + brute force model."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.index: GeoIndex[int] = GeoIndex(rebuild_min=2, rebuild_fraction=0.3)
        self.model: dict[int, Area] = {}

    @initialize(rebuild_min=st.integers(1, 6), fraction=st.sampled_from([0.05, 0.3, 1.0]))
    def configure(self, rebuild_min: int, fraction: float) -> None:
        self.index = GeoIndex(rebuild_min=rebuild_min, rebuild_fraction=fraction)

    @rule(target=keys, key=st.integers(0, 40), obj=region_polygons(3.0))
    def add(self, key: int, obj: dict[str, Any]) -> int:
        area = Area.from_geojson(obj)
        self.index.add(key, area)
        self.model[key] = area  # a dict keeps a replaced key's place, like the index
        return key

    @rule(objs=st.lists(region_polygons(2.0), min_size=1, max_size=8), start=st.integers(0, 60))
    def add_many(self, objs: list[dict[str, Any]], start: int) -> None:
        items = [(start + i, Area.from_geojson(obj)) for i, obj in enumerate(objs)]
        self.index.add_many(items)
        self.model.update(items)

    @rule(key=consumes(keys))
    def remove(self, key: int) -> None:
        if key in self.model:
            self.index.remove(key)
            del self.model[key]
        else:
            with pytest.raises(NotFoundError):
                self.index.remove(key)

    @rule(key=st.integers(0, 70))
    def discard(self, key: int) -> None:
        assert self.index.discard(key) == (self.model.pop(key, None) is not None)

    @rule()
    def rebuild(self) -> None:
        self.index.rebuild()

    @rule(
        obj=region_polygons(6.0),
        mode=st.sampled_from(["intersects", "within", "contains"]),
    )
    def match(self, obj: dict[str, Any], mode: MatchMode) -> None:
        target = Area.from_geojson(obj)
        assert self.index.match(target, mode) == brute_force(self.model, target, mode)

    @rule(key=keys, mode=st.sampled_from(["intersects", "within", "contains"]))
    def match_an_indexed_area(self, key: int, mode: MatchMode) -> None:
        assume(key in self.model)
        target = self.model[key]
        found = self.index.match(target, mode)
        assert found == brute_force(self.model, target, mode)
        assert key in found  # an area intersects, lies within and contains itself

    @invariant()
    def same_keys(self) -> None:
        assert len(self.index) == len(self.model)
        assert self.index.keys() == list(self.model)


TestGeoIndexMachine = GeoIndexMachine.TestCase
TestGeoIndexMachine.settings = settings(
    max_examples=60, stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow]
)


def _random_areas(count: int, seed: int, radius: float) -> list[Area]:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180 + radius, 180 - radius, count)
    lat = rng.uniform(-90 + radius, 90 - radius, count)
    r = rng.uniform(radius / 10, radius, (count, 1))
    angles = np.sort(rng.uniform(0, 2 * np.pi, (count, 6)), axis=1)
    xy = np.stack([lon[:, None] + r * np.cos(angles), lat[:, None] + r * np.sin(angles)], -1)
    xy = np.concatenate([xy, xy[:, :1]], axis=1)
    geometries = shapely.polygons(xy)
    valid = shapely.is_valid(geometries)
    return [Area.from_geometry(g) for g in geometries[valid]]


def test_twenty_thousand_areas_index_and_query_correctly() -> None:
    children = _random_areas(20_000, seed=1, radius=0.5)
    targets = _random_areas(40, seed=2, radius=15.0)
    index: GeoIndex[int] = GeoIndex()
    index.add_many(enumerate(children))
    assert len(index) == len(children)
    geometries = np.array([a.geometry for a in children], dtype=object)
    total = 0
    for target in targets:
        expected = np.flatnonzero(shapely.intersects(geometries, target.geometry)).tolist()
        assert index.match(target) == expected
        total += len(expected)
        within = np.flatnonzero(shapely.within(geometries, target.geometry)).tolist()
        assert index.match(target, "within") == within
    assert total > 0  # the targets do reach children

    # removals and additions after the tree was built (tombstones, pending additions)
    for key in range(0, len(children), 7):
        index.remove(key)
    extra = _random_areas(500, seed=3, radius=0.5)
    for i, area in enumerate(extra):
        index.add(len(children) + i, area)
    alive = np.ones(len(children), dtype=bool)
    alive[::7] = False
    all_geometries = np.concatenate([geometries, np.array([a.geometry for a in extra])])
    all_alive = np.concatenate([alive, np.ones(len(extra), dtype=bool)])
    for target in targets:
        hits = shapely.intersects(all_geometries, target.geometry) & all_alive
        assert index.match(target) == np.flatnonzero(hits).tolist()

    # the other direction: children query an index of targets
    target_index: GeoIndex[int] = GeoIndex()
    target_index.add_many(enumerate(targets))
    target_geometries = np.array([t.geometry for t in targets], dtype=object)
    for child in children[:2000]:
        reached = np.flatnonzero(shapely.intersects(target_geometries, child.geometry))
        assert target_index.match(child) == reached.tolist()


def test_index_is_usable_from_several_threads() -> None:
    areas = _random_areas(4000, seed=4, radius=2.0)
    target = Area.from_geojson(polygon(square(-60, -40, 120)))
    index: GeoIndex[int] = GeoIndex(rebuild_min=8, rebuild_fraction=0.05)
    errors: list[BaseException] = []

    def work(part: int) -> None:
        try:
            for i in range(part, len(areas), 4):
                index.add(i, areas[i])
                if i % 50 == part:
                    index.match(target)
                if i % 3 == 0:
                    index.remove(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    kept = {i: areas[i] for i in range(len(areas)) if i % 3 != 0}
    assert len(index) == len(kept)
    assert sorted(index.match(target)) == sorted(brute_force(kept, target, "intersects"))


def test_multipolygon_areas_in_the_index() -> None:
    parts = MultiPolygon([Polygon(square(0, 0)), Polygon(square(10, 10))])
    area = Area.from_geometry(parts)
    index: GeoIndex[str] = GeoIndex()
    index.add("mp", area)
    between = Area.from_geojson(polygon(square(4, 4, 2)))
    assert index.match(between) == []
    assert index.match(Area.from_geojson(polygon(square(10.5, 10.5, 0.2)))) == ["mp"]
    assert index.match(Area.from_geojson(polygon(square(-1, -1, 20))), "within") == ["mp"]
