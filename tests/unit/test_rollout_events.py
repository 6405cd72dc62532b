"""The rollout event log: every rollout and child transition, operator action and policy
decision is an event with an id, kept in the store (memory, SQLite, PostgreSQL), listed with
filters and ``after_id``, delivered to subscribers, and shown by the operator API."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from release_coordinator import (
    EventType,
    RolloutEvent,
    RolloutEventFilter,
    RolloutEventKind,
    RolloutManager,
    SyncRolloutManager,
)
from release_coordinator.cli import main
from release_coordinator.client.commands import add_client_commands
from release_coordinator.client.http import Client
from release_coordinator.client.render import Output
from release_coordinator.errors import InvalidTransitionError, SchemaError
from release_coordinator.fsm.rollout import StageStatus
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import Rollout, RolloutState
from release_coordinator.rollout.pacing import Pacing
from release_coordinator.rollout.policies import GlobalIncremental, Waves
from release_coordinator.server.roles import OperatorToken, Role
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.storage.memory_rollout import MemoryRolloutStore
from release_coordinator.storage.rollout_base import RolloutStore
from release_coordinator.storage.sql import SCHEMA_VERSION, SQLRolloutStore, normalize_url

from .test_rollout_manager import EUROPE, INSIDE, Clock, archive, bundle, result, square

pytestmark = pytest.mark.anyio

TRANSITION = RolloutEventKind.TRANSITION
USER = RolloutEventKind.USER_ACTION
POLICY = RolloutEventKind.POLICY
CANARY = "stage 'canary-10'"


def shape(events: list[RolloutEvent]) -> list[tuple[Any, ...]]:
    """What an event says, less its id and time."""
    return [(e.kind, e.child_id, e.stage, e.state, e.message) for e in events]


async def all_events(manager: RolloutManager, **filters: Any) -> list[RolloutEvent]:
    return await manager.list_events(**filters)


def assert_ordered(events: list[RolloutEvent], *, gapless: bool) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))
    assert all(i > 0 for i in ids)
    if gapless:
        assert ids == list(range(1, len(ids) + 1))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def manager(clock: Clock, rollout_store: RolloutStore) -> RolloutManager:
    return RolloutManager(rollout_store, lost_after=30, clock=clock)


# -- the library -------------------------------------------------------------------------------


async def test_a_rollout_to_its_end_is_logged_step_by_step(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE, actor="ops")
    child = (await manager.poll("c1", INSIDE, 0)).id
    last = await manager.store.last_event_id()
    for _ in range(3):  # a poll that changes nothing writes nothing
        assert (await manager.poll(child, INSIDE, 0)).new_release == "42"
    assert await manager.store.last_event_id() == last
    await manager.get_release(child, "42")
    assert await manager.submit_result(result(child, "canary-10", 2)) == ""  # waits: opens
    assert (await manager.end_stage(child, "42", "canary-10")).end_stage
    await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(child, "ab-50", 4))
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED

    events = await all_events(manager)
    assert_ordered(events, gapless=not manager.store.shared)
    assert shape(events) == [
        (USER, None, None, "draft", "rollout 'checkout-gradual' created by ops"),
        (TRANSITION, None, None, "active", "rollout started"),
        (TRANSITION, "c1", None, "Todo", "offered the release"),
        (TRANSITION, "c1", "canary-10", "InProgress", "stage 'canary-10' started"),
        (TRANSITION, "c1", None, "Doing", "fetched the release"),
        (TRANSITION, "c1", "canary-10", "SuccessWaiting", f"{CANARY} waiting at its barrier"),
        (POLICY, None, "canary-10", None, f"barrier of {CANARY} opened: 1 of 1 children ready"),
        (TRANSITION, "c1", "canary-10", "ShouldEnd", "stage 'canary-10' told to end"),
        (TRANSITION, "c1", "canary-10", "Completed", "stage 'canary-10' ended Completed"),
        (TRANSITION, "c1", "ab-50", "InProgress", "stage 'ab-50' started"),
        (TRANSITION, "c1", "ab-50", "Completed", "stage 'ab-50' ended Completed"),
        (TRANSITION, "c1", None, "Done", "rolled out"),
        (TRANSITION, None, None, "completed",
         "rollout completed: every child it reached finished it: 1 done, 0 failed"),
    ]  # fmt: skip
    assert {e.rollout_id for e in events} == {"42"}
    assert [e.actor for e in events[:3]] == ["ops", "ops", ""]  # (started with its creation)
    assert all(e.actor == "" for e in events[2:])
    assert all(e.type is EventType.INFO for e in events)
    # Filters, and following the log.
    assert await all_events(manager, child_id="nobody") == []
    assert [e.id for e in await all_events(manager, child_id="c1")] == [
        e.id for e in events if e.child_id == "c1"
    ]
    ab = await all_events(manager, stage="ab-50")
    assert [e.state for e in ab] == ["InProgress", "Completed"]
    assert [e.kind for e in await all_events(manager, kinds={POLICY, USER})] == [USER, POLICY]
    assert await all_events(manager, types={EventType.ERROR}) == []
    assert await all_events(manager, rollout_id="43") == []
    tail = await all_events(manager, after_id=events[4].id)
    assert tail == events[5:]
    assert await all_events(manager, after_id=events[4].id, limit=2, offset=1) == events[6:8]
    assert await all_events(manager, since=events[-1].at) == [
        e for e in events if e.at >= events[-1].at
    ]
    assert await manager.store.last_event_id() == events[-1].id


async def test_operator_actions_are_logged_with_who_asked_and_refusals_are_not(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE, start=False)
    await manager.start("42", actor="alice")
    await manager.pause("42", actor="bob")
    first = await manager.store.last_event_id()
    with pytest.raises(InvalidTransitionError):
        await manager.pause("42", actor="bob")  # paused already: refused, no trace
    assert await manager.store.last_event_id() == first
    await manager.resume("42")
    await manager.abort("42", reason="bad canary", actor="carol")
    await manager.abort("42", reason="again", actor="carol")  # aborted already: nothing
    events = await all_events(manager)
    assert [(e.kind, e.state, e.actor, e.message) for e in events] == [
        (USER, "draft", "", "rollout 'checkout-gradual' created"),
        (USER, None, "alice", "start requested by alice"),
        (TRANSITION, "active", "alice", "rollout started"),
        (USER, None, "bob", "pause requested by bob"),
        (TRANSITION, "paused", "bob", "rollout paused"),
        (USER, None, "", "resume requested"),
        (TRANSITION, "active", "", "rollout resumed"),
        (USER, None, "carol", "abort requested by carol: bad canary"),
        (TRANSITION, "aborted", "carol", "rollout aborted: bad canary"),
    ]
    assert events[-1].type is EventType.WARNING


async def test_policy_decisions_are_logged(manager: RolloutManager, clock: Clock) -> None:
    # A barrier time-out aborts with its reason, as the policy's decision.
    policy = GlobalIncremental(barrier_timeout=10)
    await manager.create_rollout(bundle(), EUROPE, policy=policy)
    waiting = (await manager.poll("a", INSIDE, 0)).id
    await manager.poll("b", square(6, 45), 0)
    await manager.get_release(waiting, "42")
    await manager.get_release("b", "42")
    await manager.submit_result(result(waiting, "canary-10", 2))
    clock.now += 11
    await manager.tick()
    aborted = await all_events(manager, kinds={POLICY})
    assert [(e.state, e.type) for e in aborted] == [("aborted", EventType.WARNING)]
    assert aborted[0].message == (
        "rollout aborted: stage 'canary-10': 1 of 2 children ready after the barrier "
        "time-out of 10s"
    )
    # The children it had not reached are withdrawn; none here (both fetched it).
    assert (await manager.get_rollout("42")).state is RolloutState.ABORTED
    # A child's report after the abort: its release ends Failed, logged.
    await manager.submit_result(result("b", "canary-10", 5))
    b = await all_events(manager, child_id="b", after_id=aborted[0].id)
    assert [(e.stage, e.state, e.message) for e in b] == [
        ("canary-10", "Failure", "stage 'canary-10' ended Failure"),
        (None, "Failed", "rolled back"),
    ]
    assert {e.type for e in b} == {EventType.WARNING}


async def test_waves_are_logged_as_they_advance(manager: RolloutManager) -> None:
    for i in range(4):
        await manager.poll(f"c{i}", square(1 + i, 45), 0)
    await manager.create_rollout(bundle(), EUROPE, policy=Waves(sizes=(0.25, 1.0)))
    first = await all_events(manager, kinds={POLICY})
    assert [e.message for e in first] == ["Waves policy: 1 more children admitted"]
    offered = await all_events(manager, after_id=first[0].id - 2)
    assert [(e.child_id, e.state) for e in offered[:2]] == [("c0", "Todo"), (None, None)]
    await manager.get_release("c0", "42")
    await manager.submit_result(result("c0", "canary-10", 2))
    await manager.end_stage("c0", "42", "canary-10")
    await manager.submit_result(result("c0", "canary-10", 4, "ab-50"))
    await manager.submit_result(result("c0", "ab-50", 4))
    waves = await all_events(manager, kinds={POLICY})
    assert [e.message for e in waves][-1] == "Waves policy: 3 more children admitted"
    offers = await all_events(manager, after_id=waves[-2].id, kinds={TRANSITION}, stage=None)
    assert {e.child_id for e in offers if e.state == "Todo"} == {"c1", "c2", "c3"}


async def test_promote_is_an_operator_action_that_opens_the_barrier(
    manager: RolloutManager,
) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    await manager.poll("a", INSIDE, 0)
    await manager.get_release("a", "42")
    await manager.poll("b", square(6, 45), 0)  # not ready: the barrier stays closed
    await manager.submit_result(result("a", "canary-10", 2))
    await manager.promote("42", "canary-10", actor="ops")
    await manager.promote("42", "canary-10", actor="ops")  # open already: asked, no opening
    events = await all_events(manager, stage="canary-10", kinds={USER, POLICY})
    assert [(e.kind, e.actor, e.message) for e in events] == [
        (USER, "ops", "promote of stage 'canary-10' requested by ops"),
        (POLICY, "", "barrier of stage 'canary-10' opened: promoted by ops"),
        (USER, "ops", "promote of stage 'canary-10' requested by ops"),
    ]


async def test_subscribers_get_every_event_once_in_order(manager: RolloutManager) -> None:
    await manager.create_rollout(bundle(), EUROPE)
    seen: list[RolloutEvent] = []
    mine: list[RolloutEvent] = []

    async def slow(event: RolloutEvent) -> None:
        await asyncio.sleep(0)
        mine.append(event)

    def broken(event: RolloutEvent) -> None:
        raise RuntimeError("a subscriber's bug")

    await manager.subscribe(seen.append)
    unsubscribe = await manager.subscribe(slow, filter=RolloutEventFilter(child_id="a"))
    await manager.subscribe(broken)  # logged and kept: the others still get theirs
    await manager.poll("a", INSIDE, 0)
    await manager.get_release("a", "42")
    await manager.poll("b", square(6, 45), 0)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(seen) >= 4:
            break
    logged = await all_events(manager)
    assert seen == logged[2:]  # from the subscription on, nothing before
    assert mine == [e for e in seen if e.child_id == "a"]
    unsubscribe()
    await manager.pause("42")
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(seen) >= len(logged) - 2 + 2:
            break
    assert [e.state for e in seen[-2:]] == [None, "paused"]
    assert all(e.child_id == "a" for e in mine)


# -- a property: every change has its events, ids in order -------------------------------------

STEP = st.sampled_from(["poll", "fetch", "wait", "end", "complete", "pause", "resume", "tick"])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.tuples(STEP, st.integers(0, 2)), max_size=25))
async def test_every_state_change_has_its_event(steps: list[tuple[str, int]]) -> None:
    """Whatever happens, the memory log is gapless from 1, and each child's state, each
    rollout's state, as replayed from its events, is the state the store holds."""
    clock = Clock()
    manager = RolloutManager(MemoryRolloutStore(), lost_after=30, clock=clock)
    await manager.create_rollout(bundle(), EUROPE)
    for step, i in steps:
        child = f"c{i}"
        clock.now += 1
        try:
            if step == "poll":
                await manager.poll(child, square(1 + i, 45), 0)
            elif step == "fetch":
                await manager.get_release(child, "42")
            elif step == "wait":
                await manager.submit_result(result(child, "canary-10", 2))
            elif step == "end":
                await manager.end_stage(child, "42", "canary-10")
            elif step == "complete":
                await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
            elif step in ("pause", "resume"):
                await getattr(manager, step)("42")
            else:
                await manager.tick()
        except Exception:  # refused steps change nothing (checked below)
            continue
    events = await manager.list_events()
    assert_ordered(events, gapless=True)
    rollout_state = next(e.state for e in reversed(events) if e.child_id is None and e.state)
    assert rollout_state == (await manager.get_rollout("42")).state.value
    for state in await manager.store.child_releases("42"):
        mine = [e for e in events if e.child_id == state.child_id]
        release = [e.state for e in mine if e.stage is None]
        assert release
        assert release[-1] == state.status.wire_name
        for name, stage in state.stages.items():
            told = [e.state for e in mine if e.stage == name]
            expected = told[-1] if told else StageStatus.PENDING.wire_name
            assert expected == stage.status.wire_name


# -- the store -----------------------------------------------------------------------------------


async def test_append_events_gives_growing_ids(rollout_store: RolloutStore) -> None:
    assert await rollout_store.last_event_id() == 0
    assert await rollout_store.list_events() == []
    made = [RolloutEvent(EventType.INFO, USER, f"note {i}", rollout_id="R1") for i in range(3)]
    stored = await rollout_store.append_events(made)
    assert [attrs.evolve(e, id=0) for e in stored] == made
    assert_ordered(stored, gapless=False)
    assert await rollout_store.list_events() == stored
    assert await rollout_store.last_event_id() == stored[-1].id
    assert await rollout_store.append_events([]) == []
    assert await rollout_store.list_events(limit=0) == []
    assert await rollout_store.list_events(RolloutEventFilter(after_id=stored[0].id)) == stored[1:]


# -- the operator API ------------------------------------------------------------------------------


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge.test")


OPS = {"Authorization": "Bearer op-token"}
READER = {"Authorization": "Bearer read-token"}
READER_TOKEN = OperatorToken("read-token", Role.READER)


async def test_the_operator_api_lists_the_log_with_the_coordinators_filters() -> None:
    manager = RolloutManager(lost_after=30, clock=Clock())
    app = rollout_app(manager, operator_tokens={"ops": "op-token", "eve": READER_TOKEN})
    async with client_for(app) as client:
        strategy = bundle().strategy_text
        created = await client.post(
            "/rollouts",
            headers=OPS,
            json={
                "strategy": strategy,
                "archive": base64.b64encode(archive()).decode(),
                "target": EUROPE,
            },
        )
        assert created.status_code == 201, created.text
        polled = await client.post("/poll", json={"id": "c1", "geographic_area": INSIDE})
        assert polled.json()["new_release"] == "42"
        paused = await client.post("/rollouts/42/pause", headers=OPS)
        assert paused.status_code == 200
        refused = await client.post("/rollouts/42/pause", headers=READER)
        assert refused.status_code == 403  # a reader may read the log, not act

        page = await client.get("/rollouts/42/events", headers=READER)
        assert page.status_code == 200
        body = page.json()
        assert (body["next_offset"], body["offset"]) == (None, 0)
        items = body["items"]
        assert [(i["kind"], i["state"], i["actor"]) for i in items] == [
            ("user_action", "draft", "ops"),
            ("transition", "active", "ops"),
            ("transition", "Todo", ""),
            ("user_action", None, "ops"),
            ("transition", "paused", "ops"),
        ]
        assert set(items[0]) == {
            "id", "at", "type", "kind", "message", "rollout_id", "child_id", "stage", "state",
            "actor",
        }  # fmt: skip
        whole = (await client.get("/rollout-events", headers=OPS)).json()
        assert whole["items"] == items
        first = await client.get("/rollout-events?limit=2", headers=OPS)
        assert first.json()["next_offset"] == 2
        assert len(first.json()["items"]) == 2
        after = await client.get(f"/rollout-events?after_id={items[2]['id']}", headers=OPS)
        assert after.json()["items"] == items[3:]
        kinds = await client.get("/rollout-events?kind=user_action,policy&type=info", headers=OPS)
        assert [i["id"] for i in kinds.json()["items"]] == [items[0]["id"], items[3]["id"]]
        child = await client.get("/rollout-events?child_id=c1&rollout_id=42", headers=OPS)
        assert [i["state"] for i in child.json()["items"]] == ["Todo"]
        assert (await client.get("/rollout-events?stage=x", headers=OPS)).json()["items"] == []

        # Bad filters: a 422 (or a 400 for what does not parse) naming the parameter.
        for query, status, where in (
            ("kind=nonsense", 422, "kind"),
            ("type=fatal", 422, "type"),
            ("after_id=-1", 422, "after_id"),
            ("after_id=x", 400, "after_id"),
            ("limit=0", 422, "limit"),
            ("since=yesterday", 400, "since"),
            ("child_id=a%00b", 422, "child_id"),
        ):
            bad = await client.get(f"/rollout-events?{query}", headers=OPS)
            assert bad.status_code == status, (query, bad.text)
            assert where in bad.text
        missing = await client.get("/rollouts/nope/events", headers=OPS)
        assert missing.status_code == 404
        assert (await client.get("/rollout-events")).status_code == 401


# -- the SQL schema: version 8 -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rc.db'}"
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("version", "dropped"),
    [
        (7, ["rc_rollout_events"]),
        (6, ["rc_rollout_events", "rc_webhook_deliveries", "rc_webhooks"]),
    ],
)
async def test_db_upgrade_adds_the_event_log_to_an_older_database(
    db_url: str, version: int, dropped: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = await SQLRolloutStore.connect(db_url)
    await store.add_rollout(Rollout("old", "old", Area.from_geojson(EUROPE)), bundle("old"))
    await store.close()
    await execute(
        db_url,
        *(f"DROP TABLE {table}" for table in dropped),
        f"UPDATE rc_schema_version SET version = {version}",
    )
    with pytest.raises(SchemaError, match=f"schema version {version}"):
        await SQLRolloutStore.connect(db_url)
    assert await asyncio.to_thread(main, ["db", "upgrade", "--db", db_url]) == 0  # the CLI
    assert f"from schema version {version} to {SCHEMA_VERSION}" in capsys.readouterr().out
    store = await SQLRolloutStore.connect(db_url, create=False)
    try:
        manager = RolloutManager(store)
        await manager.load()
        assert await manager.list_events() == []  # nothing was logged before
        await manager.start("old", actor="ops")
        events = await manager.list_events(rollout_id="old")
        assert [(e.kind, e.state, e.actor) for e in events] == [
            (USER, None, "ops"),
            (TRANSITION, "active", "ops"),
        ]
    finally:
        await store.close()


# -- the blocking facade -------------------------------------------------------------------------


def test_the_blocking_facade_lists_and_follows_the_log() -> None:
    seen: list[RolloutEvent] = []
    manager = SyncRolloutManager()
    try:
        manager.subscribe(seen.append)
        manager.create_rollout(bundle(), EUROPE)
        events = manager.list_events(rollout_id="42")
        assert [e.state for e in events] == ["draft", "active"]
        assert manager.list_events(after_id=events[0].id) == events[1:]
    finally:
        manager.close()
    assert seen == events


async def test_a_completion_at_the_pacings_deadline_is_logged() -> None:
    clock = Clock()
    manager = RolloutManager(MemoryRolloutStore(), lost_after=3600, clock=clock)
    for i in range(3):
        await manager.poll(f"c{i}", square(1 + i, 45), 0)
    pacing = Pacing(max_per_minute=1, deadline=clock.now + 120, on_deadline="stop")
    await manager.create_rollout(bundle(), EUROPE, policy=GlobalIncremental(pacing=pacing))
    await manager.tick()
    offers = await manager.list_events(kinds={TRANSITION})
    [child] = [e.child_id for e in offers if e.state == "Todo"]
    assert child is not None
    await manager.get_release(child, "42")
    await manager.submit_result(result(child, "canary-10", 2))
    await manager.end_stage(child, "42", "canary-10")
    await manager.submit_result(result(child, "canary-10", 4, "ab-50"))
    await manager.submit_result(result(child, "ab-50", 4))
    clock.now += 121
    await manager.tick()
    await manager.tick()
    assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED
    last = (await manager.list_events())[-1]
    assert (last.kind, last.state, last.child_id) == (TRANSITION, "completed", None)
    assert last.message.startswith("rollout completed: deadline passed")


async def test_the_client_and_the_cli_read_the_log() -> None:
    manager = RolloutManager(lost_after=30, clock=Clock())
    app = rollout_app(manager, operator_tokens={"ops": "op-token"})
    await manager.create_rollout(bundle(), EUROPE, actor="ops")
    await manager.poll("c1", INSIDE, 0)
    transport = httpx.ASGITransport(app=app)
    async with Client("http://edge.test", token="op-token", transport=transport) as client:
        page = await client.list_rollout_events("42", kind=["transition"])
        assert [i["state"] for i in page["items"]] == ["active", "Todo"]
        whole = await client.list_rollout_events(child_id="c1")
        assert [i["child_id"] for i in whole["items"]] == ["c1"]
        after = await client.list_rollout_events("42", after_id=page["items"][0]["id"], limit=1)
        assert (after["items"][0]["state"], after["next_offset"]) == ("Todo", None)
        parser = argparse.ArgumentParser()
        add_client_commands(parser.add_subparsers())
        args = parser.parse_args(["rollouts", "events", "42", "--child", "c1", "--json"])
        stream = io.StringIO()
        assert await args.handler(client, args, Output(json_mode=True, stream=stream)) == 0
        assert [i["message"] for i in json.loads(stream.getvalue())["items"]] == [
            "offered the release"
        ]
        args = parser.parse_args(["rollouts", "events", "42", "--kind", "user_action"])
        stream = io.StringIO()
        out = Output(json_mode=False, use_rich=False, stream=stream)
        assert await args.handler(client, args, out) == 0
        assert "rollout 'checkout-gradual' created by ops" in stream.getvalue()


async def test_time_outs_and_withdrawals_are_logged(manager: RolloutManager, clock: Clock) -> None:
    await manager.create_rollout(bundle(), EUROPE, policy=GlobalIncremental(child_timeout=60))
    await manager.poll("slow", INSIDE, 0)
    await manager.poll("late", square(6, 45), 0)  # offered it, never fetches it
    await manager.get_release("slow", "42")
    clock.now += 61
    await manager.tick()
    timed_out = "timed out (no progress within the policy's child_timeout)"
    slow = await all_events(manager, child_id="slow")
    assert [(e.stage, e.state, e.type, e.message) for e in slow[-2:]] == [
        ("canary-10", "Error", EventType.WARNING, f"{CANARY} ended Error"),
        (None, "Failed", EventType.WARNING, timed_out),
    ]
    late = await all_events(manager, child_id="late")
    assert [(e.state, e.message) for e in late] == [
        ("Todo", "offered the release"),
        ("Failed", timed_out),
    ]
    assert (await all_events(manager))[-1].state == "completed"
    # An abort takes the release back from the children that never fetched it.
    await manager.create_rollout(bundle("43"), EUROPE)
    await manager.abort("43", reason="enough")
    withdrawn = await all_events(manager, rollout_id="43", child_id="late")
    assert [(e.state, e.message) for e in withdrawn] == [
        ("Todo", "offered the release"),
        ("No", "withdrawn: the release is no longer offered to it"),
    ]
