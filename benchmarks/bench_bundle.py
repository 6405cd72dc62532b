"""What the rollout benchmarks deploy: one strategy (a WaitForSignal canary), its ``fns.zip``,
and square areas. Imported by ``rollout_poll.py``, ``store.py`` and ``http_poll.py``."""

from __future__ import annotations

import io
import zipfile
from typing import Any

#: ``STRATEGY.format(id=...)``: a rollout's strategy text.
STRATEGY = """\
id: "{id}"
name: bench-{id}
type: minor
functions:
  - name: f
    base_version: {{path: fns/f1, env: python}}
    new_version: {{path: fns/f2, env: python}}
stages:
  - name: canary
    type: WaitForSignal
    func_name: f
    variants:
      - {{name: base_version, trafficPercentage: 90}}
      - {{name: new_version, trafficPercentage: 10}}
    metrics_conditions: [{{name: errorRate, threshold: "<=0.01"}}]
    end_conditions: [{{name: minCalls, threshold: "100"}}]
    end_action: {{onSuccess: rollout, onFailure: rollback}}
rollback: {{action: {{function: base_version}}}}
"""


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    """The GeoJSON polygon of a square with its south-west corner at ``(lon, lat)``."""
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def archive() -> bytes:
    """The ``fns.zip`` of :data:`STRATEGY`: the two versions of function ``f``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("fns/f1/fn.py", "def handler(r): return 1")
        zf.writestr("fns/f2/fn.py", "def handler(r): return 2")
    return buffer.getvalue()
