"""release_coordinator.client: the Client against serve's app in process (httpx.ASGITransport),
every method and the mapping of refusals to the library's errors; the exit status of each
error; the plain-text tables used without rich."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from release_coordinator import (
    BadGatewayError,
    BundleError,
    Client,
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    Coordinator,
    GeoJSONError,
    InvalidTransitionError,
    MalformedAnswerError,
    MemoryRolloutStore,
    MemoryStore,
    MemoryTransport,
    NotFoundError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    RolloutManager,
    SchemaError,
    StorageError,
    StrategyError,
    TaskServiceKit,
    ValidationError,
)
from release_coordinator.client import AccessDeniedError
from release_coordinator.client.coordinator_commands import releases_watch
from release_coordinator.client.exits import exit_code
from release_coordinator.client.render import Output, View, plain_table
from release_coordinator.client.rollout_commands import rollout_ended_well, rollouts_watch
from release_coordinator.server.serve import service_app

from .test_rollout_manager import EUROPE, INSIDE, STRATEGY, archive

OPERATOR = "op-token-0123456789"
CALLBACK = "portal-callback-0123456789"
WAIT = 10.0  # seconds to wait for a state (a limit, never an assertion on time)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Served:
    """serve's app over three in-process task services, and a Client of it."""

    def __init__(self) -> None:
        transport = MemoryTransport()
        for name in ("portal", "search", "files"):
            transport.add(f"memory://{name}", TaskServiceKit(name))
        self.coordinator = Coordinator(MemoryStore(), transport)
        self.manager = RolloutManager(MemoryRolloutStore())
        self.app = service_app(
            self.coordinator,
            self.manager,
            operator_tokens={"alice": OPERATOR},
            callback_tokens={"portal": CALLBACK},
            tick_interval=0.01,
        )

    def client(self, token: str | None = OPERATOR) -> Client:
        return Client("http://rc.test", token=token, transport=httpx.ASGITransport(app=self.app))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = Served()
    async with node.app.router.lifespan_context(node.app):  # httpx runs no lifespan
        yield node


async def until(what: str, check: Callable[[], Any]) -> Any:
    """Ask ``check`` (a coroutine function) until it answers something true."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while asyncio.get_running_loop().time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def state_of(client: Client, release_id: str, *states: str) -> dict[str, Any] | None:
    release = await client.get_release(release_id)
    return release if release["state"] in states else None


# -- task services -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_task_services_every_method(served: Served) -> None:
    async with served.client() as client:
        assert (await client.status())["name"] == "release-coordinator"
        portal = await client.register_service("portal", "memory://portal")
        search = await client.register_service("search", "memory://search", enabled=False)
        assert (portal["name"], portal["enabled"], search["enabled"]) == ("portal", True, False)
        everything = await client.list_services()
        assert {s["name"] for s in everything["items"]} == {"portal", "search"}
        assert everything["next_offset"] is None
        enabled = await client.list_services(enabled=True)
        assert [s["name"] for s in enabled["items"]] == ["portal"]
        first = await client.list_services(limit=1)
        assert len(first["items"]) == 1
        assert first["next_offset"] == 1
        assert len((await client.list_services(offset=1))["items"]) == 1
        assert (await client.get_service(portal["id"]))["url"] == "memory://portal"
        assert (await client.enable_service(search["id"]))["enabled"] is True
        assert (await client.disable_service(search["id"]))["enabled"] is False
        renamed = await client.update_service(search["id"], name="index", url="memory://files")
        assert (renamed["name"], renamed["url"]) == ("index", "memory://files")
        checked = await client.check_service(portal["id"])
        assert checked["health"]["status"] == "ok"
        assert await client.remove_service(search["id"]) is None
        with pytest.raises(NotFoundError) as missing:
            await client.get_service(search["id"])
        assert (missing.value.kind, missing.value.ident) == ("task service", search["id"])
        assert missing.value.message == f"unknown task service {search['id']!r}"
        with pytest.raises(ValidationError) as invalid:
            await client.register_service("", "memory://portal", check=False)
        assert invalid.value.problems
        assert invalid.value.problems[0][0] == "name"
        assert exit_code(invalid.value) == 1


# -- releases ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_releases_every_method_and_the_refusals(served: Served) -> None:
    async with served.client() as client:
        for name in ("portal", "search", "files"):
            await client.register_service(name, f"memory://{name}")
        release = await client.create_release(
            "2026-11", description="monthly", studies=["SD_1"], tags=["monthly"], is_major=True
        )
        rid = release["id"]
        assert (release["author"], release["is_major"], release["tags"]) == (
            "alice",
            True,
            ["monthly"],
        )
        await until("staged", lambda: state_of(client, rid, "staged"))
        tasks = await client.list_tasks(rid)
        assert len(tasks["items"]) == 3
        assert {t["state"] for t in tasks["items"]} == {"staged"}
        assert (await client.list_tasks(rid, state="published"))["items"] == []
        task = tasks["items"][0]
        assert (await client.get_task(rid, task["id"]))["id"] == task["id"]
        updated = await client.update_release(rid, name="2026-11b", tags=["monthly", "big"])
        assert (updated["name"], updated["tags"]) == ("2026-11b", ["monthly", "big"])
        assert (await client.publish_release(rid))["state"] in ("publishing", "published")
        await until("published", lambda: state_of(client, rid, "published"))
        assert (await client.publish_release(rid))["state"] == "published"  # already: as it is
        with pytest.raises(InvalidTransitionError) as refused:
            await client.cancel_release(rid, reason="too late")
        assert (refused.value.state, refused.value.event) == ("published", "cancel")
        assert "cannot 'cancel'" in refused.value.message
        assert isinstance(refused.value, ConflictError)
        events = await client.list_events(release_id=rid)
        assert events["items"]
        assert all(e["release_id"] == rid for e in events["items"])
        transitions = await client.list_events(release_id=rid, kind="transition", type="info")
        assert transitions["items"]
        assert {e["kind"] for e in transitions["items"]} == {"transition"}
        later = await client.list_events(release_id=rid, after_id=events["items"][0]["id"])
        assert len(later["items"]) == len(events["items"]) - 1
        assert (await client.list_events(since="2000-01-01T00:00:00"))["items"]

        again = await client.run_again(rid)
        assert again["cloned_from"] == rid
        assert again["id"] != rid
        canceled = await client.cancel_release(again["id"], reason="not now")
        assert canceled["state"] in ("canceling", "canceled")
        await until("canceled", lambda: state_of(client, again["id"], "canceled"))
        with pytest.raises(InvalidTransitionError) as not_staged:
            await client.publish_release(again["id"])
        assert not_staged.value.state == "canceled"
        published = await client.list_releases(state="published")
        assert [r["id"] for r in published["items"]] == [rid]
        both = await client.list_releases(state=["published", "canceled"], author="alice")
        assert {r["id"] for r in both["items"]} == {rid, again["id"]}
        assert (await client.list_releases(tag="no-such-tag"))["items"] == []
        tagged = await client.list_releases(tag="big")  # run again: the same tags
        assert {r["id"] for r in tagged["items"]} == {rid, again["id"]}
        assert len((await client.list_releases(limit=1, offset=1))["items"]) == 1
        with pytest.raises(NotFoundError):
            await client.get_release("RE_NOPE")
        with pytest.raises(ValidationError):
            await client.list_releases(state="nonsense")


# -- rollouts ------------------------------------------------------------------------------------


def strategy(rollout_id: str) -> str:
    return STRATEGY.replace('id: "42"', f'id: "{rollout_id}"')


@pytest.mark.anyio
async def test_rollouts_every_method(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    for version in ("v1", "v2"):
        (folder / "fns" / f"checkout_{version}").mkdir(parents=True)
        (folder / "fns" / f"checkout_{version}" / "index.js").write_text(f"// {version}\n")
    (folder / "strategy.yaml").write_text(strategy("from-folder"))
    async with served.client() as client:
        draft = await client.create_rollout(
            strategy("r-1"), archive(), EUROPE, name="first", priority=5, start=False
        )
        assert (draft["id"], draft["state"], draft["name"]) == ("r-1", "draft", "first")
        assert draft["bundle"]["archive"]["filename"] == "fns.zip"
        policy = {"type": "global_incremental", "quorum": 0.5}
        other = await client.create_rollout_from_folder(
            folder, EUROPE, match="within", policy=policy
        )
        assert (other["id"], other["state"], other["match"]) == ("from-folder", "active", "within")
        assert other["policy"]["quorum"] == 0.5
        listed = await client.list_rollouts()
        assert [r["id"] for r in listed["items"]] == ["r-1", "from-folder"]  # priority first
        assert [r["id"] for r in (await client.list_rollouts(state="draft"))["items"]] == ["r-1"]
        assert len((await client.list_rollouts(limit=1, offset=1))["items"]) == 1
        assert (await client.get_rollout("r-1"))["bundle"]["strategy"]["name"]
        assert (await client.start_rollout("r-1"))["state"] == "active"
        assert (await client.pause_rollout("r-1"))["state"] == "paused"
        assert (await client.resume_rollout("r-1"))["state"] == "active"
        with pytest.raises(InvalidTransitionError):
            await client.resume_rollout("r-1")

        # a child polls (the child protocol, not the operator's) and shows up
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served.app), base_url="http://rc.test"
        ) as raw:
            poll = await raw.post("/poll", json={"id": "", "geographic_area": INSIDE})
            assert poll.status_code == 200, poll.text
        child_id = poll.json()["id"]
        children = await client.list_children()
        assert [c["id"] for c in children["items"]] == [child_id]
        status = await client.rollout_status("r-1")
        assert status["rollout"]["id"] == "r-1"
        assert status["children"] == 1
        assert (await client.rollout_status("r-1", bbox="-80,10,-79,11"))["children"] == 0
        states = await client.rollout_children("r-1")
        assert [c["child_id"] for c in states["items"]] == [child_id]
        assert (await client.rollout_children("r-1", status="Done"))["items"] == []
        promoted = await client.promote_stage("r-1", "canary-10")
        assert promoted["id"] == "r-1"
        with pytest.raises(NotFoundError):
            await client.promote_stage("r-1", "no-such-stage")
        aborted = await client.abort_rollout("r-1", reason="enough")
        assert (aborted["state"], aborted["reason"]) == ("aborted", "enough")
        assert (await client.abort_rollout("r-1"))["state"] == "aborted"  # answered as it is
        with pytest.raises(InvalidTransitionError):
            await client.start_rollout("r-1")
        with pytest.raises(NotFoundError):
            await client.revoke_child_token(child_id)  # it has none: this app issues none
        with pytest.raises(NotFoundError):
            await client.get_rollout("nope")


@pytest.mark.anyio
async def test_a_rollout_waits_for_a_data_release(served: Served) -> None:
    async with served.client() as client:
        release = await client.create_release("2026-12")
        gated = await client.create_rollout(
            strategy("after-data"), archive(), EUROPE, after_release=release["id"]
        )
        assert (gated["state"], gated["after_release"]) == ("draft", release["id"])
        await until("the release staged", lambda: state_of(client, release["id"], "staged"))
        await client.publish_release(release["id"])

        async def started() -> bool:
            return (await client.get_rollout("after-data"))["state"] == "active"

        await until("the rollout started once the release was published", started)


@pytest.mark.anyio
async def test_rollout_refusals_are_the_library_s_errors(served: Served, tmp_path: Path) -> None:
    async with served.client() as client:
        with pytest.raises(StrategyError) as bad_strategy:
            await client.create_rollout("id: x\n", archive(), EUROPE)
        assert bad_strategy.value.problems
        with pytest.raises(ValidationError) as bad_area:
            await client.create_rollout(strategy("r-2"), archive(), {"type": "Point"})
        assert next(p for p, _ in bad_area.value.problems) == "target.type"
        with pytest.raises(BundleError):
            await client.create_rollout(strategy("r-2"), b"not a zip", EUROPE)
        with pytest.raises(BundleError):  # checked here, before anything is sent
            await client.create_rollout_from_folder(tmp_path, EUROPE)
        await client.create_rollout(strategy("r-2"), archive(), EUROPE)
        with pytest.raises(ConflictError) as twice:
            await client.create_rollout(strategy("r-2"), archive(), EUROPE)
        assert exit_code(twice.value) == 1


# -- tokens --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_token_a_wrong_one_and_one_that_may_not(served: Served) -> None:
    for token in (None, "wrong-token-0123456789"):
        async with served.client(token) as client:
            assert (await client.status())["name"]  # needs none
            with pytest.raises(AccessDeniedError) as denied:
                await client.list_releases()
            assert (denied.value.status_code, denied.value.error_code) == (401, "unauthorized")
            assert exit_code(denied.value) == 4
            with pytest.raises(AccessDeniedError):
                await client.list_rollouts()
    async with served.client(CALLBACK) as client:  # a task service's token: not an operator's
        with pytest.raises(AccessDeniedError) as denied:
            await client.list_releases()
        assert denied.value.status_code in (401, 403)
        assert CALLBACK not in denied.value.message


# -- answers that are not the API's, and trouble before an answer ----------------------------------


def mocked(answer: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://rc.test", transport=httpx.MockTransport(answer))


def error(status: int, code: str, message: str = "no", **details: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(status, json=body)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "kind", "status"),
    [
        (
            error(409, "concurrent_update", kind="release", id="R", expected=["a"], actual="b"),
            ConcurrentUpdateError,
            1,
        ),
        (
            error(400, "invalid_area", "bad", problems=[{"path": "a", "message": "m"}]),
            GeoJSONError,
            1,
        ),
        (error(503, "storage", "the store failed"), StorageError, 3),
        (error(503, "schema", "old schema"), SchemaError, 3),
        (error(503, "unavailable", "later"), PeerAnswerError, 3),
        (error(500, "internal", "a bug"), PeerAnswerError, 3),
        (error(413, "too_large", "too big"), PeerAnswerError, 1),
        (error(403, "forbidden", "not you"), AccessDeniedError, 4),
        (httpx.Response(401, text="who?"), AccessDeniedError, 4),
        (httpx.Response(502, text="<html>bad gateway</html>"), BadGatewayError, 3),
        (httpx.Response(504, text=""), BadGatewayError, 3),
        (httpx.Response(500, text="<html>oops</html>"), PeerAnswerError, 3),
        (httpx.Response(404, text="nothing here"), PeerAnswerError, 1),
        (httpx.Response(200, text="not json"), MalformedAnswerError, 3),
        (httpx.Response(200, json=[1, 2]), MalformedAnswerError, 3),
    ],
)
async def test_each_answer_raises_its_error(
    answer: httpx.Response, kind: type[Exception], status: int
) -> None:
    async with mocked(lambda request: answer) as client:
        with pytest.raises(kind) as raised:
            await client.get_release("R")
    assert type(raised.value) is kind
    assert exit_code(raised.value) == status  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_concurrent_update_keeps_the_server_s_fields() -> None:
    answer = error(
        409, "concurrent_update", "lost", kind="release", id="R", expected=["a", "b"], actual="c"
    )
    async with mocked(lambda request: answer) as client:
        with pytest.raises(ConcurrentUpdateError) as raised:
            await client.publish_release("R")
    lost = raised.value
    assert (lost.message, lost.kind, lost.ident, lost.expected, lost.actual) == (
        "lost",
        "release",
        "R",
        ("a", "b"),
        "c",
    )
    assert lost.to_dict()["error"]["details"]["expected"] == ["a", "b"]


@pytest.mark.anyio
async def test_trouble_before_an_answer() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    async with mocked(refuse) as client:
        with pytest.raises(PeerUnreachableError) as unreachable:
            await client.list_rollouts()
    assert "connection refused" in unreachable.value.message
    assert exit_code(unreachable.value) == 3
    async with mocked(hang) as client:
        with pytest.raises(PeerTimeoutError) as timed_out:
            await client.list_rollouts()
    assert exit_code(timed_out.value) == 3


@pytest.mark.anyio
async def test_what_it_sends() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x"})

    client = Client(
        "http://rc.test/prefix/", token="secret-1", transport=httpx.MockTransport(record)
    )
    async with client:
        await client.get_release("a/b c")
        await client.list_releases(state=["staged", "failed"], tag="t")
        await client.cancel_release("R", reason="why")
        await client.publish_release("R")
        await client.create_rollout("s", b"\x00zip", EUROPE, start=False)
    get, listing, cancel, publish, upload = seen
    assert get.url.raw_path == b"/prefix/releases/a%2Fb%20c"
    assert get.headers["authorization"] == "Bearer secret-1"
    assert listing.url.params.get_list("state") == ["staged", "failed"]
    assert listing.url.params["tag"] == "t"
    assert httpx.Response(200, content=cancel.content).json() == {"reason": "why"}
    assert publish.content == b""  # an action without fields sends no body
    sent = httpx.Response(200, content=upload.content).json()
    assert (sent["strategy"], sent["start"]) == ("s", False)
    assert base64.b64decode(sent["archive"]) == b"\x00zip"
    assert "name" not in sent  # left out: the server's default


def test_settings_that_cannot_work() -> None:
    for url in ("ftp://rc.test", "rc.test:8000", "http://"):
        with pytest.raises(ConfigurationError):
            Client(url)
    with pytest.raises(ConfigurationError):
        Client("http://rc.test", timeout=0)
    assert exit_code(ConfigurationError("bad")) == 2


# -- plain text (without rich) -------------------------------------------------------------------


def test_plain_tables_are_aligned() -> None:
    text = plain_table(["ID", "NAME"], [["a-long-id", "x"], ["b", None], ["c", True]])
    assert text.splitlines() == [
        "ID         NAME",
        "---------  ----",
        "a-long-id  x",
        "b",
        "c          yes",
    ]
    view = View("release R").field("state", "staged").field("studies", ["S1", "S2"])
    view.table("tasks", ["SERVICE", "STATE"], [["portal", "staged"]]).table("none", ["X"], [])
    assert view.text().split("\n\n") == [
        "release R",
        "state:   staged\nstudies: S1, S2",
        "tasks\nSERVICE  STATE\n-------  ------\nportal   staged",
        "none\n(none)",
    ]


# -- watch, in process ---------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stream that says it is a terminal: rich draws a Live view on it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
async def test_watch_a_release_to_published_and_one_canceled(
    served: Served, stream: type[io.StringIO]
) -> None:
    async with served.client() as client:
        await client.register_service("portal", "memory://portal")
        published = await client.create_release("auto", auto_publish=True)
        out = Output(json_mode=False, stream=stream())
        args = argparse.Namespace(id=published["id"], until_staged=False, interval=0.01)
        assert await releases_watch(client, args, out) == 0
        assert out.live_capable is (stream is Terminal)
        text = out.stream.getvalue()  # type: ignore[attr-defined]
        assert "published" in text
        assert "portal" in text
        canceled = await client.create_release("stopped", studies=["S"] * 5)
        await client.cancel_release(canceled["id"])
        args = argparse.Namespace(id=canceled["id"], until_staged=False, interval=0.01)
        assert await releases_watch(client, args, Output(json_mode=True, stream=stream())) == 1


@pytest.mark.anyio
async def test_watch_a_rollout_until_it_is_aborted(served: Served) -> None:
    async with served.client() as client:
        await client.create_rollout(strategy("w-1"), archive(), EUROPE)
        out = Output(json_mode=False, use_rich=False, stream=io.StringIO())
        watching = asyncio.create_task(
            rollouts_watch(client, argparse.Namespace(id="w-1", interval=0.01), out)
        )
        await asyncio.sleep(0.05)
        assert not watching.done()  # active: still watching
        await client.abort_rollout("w-1")
        assert await asyncio.wait_for(watching, WAIT) == 1
        assert "rollout w-1 aborted" in out.stream.getvalue()  # type: ignore[attr-defined]


def status(state: str, statuses: dict[str, int], outcomes: dict[str, int]) -> dict[str, Any]:
    return {"rollout": {"state": state}, "statuses": statuses, "outcomes": outcomes}


def test_a_rollout_ends_well_only_completed_without_failures() -> None:
    assert rollout_ended_well(status("completed", {"Done": 3}, {"rolled_out": 3}))
    assert rollout_ended_well(status("completed", {}, {}))
    assert not rollout_ended_well(status("completed", {"Done": 2, "Failed": 1}, {"rolled_out": 2}))
    assert not rollout_ended_well(status("completed", {"Done": 3}, {"rolled_back": 1}))
    assert not rollout_ended_well(status("aborted", {"Done": 3}, {"rolled_out": 3}))
    assert not rollout_ended_well(status("active", {}, {}))
