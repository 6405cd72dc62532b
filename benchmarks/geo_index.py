"""Benchmark of release_coordinator.rollout.geo: index build, matching in both directions, memory.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/geo_index.py [--children N] [--targets M]``

- children: small random hexagons (0.01-0.1 degree radius) anywhere on the globe;
- targets: larger random hexagons (1-5 degrees radius), as rollout target areas.

Memory: tracemalloc sees Python objects and numpy arrays but not what GEOS allocates with
malloc for the geometries, so the resident-set growth is printed too (Linux /proc only).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from typing import Any

import numpy as np
import shapely

from release_coordinator.rollout.geo import Area, GeoIndex


def hexagon_coordinates(count: int, seed: int, min_radius: float, max_radius: float) -> Any:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180 + max_radius, 180 - max_radius, count)
    lat = rng.uniform(-90 + max_radius, 90 - max_radius, count)
    radius = rng.uniform(min_radius, max_radius, (count, 1))
    angles = np.linspace(0, 2 * np.pi, 7)[:-1] + rng.uniform(0, np.pi / 3, (count, 1))
    xy = np.stack(
        [lon[:, None] + radius * np.cos(angles), lat[:, None] + radius * np.sin(angles)], -1
    )
    return np.concatenate([xy, xy[:, :1]], axis=1)


def random_hexagons(count: int, seed: int, min_radius: float, max_radius: float) -> Any:
    return shapely.polygons(hexagon_coordinates(count, seed, min_radius, max_radius))


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        return 0


def timed(label: str, seconds: float, extra: str = "") -> None:
    print(f"{label:<52} {seconds * 1000:9.1f} ms  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=1_000)
    args = parser.parse_args()
    n, m = args.children, args.targets

    print(
        f"shapely {shapely.__version__}, GEOS {shapely.geos_version_string}, numpy {np.__version__}"
    )
    print(f"{n} child areas, {m} target areas\n")

    # ---- areas
    child_xy = hexagon_coordinates(n, seed=1, min_radius=0.01, max_radius=0.1)
    gc.collect()
    rss0 = rss_bytes()
    child_geometries = shapely.polygons(child_xy)
    rss_geometries = rss_bytes() - rss0
    del child_xy
    target_geometries = random_hexagons(m, seed=2, min_radius=1.0, max_radius=5.0)

    sample = [Area(g).to_geojson() for g in child_geometries[:10_000]]
    start = time.perf_counter()
    for obj in sample:
        Area.from_geojson(obj)
    elapsed = time.perf_counter() - start
    timed(
        f"Area.from_geojson x {len(sample)} (7 positions)",
        elapsed,
        f"{elapsed / len(sample) * 1e6:.1f} us/area",
    )
    start = time.perf_counter()
    children = [Area.from_geometry(g) for g in child_geometries]
    elapsed = time.perf_counter() - start
    timed(f"Area.from_geometry x {n}", elapsed, f"{elapsed / n * 1e6:.1f} us/area")
    targets = [Area.from_geometry(g) for g in target_geometries]

    # ---- build
    gc.collect()
    start = time.perf_counter()
    index: GeoIndex[int] = GeoIndex()
    index.add_many(enumerate(children))
    added = time.perf_counter()
    index.rebuild()
    built = time.perf_counter()
    timed(f"build: add_many({n})", added - start)
    timed("build: STRtree", built - added)
    timed("build: total", built - start)

    # ---- target -> children
    start = time.perf_counter()
    found = 0
    for target in targets:
        found += len(index.match(target, "intersects"))
    elapsed = time.perf_counter() - start
    timed(
        f"match(target, 'intersects') x {m}",
        elapsed,
        f"{m / elapsed:,.0f} queries/s, {found / m:.1f} children per target",
    )
    start = time.perf_counter()
    found = 0
    for target in targets:
        found += len(index.match(target, "within"))
    elapsed = time.perf_counter() - start
    timed(f"match(target, 'within') x {m}", elapsed, f"{m / elapsed:,.0f} queries/s")

    # ---- child -> targets
    target_index: GeoIndex[int] = GeoIndex()
    target_index.add_many(enumerate(targets))
    queries = min(n, 20_000)
    start = time.perf_counter()
    found = 0
    for child in children[:queries]:
        found += len(target_index.match(child, "intersects"))
    elapsed = time.perf_counter() - start
    timed(
        f"targets.match(child, 'intersects') x {queries}",
        elapsed,
        f"{queries / elapsed:,.0f} queries/s, {found / queries:.2f} targets per child",
    )
    start = time.perf_counter()
    for child in children[:queries]:
        target_index.match(child, "contains")
    elapsed = time.perf_counter() - start
    timed(
        f"targets.match(child, 'contains') x {queries}",
        elapsed,
        f"{queries / elapsed:,.0f} queries/s",
    )

    # ---- incremental adds interleaved with queries (pending list + lazy rebuilds)
    extra = [Area.from_geometry(g) for g in random_hexagons(20_000, 3, 0.01, 0.1)]
    start = time.perf_counter()
    for i, area in enumerate(extra):
        index.add(n + i, area)
    elapsed = time.perf_counter() - start
    timed(f"add() x {len(extra)} (no queries)", elapsed, f"{elapsed / len(extra) * 1e6:.2f} us/add")
    start = time.perf_counter()
    for i, area in enumerate(extra):
        index.add(n + len(extra) + i, area)
        if i % 100 == 0:
            index.match(targets[i % m])
    elapsed = time.perf_counter() - start
    timed(
        f"add() x {len(extra)} + a query every 100 adds",
        elapsed,
        f"{elapsed / len(extra) * 1e6:.2f} us/add incl. lazy rebuilds and queries",
    )
    start = time.perf_counter()
    for i in range(0, n, 2):
        index.remove(i)
    elapsed = time.perf_counter() - start
    timed(f"remove() x {n // 2}", elapsed, f"{elapsed / (n // 2) * 1e6:.2f} us/remove")
    start = time.perf_counter()
    for target in targets:
        index.match(target)
    elapsed = time.perf_counter() - start
    timed(f"match(target) x {m} after removals", elapsed, f"{m / elapsed:,.0f} queries/s")
    del index, target_index

    # ---- memory
    gc.collect()
    tracemalloc.start()
    snapshot0 = tracemalloc.get_traced_memory()[0]
    areas = [Area(g) for g in child_geometries]
    area_python = tracemalloc.get_traced_memory()[0] - snapshot0
    snapshot1 = tracemalloc.get_traced_memory()[0]
    rss1 = rss_bytes()
    index = GeoIndex()
    index.add_many(enumerate(areas))
    index.rebuild()
    index_python = tracemalloc.get_traced_memory()[0] - snapshot1
    rss_index = rss_bytes() - rss1
    tracemalloc.stop()
    print()
    print(f"memory per child area (n={n}):")
    print(f"  Area object (tracemalloc, Python side)          {area_python / n:8.0f} B")
    print(f"  its shapely geometry (RSS growth, GEOS + wrapper) {rss_geometries / n:6.0f} B")
    print(f"  index entry (tracemalloc: arrays, dict, keys)   {index_python / n:8.0f} B")
    print(f"  index entry (RSS growth, incl. STRtree nodes)   {rss_index / n:8.0f} B")


if __name__ == "__main__":
    main()
