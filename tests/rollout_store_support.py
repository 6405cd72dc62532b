"""Records for the RolloutStore contract and equivalence tests: bundles, areas, summaries.

Two strategies: ``two_stage_bundle`` (a ``WaitForSignal`` stage ``canary-10`` then an A/B stage
``ab-50``, as in ``tests/unit/test_rollout_manager.py``) and ``one_stage_bundle`` (a single
A/B stage ``all-in``), so that rollouts of one store have different stage lists.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import ReleaseBundle
from release_coordinator.rollout.results import StageSummary, TimesSummary
from release_coordinator.storage.rollout_base import RolloutStore

__all__ = [
    "ONE_STAGE",
    "TWO_STAGES",
    "archive",
    "area",
    "one_stage_bundle",
    "reopened",
    "square",
    "stage_summary",
    "two_stage_bundle",
]

TWO_STAGES = ("canary-10", "ab-50")
ONE_STAGE = ("all-in",)

_TWO_STAGE_STRATEGY = """\
id: "{id}"
name: checkout-gradual
type: minor
functions:
  - name: checkout
    base_version: {{path: fns/checkout_v1, env: nodejs}}
    new_version: {{path: fns/checkout_v2, env: nodejs}}
stages:
  - name: canary-10
    type: WaitForSignal
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 90}}
      - {{name: new_version, trafficPercentage: 10}}
    metrics_conditions:
      - {{name: errorRate, threshold: "<=0.01"}}
    end_conditions:
      - {{name: minCalls, threshold: "20"}}
    end_action: {{onSuccess: ab-50, onFailure: rollback}}
  - name: ab-50
    type: A/B
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 50}}
      - {{name: new_version, trafficPercentage: 50}}
    metrics_conditions: [{{name: errorRate, threshold: "<0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "10"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""

_ONE_STAGE_STRATEGY = """\
# über-release: a comment, trailing blanks and non-ASCII text, all kept byte-for-byte{blanks}{cr}
id: "{id}"
name: "checkout — all in"
type: major
functions:
  - name: checkout
    base_version: {{path: fns/checkout_v1, env: nodejs}}
    new_version: {{path: fns/checkout_v2, env: nodejs}}
stages:
  - name: all-in
    type: A/B
    func_name: checkout
    variants:
      - {{name: base_version, trafficPercentage: 0}}
      - {{name: new_version, trafficPercentage: 100}}
    metrics_conditions: [{{name: errorRate, threshold: "<0.05"}}]
    end_conditions: [{{name: minCalls, threshold: "1"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def archive(*, extra: bool = False) -> bytes:
    """A function archive with fixed timestamps (the same bytes every time). ``extra`` adds
    folder entries, a nested file, a binary file with every byte value and a folder that the
    strategy does not name."""
    entries: list[tuple[str, bytes]] = [
        ("fns/checkout_v1/index.js", b"module.exports = () => 'v1'"),
        ("fns/checkout_v2/index.js", b"module.exports = () => 'v2'"),
    ]
    if extra:
        entries = [
            ("fns/", b""),
            ("fns/checkout_v1/", b""),
            *entries[:1],
            ("fns/checkout_v2/lib/util.js", "// ünïcode\n".encode()),
            ("fns/checkout_v2/blob.bin", bytes(range(256)) * 4),
            *entries[1:],
            ("fns/unused_v3/main.py", b"print('not named by the strategy')\r\n"),
        ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def two_stage_bundle(release_id: str, *, extra: bool = False) -> ReleaseBundle:
    return ReleaseBundle.from_parts(_TWO_STAGE_STRATEGY.format(id=release_id), archive(extra=extra))


def one_stage_bundle(release_id: str, *, extra: bool = False) -> ReleaseBundle:
    return ReleaseBundle.from_parts(
        _ONE_STAGE_STRATEGY.format(id=release_id, blanks="   ", cr="\r"), archive(extra=extra)
    )


def square(lon: float, lat: float, size: float = 1.0) -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [
            [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
        ],
    }


def area(lon: float, lat: float, size: float = 1.0) -> Area:
    return Area.from_geojson(square(lon, lat, size))


def stage_summary(
    base: float = 12.0,
    *,
    f1_err: float = 0.0,
    f2_err: float = 0.01,
    f1_calls: int = 90,
    f2_calls: int = 10,
) -> StageSummary:
    """A summary whose every float differs (so that a swapped field shows)."""
    return StageSummary(
        TimesSummary(base, base / 4, base * 3.3),
        TimesSummary(base + 0.1, base / 3, base * 2.7),
        TimesSummary(base + 0.2, base / 7, base * 1.9),
        f1_err,
        f2_err,
        f1_calls,
        f2_calls,
    )


@contextlib.asynccontextmanager
async def reopened(store: RolloutStore) -> AsyncIterator[RolloutStore]:
    """Another store on the same data: a second SQL store on the same database (nothing cached
    in the process), or the memory store itself. (The engine's URL: ``store.url`` is for
    showing, with the password hidden.)"""
    from release_coordinator.storage.sql import SQLRolloutStore

    if isinstance(store, SQLRolloutStore):
        other = await SQLRolloutStore.connect(store._db._engine.url)
        try:
            yield other
        finally:
            await other.close()
    else:
        yield store
