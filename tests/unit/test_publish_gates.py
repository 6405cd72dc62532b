"""Gates before publish: approvals, checks (webhooks that answer pass or fail) and a scheduled
time, through the library, every store, and over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from release_coordinator import (
    ConflictError,
    Coordinator,
    CoordinatorStore,
    MemoryStore,
    MemoryTransport,
    ReleaseState,
    TaskServiceKit,
    ValidationError,
    verify_webhook,
)
from release_coordinator.coordinator.models import utcnow
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.roles import OperatorToken

pytestmark = pytest.mark.anyio


class Checker:
    """A check's receiver: answers each ask with the next of ``answers`` (a result, or an
    HTTP status), and records the releases it was asked about."""

    def __init__(self) -> None:
        self.answers: list[str | int] = []
        self.by_webhook: dict[str, list[str | int]] = {}  # first, if it has one for the check
        self.asked: list[dict[str, Any]] = []
        self.secrets: dict[str, str] = {}
        self.app = Starlette(routes=[Route("/check", self.check, methods=["POST"])])

    async def check(self, request: Request) -> Response:
        body = await request.body()
        webhook_id = request.headers["webhook-id"].split("-")[0]
        verify_webhook(self.secrets[webhook_id], request.headers, body)
        self.asked.append(json.loads(body))
        own = self.by_webhook.get(webhook_id)
        answer = own.pop(0) if own else self.answers.pop(0) if self.answers else "pass"
        if isinstance(answer, int):
            return Response(status_code=answer)
        return JSONResponse({"result": answer, "message": f"said {answer}"})


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CoordinatorStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    from release_coordinator.storage.sql import SQLStore

    if request.param == "sqlite":
        sql = await SQLStore.connect(f"sqlite:///{tmp_path / 'rc.db'}")
        yield sql
        await sql.close()
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        sql = await SQLStore.connect(url)
        yield sql
        await sql.close()


async def coordinator_over(store: CoordinatorStore, checker: Checker | None = None) -> Coordinator:
    transport = MemoryTransport()
    transport.add("memory://portal", TaskServiceKit("portal"))
    coordinator = Coordinator(store, transport=transport)
    await coordinator.register_service("portal", "memory://portal")
    if checker is not None:
        coordinator.checks_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=checker.app))
    return coordinator


async def test_approvals_hold_the_publish_until_enough_admins_approve(
    store: CoordinatorStore,
) -> None:
    coordinator = await coordinator_over(store)
    async with coordinator.running():
        release = await coordinator.create_release("r1", required_approvals=2, auto_publish=True)
        staged = await coordinator.wait(release.id, ["staged"], timeout=10)
        with pytest.raises(ConflictError, match=r"needs 2 more approval\(s\) \(0 of 2\)"):
            await coordinator.publish(release.id)
        once = await coordinator.approve(release.id, by="alice")
        assert [a.by for a in once.gates.approvals] == ["alice"]
        again = await coordinator.approve(release.id, by="alice")  # the same admin: no change
        assert len(again.gates.approvals) == 1
        assert (await coordinator.get_release(release.id)).state is ReleaseState.STAGED
        await coordinator.approve(release.id, by="bob")
        done = await coordinator.wait(release.id, timeout=10)
    assert staged.state is ReleaseState.STAGED
    assert done.state is ReleaseState.PUBLISHED
    assert [a.by for a in done.gates.approvals] == ["alice", "bob"]
    messages = [e.message for e in await coordinator.events(release_id=release.id)]
    assert "release 'r1' approved by bob (2 of 2)" in messages
    with pytest.raises(ConflictError, match="too late to approve"):
        await coordinator.approve(release.id, by="carol")
    await coordinator.close()


async def test_without_auto_publish_approvals_open_the_operators_publish(
    store: CoordinatorStore,
) -> None:
    coordinator = await coordinator_over(store)
    async with coordinator.running():
        release = await coordinator.create_release("r1", required_approvals=1)
        await coordinator.wait(release.id, ["staged"], timeout=10)
        await coordinator.approve(release.id, by="alice")
        await asyncio.sleep(0.1)
        assert (await coordinator.get_release(release.id)).state is ReleaseState.STAGED
        await coordinator.publish(release.id)
        assert (await coordinator.wait(release.id, timeout=10)).state is ReleaseState.PUBLISHED
        plain = await coordinator.create_release("r2")
        with pytest.raises(ConflictError, match="needs no approval"):
            await coordinator.approve(plain.id, by="alice")
    await coordinator.close()


async def test_checks_pass_fail_error_and_are_asked_again(store: CoordinatorStore) -> None:
    checker = Checker()
    coordinator = await coordinator_over(store, checker)
    first = await coordinator.add_webhook("http://checks.test/check")
    second = await coordinator.add_webhook("http://checks.test/check")
    checker.secrets = {first.id: first.secret, second.id: second.secret}
    checker.by_webhook = {first.id: ["pass"], second.id: ["fail"]}
    async with coordinator.running():
        release = await coordinator.create_release(
            "r1", checks=[first.id, second.id], auto_publish=True, studies=["SD_1"]
        )
        await coordinator.wait(release.id, ["staged"], timeout=10)
        for _ in range(100):
            held = await coordinator.get_release(release.id)
            if len(held.gates.results) == 2:
                break
            await asyncio.sleep(0.02)
        assert [(r.webhook_id, r.result) for r in held.gates.results] == [
            (first.id, "pass"),
            (second.id, "fail"),
        ]
        assert held.state is ReleaseState.STAGED
        with pytest.raises(ConflictError, match=f"check {second.id} failed: said fail"):
            await coordinator.publish(release.id)
        assert checker.asked[0]["release"]["studies"] == ["SD_1"]
        assert checker.asked[0]["check"] == "publish"

        # the failing check is fixed: ask again, both pass, it publishes by itself
        checker.by_webhook = {first.id: ["pass"], second.id: ["pass"]}
        await coordinator.rerun_checks(release.id, by="alice")
        done = await coordinator.wait(release.id, timeout=10)
    assert done.state is ReleaseState.PUBLISHED
    assert len(checker.asked) == 4
    with pytest.raises(ConflictError, match="published"):
        await coordinator.rerun_checks(release.id)
    await coordinator.close()


async def test_a_check_that_cannot_be_asked_keeps_the_gate_closed(store: CoordinatorStore) -> None:
    checker = Checker()
    coordinator = await coordinator_over(store, checker)
    hook = await coordinator.add_webhook("http://checks.test/check")
    checker.secrets = {hook.id: hook.secret}
    checker.answers = [503]
    async with coordinator.running():
        release = await coordinator.create_release("r1", checks=[hook.id], auto_publish=True)
        await coordinator.wait(release.id, ["staged"], timeout=10)
        for _ in range(100):
            held = await coordinator.get_release(release.id)
            if held.gates.results:
                break
            await asyncio.sleep(0.02)
    result = held.gates.results[0]
    assert (result.result, result.message) == ("error", "it answered HTTP 503")
    assert held.state is ReleaseState.STAGED
    await coordinator.close()


async def test_a_scheduled_release_publishes_at_its_time_not_before(
    store: CoordinatorStore,
) -> None:
    coordinator = await coordinator_over(store)
    at = utcnow() + timedelta(seconds=1.5)
    async with coordinator.running():
        release = await coordinator.create_release("r1", publish_at=at)
        await coordinator.wait(release.id, ["staged"], timeout=10)
        with pytest.raises(ConflictError, match="it is scheduled for"):
            await coordinator.publish(release.id)
        done = await coordinator.wait(release.id, timeout=10)
    assert done.state is ReleaseState.PUBLISHED
    assert done.updated_at >= at
    assert done.gates.publish_at == at
    await coordinator.close()


async def test_bad_gates_are_refused_with_their_paths() -> None:
    coordinator = Coordinator(MemoryStore())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"required_approvals": -1}, "required_approvals"),
        ({"required_approvals": 99}, "required_approvals"),
        ({"checks": ["WH_nope"]}, "checks[0]"),
        ({"publish_at": utcnow().replace(tzinfo=None)}, "publish_at"),
    ]
    for gates, path in cases:
        with pytest.raises(ValidationError) as refused:
            await coordinator.create_release("r", **gates)
        assert path in [p for p, _ in refused.value.problems], (gates, refused.value)
    assert await coordinator.list_releases() == []
    await coordinator.close()


async def test_run_again_keeps_the_approvals_and_checks_asked_not_their_answers() -> None:
    coordinator = await coordinator_over(MemoryStore())
    hook = await coordinator.add_webhook("http://checks.test/check")
    release = await coordinator.create_release("r1", required_approvals=1, checks=[hook.id])
    await coordinator.approve(release.id, by="alice")
    await coordinator.cancel(release.id)
    async with coordinator.running():
        await coordinator.wait(release.id, timeout=10)
        again = await coordinator.run_again(release.id)
    assert (again.gates.required_approvals, again.gates.checks) == (1, (hook.id,))
    assert again.gates.approvals == ()
    assert again.gates.results == ()
    await coordinator.close()


# -- over HTTP ------------------------------------------------------------------------------------


async def test_gates_over_http() -> None:
    checker = Checker()
    coordinator = await coordinator_over(MemoryStore(), checker)
    tokens = {
        "root": OperatorToken("admin-token", "admin"),
        "ann": OperatorToken("admin2-token", "admin"),
        "rel": OperatorToken("releaser-token", "releaser"),
    }
    app = coordinator_app(coordinator, tokens=tokens)

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async with (
        coordinator.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rc") as http,
    ):
        hook = (
            await http.post(
                "/webhooks", json={"url": "http://checks.test/check"}, headers=auth("admin-token")
            )
        ).json()
        checker.secrets = {hook["id"]: hook["secret"]}
        at = (utcnow() + timedelta(days=1)).isoformat()
        body = {"name": "r1", "required_approvals": 2, "checks": [hook["id"]], "publish_at": at}
        made = await http.post("/releases", json=body, headers=auth("releaser-token"))
        assert made.status_code == 201, made.text
        shown = made.json()
        assert shown["gates"]["required_approvals"] == 2
        assert shown["gates"]["checks"] == [hook["id"]]
        assert shown["gates"]["publish_at"] == at
        assert shown["publish_gate"] == "it needs 2 more approval(s) (0 of 2)"
        rid = shown["id"]
        await coordinator.wait(rid, ["staged"], timeout=10)
        refused = await http.post(f"/releases/{rid}/publish", headers=auth("admin-token"))
        assert refused.status_code == 409
        assert "cannot be published yet" in refused.json()["error"]["message"]
        # a releaser may not approve; admins do, each once, by their token's name
        denied = await http.post(f"/releases/{rid}/approve", headers=auth("releaser-token"))
        assert denied.status_code == 403
        assert denied.json()["error"]["details"]["required_role"] == "admin"
        for token in ("admin-token", "admin2-token"):
            approved = await http.post(f"/releases/{rid}/approve", headers=auth(token))
            assert approved.status_code == 200, approved.text
        gates = approved.json()["gates"]
        assert [a["by"] for a in gates["approvals"]] == ["root", "ann"]
        for _ in range(100):
            release = (await http.get(f"/releases/{rid}", headers=auth("admin-token"))).json()
            if release["gates"]["results"]:
                break
            await asyncio.sleep(0.02)
        assert release["gates"]["results"][0]["result"] == "pass"
        assert release["publish_gate"].startswith("it is scheduled for ")
        again = await http.post(f"/releases/{rid}/checks", headers=auth("releaser-token"))
        assert again.status_code == 200, again.text
        bad = await http.post(
            "/releases", json={"name": "r2", "checks": ["WH_nope"]}, headers=auth("admin-token")
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["details"]["problems"][0]["path"] == "checks[0]"
        bad = await http.post(
            "/releases",
            json={"name": "r2", "publish_at": "tomorrow"},
            headers=auth("admin-token"),
        )
        assert bad.status_code == 422, bad.text
    await coordinator.close()


async def exercise_gates(c: Any, small: Any) -> dict[str, str]:
    """Provoke every documented status of the gates' operations but the token refusals
    (``c``: a checking client with a named admin token; ``small``: one whose app takes 16
    bytes of body at most). Returns a release id for the token refusals."""
    hook = (await c("POST", "/webhooks", 201, json={"url": "http://127.0.0.1:9/check"})).json()
    gated = {"name": "gated", "required_approvals": 2, "checks": [hook["id"]]}
    rid = (await c("POST", "/releases", 201, json=gated)).json()["id"]
    plain = (await c("POST", "/releases", 201, json={"name": "plain"})).json()["id"]
    for action in ("approve", "checks"):
        template = f"/releases/{{release_id}}/{action}"
        here = f"/releases/{rid}/{action}"
        await c("POST", template, 200, path=here)
        await c("POST", template, 400, path=here, content=b"[")
        await c("POST", template, 404, path=f"/releases/RE_nope/{action}")
        await c("POST", template, 409, path=f"/releases/{plain}/{action}")
        await c("POST", template, 422, path=here, json={"x": 1}, accepted=False)
        await small("POST", template, 413, path=here, json={"x": "y" * 20})
    return {"release_id": rid}


def test_the_blocking_facade_approves_and_subscribes() -> None:
    from release_coordinator import SyncCoordinator

    transport = MemoryTransport()
    transport.add("memory://portal", TaskServiceKit("portal"))
    with SyncCoordinator(transport=transport) as sync:
        sync.register_service("portal", "memory://portal")
        hook = sync.add_webhook("http://127.0.0.1:9/hook", states=["published"])
        assert [w.id for w in sync.list_webhooks()] == [hook.id]
        assert sync.update_webhook(hook.id, enabled=False).enabled is False
        assert sync.list_webhook_deliveries(hook.id) == []
        release = sync.create_release("r1", required_approvals=1, auto_publish=True)
        sync.wait(release.id, ["staged"], timeout=10)
        assert sync.approve(release.id, by="alice").gates.approvals[0].by == "alice"
        assert sync.wait(release.id, timeout=10).state is ReleaseState.PUBLISHED
        with pytest.raises(ConflictError):
            sync.rerun_checks(release.id)
        sync.remove_webhook(hook.id)
        assert sync.list_webhooks() == []


async def test_concurrent_approvals_are_all_kept(store: CoordinatorStore) -> None:
    coordinator = await coordinator_over(store)
    release = await coordinator.create_release("r1", required_approvals=5)
    await asyncio.gather(*(coordinator.approve(release.id, by=f"admin{i}") for i in range(5)))
    kept = (await coordinator.get_release(release.id)).gates.approvals
    assert sorted(a.by for a in kept) == [f"admin{i}" for i in range(5)]
    await coordinator.close()


async def test_an_answer_to_an_ask_before_a_rerun_is_dropped(store: CoordinatorStore) -> None:
    """A check asked, then asked again while its first answer is on its way: the first
    answer (a pass) opens nothing; only the second ask's answer counts."""
    checker = Checker()
    first_ask = asyncio.Event()
    let_go = asyncio.Event()

    async def slow(request: Request) -> Response:
        if not checker.asked:
            first_ask.set()
            await let_go.wait()
        return await Checker.check(checker, request)

    checker.app = Starlette(routes=[Route("/check", slow, methods=["POST"])])
    coordinator = await coordinator_over(store, checker)
    hook = await coordinator.add_webhook("http://checks.test/check")
    checker.secrets = {hook.id: hook.secret}
    checker.answers = ["pass", "fail"]
    async with coordinator.running():
        release = await coordinator.create_release("r1", checks=[hook.id], auto_publish=True)
        await asyncio.wait_for(first_ask.wait(), 10)
        await coordinator.rerun_checks(release.id, by="alice")
        let_go.set()
        for _ in range(200):
            held = await coordinator.get_release(release.id)
            if held.gates.results:
                break
            await asyncio.sleep(0.02)
    assert held.state is ReleaseState.STAGED
    assert [r.result for r in held.gates.results] == ["fail"]  # the second ask's
    assert held.gates.checks_round == 1
    await coordinator.close()


async def test_a_publish_racing_a_rerun_of_the_checks_never_goes_by_old_answers(
    store: CoordinatorStore,
) -> None:
    checker = Checker()
    coordinator = await coordinator_over(store, checker)
    hook = await coordinator.add_webhook("http://checks.test/check")
    checker.secrets = {hook.id: hook.secret}
    checker.answers = ["pass"] * 20
    for i in range(5):
        async with coordinator.running():
            release = await coordinator.create_release(f"r{i}", checks=[hook.id])
            await coordinator.wait(release.id, ["staged"], timeout=10)
            for _ in range(200):
                if (await coordinator.get_release(release.id)).gates.results:
                    break
                await asyncio.sleep(0.01)
            published, rerun = await asyncio.gather(
                coordinator.publish(release.id),
                coordinator.rerun_checks(release.id),
                return_exceptions=True,
            )
            after = await coordinator.get_release(release.id)
            if isinstance(published, BaseException):  # the rerun went first: publish waits
                assert isinstance(published, ConflictError), published
                assert after.gates.checks_round == 1
            else:  # the publish went first: the rerun is too late
                assert isinstance(rerun, ConflictError), rerun
                assert after.gates.checks_round == 0
            if not after.is_final and after.state is not ReleaseState.PUBLISHING:
                await coordinator.cancel(release.id)
            await coordinator.wait(release.id, timeout=10)
    await coordinator.close()
