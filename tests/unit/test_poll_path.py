"""``POST /poll`` answered from the bodies seen before (server.poll_path.PollEndpoint): every
answer is byte for byte the manager's own, whatever changed between two polls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_support import asgi_post
from release_coordinator import RolloutManager, RolloutStore
from release_coordinator.errors import ConflictError, NotFoundError, ValidationError
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.rollout.models import ReleaseBundle
from release_coordinator.server.common import json_bytes
from release_coordinator.server.poll_path import PollEndpoint
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.storage.memory_rollout import MemoryRolloutStore

from .test_rollout_manager import EUROPE, STRATEGY, Clock, archive, result, square

pytestmark = pytest.mark.anyio

_BUNDLE = ReleaseBundle.from_parts(STRATEGY, archive())
_HEADERS = [(b"content-type", b"application/json")]
#: Areas a child may poll with: two inside the rollouts' target, one outside.
AREAS = [square(5, 45), square(6, 46, 0.5), square(-80, 10)]


def body(child: str, area: int, count: int) -> bytes:
    return json.dumps(
        {"id": child, "geographic_area": AREAS[area], "number_of_children": count}
    ).encode()


def endpoint_of(app: Any) -> PollEndpoint:
    (route,) = [r for r in app.routes if getattr(r, "path", None) == "/poll"]
    assert isinstance(route.app, PollEndpoint)
    return route.app


async def poll(app: Any, raw: bytes, **headers: str) -> tuple[int, bytes]:
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    status, _headers, answer = await asgi_post(app, "/poll", [raw], _HEADERS + extra)
    return status, answer


async def reference(manager: RolloutManager, raw: bytes) -> bytes:
    """What the manager answers this body itself (a poll of a registered child again: the same
    answer, the same effects)."""
    fields = json.loads(raw)
    answer = await manager.poll(
        fields["id"], fields["geographic_area"], fields["number_of_children"], area_key=raw
    )
    return json_bytes(answer.to_json())


async def test_a_body_seen_before_is_answered_as_the_manager_answers(
    rollout_store: RolloutStore,
) -> None:
    clock = Clock()
    manager = RolloutManager(rollout_store, lost_after=30, clock=clock)
    app = rollout_app(manager, operator_tokens={"ops": "op-token"})
    endpoint = endpoint_of(app)
    raw = body("edge-1", 0, 0)

    status, first = await poll(app, raw)
    assert status == 200
    assert json.loads(first)["new_release"] == ""
    assert raw in endpoint._known
    assert (await poll(app, raw))[1] == first == await reference(manager, raw)

    # A rollout reaches it: the same body now answers the offer (nothing kept answers it).
    await manager.create_rollout(_BUNDLE, EUROPE)
    offered = (await poll(app, raw))[1]
    assert json.loads(offered)["new_release"] == "42"
    assert offered == await reference(manager, raw)
    assert (await poll(app, raw))[1] == offered

    # With children behind it (another body) the offer names the target; then back.
    counted = body("edge-1", 0, 3)
    with_target = (await poll(app, counted))[1]
    assert json.loads(with_target)["target_area"] == EUROPE
    assert (await poll(app, counted))[1] == with_target == await reference(manager, counted)
    assert (await poll(app, raw))[1] == offered  # the count is the manager's again

    # Fetched (offered until its first report acknowledges it), reported: no offer.
    fetched = await rollout_store.child_release("42", "edge-1")
    assert fetched.status is ReleaseStatus.TODO
    await manager.release("edge-1", "42")
    assert (await poll(app, raw))[1] == offered == await reference(manager, raw)
    await manager.submit_result(result("edge-1", "canary-10", 2))
    assert json.loads((await poll(app, raw))[1])["new_release"] == ""
    await manager.abort("42", reason="bad")
    told = (await poll(app, raw))[1]
    assert json.loads(told)["aborted"] == ["42"]
    assert told == await reference(manager, raw)

    # Another area: registered again (and matched again), not answered from the old body.
    moved = body("edge-1", 2, 0)
    assert json.loads((await poll(app, moved))[1])["new_release"] == ""
    assert (await rollout_store.get_child("edge-1")).area.to_geojson() == AREAS[2]
    assert (await poll(app, raw))[1] == await reference(manager, raw)


async def test_a_body_answered_from_what_was_kept_counts_as_being_seen() -> None:
    clock = Clock()
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=clock)
    app = rollout_app(manager, allow_anonymous=True)
    raw = body("edge-1", 0, 0)
    await poll(app, raw)
    clock.now += 29
    await poll(app, raw)  # from what was kept
    assert raw in endpoint_of(app)._known
    assert (await manager.store.last_seen(["edge-1"])) == {"edge-1": clock.now}
    clock.now += 29
    await manager.tick()
    assert not manager._lost  # seen 29 s ago, not 58


async def test_bodies_that_are_not_kept() -> None:
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=Clock())
    app = rollout_app(manager, allow_anonymous=True)
    endpoint = endpoint_of(app)
    anonymous = body("", 0, 0)  # a new child at every poll
    ids = {json.loads((await poll(app, anonymous))[1])["id"] for _ in range(3)}
    assert len(ids) == 3
    refused = b'{"id": "edge-1", "geographic_area": {"type": "Point"}}'
    assert (await poll(app, refused))[0] == 400
    assert (await poll(app, b"[1]"))[0] == 400
    assert endpoint._known == {}


async def test_at_most_max_known_bodies_are_kept() -> None:
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=Clock())
    app = rollout_app(manager, allow_anonymous=True)
    endpoint = endpoint_of(app)
    endpoint.max_known = 3
    for k in range(7):
        await poll(app, body(f"edge-{k}", 0, 0))
        assert 1 <= len(endpoint._known) <= 3
    endpoint.forget()
    assert endpoint._known == {}


async def test_child_tokens_are_required_of_a_body_seen_before() -> None:
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=Clock())
    app = rollout_app(manager, child_tokens=True, allow_anonymous=True)
    endpoint = endpoint_of(app)
    raw = body("edge-1", 0, 0)
    status, first = await poll(app, raw)
    token = json.loads(first)["token"]
    assert raw not in endpoint._known  # an answer with a token is never kept
    mine = {"Authorization": f"Bearer {token}"}
    status, again = await poll(app, raw, **mine)
    assert status == 200
    assert raw in endpoint._known
    assert (await poll(app, raw))[0] == 401  # kept, and still refused without the token
    other = json.loads((await poll(app, body("edge-2", 0, 0)))[1])["token"]
    assert (await poll(app, raw, Authorization=f"Bearer {other}"))[0] == 403
    assert (await poll(app, raw, **mine)) == (200, again)
    # A token revoked: the next poll is the full one, and gets a new token.
    assert await manager.store.drop_child_token("edge-1")
    renewed = json.loads((await poll(app, raw, **mine))[1])
    assert renewed["token"] != token


# -- whatever happens between two polls ------------------------------------------------------------

_POLL = st.tuples(
    st.just("poll"),
    st.integers(0, 1),  # the child
    st.sampled_from([0, 0, 1, 2]),  # its area (AREAS)
    st.sampled_from([0, 0, 2]),  # its children
)
_STEP = st.one_of(
    _POLL,
    _POLL,
    _POLL,  # (most steps are polls)
    st.tuples(st.just("create"), st.integers(0, 2)),  # a rollout (its priority)
    st.tuples(st.sampled_from(["fetch", "report", "abort", "pause", "resume"]), st.integers(0, 2)),
    st.tuples(st.just("time"), st.integers(1, 40)),
    st.tuples(st.just("tick"), st.just(0)),
    st.tuples(st.just("forget"), st.just(0)),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, max_size=40))
async def test_every_answer_is_the_managers_own(
    anyio_backend: str, steps: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=clock)
    app = rollout_app(manager, allow_anonymous=True)
    endpoint = endpoint_of(app)
    rollouts: list[str] = []
    for step in steps:
        kind = step[0]
        if kind == "poll":
            raw = body(f"edge-{step[1]}", step[2], step[3])
            status, answer = await poll(app, raw)
            assert status == 200, answer
            assert answer == await reference(manager, raw), step
        elif kind == "create":
            rollout_id = f"r{len(rollouts)}"
            text = STRATEGY.replace('id: "42"', f'id: "{rollout_id}"')
            bundle = ReleaseBundle.from_parts(text, archive())
            await manager.create_rollout(bundle, EUROPE, priority=step[1])
            rollouts.append(rollout_id)
        elif kind in ("fetch", "report", "abort", "pause", "resume") and rollouts:
            rollout_id = rollouts[step[1] % len(rollouts)]
            child = f"edge-{step[1] % 2}"
            try:
                if kind == "fetch":
                    await manager.release(child, rollout_id)
                elif kind == "report":
                    report = result(child, "canary-10", 2)
                    report["release_id"] = rollout_id
                    await manager.submit_result(report)
                elif kind == "abort":
                    await manager.abort(rollout_id)
                elif kind == "pause":
                    await manager.pause(rollout_id)
                else:
                    await manager.resume(rollout_id)
            except (NotFoundError, ConflictError, ValidationError):
                pass  # refused (not offered, not running): nothing changes
        elif kind == "time":
            clock.now += step[1]
        elif kind == "tick":
            await manager.tick()
        elif kind == "forget":
            endpoint.forget()


@pytest.mark.parametrize("max_known", [1, 2])
async def test_a_small_memory_answers_the_same(max_known: int) -> None:
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=Clock())
    app = rollout_app(manager, allow_anonymous=True)
    endpoint_of(app).max_known = max_known
    await manager.create_rollout(_BUNDLE, EUROPE)
    for _ in range(3):
        for k in range(3):
            raw = body(f"edge-{k}", k % 2, 0)
            assert (await poll(app, raw))[1] == await reference(manager, raw)


# -- reading the body ----------------------------------------------------------------------------


async def read(messages: list[dict[str, Any]], length: int | None) -> tuple[Any, int]:
    """``read_asgi_body`` over ``messages`` (a disconnect after them); what it answered or
    raised, and how many messages it awaited."""
    from release_coordinator.server.request_body import read_asgi_body

    queue = list(messages)
    awaited = 0

    async def receive() -> dict[str, Any]:
        nonlocal awaited
        awaited += 1
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    try:
        return await read_asgi_body({"headers": headers}, receive, 100), awaited
    except Exception as error:
        return error, awaited


def part(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_a_body_is_read_until_its_content_length_and_no_further() -> None:
    # granian sends the body with more_body, then an empty last message: not waited for
    granian = [part(b'{"id": 1}', True), part(b"", False)]
    assert await read(granian, 9) == (b'{"id": 1}', 1)
    assert await read(granian, None) == (b'{"id": 1}', 2)  # no length: up to the last one
    chunked = [part(b'{"id"', True), part(b": 1}", True), part(b"", False)]
    assert await read(chunked, 9) == (b'{"id": 1}', 2)
    assert await read([], 0) == (b"", 0)
    short, awaited = await read([part(b"{}", True)], 9)  # fewer bytes, then gone: 400
    assert getattr(short, "status", None) == 400
    assert awaited == 2
    long, _ = await read([part(b"x" * 60, True), part(b"x" * 60, False)], 50)  # lied: 413
    assert getattr(long, "status", None) == 413
    assert await read([part(b"{}", False)], 9) == (b"{}", 1)  # the last message ends it
