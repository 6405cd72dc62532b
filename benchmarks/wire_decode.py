"""Wire decode benchmark: a ``/poll`` body and a ``/result`` body, old decoder vs new.

What the rollout app does with a request's bytes before the manager's work: for ``/poll``,
from the bytes to the id, the area and the count (old: ``parse_json`` then ``dict.get``; new:
:func:`~release_coordinator.server.request_body.decode_object` to the ``PollRequest`` Struct with
msgspec); for ``/result``, from the bytes to a :class:`ResultReport` (old: ``parse_json`` then
``parse_result``; new: msgspec to a JSON object then ``parse_result``).

The old code is another checkout's ``src`` (``--old-src``, e.g. a git worktree of the commit
before the msgspec schemas); old and new run in alternating subprocesses (``PYTHONPATH`` set to
each ``src``), ``--rounds`` times each, and the best round of each is reported::

    python benchmarks/wire_decode.py --old-src /tmp/base/src [--rounds 3] [--seconds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NEW_SRC = Path(__file__).resolve().parent.parent / "src"

_RING = [[2.0 + i / 10, 48.0 + (i % 3) / 10] for i in range(12)]
POLL: dict[str, Any] = {
    "id": "CH_01HZX3K9T6Q2WJ8R4N5M7P0ABC",
    "geographic_area": {"type": "Polygon", "coordinates": [[*_RING, _RING[0]]]},
    "number_of_children": 0,
}
_TIMES = {"median": 12.5, "minimum": 1.25, "maximum": 88.0}
RESULT: dict[str, Any] = {
    "id": "CH_01HZX3K9T6Q2WJ8R4N5M7P0ABC",
    "release_id": "42",
    "stage_summaries": [
        {
            "stage_name": f"canary-{i}",
            "status": 2,
            "proxy_times": _TIMES,
            "f1_times_summary": _TIMES,
            "f2_times_summary": _TIMES,
            "f1_err_rate": 0.01,
            "f2_err_rate": 0.02,
            "f1_calls": 1000,
            "f2_calls": 900,
        }
        for i in range(3)
    ],
}


def _decoders() -> dict[str, Callable[[bytes], object]]:
    """The ``/poll`` and ``/result`` decoders of the ``release_coordinator`` imported."""
    from release_coordinator.rollout.results import parse_result

    try:  # where the body readers live since the split of server.common
        from release_coordinator.server import request_body as common
    except ImportError:
        from release_coordinator.server import common  # type: ignore[no-redef]

    if hasattr(common, "decode_object"):  # the msgspec schemas
        from release_coordinator.rollout.bodies import PollRequest
        from release_coordinator.server import rollout_child

        decode_object = common.decode_object
        try:  # the poll's decoder lives with the poll endpoint since it has its own module
            from release_coordinator.server.poll_path import _POLL as poll_decoder
        except ImportError:
            poll_decoder = rollout_child._POLL  # type: ignore[attr-defined]
        result_decoder = rollout_child._RESULT

        def poll(raw: bytes) -> object:
            body = decode_object(raw, poll_decoder)
            if isinstance(body, PollRequest):
                return body.id, body.geographic_area, body.number_of_children
            return body.get("id"), body.get("geographic_area"), body.get("number_of_children")

        def result(raw: bytes) -> object:
            return parse_result(decode_object(raw, result_decoder))

    else:
        parse_json = common.parse_json

        def poll(raw: bytes) -> object:
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise TypeError
            return body.get("id"), body.get("geographic_area"), body.get("number_of_children")

        def result(raw: bytes) -> object:
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise TypeError
            return parse_result(body)

    return {"poll": poll, "result": result}


def _ops_per_second(decode: Callable[[bytes], object], raw: bytes, seconds: float) -> float:
    count, batch = 0, 1000
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            decode(raw)
        count += batch
    return count / elapsed


def child(seconds: float) -> None:
    """One round in this process: ops/s of each decoder, as JSON on stdout."""
    bodies = {"poll": json.dumps(POLL).encode(), "result": json.dumps(RESULT).encode()}
    decoders = _decoders()
    for name, raw in bodies.items():  # warm up, and check that both agree on the values
        decoders[name](raw)
    print(json.dumps({n: _ops_per_second(decoders[n], bodies[n], seconds) for n in bodies}))


def _round(src: Path, seconds: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--seconds", str(seconds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", type=Path, default=Path("/tmp/base/src"))
    parser.add_argument("--new-src", type=Path, default=NEW_SRC)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.seconds)
        return
    best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for which, src in (("old", args.old_src), ("new", args.new_src)):
            for name, value in _round(src, args.seconds).items():
                best[which][name] = max(best[which].get(name, 0.0), value)
    print(f"wire decode, best of {args.rounds} rounds of {args.seconds:g} s (ops/s, one core)")
    print(f"{'body':<8} {'old':>12} {'new':>12} {'new/old':>8}")
    for name in ("poll", "result"):
        old, new = best["old"][name], best["new"][name]
        print(f"{'/' + name:<8} {old:>12,.0f} {new:>12,.0f} {new / old:>8.2f}")


if __name__ == "__main__":
    main()
