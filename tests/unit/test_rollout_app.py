"""rollout_app through httpx.ASGITransport: the child protocol byte for byte, the operator API,
tokens, every refusal, and fuzzing of every POST."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_support import asgi_post
from release_coordinator import (
    ConfigurationError,
    GlobalIncremental,
    InProcessParent,
    LocationSequential,
    PollAnswer,
    Relay,
    ReleaseBundle,
    RolloutManager,
    RolloutStore,
    Waves,
)
from release_coordinator.errors import ValidationError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.server.rollout_app import parse_policy, policy_json, rollout_app
from rollout_store_support import reopened

from .test_rollout_manager import EUROPE, INSIDE, OUTSIDE, STRATEGY, archive, result, square

pytestmark = pytest.mark.anyio

#: One archive for the whole module (a zip holds the time it was built).
ARCHIVE = archive()

OPS = {"Authorization": "Bearer op-token"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def strategy(release_id: str = "42") -> str:
    return STRATEGY.replace('id: "42"', f'id: "{release_id}"')


_BUNDLE = ReleaseBundle.from_parts(STRATEGY, ARCHIVE)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def problem_paths(error: dict[str, Any]) -> set[str]:
    return {p["path"] for p in error["details"]["problems"]}


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge.test")


class Node:
    """A manager served by rollout_app, and a client of it."""

    def __init__(self, store: RolloutStore | None = None, **options: Any) -> None:
        self.clock = Clock()
        self.manager = RolloutManager(store, lost_after=30, clock=self.clock)
        options.setdefault("operator_tokens", {"ops": "op-token"})
        self.app = rollout_app(self.manager, **options)
        self.client = client_for(self.app)

    async def poll(self, child_id: str = "", area: Any = INSIDE, **headers: str) -> httpx.Response:
        body = {"id": child_id, "geographic_area": area, "number_of_children": 0}
        return await self.client.post("/poll", json=body, headers=headers)

    async def fetched(self, area: Any = INSIDE) -> str:
        """A child that fetched release 42 (first stage in progress)."""
        child = (await self.poll("", area)).json()["id"]
        fetched = await self.client.get(f"/release?childID={child}&releaseID=42")
        assert fetched.status_code == 200
        return child  # type: ignore[no-any-return]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = Node()
    try:
        yield n
    finally:
        await n.client.aclose()


# -- the child protocol ------------------------------------------------------------------------

SAMPLE_POLL = {  # the original's sample, key order and all
    "geographic_area": {
        "type": "Polygon",
        "coordinates": [
            [
                [13.34138389963175, 52.49855383364354],
                [13.474766810586402, 52.49855383364354],
                [13.474766810586402, 52.557371936926614],
                [13.34138389963175, 52.557371936926614],
                [13.34138389963175, 52.49855383364354],
            ]
        ],
    },
    "number_of_children": 10,
    "id": "7cb606ee-fde1-4b2c-bffc-20f558fc2867",
}


async def test_poll_registers_and_offers_as_the_original(node: Node) -> None:
    first = await node.client.post("/poll", json=SAMPLE_POLL)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    # (+ the next-poll hint, an extra old agents ignore: idle, 30 s by default)
    assert first.json() == {"id": SAMPLE_POLL["id"], "new_release": "", "next_poll": 30}
    leaf = await node.client.post("/poll", json={"geographic_area": INSIDE})  # no id: new child
    leaf_id = leaf.json()["id"]
    assert leaf_id
    assert leaf.json() == {"id": leaf_id, "new_release": "", "next_poll": 30}
    await node.manager.create_rollout(_BUNDLE, EUROPE)
    again = await node.client.post("/poll", json={"id": leaf_id, "geographic_area": INSIDE})
    assert again.json() == {"id": leaf_id, "new_release": "42", "next_poll": 5}  # offered: soon
    relay = await node.client.post("/poll", json=SAMPLE_POLL)
    assert relay.json()["new_release"] == "42"
    assert relay.json()["target_area"]["type"] == "Polygon"  # the extra for relays
    null_fields = await node.client.post(
        "/poll", json={"id": None, "geographic_area": OUTSIDE, "number_of_children": None}
    )
    assert null_fields.status_code == 200  # Go agents' zero values


async def test_bad_polls_are_400_and_register_nothing(node: Node) -> None:
    open_ring = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}
    for area in (open_ring, {"type": "Point", "coordinates": [0, 0]}, square(200, 0), "x", None):
        error = assert_error(await node.poll("c1", area), 400, "invalid_area")
        assert error["details"]["problems"]
    for body in (
        {"id": 3, "geographic_area": INSIDE},
        {"id": "c1", "geographic_area": INSIDE, "number_of_children": -1},
        {"id": "c1", "geographic_area": INSIDE, "number_of_children": 1.5},
        {"id": "x" * 300, "geographic_area": INSIDE},
    ):
        assert_error(await node.client.post("/poll", json=body), 400, "invalid")
    for raw in (b"", b"{", b"[]", b'"x"', b"NaN", b"\xff"):
        assert_error(await node.client.post("/poll", content=raw), 400, "invalid")
    assert await node.manager.children() == []


async def test_release_and_functions_are_served_as_the_protocol_says(node: Node) -> None:
    await node.manager.create_rollout(_BUNDLE, EUROPE)
    child = (await node.poll()).json()["id"]
    text = await node.client.get("/release", params={"childID": child, "releaseID": "42"})
    assert text.status_code == 200
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.text == STRATEGY
    state = await node.manager.store.child_release("42", child)
    assert state.status is ReleaseStatus.DOING
    assert state.stages["canary-10"].status is StageStatus.IN_PROGRESS

    zipped = await node.client.get("/release/functions/42")
    assert zipped.status_code == 200
    assert zipped.headers["content-type"] == "application/zip"
    assert zipped.headers["content-disposition"] == 'attachment; filename="fns.zip"'
    assert zipped.content == ARCHIVE

    assert_error(await node.client.get(f"/release?childID={child}"), 400, "invalid")
    assert_error(await node.client.get("/release?releaseID=42"), 400, "invalid")
    assert_error(await node.client.get(f"/release?childID={child}&releaseID=7"), 404)
    stranger = (await node.poll("", OUTSIDE)).json()["id"]
    assert_error(await node.client.get(f"/release?childID={stranger}&releaseID=42"), 404)
    assert_error(await node.client.get("/release/functions/7"), 404, "not_found")
    assert_error(await node.client.get("/release/functions/a%2Fb"), 404, "not_found")


async def test_results_in_both_encodings_and_end_stage(node: Node) -> None:
    await node.manager.create_rollout(_BUNDLE, EUROPE)
    a = await node.fetched()
    b = await node.fetched(square(6, 46))
    waiting = await node.client.post("/result", json=result(a, "canary-10", 2))
    assert waiting.status_code == 200
    assert waiting.json() == {}
    again = await node.client.post("/result", json=result(a, "canary-10", 2))
    assert again.status_code == 200  # an identical repeat changes nothing
    ask = {"id": a, "strategy_id": 42, "stage_name": "canary-10"}
    assert (await node.client.post("/end_stage", json=ask)).json() == {"end_stage": False}
    early = await node.client.post("/result", json=result(a, "canary-10", 4, "ab-50"))
    assert_error(early, 409, "invalid_transition")

    times = {"Median": 12.0, "Minimum": 3.0, "Maximum": 40.0}
    documented = {
        "id": b,
        "release_id": 42,
        "stage_summaries": [
            {
                "ProxyTimes": times,
                "F1TimesSummary": times,
                "F2TimesSummary": times,
                "F1ErrRate": 0,
                "F2ErrRate": 0,
                "status": "SuccessWaiting",
                "next_stage": "",
            }
        ],
    }
    assert (await node.client.post("/result", json=documented)).status_code == 200
    assert (await node.client.post("/end_stage", json=ask)).json() == {"end_stage": True}
    for child in (a, b):
        done = await node.client.post("/result", json=result(child, "canary-10", 4, "ab-50"))
        assert done.status_code == 200
        assert (await node.client.post("/result", json=result(child, "ab-50", 4))).json() == {}
    report = await node.manager.report("42")
    assert report.statuses == {"Done": 2}

    assert_error(await node.client.post("/result", json={"id": a}), 400, "invalid")
    assert_error(await node.client.post("/result", content=b"[1"), 400)
    assert_error(await node.client.post("/result", json=result("ghost", "canary-10", 2)), 404)
    unknown_stage = {"id": a, "strategy_id": "42", "stage_name": "nope"}
    assert_error(await node.client.post("/end_stage", json=unknown_stage), 404)
    assert_error(await node.client.post("/end_stage", json={"id": a, "strategy_id": "42"}), 400)
    unknown = {"id": a, "strategy_id": "7", "stage_name": "x"}
    assert_error(await node.client.post("/end_stage", json=unknown), 404)


async def test_an_abort_tells_children_to_roll_back(node: Node) -> None:
    await node.manager.create_rollout(_BUNDLE, EUROPE)
    child = await node.fetched()
    aborted = await node.client.post(
        "/rollouts/42/abort", json={"reason": "bad metrics"}, headers=OPS
    )
    assert aborted.json()["state"] == "aborted"
    assert aborted.json()["reason"] == "bad metrics"
    ask = {"id": child, "strategy_id": "42", "stage_name": "canary-10"}
    answer = await node.client.post("/end_stage", json=ask)
    assert answer.json() == {"end_stage": True, "action": "rollback"}


# -- the operator API ----------------------------------------------------------------------------


def multipart(release_id: str = "42", **rollout: Any) -> dict[str, Any]:
    rollout.setdefault("target", EUROPE)
    return {
        "files": {
            "strategy": ("strategy.yaml", strategy(release_id).encode(), "application/yaml"),
            "archive": ("fns.zip", ARCHIVE, "application/zip"),
            "rollout": (None, json.dumps(rollout).encode(), "application/json"),
        }
    }


def as_json(release_id: str = "42", **fields: Any) -> dict[str, Any]:
    fields.setdefault("target", EUROPE)
    return {
        "strategy": strategy(release_id),
        "archive": base64.b64encode(ARCHIVE).decode(),
        **fields,
    }


async def test_a_rollout_is_uploaded_as_multipart_or_json(node: Node) -> None:
    c = node.client
    created = await c.post("/rollouts", **multipart(), headers=OPS)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "42"
    assert body["state"] == "active"
    assert body["policy"] == {
        "type": "global_incremental",
        "quorum": 1.0,
        "barrier_timeout": None,
        "child_timeout": 3600.0,
    }
    assert body["bundle"]["strategy"]["stages"] == [
        {"name": "canary-10", "type": "WaitForSignal"},
        {"name": "ab-50", "type": "A/B"},
    ]
    assert body["bundle"]["archive"]["size"] == len(ARCHIVE)
    assert body["bundle"]["archive"]["files"] == [
        "fns/checkout_v1/index.js",
        "fns/checkout_v2/index.js",
    ]
    assert (await node.manager.store.get_bundle("42")).archive.data == ARCHIVE

    policy = {"type": "waves", "sizes": [0.5, 1], "min_finished": 2, "barrier_timeout": 60}
    drafted = await c.post(
        "/rollouts",
        json=as_json("43", name="second", priority=3, match="within", start=False, policy=policy),
        headers=OPS,
    )
    assert drafted.status_code == 201, drafted.text
    draft = drafted.json()
    assert (draft["state"], draft["name"], draft["priority"], draft["match"]) == (
        "draft",
        "second",
        3,
        "within",
    )
    assert draft["policy"]["sizes"] == [0.5, 1.0]
    assert draft["policy"]["min_finished"] == 2
    assert_error(await c.post("/rollouts", **multipart(), headers=OPS), 409, "conflict")

    listed = (await c.get("/rollouts", headers=OPS)).json()
    assert [r["id"] for r in listed["items"]] == ["43", "42"]  # by priority
    assert [
        r["id"] for r in (await c.get("/rollouts?state=draft", headers=OPS)).json()["items"]
    ] == ["43"]
    page = (await c.get("/rollouts?limit=1", headers=OPS)).json()
    assert page["next_offset"] == 1
    assert_error(await c.get("/rollouts?state=done", headers=OPS), 422)
    one = (await c.get("/rollouts/43", headers=OPS)).json()
    assert one["bundle"]["strategy"]["id"] == "43"
    assert_error(await c.get("/rollouts/44", headers=OPS), 404, "not_found")


async def test_operator_actions_follow_the_rollout_state(node: Node) -> None:
    c = node.client
    await c.post("/rollouts", json=as_json(start=False), headers=OPS)
    assert_error(await c.post("/rollouts/42/pause", headers=OPS), 409, "invalid_transition")
    assert (await c.post("/rollouts/42/start", headers=OPS)).json()["state"] == "active"
    assert_error(await c.post("/rollouts/42/start", headers=OPS), 409)
    assert (await c.post("/rollouts/42/pause", json={}, headers=OPS)).json()["state"] == "paused"
    assert (await c.post("/rollouts/42/resume", headers=OPS)).json()["state"] == "active"
    extra = await c.post("/rollouts/42/pause", json={"reason": "x"}, headers=OPS)
    assert problem_paths(assert_error(extra, 422)) == {"reason"}
    aborted = await c.post("/rollouts/42/abort", headers=OPS)
    assert aborted.json()["reason"] == "aborted by the operator"
    again = await c.post("/rollouts/42/abort", json={"reason": "twice"}, headers=OPS)
    assert again.status_code == 200  # idempotent, like a repeated cancel: the current state
    assert again.json() == aborted.json()
    refused = assert_error(await c.post("/rollouts/42/resume", headers=OPS), 409)
    assert refused["message"].startswith("rollout 42 cannot 'resume' from state 'aborted'")
    assert_error(await c.post("/rollouts/7/start", headers=OPS), 404)
    assert_error(await c.post("/rollouts/42/abort", json={"reason": 5}, headers=OPS), 422)


async def test_uploads_that_are_refused(node: Node) -> None:
    c = node.client
    bad_strategy = as_json()
    bad_strategy["strategy"] = STRATEGY.replace("trafficPercentage: 90", "trafficPercentage: 80")
    assert_error(await c.post("/rollouts", json=bad_strategy, headers=OPS), 422, "invalid_strategy")
    missing_folder = io.BytesIO()
    with zipfile.ZipFile(missing_folder, "w") as zf:
        zf.writestr("fns/checkout_v1/index.js", "v1")
    no_v2 = {**as_json(), "archive": base64.b64encode(missing_folder.getvalue()).decode()}
    error = assert_error(await c.post("/rollouts", json=no_v2, headers=OPS), 422, "invalid_bundle")
    assert "fns/checkout_v2/" in problem_paths(error)
    not_zip = {**as_json(), "archive": base64.b64encode(b"not a zip").decode()}
    assert_error(await c.post("/rollouts", json=not_zip, headers=OPS), 422, "invalid_bundle")
    assert_error(await c.post("/rollouts", json={**as_json(), "archive": "%%%"}, headers=OPS), 422)
    assert_error(await c.post("/rollouts", json={**as_json(), "archive": 5}, headers=OPS), 422)
    assert_error(await c.post("/rollouts", json={**as_json(), "strategy": 5}, headers=OPS), 422)
    no_parts = {"target": EUROPE}
    assert_error(await c.post("/rollouts", json=no_parts, headers=OPS), 422)
    fields = as_json(
        target=square(0, 0, 500),
        match="near",
        priority=2**40,
        start="yes",
        name=7,
        policy={"type": "waves", "sizes": [0.9, 0.1], "quorum": 2},
        colour="red",
    )
    error = assert_error(await c.post("/rollouts", json=fields, headers=OPS), 422, "invalid")
    paths = problem_paths(error)
    assert {"match", "priority", "start", "name", "colour", "policy"} <= paths
    assert any(p.startswith("target") for p in paths)
    no_target = as_json()
    del no_target["target"]
    assert problem_paths(
        assert_error(await c.post("/rollouts", json=no_target, headers=OPS), 422)
    ) == {"target"}
    parts = multipart()
    parts["files"]["strategy"] = ("s.yaml", b"\xff\xfe", "text/plain")
    assert_error(await c.post("/rollouts", **parts, headers=OPS), 422, "invalid_strategy")
    parts = multipart()
    parts["files"]["extra"] = ("x", b"x", "text/plain")
    assert problem_paths(assert_error(await c.post("/rollouts", **parts, headers=OPS), 422)) == {
        "extra"
    }
    parts = multipart()
    parts["files"]["rollout"] = (None, b"[1]", "application/json")
    assert_error(await c.post("/rollouts", **parts, headers=OPS), 400)
    yaml_body = await c.post(
        "/rollouts", content=STRATEGY.encode(), headers={**OPS, "Content-Type": "text/yaml"}
    )
    assert_error(yaml_body, 415, "unsupported_media_type")
    for broken in (
        b"--XYZ\r\nContent-Disposition: form-data; name=strategy\r\n\r\nx",  # never closed
        b"--XYZ\r\nno header line\r\n\r\nx\r\n--XYZ--",
        b"--XYZ\r\n\r\nx\r\n--XYZ--",  # no name
        b"--XYZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n"
        b"--XYZ\r\nContent-Disposition: form-data; name=a\r\n\r\ny\r\n--XYZ--",
    ):
        response = await c.post(
            "/rollouts",
            content=broken,
            headers={**OPS, "Content-Type": "multipart/form-data; boundary=XYZ"},
        )
        assert_error(response, 400)
    no_boundary = await c.post(
        "/rollouts", content=b"x", headers={**OPS, "Content-Type": "multipart/form-data"}
    )
    assert_error(no_boundary, 400)
    assert await node.manager.list_rollouts() == []


async def test_multipart_keeps_the_archive_byte_for_byte(node: Node) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("fns/checkout_v1/index.js", b"\r\n--\r\n\r\n\n\r" * 50)
        zf.writestr("fns/checkout_v2/index.js", bytes(range(256)) * 4)
    data = buffer.getvalue()
    parts = multipart()
    parts["files"]["archive"] = ("fns.zip", data, "application/zip")
    created = await node.client.post("/rollouts", **parts, headers=OPS)
    assert created.status_code == 201, created.text
    served = await node.client.get("/release/functions/42")
    assert served.content == data


async def test_uploads_over_max_upload_are_413() -> None:
    n = Node(max_upload=1000)
    async with n.client:
        response = await n.client.post("/rollouts", **multipart(), headers=OPS)
        assert_error(response, 413, "too_large")
        assert await n.manager.list_rollouts() == []


async def test_status_per_stage_area_and_child(node: Node) -> None:
    c = node.client
    await c.post("/rollouts", json=as_json(), headers=OPS)
    a = await node.fetched(square(1, 41))
    b = await node.fetched(square(15, 55))
    await c.post("/result", json=result(a, "canary-10", 2))
    status = (await c.get("/rollouts/42/status", headers=OPS)).json()
    assert status["rollout"]["id"] == "42"
    assert status["children"] == 2
    assert status["statuses"] == {"Doing": 2}
    assert status["outcomes"] == {}
    assert status["lost"] == []
    canary = status["stages"][0]
    assert canary["name"] == "canary-10"
    assert canary["counts"] == {"SuccessWaiting": 1, "InProgress": 1}
    assert canary["aggregate"]["f1_calls"] == 90
    assert status["stages"][1]["aggregate"] is None

    west = (await c.get("/rollouts/42/status?bbox=0,40,5,45", headers=OPS)).json()
    assert west["children"] == 1
    north = await c.get(
        "/rollouts/42/status", params={"area": json.dumps(square(14, 54, 3))}, headers=OPS
    )
    assert north.json()["children"] == 1

    rows = (await c.get("/rollouts/42/children", headers=OPS)).json()["items"]
    assert [r["child_id"] for r in rows] == [a, b]
    assert rows[0]["stages"]["canary-10"]["status"] == "SuccessWaiting"
    assert rows[0]["stages"]["canary-10"]["summary"]["F1ErrRate"] == 0.0
    assert rows[1]["stages"]["canary-10"]["summary"] is None
    assert rows[0]["status"] == "Doing"
    assert rows[0]["acknowledged"] is True
    doing = await c.get("/rollouts/42/children?status=2&bbox=10,50,20,60", headers=OPS)
    assert [r["child_id"] for r in doing.json()["items"]] == [b]
    done = await c.get("/rollouts/42/children?status=Done", headers=OPS)
    assert done.json()["items"] == []
    node.clock.now += 100  # both went quiet
    lost = (await c.get("/rollouts/42/status", headers=OPS)).json()["lost"]
    assert sorted(lost) == sorted([a, b])
    children = (await c.get("/children", headers=OPS)).json()["items"]
    assert {ch["id"] for ch in children} == {a, b}
    assert all(ch["lost"] and not ch["has_token"] for ch in children)
    assert children[0]["area"]["type"] == "Polygon"

    assert_error(await c.get("/rollouts/42/children?status=Sleeping", headers=OPS), 422)
    assert_error(await c.get("/rollouts/42/status?bbox=1,2,3", headers=OPS), 400)
    assert_error(await c.get("/rollouts/42/status?bbox=a,b,c,d", headers=OPS), 400)
    assert_error(await c.get("/rollouts/42/status?bbox=0,0,500,10", headers=OPS), 400)
    assert_error(await c.get("/rollouts/42/status?area=nope", headers=OPS), 400)
    assert_error(await c.get("/rollouts/42/status?bbox=0,0,1,1&area=%7B%7D", headers=OPS), 400)
    assert_error(await c.get("/rollouts/7/status", headers=OPS), 404)
    assert_error(await c.get("/rollouts/7/children", headers=OPS), 404)


def test_policies_round_trip_and_refusals() -> None:
    group = square(0, 40, 5)
    for policy in (
        GlobalIncremental(quorum=0.5, barrier_timeout=30.0),
        LocationSequential(groups=(Area.from_geojson(group),)),
        Waves(sizes=(0.1, 1.0), success_threshold=0.8, failure_threshold=0.1, min_finished=3),
    ):
        assert parse_policy(json.loads(json.dumps(policy_json(policy)))) == policy
    assert parse_policy(None) == GlobalIncremental()
    assert parse_policy({}) == GlobalIncremental()
    for bad, path in (
        ([], "policy"),
        ({"type": "random"}, "policy.type"),
        ({"quorum": True}, "policy.quorum"),
        ({"quorum": 0}, "policy"),
        ({"barrier_timeout": "1m"}, "policy.barrier_timeout"),
        ({"type": "waves", "sizes": []}, "policy.sizes"),
        ({"type": "waves", "sizes": "x"}, "policy.sizes"),
        ({"type": "waves", "min_finished": -1}, "policy.min_finished"),
        ({"type": "location_sequential", "groups": {}}, "policy.groups"),
        ({"type": "location_sequential", "groups": ["x"]}, "policy.groups[0]"),
        ({"sizes": [1]}, "policy.sizes"),
    ):
        with pytest.raises(ValidationError) as caught:
            parse_policy(bad)
        assert path in {p for p, _ in caught.value.problems}, (bad, caught.value.problems)


# -- tokens ----------------------------------------------------------------------------------------


async def test_operator_endpoints_need_an_operator_token(node: Node) -> None:
    for method, path in (
        ("GET", "/rollouts"),
        ("POST", "/rollouts"),
        ("GET", "/rollouts/42"),
        ("POST", "/rollouts/42/abort"),
        ("GET", "/rollouts/42/status"),
        ("GET", "/children"),
        ("DELETE", "/children/c1/token"),
    ):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = await node.client.request(method, path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


async def test_a_verifier_and_anonymous_operators() -> None:
    def verify(token: str) -> bool:
        return token == "idp-ok"

    n = Node(operator_tokens=(), verifier=verify)
    async with n.client:
        ok = await n.client.get("/rollouts", headers={"Authorization": "Bearer idp-ok"})
        assert ok.status_code == 200
        assert_error(await n.client.get("/rollouts", headers=OPS), 401)
    n = Node(operator_tokens=(), allow_anonymous=True)
    async with n.client:
        assert (await n.client.get("/rollouts")).status_code == 200


def test_configuration_is_checked() -> None:
    manager = RolloutManager()
    with pytest.raises(ConfigurationError, match="operator tokens"):
        rollout_app(manager)
    with pytest.raises(ConfigurationError):
        rollout_app(manager, operator_tokens=["bad token"])
    with pytest.raises(ConfigurationError):
        rollout_app(manager, allow_anonymous=True, max_upload=0)
    with pytest.raises(ConfigurationError):
        rollout_app(manager, allow_anonymous=True, tick_interval=0)
    other = Relay(RolloutManager(), InProcessParent(manager))
    with pytest.raises(ConfigurationError, match="relay"):
        rollout_app(manager, allow_anonymous=True, relay=other)


async def test_child_tokens_are_issued_at_registration_and_required_after() -> None:
    n = Node(child_tokens=True)
    store = n.manager.store
    c = n.client
    async with c:
        await n.manager.create_rollout(_BUNDLE, EUROPE)
        first = (await n.poll()).json()
        child, token = first["id"], first["token"]
        assert set(first) == {"id", "new_release", "token", "next_poll"}
        kept = await store.child_token(child)
        assert kept is not None
        assert kept != token
        assert token not in kept  # only a hash is kept
        mine = {"Authorization": f"Bearer {token}"}

        assert_error(await n.poll(child), 401, "unauthorized")
        bad = {"Authorization": "Bearer " + token[:-2] + "xx"}
        assert_error(await n.poll(child, **bad), 401)
        again = await n.poll(child, **mine)
        assert again.status_code == 200
        assert "token" not in again.json()  # issued once

        named = (await n.poll("edge-2", square(6, 46))).json()  # an id without a token: TOFU
        other = {"Authorization": f"Bearer {named['token']}"}
        assert_error(await n.poll(child, **other), 403, "forbidden")

        release = f"/release?childID={child}&releaseID=42"
        assert_error(await c.get(release), 401)
        assert_error(await c.get(release, headers=other), 403)
        assert_error(await c.get("/release?releaseID=42", headers=mine), 400)
        assert (await c.get(release, headers=mine)).text == STRATEGY
        assert_error(await c.get("/release/functions/42"), 401)
        assert (await c.get("/release/functions/42", headers=other)).content == ARCHIVE

        report = result(child, "canary-10", 2)
        assert_error(await c.post("/result", json=report), 401)
        assert_error(await c.post("/result", json=report, headers=other), 403)
        assert_error(await c.post("/result", json={"id": 5}, headers=mine), 400)
        assert (await c.post("/result", json=report, headers=mine)).json() == {}
        ask = {"id": child, "strategy_id": "42", "stage_name": "canary-10"}
        assert_error(await c.post("/end_stage", json=ask, headers=other), 403)
        assert (await c.post("/end_stage", json=ask, headers=mine)).status_code == 200

        assert_error(await c.get("/rollouts", headers=mine), 403, "forbidden")
        listed = (await c.get("/children", headers=OPS)).json()["items"]
        assert all(ch["has_token"] for ch in listed)
        revoked = await c.delete(f"/children/{child}/token", headers=OPS)
        assert revoked.status_code == 204
        assert_error(await c.delete(f"/children/{child}/token", headers=OPS), 404)
        renewed = await n.poll(child, **mine)  # no token on record: the next poll gets a new one
        assert renewed.status_code == 200
        assert renewed.json()["token"] != token


async def test_child_tokens_live_in_the_managers_store(rollout_store: RolloutStore) -> None:
    # A restarted server, or another process over the same store, knows the tokens issued:
    # nobody can claim a registered child's id by polling with it after a restart.
    first = Node(rollout_store, child_tokens=True)
    async with first.client:
        await first.manager.create_rollout(_BUNDLE, EUROPE)
        answer = (await first.poll()).json()
    child, token = answer["id"], answer["token"]
    mine = {"Authorization": f"Bearer {token}"}
    await rollout_store.flush()

    async with reopened(rollout_store) as store_1, reopened(rollout_store) as store_2:
        restarted = Node(store_1, child_tokens=True)
        other = Node(store_2, child_tokens=True)  # a second process, say
        async with restarted.client, other.client:
            await restarted.manager.load()
            await other.manager.load()
            assert_error(await restarted.poll(child), 401)  # no new token for a known child
            again = await restarted.poll(child, **mine)
            assert again.status_code == 200
            assert "token" not in again.json()
            assert (await other.poll(child, **mine)).status_code == 200
            listed = (await other.client.get("/children", headers=OPS)).json()["items"]
            assert [(ch["id"], ch["has_token"]) for ch in listed] == [(child, True)]

            # revoked through one, refused by the other; the next poll gets a new token
            revoke = await restarted.client.delete(f"/children/{child}/token", headers=OPS)
            assert revoke.status_code == 204
            fetch = f"/release?childID={child}&releaseID=42"
            assert_error(await other.client.get(fetch, headers=mine), 401)
            renewed = (await other.poll(child, **mine)).json()
            assert renewed["token"] != token
            theirs = {"Authorization": f"Bearer {renewed['token']}"}
            assert (await restarted.poll(child, **theirs)).status_code == 200


async def test_a_child_token_is_issued_once_when_polls_race() -> None:
    # First polls of one new id at once: exactly one answer carries a token (the store keeps
    # the first; see the store contract for the race itself); the others are refused or, if
    # they passed the check before the token was kept, answered without one.
    n = Node(child_tokens=True)
    async with n.client:
        answers = await asyncio.gather(*(n.poll("edge-9") for _ in range(5)))
        issued = [
            a.json()["token"] for a in answers if a.status_code == 200 and "token" in a.json()
        ]
        assert len(issued) == 1
        assert all(
            a.status_code == 401
            or (a.status_code == 200 and a.json().get("token") in [*issued, None])
            for a in answers
        )
        assert (await n.poll("edge-9", Authorization=f"Bearer {issued[0]}")).status_code == 200


async def test_without_child_tokens_the_child_protocol_is_open(node: Node) -> None:
    first = (await node.poll()).json()
    assert "token" not in first
    assert (await node.poll(first["id"], Authorization="Bearer whatever")).status_code == 200


# -- the HTTP edge ---------------------------------------------------------------------------------


async def test_unknown_paths_wrong_methods_and_large_bodies(node: Node) -> None:
    assert_error(await node.client.get("/nowhere"), 404, "not_found")
    wrong = await node.client.get("/poll")
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    assert_error(await node.client.post("/release"), 405)
    small = Node(max_body=50)
    async with small.client:
        assert_error(await small.poll(), 413, "too_large")


async def test_the_lifespan_loads_and_ticks_or_runs_a_relay() -> None:
    ticks: list[str] = []
    ticked = asyncio.Event()

    class Counting(RolloutManager):
        async def tick(self) -> None:
            ticks.append("tick")
            ticked.set()

        async def load(self) -> None:
            ticks.append("load")

    manager = Counting()
    app = rollout_app(manager, allow_anonymous=True, lifespan=True, tick_interval=0.01)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return await events.get()

    async def send(message: Any) -> None:
        sent.append(message["type"])

    async def drive() -> None:
        await events.put({"type": "lifespan.startup"})
        await ticked.wait()
        await events.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await asyncio.gather(app(scope, receive, send), drive())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert ticks[0] == "load"

    polled = asyncio.Event()

    class Watched(InProcessParent):
        async def poll(self, child_id: str, area: dict[str, Any], count: int) -> PollAnswer:
            answer = await super().poll(child_id, area, count)
            polled.set()
            return answer

    parent = RolloutManager()
    local = RolloutManager()
    relay = Relay(local, Watched(parent), relay_id="r", area=Area.from_geojson(INSIDE))
    relay.interval = 0.01
    app = rollout_app(local, allow_anonymous=True, lifespan=True, relay=relay)
    sent.clear()

    async def drive_relay() -> None:
        await events.put({"type": "lifespan.startup"})
        await polled.wait()
        await events.put({"type": "lifespan.shutdown"})

    await asyncio.gather(app(scope, receive, send), drive_relay())
    assert [c.id for c in await parent.children()] == ["r"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- fuzzing: no 5xx, and a refusal changes nothing ---------------------------------------------


async def fuzz_node(child_tokens: bool) -> tuple[Node, str, dict[str, str]]:
    """Rollout 42 active, child c1 in its first stage; rollout 43 a draft."""
    n = Node(child_tokens=child_tokens)
    await n.manager.create_rollout(_BUNDLE, EUROPE)
    await n.manager.create_rollout(
        ReleaseBundle.from_parts(strategy("43"), ARCHIVE), EUROPE, start=False
    )
    answer = (await n.poll("c1")).json()
    await n.client.get(
        "/release?childID=c1&releaseID=42",
        headers={"Authorization": f"Bearer {answer.get('token')}"},
    )
    token = {"Authorization": f"Bearer {answer['token']}"} if child_tokens else {}
    return n, "c1", token


async def rollout_snapshot(n: Node) -> tuple[Any, ...]:
    rollouts = await n.manager.list_rollouts()
    states = [await n.manager.store.child_releases(r.id) for r in rollouts]
    children = await n.manager.children()
    tokens = {c.id: await n.manager.store.child_token(c.id) for c in children}
    return rollouts, states, children, tokens


LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
AREAS = st.sampled_from([INSIDE, OUTSIDE, EUROPE, square(200, 0), {"type": "Polygon"}]) | VALUES
CHILDREN = st.sampled_from(["c1", "c1", "", "ghost"])
STAGES = st.sampled_from(["canary-10", "ab-50", "nope"])
TIMES = {"median": 1, "minimum": 0, "maximum": 2}
SUMMARY = st.fixed_dictionaries(
    {
        "stage_name": STAGES | LEAVES,
        "status": st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, "Completed", "SuccessWaiting", "x"]),
        "proxy_times": st.just(TIMES) | VALUES,
        "f1_times_summary": st.just(TIMES),
        "f2_times_summary": st.just(TIMES),
        "f1_err_rate": st.sampled_from([0, 0.5]),
        "f2_err_rate": st.sampled_from([0, 0.5, 2]) | LEAVES,
    },
    optional={"f1_calls": st.integers(-1, 100) | LEAVES},
)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def bodies(fields: dict[str, Any], base: dict[str, Any] | None = None) -> st.SearchStrategy[bytes]:
    """Mostly ``base`` with at most one field changed; else JSON objects of these optional
    fields, any JSON, or junk bytes."""
    objects = st.fixed_dictionaries({}, optional={**fields, "extra": VALUES})
    one_change = st.one_of(st.just({}), *(st.fixed_dictionaries({k: v}) for k, v in fields.items()))
    changed = one_change.map(lambda o: dumps({**(base or {}), **o}))
    others = objects.map(dumps) | VALUES.map(dumps) | st.binary(max_size=48)
    return changed | changed | others


POLL = bodies(
    {
        "id": CHILDREN | LEAVES,
        "geographic_area": AREAS,
        "number_of_children": st.integers(-1, 3) | LEAVES,
    },
    {"id": "c1", "geographic_area": INSIDE, "number_of_children": 0},
)
RESULT = bodies(
    {
        "id": CHILDREN | LEAVES,
        "release_id": st.sampled_from(["42", 42, "43", "7"]) | LEAVES,
        "next_stage": st.sampled_from(["", "ab-50", "rollback"]) | LEAVES,
        "stage_summaries": st.lists(SUMMARY, min_size=1, max_size=2) | VALUES,
    },
    result("c1", "canary-10", 2),
)
END_STAGE = bodies(
    {
        "id": CHILDREN | LEAVES,
        "strategy_id": st.sampled_from(["42", 42, "7"]) | LEAVES,
        "stage_name": STAGES | LEAVES,
    },
    {"id": "c1", "strategy_id": "42", "stage_name": "canary-10"},
)
CREATE = bodies(
    {
        "strategy": st.sampled_from([strategy("44"), strategy("42"), "id: 1", ""]) | LEAVES,
        "archive": st.sampled_from([base64.b64encode(ARCHIVE).decode(), "eA==", "%%"]) | LEAVES,
        "target": AREAS,
        "name": st.text(max_size=5) | LEAVES,
        "match": st.sampled_from(["intersects", "within", "x"]) | LEAVES,
        "priority": st.integers(-3, 3) | LEAVES,
        "start": st.booleans() | LEAVES,
        "policy": st.sampled_from(
            [{"type": "waves"}, {"type": "location_sequential", "groups": [INSIDE]}, {"quorum": 2}]
        )
        | VALUES,
    },
    as_json("44"),
)
ACTION = bodies({"reason": st.text(max_size=5) | LEAVES}) | st.just(b"")


def fuzz(path: str, body_strategy: st.SearchStrategy[bytes]) -> Any:
    """A test that POSTs any body of ``body_strategy`` to ``path``: never a 5xx, and a refusal
    changes nothing (rollouts, children, per-child states, child tokens)."""

    @FUZZ
    @given(body=body_strategy, child_tokens=st.booleans(), with_token=st.booleans())
    async def test(anyio_backend: str, body: bytes, child_tokens: bool, with_token: bool) -> None:
        n, _, child_token = await fuzz_node(child_tokens)
        try:
            headers = dict(OPS) if path.startswith("/rollouts") else {}
            if with_token and not headers:
                headers.update(child_token)
            before = await rollout_snapshot(n)
            response = await n.client.post(path, content=body, headers=headers)
            assert response.status_code < 500, response.text
            if response.status_code not in (200, 201):
                assert response.status_code in (400, 401, 403, 404, 409, 413, 415, 422)
                assert_error(response, response.status_code)
                assert await rollout_snapshot(n) == before
        finally:
            with contextlib.suppress(Exception):
                await n.client.aclose()

    return test


test_fuzz_poll = fuzz("/poll", POLL)
test_fuzz_result = fuzz("/result", RESULT)
test_fuzz_end_stage = fuzz("/end_stage", END_STAGE)
test_fuzz_create_rollout = fuzz("/rollouts", CREATE)
test_fuzz_start = fuzz("/rollouts/43/start", ACTION)
test_fuzz_pause = fuzz("/rollouts/42/pause", ACTION)
test_fuzz_resume = fuzz("/rollouts/42/resume", ACTION)
test_fuzz_abort = fuzz("/rollouts/42/abort", ACTION)


def _forged(claimed: str, secret: str) -> str:
    prefix = base64.urlsafe_b64encode(claimed.encode("utf-8")).decode("ascii").rstrip("=")
    return f"{prefix}.{secret}"


#: What a client can put in a header: printable ASCII without blanks.
_HEADER_TEXT = st.characters(min_codepoint=33, max_codepoint=126)
FORGED = st.text(_HEADER_TEXT, min_size=1, max_size=80) | st.builds(
    _forged,
    st.sampled_from(["c1", "ghost", "", "c1" * 200, "\u00e9t\u00e9"]),
    st.text(_HEADER_TEXT, max_size=40),
)


@FUZZ
@given(token=FORGED)
async def test_a_forged_child_token_is_refused_and_changes_nothing(
    anyio_backend: str, token: str
) -> None:
    # Bearer tokens are untrusted input: any text (a claimed child id that does not decode, a
    # real child's id with another secret, an id too long) is refused with 401, never a 5xx,
    # on the child protocol and the operator API alike, and changes nothing.
    n, child, real = await fuzz_node(True)
    try:
        if real["Authorization"] == f"Bearer {token}":
            return  # (the real one, drawn by chance)
        forged = {"Authorization": f"Bearer {token}"}
        before = await rollout_snapshot(n)
        body = {"id": child, "geographic_area": INSIDE, "number_of_children": 0}
        assert_error(await n.client.post("/poll", json=body, headers=forged), 401)
        fetch = f"/release?childID={child}&releaseID=42"
        assert_error(await n.client.get(fetch, headers=forged), 401)
        assert_error(await n.client.get("/release/functions/42", headers=forged), 401)
        assert_error(await n.client.get("/rollouts", headers=forged), 401)
        assert await rollout_snapshot(n) == before
    finally:
        await n.client.aclose()


# -- POST /poll's own endpoint answers as the others ------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ([b'{"id": "c1"', b', "geographic_area": }'], []),  # not JSON, in two parts
        ([b"x" * 200], []),  # past max_body, counted as read
        ([b"{}"], [(b"content-length", b"500")]),  # declared past max_body
        ([b"{}"], [(b"content-length", b"two")]),
        ([], []),  # the client went away before its body came
        ([b"\xef\xbb\xbf[]"], []),  # a UTF-8 BOM, as json.loads takes it
        ([b"[1]"], []),
        ([b'{"id": NaN}'], []),
        ([b'{"id": "c1", "geographic_area": ' + b"[" * 5000 + b"]" * 5000 + b"}"], []),
    ],
)
async def test_poll_refuses_bodies_as_the_other_endpoints(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> None:
    """``/poll`` reads its body with its own code; ``/end_stage`` through Starlette's request:
    the same refusals, byte for byte."""
    node = Node(max_body=120)
    async with node.client:
        poll = await asgi_post(node.app, "/poll", list(chunks), headers)
        other = await asgi_post(node.app, "/end_stage", list(chunks), headers)
    assert poll[0] in (400, 413)
    assert poll == other
    assert await node.manager.children() == []


async def test_poll_answers_with_the_headers_of_any_json_answer(node: Node) -> None:
    chunks = [json.dumps(SAMPLE_POLL).encode()]
    status, headers, body = await asgi_post(node.app, "/poll", chunks, [])
    assert status == 200
    assert headers == {"content-length": str(len(body)), "content-type": "application/json"}
    assert json.loads(body) == {"id": SAMPLE_POLL["id"], "new_release": "", "next_poll": 30}
