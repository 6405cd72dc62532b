"""Webhooks: signatures, the dispatcher against a receiver that fails, drops and recovers, the
Coordinator's methods and the HTTP API (admins only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from release_coordinator import (
    Coordinator,
    CoordinatorStore,
    EventKind,
    MemoryStore,
    MemoryTransport,
    TaskServiceKit,
    ValidationError,
    WebhookDispatcher,
    WebhookRetry,
    WebhookSignatureError,
    new_webhook_secret,
    sign_webhook,
    verify_webhook,
)
from release_coordinator.coordinator.models import utcnow
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.roles import OperatorToken

pytestmark = pytest.mark.anyio

Call = Callable[..., Awaitable[httpx.Response]]


# -- signatures -----------------------------------------------------------------------------------


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    secret = new_webhook_secret()
    body = b'{"events": []}'
    headers = sign_webhook(secret, "WH_1-1-2", body, timestamp=1_700_000_000)
    assert headers["webhook-signature"].startswith("v1,")
    verify_webhook(secret, headers, body, now=1_700_000_010)
    cases = [
        (secret, headers, body + b" ", 1_700_000_010, "no webhook-signature matches"),
        (new_webhook_secret(), headers, body, 1_700_000_010, "no webhook-signature matches"),
        (secret, {**headers, "webhook-id": "WH_1-1-3"}, body, 1_700_000_010, "matches"),
        (secret, headers, body, 1_700_000_000 + 301, "more than 300 s off"),
        (secret, {**headers, "webhook-timestamp": "soon"}, body, 0, "not Unix seconds"),
        (secret, {"webhook-id": "x"}, body, 0, "missing"),
    ]
    for key, sent, content, now, message in cases:
        with pytest.raises(WebhookSignatureError, match=message):
            verify_webhook(key, sent, content, now=now)
    # a rotated secret: the receiver accepts either while both are listed
    both = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]}
    verify_webhook(secret, both, body, now=1_700_000_000)


def test_signatures_follow_standard_webhooks() -> None:
    """The reference library of the specification verifies what we sign."""
    standardwebhooks = pytest.importorskip("standardwebhooks")
    secret = new_webhook_secret()
    body = b'{"webhook_id": "WH_1", "events": [{"id": 1}]}'
    headers = sign_webhook(secret, "WH_1-1-1", body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)


@given(st.binary(max_size=200), st.text(min_size=1, max_size=40))
def test_verify_never_accepts_a_body_it_did_not_sign(body: bytes, message_id: str) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = sign_webhook(secret, message_id, body, timestamp=100)
    verify_webhook(secret, headers, body, now=100)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(secret, headers, body + b"x", now=100)


# -- a receiver that fails, drops and recovers ----------------------------------------------------


class Receiver:
    """An ASGI receiver of deliveries that checks every signature. ``script`` says what the
    next deliveries get: a status code, or "drop" (the connection is lost: no answer)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.script: list[int | str] = []
        self.received: list[dict[str, Any]] = []  # acknowledged bodies
        self.attempts: list[str] = []  # webhook-id of every attempt
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        verify_webhook(self.secret, request.headers, body)
        self.attempts.append(request.headers["webhook-id"])
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            self.received.append(json.loads(body))
        return Response(status_code=int(status))

    def client(self) -> httpx.AsyncClient:
        receiver = self

        class Dropping(httpx.AsyncBaseTransport):
            def __init__(self) -> None:
                self.inner = httpx.ASGITransport(app=receiver.app)

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if receiver.script and receiver.script[0] == "drop":
                    receiver.script.pop(0)
                    receiver.attempts.append(request.headers["webhook-id"])
                    raise httpx.ReadTimeout("dropped", request=request)
                return await self.inner.handle_async_request(request)

        return httpx.AsyncClient(transport=Dropping())

    @property
    def event_ids(self) -> list[int]:
        return [e["id"] for body in self.received for e in body["events"]]


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def world() -> AsyncIterator[tuple[Coordinator, MemoryTransport]]:
    transport = MemoryTransport()
    for name in ("portal", "search"):
        transport.add(f"memory://{name}", TaskServiceKit(name))
    coordinator = Coordinator(MemoryStore(), transport=transport)
    try:
        yield coordinator, transport
    finally:
        await coordinator.close()


async def run_release(coordinator: Coordinator, name: str = "2026-12") -> str:
    async with coordinator.running():
        known = {s.name for s in await coordinator.list_services()}
        for service in ("portal", "search"):
            if service not in known:
                await coordinator.register_service(service, f"memory://{service}")
        release = await coordinator.create_release(name, auto_publish=True)
        await coordinator.wait(release.id, timeout=10)
    return release.id


async def drain(dispatcher: WebhookDispatcher, clock: Clock, rounds: int = 50) -> None:
    """Rounds until nothing is left to try (the clock jumps over every backoff)."""
    for _ in range(rounds):
        made = await dispatcher.deliver_once()
        clock.advance(400)
        if not made and not any(
            w.pending_until for w in await dispatcher.store.list_webhooks(enabled=True)
        ):
            return


async def test_every_event_arrives_once_in_order_through_failures_and_drops(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", max_batch=4)
    receiver = Receiver(webhook.secret)
    receiver.script = [500, "drop", 503, 200, "drop", 200, 502]
    clock = Clock()
    dispatcher = WebhookDispatcher(coordinator.store, client=receiver.client(), clock=clock)
    await run_release(coordinator)
    await drain(dispatcher, clock)

    events = await coordinator.events()
    assert receiver.event_ids == [e.id for e in events]  # each once, in order
    assert all(len(body["events"]) <= 4 for body in receiver.received)
    assert receiver.received[0]["webhook_id"] == webhook.id
    first = receiver.received[0]["events"][0]
    assert first == {**first, "id": events[0].id, "kind": events[0].kind.value}
    # a retry is the same message: the same id, the same events
    assert receiver.attempts[:4] == [receiver.attempts[0]] * 4
    state = await coordinator.get_webhook(webhook.id)
    assert state.cursor == events[-1].id
    assert (state.failures, state.pending_until, state.enabled) == (0, 0, True)
    log = await coordinator.list_webhook_deliveries(webhook.id)
    assert len(log) == len(receiver.attempts)
    oldest = log[::-1]
    assert [(d.attempt, d.ok) for d in oldest[:4]] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert oldest[0].status_code == 500
    assert oldest[0].error == "HTTP 500"
    assert oldest[1].status_code is None
    assert "no answer within" in oldest[1].error


async def test_backoff_doubles_and_nothing_is_tried_before_it_ends(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook")
    receiver = Receiver(webhook.secret)
    receiver.script = [500, 500, 500]
    clock = Clock()
    retry = WebhookRetry(base_delay=10, max_delay=25, jitter=0)
    dispatcher = WebhookDispatcher(
        coordinator.store, client=receiver.client(), clock=clock, retry=retry
    )
    await coordinator.register_service("portal", "memory://portal")
    waits = []
    for _ in range(3):
        assert await dispatcher.deliver_once() == 1
        state = await coordinator.get_webhook(webhook.id)
        assert state.next_attempt_at is not None
        waits.append((state.next_attempt_at - clock.now).total_seconds())
        assert await dispatcher.deliver_once() == 0  # not due yet
        clock.advance(waits[-1])
    assert waits == [10, 20, 25]
    assert await dispatcher.deliver_once() == 1
    assert len(receiver.received) == 1


async def test_repeated_failures_disable_and_enabling_resumes_without_loss(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", kinds=["transition"])
    receiver = Receiver(webhook.secret)
    receiver.script = [500] * 3
    clock = Clock()
    retry = WebhookRetry(disable_after=3)
    dispatcher = WebhookDispatcher(
        coordinator.store, client=receiver.client(), clock=clock, retry=retry
    )
    await run_release(coordinator)
    await drain(dispatcher, clock)
    state = await coordinator.get_webhook(webhook.id)
    assert not state.enabled
    assert state.disabled_reason == "3 deliveries failed in a row; the last: HTTP 500"
    assert receiver.received == []
    assert [w.id for w in await coordinator.list_webhooks(enabled=False)] == [webhook.id]

    await run_release(coordinator, "2027-01")  # more events while it is off
    resumed = await coordinator.update_webhook(webhook.id, enabled=True)
    assert (resumed.failures, resumed.disabled_reason, resumed.next_attempt_at) == (0, "", None)
    await drain(dispatcher, clock)
    transitions = await coordinator.events(kinds=[EventKind.TRANSITION])
    assert receiver.event_ids == [e.id for e in transitions]


async def test_410_gone_disables_at_once(world: tuple[Coordinator, MemoryTransport]) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook")
    receiver = Receiver(webhook.secret)
    receiver.script = [410]
    clock = Clock()
    dispatcher = WebhookDispatcher(coordinator.store, client=receiver.client(), clock=clock)
    await coordinator.register_service("portal", "memory://portal")
    assert await dispatcher.deliver_once() == 1
    state = await coordinator.get_webhook(webhook.id)
    assert not state.enabled
    assert state.disabled_reason == "the receiver answered 410 Gone"


async def test_filters_and_the_cursor_passes_what_is_not_wanted(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    await coordinator.register_service("portal", "memory://portal")  # before: never sent
    published = await coordinator.add_webhook("http://127.0.0.1/hook", states=["published"])
    warnings = await coordinator.add_webhook("http://127.0.0.1/hook", types=["error"])
    receivers = {w.id: Receiver(w.secret) for w in (published, warnings)}

    class Both(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            webhook_id = request.headers["webhook-id"].split("-")[0]
            transport = httpx.ASGITransport(app=receivers[webhook_id].app)
            return await transport.handle_async_request(request)

    clock = Clock()
    client = httpx.AsyncClient(transport=Both())
    dispatcher = WebhookDispatcher(coordinator.store, client=client, clock=clock)
    release_id = await run_release(coordinator)
    await drain(dispatcher, clock)
    got = [e for body in receivers[published.id].received for e in body["events"]]
    # the release's transition to published, and each of its two tasks'
    assert [(e["release_id"], e["state"]) for e in got] == [(release_id, "published")] * 3
    assert sum(e["task_id"] is None for e in got) == 1
    assert receivers[warnings.id].received == []
    last = (await coordinator.events())[-1].id
    assert (await coordinator.get_webhook(warnings.id)).cursor == last  # passed, never sent
    await client.aclose()


async def test_two_dispatchers_over_one_database_send_each_event_once(tmp_path: Path) -> None:
    from release_coordinator.storage.sql import SQLStore

    store = await SQLStore.connect(f"sqlite:///{tmp_path / 'rc.db'}")
    transport = MemoryTransport()
    for name in ("portal", "search"):
        transport.add(f"memory://{name}", TaskServiceKit(name))
    coordinator = Coordinator(store, transport=transport)
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", max_batch=2)
    receiver = Receiver(webhook.secret)
    clock = Clock()
    a, b = (
        WebhookDispatcher(store, client=receiver.client(), clock=clock, owner=name)
        for name in ("a", "b")
    )
    try:
        await run_release(coordinator)
        for _ in range(20):
            await asyncio.gather(a.deliver_once(), b.deliver_once())
        assert receiver.event_ids == [e.id for e in await coordinator.events()]
    finally:
        await a.aclose()
        await b.aclose()
        await coordinator.close()
        await store.close()


async def test_on_an_out_of_order_store_the_newest_events_settle_first() -> None:
    class OutOfOrder(MemoryStore):
        def events_visible_in_order(self) -> bool:
            return False

    store = OutOfOrder()
    coordinator = Coordinator(store)
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook")
    receiver = Receiver(webhook.secret)
    dispatcher = WebhookDispatcher(store, client=receiver.client(), settle=0.3)
    await coordinator.create_release("r1")
    assert await dispatcher.deliver_once() == 0  # too new
    await asyncio.sleep(0.35)
    assert await dispatcher.deliver_once() == 1
    assert len(receiver.event_ids) == 1
    await coordinator.close()


async def test_the_dispatcher_runs_in_the_background_and_wakes(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook")
    receiver = Receiver(webhook.secret)
    dispatcher = WebhookDispatcher(coordinator.store, client=receiver.client(), interval=60)
    async with dispatcher.running():
        assert dispatcher.is_running
        await coordinator.register_service("portal", "memory://portal")
        for _ in range(100):
            dispatcher.wake()
            await asyncio.sleep(0.01)
            if receiver.received:
                break
    assert not dispatcher.is_running
    assert len(receiver.event_ids) == 1


async def test_bad_settings_are_refused_with_their_paths() -> None:
    coordinator = Coordinator(MemoryStore())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "ftp://x/"}, "url"),
        ({"url": "http:///nohost"}, "url"),
        ({"url": "http://h/#frag"}, "url"),
        ({"url": "http://h/", "kinds": ["nope"]}, "kinds[0]"),
        ({"url": "http://h/", "types": ["info", "info"]}, "types"),
        ({"url": "http://h/", "max_batch": 0}, "max_batch"),
        ({"url": "http://h/", "secret": "whsec_c2hvcnQ="}, "secret"),
        ({"url": "http://h/", "secret": "plain"}, "secret"),
    ]
    for settings, path in cases:
        with pytest.raises(ValidationError) as refused:
            await coordinator.add_webhook(**settings)
        assert path in [p for p, _ in refused.value.problems], (settings, refused.value)
    assert await coordinator.list_webhooks() == []
    good = await coordinator.add_webhook("http://h/")
    with pytest.raises(ValidationError, match="is no webhook setting"):
        await coordinator.update_webhook(good.id, cursor=0)
    assert await coordinator.get_webhook(good.id) == good
    await coordinator.close()


# -- the HTTP API ---------------------------------------------------------------------------------


async def exercise_webhooks(c: Call, small: Call) -> dict[str, str]:
    """Provoke every documented status of the webhooks' operations but the token refusals
    (``c``: a checking client with an admin token; ``small``: one whose app takes 16 bytes of
    body at most). Returns the id of a webhook for the token refusals."""
    hooks = "/webhooks"
    new = {"url": "https://user:pw@127.0.0.1:9/hook", "kinds": ["transition"], "max_batch": 10}
    made = (await c("POST", hooks, 201, json=new)).json()
    assert made["secret"].startswith("whsec_")
    assert made["url"] == "https://user:***@127.0.0.1:9/hook"
    await c("POST", hooks, 400, content=b"[")
    await c("POST", hooks, 422, json={"url": "ftp://x/"}, accepted=False)
    await c("POST", hooks, 422, json={"kinds": ["nope"]}, accepted=False)
    await c("POST", hooks, 422, json={"url": "http://h/", "extra": 1}, accepted=False)
    await small("POST", hooks, 413, json=new)
    listed = (await c("GET", hooks, 200, params={"enabled": "true", "limit": 1})).json()
    assert [w["id"] for w in listed["items"]] == [made["id"]]
    assert "secret" not in listed["items"][0]
    await c("GET", hooks, 400, params={"limit": "x"})
    await c("GET", hooks, 422, params={"enabled": "maybe"})
    one = "/webhooks/{webhook_id}"
    here = f"/webhooks/{made['id']}"
    shown = (await c("GET", one, 200, path=here)).json()
    assert "secret" not in shown
    assert shown["kinds"] == ["transition"]
    await c("GET", one, 404, path="/webhooks/WH_nope")
    changed = (await c("PATCH", one, 200, path=here, json={"enabled": False})).json()
    assert changed["enabled"] is False
    await c("PATCH", one, 400, path=here, content=b"nope")
    await c("PATCH", one, 422, path=here, json={"max_batch": 0}, accepted=False)
    await c("PATCH", one, 404, path="/webhooks/WH_nope", json={"enabled": True})
    await small("PATCH", one, 413, path=here, json={"description": "x" * 20})
    log = "/webhooks/{webhook_id}/deliveries"
    await c("GET", log, 200, path=f"{here}/deliveries", params={"limit": 5})
    await c("GET", log, 400, path=f"{here}/deliveries", params={"offset": "x"})
    await c("GET", log, 404, path="/webhooks/WH_nope/deliveries")
    await c("GET", log, 422, path=f"{here}/deliveries", params={"limit": 0})
    spare = (await c("POST", hooks, 201, json={"url": "http://127.0.0.1/x"})).json()["id"]
    await c("DELETE", one, 204, path=f"/webhooks/{spare}")
    await c("DELETE", one, 404, path=f"/webhooks/{spare}")
    return {"webhook_id": made["id"]}


async def test_webhooks_over_http_are_for_admins_only() -> None:
    coordinator = Coordinator(MemoryStore())
    tokens = {
        "root": OperatorToken("admin-token", "admin"),
        "rel": OperatorToken("releaser-token", "releaser"),
        "eve": OperatorToken("reader-token", "reader"),
    }
    app = coordinator_app(coordinator, tokens=tokens)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as http:

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        made = await http.post(
            "/webhooks", json={"url": "http://127.0.0.1/h"}, headers=auth("admin-token")
        )
        assert made.status_code == 201, made.text
        for token in ("releaser-token", "reader-token"):
            for method, path in (
                ("GET", "/webhooks"),
                ("GET", f"/webhooks/{made.json()['id']}"),
                ("GET", f"/webhooks/{made.json()['id']}/deliveries"),
                ("POST", "/webhooks"),
            ):
                answer = await http.request(
                    method, path, headers=auth(token), json={"url": "http://127.0.0.1/h"}
                )
                assert answer.status_code == 403, (token, method, path, answer.text)
                assert answer.json()["error"]["details"]["required_role"] == "admin"
        assert len(await coordinator.list_webhooks()) == 1
    await coordinator.close()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[CoordinatorStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    from release_coordinator.storage.sql import SQLStore

    if request.param == "sqlite":
        store = await SQLStore.connect(f"sqlite:///{tmp_path / 'rc.db'}")
        yield store
        await store.close()
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        store = await SQLStore.connect(url)
        yield store
        await store.close()


async def test_deliveries_over_every_store(any_store: CoordinatorStore) -> None:
    """The dispatcher over each store: a failure, then every event once, in order (on
    PostgreSQL, whose events may become visible out of order, after they settle)."""
    coordinator = Coordinator(any_store)
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", max_batch=1)
    receiver = Receiver(webhook.secret)
    receiver.script = [500]
    clock = Clock()
    dispatcher = WebhookDispatcher(any_store, client=receiver.client(), clock=clock, settle=0.2)
    try:
        await coordinator.create_release("r1")
        await coordinator.create_release("r2")
        for _ in range(8):
            await dispatcher.deliver_once()
            clock.advance(400)
            await asyncio.sleep(0.1)
        events = await coordinator.events()
        assert len(events) >= 2
        assert receiver.event_ids == [e.id for e in events]
        # one event a delivery, and the first tried twice
        assert len(await coordinator.list_webhook_deliveries(webhook.id)) == len(events) + 1
    finally:
        await dispatcher.aclose()
        await coordinator.close()


# -- what a review found: each once a bug -------------------------------------------------------


async def test_a_filter_changed_while_a_batch_is_pending_goes_on(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", kinds=["user_action"])
    receiver = Receiver(webhook.secret)
    receiver.script = [500]
    clock = Clock()
    dispatcher = WebhookDispatcher(coordinator.store, client=receiver.client(), clock=clock)
    await coordinator.create_release("r1")  # a user action: tried, failed, pending
    assert await dispatcher.deliver_once() == 1
    assert (await coordinator.get_webhook(webhook.id)).pending_until
    changed = await coordinator.update_webhook(webhook.id, kinds=["transition"])
    assert changed.pending_until == 0  # a new message
    await run_release(coordinator, "r2")
    clock.advance(400)  # past the failure's backoff
    await drain(dispatcher, clock)
    state = await coordinator.get_webhook(webhook.id)
    transitions = await coordinator.events(kinds=[EventKind.TRANSITION])
    assert transitions
    assert receiver.event_ids == [e.id for e in transitions]
    assert state.cursor == (await coordinator.events())[-1].id


async def test_a_send_that_raises_anything_is_a_failure_and_spares_the_others(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    good = await coordinator.add_webhook("http://good.test/hook")
    bad = await coordinator.add_webhook("http://bad.test/hook")
    receiver = Receiver(good.secret)

    class Exploding(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=receiver.app)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "bad.test":
                raise OverflowError("port must be 0-65535")
            return await self.inner.handle_async_request(request)

    clock = Clock()
    client = httpx.AsyncClient(transport=Exploding())
    dispatcher = WebhookDispatcher(coordinator.store, client=client, clock=clock)
    await coordinator.create_release("r1")
    await drain(dispatcher, clock, rounds=5)
    assert receiver.event_ids == [e.id for e in await coordinator.events()]  # once each
    failed = await coordinator.get_webhook(bad.id)
    assert failed.failures >= 1
    assert failed.last_error == "OverflowError: port must be 0-65535"
    assert not (await coordinator.list_webhook_deliveries(bad.id))[0].ok
    await client.aclose()


async def test_every_webhook_is_served_however_many(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    hooks = [await coordinator.add_webhook(f"http://h{i}.test/hook") for i in range(130)]
    secrets = {w.id: w.secret for w in hooks}
    got: dict[str, int] = {}

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            webhook_id = request.headers["webhook-id"].split("-")[0]
            verify_webhook(secrets[webhook_id], request.headers, await request.aread())
            got[webhook_id] = got.get(webhook_id, 0) + 1
            return httpx.Response(204)

    client = httpx.AsyncClient(transport=Counting())
    dispatcher = WebhookDispatcher(coordinator.store, client=client)
    await coordinator.create_release("r1")
    await dispatcher.deliver_once()
    assert set(got) == set(secrets)
    await client.aclose()


async def test_disabling_stops_a_delivery_under_way(
    world: tuple[Coordinator, MemoryTransport],
) -> None:
    coordinator, _ = world
    webhook = await coordinator.add_webhook("http://127.0.0.1/hook", max_batch=1)
    receiver = Receiver(webhook.secret)
    sent: list[str] = []

    class Disabling(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.headers["webhook-id"])
            await coordinator.update_webhook(webhook.id, enabled=False)  # an admin, meanwhile
            return httpx.Response(200)

    client = httpx.AsyncClient(transport=Disabling())
    dispatcher = WebhookDispatcher(coordinator.store, client=client)
    for name in ("r1", "r2"):
        await coordinator.create_release(name)
    assert await dispatcher.deliver_once() == 1
    assert len(sent) == 1
    assert receiver.received == []
    await client.aclose()


async def test_urls_that_do_not_work_are_refused_not_a_500() -> None:
    coordinator = Coordinator(MemoryStore())
    app = coordinator_app(coordinator, tokens=["t"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rc.test"
    ) as http:
        for url in ("http://xn--a.com/", "http://127.0.0.1:99999/", "http://[::1/"):
            answer = await http.post(
                "/webhooks", json={"url": url}, headers={"Authorization": "Bearer t"}
            )
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["error"]["details"]["problems"][0]["path"] == "url"
    assert await coordinator.list_webhooks() == []
    await coordinator.close()
