"""Geographic areas of children and rollout targets, and a spatial index to match them.

Every child of a RolloutManager serves an area, a GeoJSON ``Polygon`` or ``MultiPolygon`` in
WGS84 longitude/latitude (see the edge-rollout protocol, "Children and areas"). A rollout targets
an area too, and a child is eligible when its area intersects the target (or, when the rollout
asks for it, lies within the target).

:class:`Area`
    One validated area. :meth:`Area.from_geojson` turns untrusted JSON into an area or raises
    :class:`~release_coordinator.errors.GeoJSONError` listing every problem with its path
    (the parser is :func:`release_coordinator.rollout.geojson.parse_geojson`).
:class:`GeoIndex`
    A spatial index of many areas under hashable keys (child ids, rollout ids), answering
    "which indexed areas intersect / lie within / contain this area?" with shapely's STRtree.

Decisions (where GeoJSON or the protocol leave room):

- A GeoJSON ``Feature`` whose ``geometry`` is a Polygon/MultiPolygon is accepted; its
  ``properties`` and ``id`` are dropped, and the canonical form is the bare geometry.
  ``FeatureCollection``, ``GeometryCollection`` and every other type are refused.
- Positions carry 2 or 3 numbers; a third (altitude) is accepted and dropped, more than 3 are
  refused. Integers are accepted as numbers, booleans are not.
- Coordinates are planar lon/lat: no antimeridian handling (RFC 7946 asks producers to cut
  areas at the antimeridian, which this module expects).
- The canonical form follows RFC 7946's right-hand rule: exterior rings counter-clockwise,
  holes clockwise. Input of either orientation is accepted and re-oriented, so two children
  that send the same ring in opposite orientations have equal areas. Ring start points and the
  Polygon/MultiPolygon type are kept as sent.
- A refusal lists at most :data:`MAX_PROBLEMS` problems (then one "further problems" entry),
  and an area has at most ``max_positions`` positions (default :data:`MAX_POSITIONS`), so a
  hostile body cannot make the error or the work unbounded.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.validation import explain_validity

from release_coordinator.errors import ConfigurationError, GeoJSONError, NotFoundError
from release_coordinator.problems import MAX_PROBLEMS, Problems
from release_coordinator.rollout.geojson import MAX_POSITIONS, parse_geojson

__all__ = [
    "MAX_POSITIONS",
    "MAX_PROBLEMS",
    "Area",
    "AreaKind",
    "Bounds",
    "GeoIndex",
    "MatchMode",
    "QueryPredicate",
]

AreaKind = Literal["Polygon", "MultiPolygon"]
Bounds = tuple[float, float, float, float]
"""``(min_lon, min_lat, max_lon, max_lat)``."""


def _orient(geometry: Any) -> Any:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946, section 3.1.6)."""
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        return shapely.orient_polygons(geometry)
    from shapely.geometry.polygon import orient  # pragma: no cover - shapely 2.0

    if isinstance(geometry, Polygon):  # pragma: no cover
        return orient(geometry, 1.0)
    return MultiPolygon([orient(p, 1.0) for p in geometry.geoms])  # pragma: no cover


def _ring_coordinates(ring: Any) -> list[list[float]]:
    coordinates: list[list[float]] = shapely.get_coordinates(ring).tolist()
    return coordinates


def _polygon_coordinates(polygon: Any) -> list[list[list[float]]]:
    return [_ring_coordinates(polygon.exterior)] + [
        _ring_coordinates(hole) for hole in polygon.interiors
    ]


def _check_geometry_type(instance: object, attribute: object, value: object) -> None:
    if not isinstance(value, (Polygon, MultiPolygon)):
        raise GeoJSONError(
            "an area must be a Polygon or MultiPolygon",
            [("geometry", f"got {type(value).__name__}")],
        )


# --------------------------------------------------------------------------------------- Area


@attrs.frozen(slots=True, repr=False)
class Area:
    """One validated WGS84 area: a shapely ``Polygon`` or ``MultiPolygon`` (lon, lat).

    Build it with :meth:`from_geojson` (untrusted input), :meth:`from_geometry` or
    :meth:`union`; calling ``Area(geometry)`` directly checks only the geometry's type.

    The shapely geometry *is* the canonical form: it is built from the validated, re-oriented
    coordinates, and :meth:`to_geojson` rebuilds the canonical mapping from it exactly (floats
    round-trip), so no second copy of the coordinates is kept. Equality and hashing are
    shapely's exact (identical-coordinates) comparison, i.e. equality of the canonical mapping.

    Memory (measured by ``benchmarks/geo_index.py``, shapely 2.2 / GEOS 3.14): an area of a
    small polygon (7 positions) costs about 0.8 KiB: ~56 B for this object (one slot) and
    ~750 B for the shapely geometry (the Python wrapper plus the GEOS polygon, ring, envelope
    and coordinate sequence, allocated by GEOS and so invisible to tracemalloc); each further
    position adds 16 B. A registered child holds exactly one; an index shares it (no copy).
    """

    geometry: Any = attrs.field(validator=_check_geometry_type)
    """The shapely ``Polygon`` or ``MultiPolygon``; immutable, safe to share between threads."""

    # ---- constructors

    @classmethod
    def from_geojson(
        cls,
        obj: object,
        *,
        path: str = "geographic_area",
        max_positions: int = MAX_POSITIONS,
    ) -> Area:
        """Validate an untrusted GeoJSON value (a decoded JSON object) into an area.

        Accepts a ``Polygon``, a ``MultiPolygon``, or a ``Feature`` carrying one. Raises
        :class:`GeoJSONError` whose ``problems`` list every problem found, each with its path
        below ``path`` (e.g. ``geographic_area.coordinates[0][3]`` for the 4th position of the
        exterior ring): not an object; a missing or other ``type``; coordinates that are not
        nested lists of numbers; a position without 2 finite numbers (booleans are not
        numbers); a longitude outside [-180, 180] or latitude outside [-90, 90]; a ring that is
        not closed or has fewer than 4 positions; an empty polygon or multipolygon; a geometry
        that is not valid (self-intersection, a hole outside its shell, overlapping parts...),
        explained by shapely's ``explain_validity``. Never raises anything else.
        """
        geometry = parse_geojson(obj, path=path, max_positions=max_positions)
        return cls(_orient(geometry))

    @classmethod
    def from_geometry(cls, geometry: object, *, path: str = "area") -> Area:
        """Validate a shapely geometry (e.g. from configuration or a computation) as an area.

        Z values are dropped; the result is re-oriented like :meth:`from_geojson`.
        """
        problems = Problems()
        if not isinstance(geometry, (Polygon, MultiPolygon)):
            problems.add(path, f"expected a Polygon or MultiPolygon, got {type(geometry).__name__}")
            problems.raise_if_any("invalid area", GeoJSONError)
        shape: Any = geometry
        if shape.is_empty:
            problems.add(path, "empty polygon: it encloses no area")
        else:
            if shape.has_z:
                shape = shapely.force_2d(shape)
            xy = shapely.get_coordinates(shape)
            if not np.isfinite(xy).all():
                problems.add(path, "coordinates must be finite numbers")
            else:
                min_lon, min_lat, max_lon, max_lat = shape.bounds
                if min_lon < -180.0 or max_lon > 180.0:
                    problems.add(path, "longitude outside [-180, 180]")
                if min_lat < -90.0 or max_lat > 90.0:
                    problems.add(path, "latitude outside [-90, 90]")
                if not shape.is_valid:
                    problems.add(path, f"invalid geometry: {explain_validity(shape)}")
                elif not shape.area > 0.0:
                    problems.add(path, "empty polygon: it encloses no area")
        problems.raise_if_any("invalid area", GeoJSONError)
        return cls(_orient(shape))

    @classmethod
    def union(cls, areas: Iterable[Area]) -> Area:
        """The union of one or more areas (a Polygon, or a MultiPolygon for disjoint parts).

        A classmethod: call it as ``Area.union([a, b])``. Raises :class:`GeoJSONError` when
        ``areas`` is empty (there is no empty area).
        """
        geometries = [area.geometry for area in areas]
        if not geometries:
            raise GeoJSONError("cannot unite no areas", [("areas", "no area given")])
        if len(geometries) == 1:
            return cls(geometries[0])
        united = shapely.union_all(geometries)
        if not isinstance(united, (Polygon, MultiPolygon)):  # pragma: no cover - defensive
            polygons = [
                part
                for part in shapely.get_parts(united)
                if isinstance(part, (Polygon, MultiPolygon))
            ]
            united = shapely.union_all(polygons)
        return cls.from_geometry(united, path="union")

    # ---- accessors

    @property
    def kind(self) -> AreaKind:
        """``"Polygon"`` or ``"MultiPolygon"``."""
        return "Polygon" if isinstance(self.geometry, Polygon) else "MultiPolygon"

    @property
    def bounds(self) -> Bounds:
        """``(min_lon, min_lat, max_lon, max_lat)``."""
        min_lon, min_lat, max_lon, max_lat = self.geometry.bounds
        return (float(min_lon), float(min_lat), float(max_lon), float(max_lat))

    def to_geojson(self) -> dict[str, Any]:
        """The canonical GeoJSON mapping (a new, JSON-serialisable dict of lists of floats)."""
        geometry = self.geometry
        if isinstance(geometry, Polygon):
            return {"type": "Polygon", "coordinates": _polygon_coordinates(geometry)}
        return {
            "type": "MultiPolygon",
            "coordinates": [_polygon_coordinates(part) for part in geometry.geoms],
        }

    # ---- predicates

    def intersects(self, other: Area) -> bool:
        """Whether the two areas share at least one point (touching boundaries count)."""
        return bool(self.geometry.intersects(other.geometry))

    def contains(self, other: Area) -> bool:
        """Whether ``other`` lies inside this area (boundaries may touch)."""
        return bool(self.geometry.contains(other.geometry))

    def within(self, other: Area) -> bool:
        """Whether this area lies inside ``other``; the same as ``other.contains(self)``."""
        return bool(self.geometry.within(other.geometry))

    def __repr__(self) -> str:
        n = int(shapely.get_num_coordinates(self.geometry))
        return f"Area({self.kind}, {n} positions, bounds={self.bounds})"


# ----------------------------------------------------------------------------------- GeoIndex

K = TypeVar("K", bound=Hashable)

MatchMode = Literal["intersects", "within", "contains"]
"""How an *indexed* area must relate to the query area in :meth:`GeoIndex.match`:

- ``"intersects"``: the indexed area shares at least one point with the query area;
- ``"within"``: the indexed area lies inside the query area (a child inside a rollout target);
- ``"contains"``: the indexed area contains the query area (a rollout target that contains a
  child's area, asked from the child's side).
"""

QueryPredicate = Literal["intersects", "contains", "within"]
"""shapely's STRtree convention for :meth:`GeoIndex.query`: ``predicate(query, indexed)``."""

# match mode (subject: indexed area) -> STRtree predicate (subject: query area)
_TREE_PREDICATE: Final[dict[str, str]] = {
    "intersects": "intersects",
    "within": "contains",
    "contains": "within",
}
# query predicate (subject: query area) -> match mode (subject: indexed area)
_QUERY_TO_MATCH: Final[dict[str, MatchMode]] = {
    "intersects": "intersects",
    "contains": "within",
    "within": "contains",
}
_INITIAL_CAPACITY: Final = 16


class GeoIndex(Generic[K]):
    """A spatial index of areas under hashable keys, for matching rollouts and children.

    Used from both sides: an index of children's areas answers "which children does this
    rollout target reach?" (``match(target, "intersects")`` or ``match(target, "within")``);
    an index of rollout targets answers "which rollouts reach this child?"
    (``match(child_area, "intersects")`` or ``match(child_area, "contains")``).

    Implementation: a shapely ``STRtree`` over the areas known at the last rebuild, plus the
    areas added since, checked by brute force (vectorised shapely predicates). STRtree is
    immutable, so the tree is rebuilt lazily, at the next query, once the recent additions pass
    ``max(rebuild_min, rebuild_fraction * len(self))``: :meth:`add` stays O(1) amortised and a
    rebuild's O(n log n) is spread over the ~``rebuild_fraction * n`` additions that caused
    it. Removals leave a tombstone that queries filter out; the arrays are compacted once half
    of the slots are dead. Results are exact (shapely predicates, not bounding boxes) and in
    insertion order of the keys (replacing a key's area keeps its place). All methods are
    guarded by one lock and may be called from several threads.

    Cost (100,000 small areas, see ``benchmarks/geo_index.py``): building ~70 ms; a target
    query ~80 us; one :meth:`add` ~1 us (amortised ~8 us with the lazy rebuilds it causes);
    memory ~0.4 KiB per entry on top of the shared areas (slot arrays, key dict, tree nodes).
    """

    __slots__ = (
        "_alive",
        "_bounds",
        "_bounds_upto",
        "_dead",
        "_geometries",
        "_keys",
        "_lock",
        "_n",
        "_n_built",
        "_next_seq",
        "_rebuild_fraction",
        "_rebuild_min",
        "_seq",
        "_slot_of",
        "_tree",
        "_tree_slots",
    )

    def __init__(self, *, rebuild_min: int = 64, rebuild_fraction: float = 0.1) -> None:
        if rebuild_min < 1:
            raise ConfigurationError(f"rebuild_min must be at least 1, got {rebuild_min}")
        if not 0.0 < rebuild_fraction <= 10.0:
            raise ConfigurationError(f"rebuild_fraction must be in (0, 10], got {rebuild_fraction}")
        self._rebuild_min = rebuild_min
        self._rebuild_fraction = rebuild_fraction
        self._lock = threading.Lock()
        # Per slot (a slot is one add; a replaced or removed key leaves a dead slot behind):
        self._geometries: npt.NDArray[np.object_] = np.empty(_INITIAL_CAPACITY, dtype=object)
        self._seq: npt.NDArray[np.int64] = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        self._alive: npt.NDArray[np.bool_] = np.zeros(_INITIAL_CAPACITY, dtype=bool)
        # Bounding boxes of the recent additions (slots >= _n_built), filled lazily at query
        # time for slots < _bounds_upto: they pre-filter the brute-force check (32 B a slot).
        self._bounds: npt.NDArray[np.float64] = np.zeros((_INITIAL_CAPACITY, 4))
        self._bounds_upto = 0
        self._keys: list[K] = []
        self._slot_of: dict[K, int] = {}
        self._n = 0  # slots in use
        self._dead = 0  # dead slots among them
        self._next_seq = 0
        # The tree covers slots [0, _n_built); _tree_slots maps a tree index to its slot.
        self._tree: Any = None
        self._tree_slots: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._n_built = 0

    # ---- size and membership

    def __len__(self) -> int:
        with self._lock:
            return self._n - self._dead

    def __contains__(self, key: object) -> bool:
        try:
            with self._lock:
                return key in self._slot_of
        except TypeError:  # an unhashable key is not in the index
            return False

    def keys(self) -> list[K]:
        """The indexed keys, in insertion order."""
        with self._lock:
            return list(self._slot_of)  # dicts keep insertion order; replacement keeps it too

    def area(self, key: K) -> Area:
        """The area indexed under ``key``; NotFoundError when it is not indexed."""
        with self._lock:
            slot = self._slot_of.get(key)
            if slot is None:
                raise NotFoundError("indexed area", key)
            return Area(self._geometries[slot])

    # ---- changes

    def add(self, key: K, area: Area) -> None:
        """Index ``area`` under ``key``; an already indexed key gets the new area (in place)."""
        with self._lock:
            self._add(key, area)
            self._maybe_compact()

    def add_many(self, items: Iterable[tuple[K, Area]]) -> None:
        """:meth:`add` for many items under one lock acquisition."""
        with self._lock:
            for key, area in items:
                self._add(key, area)
            self._maybe_compact()

    def remove(self, key: K) -> None:
        """Forget ``key``; raises :class:`NotFoundError` when it is not indexed."""
        with self._lock:
            if not self._remove(key):
                raise NotFoundError("indexed area", key)
            self._maybe_compact()

    def discard(self, key: K) -> bool:
        """Forget ``key`` if it is indexed; answers whether it was."""
        with self._lock:
            removed = self._remove(key)
            if removed:
                self._maybe_compact()
            return removed

    def rebuild(self) -> None:
        """Build the tree now (e.g. after a bulk load), instead of at the next query."""
        with self._lock:
            self._rebuild()

    # ---- queries

    def match(self, area: Area, mode: MatchMode = "intersects") -> list[K]:
        """The keys whose *indexed* area relates to ``area`` as ``mode`` says.

        ``"intersects"``: the indexed area and ``area`` share a point; ``"within"``: the
        indexed area lies inside ``area``; ``"contains"``: the indexed area contains ``area``.
        Keys come in insertion order.
        """
        predicate = _TREE_PREDICATE.get(mode)
        if predicate is None:
            raise ConfigurationError(
                f"unknown match mode {mode!r}; expected 'intersects', 'within' or 'contains'"
            )
        geometry = area.geometry
        with self._lock:
            if self._should_rebuild():
                self._rebuild()
            found: list[npt.NDArray[np.intp]] = []
            if self._tree is not None and self._n_built:
                hits = self._tree.query(geometry, predicate=predicate)
                found.append(self._tree_slots[hits])
            if self._n > self._n_built:
                found.append(self._match_pending(geometry, mode))
            if not found:
                return []
            slots = np.concatenate(found) if len(found) > 1 else found[0]
            slots = slots[self._alive[slots]]
            slots = slots[np.argsort(self._seq[slots], kind="stable")]
            keys = self._keys
            return [keys[slot] for slot in slots.tolist()]

    def query(self, area: Area, predicate: QueryPredicate = "intersects") -> list[K]:
        """shapely STRtree's convention: the keys ``k`` for which ``predicate(area, indexed[k])``.

        So ``query(target, "contains")`` answers the indexed areas that ``target`` contains
        (the same as ``match(target, "within")``), and ``query(child, "within")`` the indexed
        areas that contain ``child`` (the same as ``match(child, "contains")``).
        """
        mode = _QUERY_TO_MATCH.get(predicate)
        if mode is None:
            raise ConfigurationError(
                f"unknown predicate {predicate!r}; expected 'intersects', 'contains' or 'within'"
            )
        return self.match(area, mode)

    # ---- internals (the lock is held)

    def _match_pending(self, geometry: Any, mode: MatchMode) -> npt.NDArray[np.intp]:
        """Brute force over the recent additions: bounding boxes first, then the predicate."""
        start = max(self._bounds_upto, self._n_built)
        if self._n > start:  # dead slots hold None: NaN bounds, never selected
            self._bounds[start : self._n] = shapely.bounds(self._geometries[start : self._n])
            self._bounds_upto = self._n
        box = self._bounds[self._n_built : self._n]
        min_x, min_y, max_x, max_y = geometry.bounds
        if mode == "within":  # the indexed box lies inside the query box
            near = (box[:, 0] >= min_x) & (box[:, 1] >= min_y)
            near &= (box[:, 2] <= max_x) & (box[:, 3] <= max_y)
        elif mode == "contains":  # the indexed box covers the query box
            near = (box[:, 0] <= min_x) & (box[:, 1] <= min_y)
            near &= (box[:, 2] >= max_x) & (box[:, 3] >= max_y)
        else:  # the boxes overlap
            near = (box[:, 0] <= max_x) & (box[:, 2] >= min_x)
            near &= (box[:, 1] <= max_y) & (box[:, 3] >= min_y)
        candidates = np.flatnonzero(near) + self._n_built
        if not len(candidates):
            return candidates
        near_geometries = self._geometries[candidates]
        if mode == "intersects":
            mask = shapely.intersects(near_geometries, geometry)
        elif mode == "within":
            mask = shapely.within(near_geometries, geometry)
        else:
            mask = shapely.contains(near_geometries, geometry)
        selected: npt.NDArray[np.intp] = candidates[mask]
        return selected

    def _add(self, key: K, area: Area) -> None:
        old = self._slot_of.get(key)
        if old is None:
            seq = self._next_seq
            self._next_seq += 1
        else:
            seq = int(self._seq[old])
            self._kill(old)
        if self._n == len(self._geometries):
            self._grow()
        slot = self._n
        self._geometries[slot] = area.geometry
        self._seq[slot] = seq
        self._alive[slot] = True
        self._keys.append(key)
        self._slot_of[key] = slot
        self._n += 1

    def _remove(self, key: K) -> bool:
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return False
        self._kill(slot)
        return True

    def _kill(self, slot: int) -> None:
        self._alive[slot] = False
        self._geometries[slot] = None  # the tree keeps its own references until a rebuild
        self._dead += 1

    def _grow(self) -> None:
        capacity = max(_INITIAL_CAPACITY, 2 * len(self._geometries))
        geometries = np.empty(capacity, dtype=object)
        geometries[: self._n] = self._geometries[: self._n]
        seq = np.zeros(capacity, dtype=np.int64)
        seq[: self._n] = self._seq[: self._n]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self._n] = self._alive[: self._n]
        bounds = np.zeros((capacity, 4))
        bounds[: self._bounds_upto] = self._bounds[: self._bounds_upto]
        self._geometries, self._seq, self._alive = geometries, seq, alive
        self._bounds = bounds

    def _should_rebuild(self) -> bool:
        pending = self._n - self._n_built
        live = self._n - self._dead
        return pending > max(self._rebuild_min, self._rebuild_fraction * live)

    def _rebuild(self) -> None:
        slots = np.flatnonzero(self._alive[: self._n])
        # Fancy indexing copies: the tree owns its array, so _kill may clear our slots.
        self._tree = shapely.STRtree(self._geometries[slots]) if len(slots) else None
        self._tree_slots = slots
        self._n_built = self._bounds_upto = self._n

    def _maybe_compact(self) -> None:
        """Drop dead slots once they are half of all slots (O(n), after Ω(n) removals)."""
        if self._dead <= max(self._rebuild_min, self._n // 2):
            return
        live = np.flatnonzero(self._alive[: self._n])
        live = live[np.argsort(self._seq[live], kind="stable")]  # new slots in key order
        count = len(live)
        capacity = max(_INITIAL_CAPACITY, 2 * count)
        geometries = np.empty(capacity, dtype=object)
        geometries[:count] = self._geometries[live]
        seq = np.zeros(capacity, dtype=np.int64)
        seq[:count] = self._seq[live]
        alive = np.zeros(capacity, dtype=bool)
        alive[:count] = True
        old_keys = self._keys
        self._keys = [old_keys[slot] for slot in live.tolist()]
        self._slot_of = {key: slot for slot, key in enumerate(self._keys)}
        self._geometries, self._seq, self._alive = geometries, seq, alive
        self._bounds, self._bounds_upto = np.zeros((capacity, 4)), 0
        self._n, self._dead = count, 0
        # Slots were renumbered: the old tree is useless; the next query rebuilds.
        self._tree, self._tree_slots, self._n_built = None, np.zeros(0, dtype=np.intp), 0
