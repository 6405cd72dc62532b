"""HttpParent: the child protocol over HTTP from the child's side, against scripted answers
(httpx.MockTransport) and in a tree of real apps (httpx.ASGITransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from release_coordinator import (
    BadGatewayError,
    ConfigurationError,
    InProcessParent,
    MalformedAnswerError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    Relay,
    ReleaseBundle,
    ReleaseStatus,
    RolloutManager,
    SimulatedLeaf,
    TransportError,
)
from release_coordinator.rollout.geo import Area
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.transports.http import HttpParent

from .test_rollout_manager import STRATEGY, archive, square

pytestmark = pytest.mark.anyio

#: One archive for the whole module (a zip holds the time it was built).
ARCHIVE = archive()

Handler = Callable[[httpx.Request], httpx.Response]
AREA = square(5, 45)


def scripted(handler: Handler, **options: Any) -> HttpParent:
    return HttpParent("http://parent.test/edge/", transport=httpx.MockTransport(handler), **options)


def answering(status: int = 200, **response: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **response)

    return handler


def raising(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


# -- requests as the protocol writes them --------------------------------------------------------


async def test_requests_follow_the_protocol() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/edge/poll":
            return httpx.Response(200, json={"id": "c1", "new_release": "r/1"})
        if path == "/edge/release":
            return httpx.Response(200, text=STRATEGY)
        if path.startswith("/edge/release/functions/"):
            return httpx.Response(200, content=ARCHIVE)
        if path == "/edge/result":
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"end_stage": True, "action": "rollback"})

    async with scripted(handler) as parent:
        answer = await parent.poll("", AREA, 3)
        assert (answer.id, answer.new_release, answer.target_area) == ("c1", "r/1", None)
        assert await parent.get_release("c1", "r/1") == STRATEGY
        assert await parent.get_functions("r/1") == ARCHIVE
        assert await parent.get_functions("r/1", "c1") == ARCHIVE  # naming the caller
        await parent.submit_result({"id": "c1", "release_id": "r/1", "stage_summaries": []})
        ended = await parent.end_stage("c1", "r/1", "canary")
        assert (ended.end_stage, ended.action) == (True, "rollback")

    poll, release, functions, named, result, end = seen
    assert poll.method == "POST"
    assert json.loads(poll.content) == {
        "id": "",
        "geographic_area": AREA,
        "number_of_children": 3,
    }
    assert poll.headers["content-type"] == "application/json"
    assert poll.headers["user-agent"].startswith("release-coordinator/")
    assert "authorization" not in poll.headers
    assert release.method == "GET"
    assert dict(release.url.params) == {"childID": "c1", "releaseID": "r/1"}
    assert functions.url.raw_path == b"/edge/release/functions/r%2F1"
    assert named.url.raw_path == b"/edge/release/functions/r%2F1?childID=c1"  # an extra
    assert json.loads(result.content)["release_id"] == "r/1"
    assert json.loads(end.content) == {"id": "c1", "strategy_id": "r/1", "stage_name": "canary"}


async def test_an_issued_token_is_kept_and_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/poll") and len(seen) == 1:
            return httpx.Response(200, json={"id": "c1", "new_release": "", "token": "abc.def"})
        return httpx.Response(200, json={"id": "c1", "new_release": ""})

    parent = scripted(handler, token="initial")
    await parent.poll("", AREA, 0)
    await parent.poll("c1", AREA, 0)
    assert seen[0].headers["authorization"] == "Bearer initial"
    assert seen[1].headers["authorization"] == "Bearer abc.def"
    assert parent.token == "abc.def"
    assert "abc.def" not in repr(parent)
    await parent.aclose()


async def test_empty_or_extended_answers_are_taken() -> None:
    parent = scripted(answering(200, content=b""))
    await parent.submit_result({})  # the protocol allows an empty body
    parent = scripted(answering(200, json={"id": "c1", "new_release": None, "more": 1}))
    assert (await parent.poll("c1", AREA, 0)).new_release == ""
    parent = scripted(answering(200, json={"end_stage": False, "action": None}))
    assert (await parent.end_stage("c1", "42", "s")).action == ""


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("refused"), PeerUnreachableError),
        (httpx.ReadError("reset"), PeerUnreachableError),
        (httpx.RemoteProtocolError("dropped"), PeerUnreachableError),
        (httpx.ConnectTimeout("slow"), PeerTimeoutError),
        (httpx.ReadTimeout("slow"), PeerTimeoutError),
        (httpx.UnsupportedProtocol("ftp"), TransportError),
    ],
)
async def test_httpx_errors_become_transport_errors(
    error: Exception, expected: type[Exception]
) -> None:
    parent = scripted(raising(error), token="s3cret")
    with pytest.raises(expected) as caught:
        await parent.poll("c1", AREA, 0)
    assert caught.value.peer == "http://parent.test/edge"  # type: ignore[attr-defined]
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_answers_are_transient(status: int) -> None:
    with pytest.raises(BadGatewayError):
        await scripted(answering(status, text="<html>")).get_functions("42")


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 409, 413, 500, 503])
async def test_other_statuses_are_peer_answers(status: int) -> None:
    body = {"error": {"code": "x", "message": "no", "details": {}}}
    with pytest.raises(PeerAnswerError) as caught:
        await scripted(answering(status, json=body)).end_stage("c1", "42", "s")
    assert not isinstance(caught.value, MalformedAnswerError)
    assert caught.value.status_code == status
    assert '"no"' in caught.value.body


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        ("poll", b"not json"),
        ("poll", b"[]"),
        ("poll", b'{"new_release": ""}'),
        ("poll", b'{"id": "", "new_release": ""}'),
        ("poll", b'{"id": 5, "new_release": ""}'),
        ("poll", b'{"id": "c1", "new_release": 7}'),
        ("poll", b'{"id": "c1", "new_release": "", "target_area": "x"}'),
        ("poll", b'{"id": "c1", "new_release": "", "token": "two words"}'),
        ("poll", b'{"id": "c1", "new_release": "", "token": 5}'),
        ("poll", b"[" * 100_000),
        ("release", b"\xff\xfe"),
        ("functions", b"not a zip"),
        ("result", b"nope"),
        ("result", b"[1]"),
        ("end_stage", b'{"end_stage": "yes"}'),
        ("end_stage", b"{}"),
        ("end_stage", b'{"end_stage": true, "action": 1}'),
    ],
)
async def test_malformed_answers_are_refused(call: str, answer: bytes) -> None:
    parent = scripted(answering(200, content=answer))
    calls = {
        "poll": lambda: parent.poll("c1", AREA, 0),
        "release": lambda: parent.get_release("c1", "42"),
        "functions": lambda: parent.get_functions("42"),
        "result": lambda: parent.submit_result({}),
        "end_stage": lambda: parent.end_stage("c1", "42", "s"),
    }
    with pytest.raises(MalformedAnswerError) as caught:
        await calls[call]()
    assert caught.value.status_code == 200


async def test_answers_too_large_are_refused_without_reading_them_all() -> None:
    with pytest.raises(MalformedAnswerError, match="more than"):
        await scripted(answering(200, content=b" " * (2 * 1024 * 1024))).poll("c1", AREA, 0)
    parent = scripted(answering(200, content=b"PK" + b"\0" * 200), max_archive_bytes=100)
    with pytest.raises(MalformedAnswerError, match="more than 100 bytes"):
        await parent.get_functions("42")


async def test_a_request_that_is_not_json_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="cannot be written as JSON"):
        await scripted(answering(200, json={})).submit_result({"x": float("nan")})


def test_configuration_is_checked() -> None:
    for url in ("ftp://parent.test", "parent.test", "http://", "http://[::1"):
        with pytest.raises(ConfigurationError):
            HttpParent(url)
    with pytest.raises(ConfigurationError):
        HttpParent("http://parent.test", timeout=0)
    with pytest.raises(ConfigurationError):
        HttpParent("http://parent.test", token="caf\u00e9")
    with pytest.raises(ConfigurationError):
        HttpParent("http://parent.test", max_archive_bytes=0)


async def test_a_host_client_is_not_closed() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(answering(200, json={})))
    parent = HttpParent("http://parent.test", client=client)
    await parent.submit_result({})
    await parent.aclose()
    assert not client.is_closed
    await client.aclose()


# -- a tree of real apps --------------------------------------------------------------------------

WEST = square(0, 40, 10)
EAST = square(10, 40, 10)


class HttpTree:
    """A top manager served by rollout_app; two relays reach it through HttpParent (the
    app in process, over httpx.ASGITransport); simulated leaves under each relay."""

    def __init__(self, *, child_tokens: bool = False, failing_east: bool = False) -> None:
        self.top = RolloutManager(lost_after=1e9)
        self.app = rollout_app(self.top, operator_tokens=["op-token"], child_tokens=child_tokens)
        self.operator = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://top.test",
            headers={"Authorization": "Bearer op-token"},
        )
        self.relays: dict[str, Relay] = {}
        self.leaves: dict[str, list[SimulatedLeaf]] = {}
        for name, region in (("west", WEST), ("east", EAST)):
            parent = HttpParent("http://top.test", transport=httpx.ASGITransport(app=self.app))
            relay = Relay(RolloutManager(lost_after=1e9), parent, relay_id=name)
            self.relays[name] = relay
            lon0 = region["coordinates"][0][0][0]
            self.leaves[name] = [
                SimulatedLeaf(
                    InProcessParent(relay.manager),
                    square(lon0 + 1 + 2 * i, 42, 1),
                    failing=failing_east and name == "east",
                    calls_per_step=40,
                    seed=i,
                )
                for i in range(3)
            ]

    async def register(self) -> None:
        for leaves in self.leaves.values():
            for leaf in leaves:
                await leaf.step()
        for relay in self.relays.values():
            await relay.sync()

    async def create(self, target: dict[str, Any]) -> None:
        created = await self.operator.post(
            "/rollouts",
            files={
                "strategy": ("strategy.yaml", STRATEGY.encode()),
                "archive": ("fns.zip", ARCHIVE),
                "rollout": (None, json.dumps({"target": target}).encode()),
            },
        )
        assert created.status_code == 201, created.text

    async def run(self, steps: int = 60) -> None:
        for _ in range(steps):
            for leaves in self.leaves.values():
                for leaf in leaves:
                    await leaf.step()
            for relay in self.relays.values():
                await relay.sync()
                await relay.manager.tick()
            await self.top.tick()
            if all(leaf.done for leaves in self.leaves.values() for leaf in leaves):
                for relay in self.relays.values():
                    await relay.sync()
                return

    def outcomes(self, region: str) -> set[str]:
        return {leaf.outcome for leaf in self.leaves[region]}

    async def aclose(self) -> None:
        await self.operator.aclose()
        for relay in self.relays.values():
            assert isinstance(relay.parent, HttpParent)
            await relay.parent.aclose()


@pytest.mark.parametrize("child_tokens", [False, True])
async def test_a_release_rolls_out_through_relays_over_http(child_tokens: bool) -> None:
    tree = HttpTree(child_tokens=child_tokens)
    try:
        await tree.register()
        children = (await tree.operator.get("/children")).json()["items"]
        assert {c["id"] for c in children} == {"west", "east"}
        assert {c["number_of_children"] for c in children} == {3}
        assert {c["has_token"] for c in children} == {child_tokens}
        west = next(c for c in children if c["id"] == "west")
        assert Area.from_geojson(west["area"]) == Area.union(
            Area.from_geojson(leaf.area) for leaf in tree.leaves["west"]
        )
        for relay in tree.relays.values():
            assert isinstance(relay.parent, HttpParent)
            assert (relay.parent.token is not None) is child_tokens

        await tree.create(square(0, 40, 20))
        await tree.run()
        assert tree.outcomes("west") == {"rolled_out"}
        assert tree.outcomes("east") == {"rolled_out"}
        status = (await tree.operator.get("/rollouts/42/status")).json()
        assert status["statuses"] == {"Done": 2}
        assert status["outcomes"] == {"rolled_out": 2}
        canary = status["stages"][0]
        assert canary["counts"] == {"Completed": 2}
        calls = canary["aggregate"]["f1_calls"] + canary["aggregate"]["f2_calls"]
        assert calls >= 6 * 20  # every leaf's calls, weighed up the tree
        rows = (await tree.operator.get("/rollouts/42/children")).json()["items"]
        assert {r["child_id"]: r["outcome"] for r in rows} == {
            "west": "rolled_out",
            "east": "rolled_out",
        }
    finally:
        await tree.aclose()


async def test_a_failing_region_rolls_back_over_http() -> None:
    tree = HttpTree(failing_east=True)
    try:
        await tree.register()
        await tree.create(square(0, 40, 20))
        await tree.run()
        assert tree.outcomes("west") == {"rolled_out"}
        assert tree.outcomes("east") == {"rolled_back"}
        top = {c.child_id: c for c in await tree.top.store.child_releases("42")}
        assert top["east"].status is ReleaseStatus.FAILED
        assert top["west"].status is ReleaseStatus.DONE
    finally:
        await tree.aclose()


async def test_an_operator_abort_over_http_rolls_back_every_leaf() -> None:
    tree = HttpTree(child_tokens=True)
    try:
        await tree.register()
        await tree.create(square(0, 40, 20))
        await tree.run(steps=2)
        assert all(leaf.history == ["canary-10"] for leaf in tree.leaves["west"])
        aborted = await tree.operator.post("/rollouts/42/abort", json={"reason": "operator"})
        assert aborted.status_code == 200
        await tree.run()
        for region in ("west", "east"):
            assert tree.outcomes(region) == {"rolled_back"}
    finally:
        await tree.aclose()


async def test_leaves_speak_to_an_app_directly() -> None:
    manager = RolloutManager(lost_after=1e9)
    app = rollout_app(manager, allow_anonymous=True, child_tokens=True)
    await manager.create_rollout(ReleaseBundle.from_parts(STRATEGY, ARCHIVE), square(0, 40, 20))
    parents = [
        HttpParent("http://edge.test", transport=httpx.ASGITransport(app=app)) for _ in range(3)
    ]
    leaves = [
        SimulatedLeaf(parent, square(1 + 2 * i, 42, 1), calls_per_step=40, seed=i)
        for i, parent in enumerate(parents)
    ]
    for _ in range(60):
        for leaf in leaves:
            await leaf.step()
        await manager.tick()
        if all(leaf.done for leaf in leaves):
            break
    assert {leaf.outcome for leaf in leaves} == {"rolled_out"}
    assert len({parent.token for parent in parents}) == 3
    for parent in parents:
        await parent.aclose()


async def test_a_relay_reports_the_parents_refusal_as_a_peer_answer() -> None:
    top = RolloutManager()
    app = rollout_app(top, allow_anonymous=True, child_tokens=True)
    parent = HttpParent(
        "http://top.test", transport=httpx.ASGITransport(app=app), token="forged.token"
    )
    relay = Relay(RolloutManager(), parent, relay_id="r", area=Area.from_geojson(square(0, 0)))
    await relay.sync()  # first poll: no token on record for "r", one is issued
    assert parent.token != "forged.token"
    parent.token = "forged.token"
    with pytest.raises(PeerAnswerError) as caught:
        await relay.sync()
    assert caught.value.status_code == 401
    await parent.aclose()
