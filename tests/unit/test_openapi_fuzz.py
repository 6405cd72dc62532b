"""Every endpoint fuzzed from its OpenAPI document: never a 5xx, never a change on a refusal.

Requests come from the documents (schemathesis' generators, through Hypothesis): for every
operation of both apps, requests whose parameters and body fit the document (``positive``),
requests that break it (``negative``: wrong types, missing fields, values out of range),
bodies that are not even JSON (``raw``), and documented bodies laid over a request the app
accepts (``overlay``, to get past the first check). Path parameters are mostly ids of real
records, tokens mostly valid. Each answer must

- never be a 5xx;
- be a documented status of the operation, with a body that validates against the
  document (when the path parameters name a path of that operation);
- on a refusal (4xx), be the JSON error shape and leave the stored state as it was (the
  services, releases, tasks and events of the coordinator; the rollouts, children, per-child
  states and child tokens of the manager).

``RC_FUZZ_EXAMPLES`` sets the examples per operation (30 by default, about 30 s in all on two
cores); raise it for a deeper search. The hand-written fuzzers of ``test_coordinator_app.py``
and ``test_rollout_app.py`` shape bodies field by field; these follow the document, and so
reach the query parameters too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.parse
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core import NOT_SET
from schemathesis.generation.modes import GenerationMode

from release_coordinator import TaskServiceKit
from release_coordinator.server.openapi import coordinator_openapi, rollout_openapi

from .test_coordinator_app import OPS, PORTAL, snapshot, static_world
from .test_openapi import Checker, operations
from .test_rollout_app import ARCHIVE, as_json, fuzz_node, rollout_snapshot, strategy
from .test_rollout_manager import EUROPE, INSIDE, result

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=int(os.environ.get("RC_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

COORDINATOR_DOC = coordinator_openapi()
ROLLOUT_DOC = rollout_openapi()
COORDINATOR = schemathesis.openapi.from_dict(COORDINATOR_DOC)
ROLLOUT = schemathesis.openapi.from_dict(ROLLOUT_DOC)
CHECKERS = {"coordinator": Checker(COORDINATOR_DOC), "rollout": Checker(ROLLOUT_DOC)}

#: Bodies the apps accept, by operation: "overlay" lays generated fields over them.
GOOD: dict[tuple[str, str], Any] = {
    ("/task-services", "POST"): {"name": "spare", "url": "memory://spare", "check": True},
    ("/task-services/{service_id}", "PATCH"): {"name": "renamed"},
    ("/releases", "POST"): {"name": "r", "studies": ["SD_1"], "tags": ["t"]},
    ("/releases/{release_id}", "PATCH"): {"name": "r2", "description": "d"},
    ("/releases/{release_id}/cancel", "POST"): {"reason": "r"},
    ("/tasks/{task_id}", "PATCH"): {"state": "staged", "progress": 100},
    ("/releases/{release_id}/notes", "POST"): {"text": "# n\n\n- a", "study_id": "SD_1"},
    ("/notes/{note_id}", "PATCH"): {"text": "edited"},
    ("/releases/{release_id}/tasks/{task_id}", "PATCH"): {"state": "staged", "progress": "99%"},
    ("/poll", "POST"): {"id": "c1", "geographic_area": INSIDE, "number_of_children": 0},
    ("/result", "POST"): result("c1", "canary-10", 2),
    ("/end_stage", "POST"): {"id": "c1", "strategy_id": "42", "stage_name": "canary-10"},
    ("/rollouts", "POST"): as_json("44", start=False),
    ("/rollouts/{rollout_id}/abort", "POST"): {"reason": "enough"},
}
GOOD_MULTIPART = {"strategy": strategy("44"), "archive": ARCHIVE, "rollout": {"target": EUROPE}}

#: The choices of a request that are not the case: which ids, which token, which fields...
PICKS = st.fixed_dictionaries(
    {
        "child_tokens": st.booleans(),
        "ids": st.lists(st.integers(0, 9), min_size=2, max_size=2),
        "token": st.integers(0, 11),
        "keep": st.integers(0, 2**16 - 1),
        "raw": st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[]", b"NaN", b"\xff"]),
        "null": st.booleans(),
    }
)

_STRATEGIES: dict[tuple[str, str, str, GenerationMode], Any] = {}


def cases(api: str, path: str, method: str, mode: GenerationMode) -> Any:
    """The (cached) strategy of schemathesis cases for one operation."""
    key = (api, path, method, mode)
    if key not in _STRATEGIES:
        schema = COORDINATOR if api == "coordinator" else ROLLOUT
        _STRATEGIES[key] = schema[path][method].as_strategy(generation_mode=mode)
    return _STRATEGIES[key]


# -- turning a case into bytes on the wire ----------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def query_string(query: Any) -> str:
    """A query string of whatever the case holds (lone surrogates travel as bytes)."""
    if not isinstance(query, dict):
        return ""
    pairs = []
    for name, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((_text(name), _text(item)))
    return urllib.parse.urlencode(pairs, encoding="utf-8", errors="surrogatepass")


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode("ascii")


def multipart_body(body: Any) -> tuple[bytes, str]:
    """A multipart/form-data body of a dict of parts (anything else: one odd part)."""
    boundary = "fuzz-boundary-7d1e"
    parts = body if isinstance(body, dict) else {"body": body}
    out = b""
    for name, value in parts.items():
        quoted = _text(name).replace('"', "%22").encode("utf-8", "surrogatepass")
        out += (
            b"--" + boundary.encode() + b"\r\n"
            b'Content-Disposition: form-data; name="'
            + quoted
            + b'"\r\n\r\n'
            + _bytes(value)
            + b"\r\n"
        )
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, f"multipart/form-data; boundary={boundary}"


def names_the_path(value: str) -> bool:
    """Whether a (percent-encoded) path parameter stays one path segment once decoded."""
    return (
        bool(value) and "/" not in value and "%2f" not in value.lower() and value not in (".", "..")
    )


# -- one fuzzing test per operation --------------------------------------------------------------


def fuzz(api: str, path: str, method: str) -> Any:
    document = COORDINATOR_DOC if api == "coordinator" else ROLLOUT_DOC
    has_body = any(
        p == path and m == method and "requestBody" in op for p, m, op in operations(document)
    )
    modes = ["positive", "negative"] + (["raw", "overlay", "overlay"] if has_body else [])

    def mode_and_case(mode: str) -> Any:
        generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
        return st.tuples(st.just(mode), cases(api, path, method, generation))

    # Everything is drawn by @given, before the event loop runs (a draw that fails inside it
    # leaves anyio a task with an exception nobody retrieves).
    @FUZZ
    @given(drawn=st.deferred(lambda: st.sampled_from(modes).flatmap(mode_and_case)), picks=PICKS)
    async def test(anyio_backend: str, drawn: tuple[str, Any], picks: dict[str, Any]) -> None:
        mode, case = drawn
        if api == "coordinator":
            world, ids = await static_world()
            spare = TaskServiceKit("spare")
            world.transport.add("memory://spare", spare)
            client, take = world.client, lambda: snapshot(world.coordinator)
            note = await world.coordinator.add_note(ids["rid"], "a note", study_id="SD_1")
            webhook = await world.coordinator.add_webhook("http://127.0.0.1:9/hook")
            known = {
                "service_id": [ids["sid"]],
                "release_id": [ids["rid"], ids["done"]],
                "task_id": [ids["tid"]],
                "note_id": [note.id],
                "study_id": ["SD_1"],
                "webhook_id": [webhook.id],
            }
            tokens = [OPS, OPS, OPS, PORTAL, {}, {"Authorization": "Bearer nope"}]
        else:
            node, child, child_token = await fuzz_node(picks["child_tokens"])
            client, take = node.client, lambda: rollout_snapshot(node)
            known = {
                "rollout_id": ["42", "43"],
                "release_id": ["42"],
                "child_id": [child],
                "stage_name": ["canary-10", "ab-50"],
            }
            operator = path.startswith(("/rollouts", "/children"))
            tokens = (
                [OPS, OPS, child_token, {}] if operator else [child_token, child_token, {}, OPS]
            )
        try:
            # the path: real ids, mostly
            values = {}
            plain = True
            for name, pick in zip(re.findall(r"\{(\w+)\}", path), picks["ids"], strict=False):
                options = [*known[name], *known[name], None]
                choice = options[pick % len(options)]
                values[name] = choice or str(case.path_parameters.get(name, ""))
                plain = plain and names_the_path(values[name])
            url = re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)
            query = query_string(case.query)
            if query and len(query) < 8000:  # longer: no HTTP client or server takes it
                url = f"{url}?{query}"

            # the body
            headers = dict(tokens[picks["token"] % len(tokens)])
            content = b""
            if has_body:
                media = case.media_type or "application/json"
                body = None if case.body is NOT_SET else case.body
                if mode == "overlay" and isinstance(body, dict):
                    base = GOOD_MULTIPART if "multipart" in media else GOOD.get((path, method), {})
                    keep = {k for i, k in enumerate(sorted(body)) if picks["keep"] >> i & 1}
                    body = {**base, **{k: v for k, v in body.items() if k in keep}}
                if mode == "raw":
                    content = picks["raw"]
                    headers["Content-Type"] = media
                elif "multipart" in media:
                    content, headers["Content-Type"] = multipart_body(body)
                elif isinstance(body, bytes):  # negative: not JSON at all
                    content = body
                    headers["Content-Type"] = media
                elif body is not None or picks["null"]:
                    content = json.dumps(body).encode("ascii")
                    headers["Content-Type"] = "application/json"

            before = await take()
            response = await client.request(method, url, content=content, headers=headers)
            assert response.status_code < 500, response.text
            if plain:
                CHECKERS[api].check(response, path, method)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"code", "message", "details"}
                assert await take() == before, f"{method} {url} changed the state"
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
            if api == "coordinator":
                with contextlib.suppress(Exception):
                    await world.aclose()
                    await spare.aclose()

    test.__name__ = _name(api, path, method)
    return test


def _name(api: str, path: str, method: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"
    return f"test_fuzz_{api}_{method.lower()}_{slug}"


for _api, _document in (("coordinator", COORDINATOR_DOC), ("rollout", ROLLOUT_DOC)):
    for _path, _method, _ in operations(_document):
        globals()[_name(_api, _path, _method)] = fuzz(_api, _path, _method)


def test_every_documented_operation_is_fuzzed() -> None:
    for api, document in (("coordinator", COORDINATOR_DOC), ("rollout", ROLLOUT_DOC)):
        for path, method, _ in operations(document):
            assert _name(api, path, method) in globals(), (api, path, method)


def test_the_multipart_encoder_is_what_the_app_reads() -> None:
    from release_coordinator.server.request_body import parse_multipart

    body, content_type = multipart_body({"strategy": "id: 1", "archive": b"\x00PK", "x": {"a": 1}})
    parts = parse_multipart(body, content_type)
    assert parts["strategy"][0] == b"id: 1"
    assert parts["archive"][0] == b"\x00PK"
    assert json.loads(parts["x"][0]) == {"a": 1}
