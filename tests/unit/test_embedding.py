"""Embedding: the background loops of the RolloutManager, the Relay and the Coordinator as
public lifecycles (``running()``, start/stop, ``is_running``), the embedding recipe (a host
Starlette app mounting both apps and running their loops in its own lifespan), and the warning
of an app whose loops do not run."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from release_coordinator import (
    ConfigurationError,
    Coordinator,
    CoordinatorConfig,
    GlobalIncremental,
    InProcessParent,
    MemoryStore,
    MemoryTransport,
    Relay,
    RetryPolicy,
    RolloutManager,
    RolloutState,
    TaskServiceKit,
)
from release_coordinator.rollout.geo import Area
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.rollout_app import rollout_app

from .test_rollout_manager import EUROPE, INSIDE, STRATEGY, archive, bundle

pytestmark = pytest.mark.anyio

CONFIG = CoordinatorConfig(
    poll_interval=0.01,
    health_interval=0,
    claim_interval=0.05,
    retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
)
OPS = {"Authorization": "Bearer ops-secret"}
#: A policy whose children time out fast: only a tick times them out (and completes the rollout).
QUICK = GlobalIncremental(child_timeout=0.05)
APP_LOGGERS = (
    "release_coordinator.server.coordinator_app",
    "release_coordinator.server.rollout_app",
)


async def eventually(read: Callable[[], Awaitable[object]], want: object = True) -> None:
    """``await read()`` until it answers ``want`` (failing after 5 seconds)."""
    for _ in range(500):
        got = await read()
        if got == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still {got!r}, not {want!r}")


@contextlib.asynccontextmanager
async def lifespan_of(app: Any) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan as a server does: startup before the block, shutdown
    after it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    replied = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        replied.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await replied.wait()
    assert sent == ["lifespan.startup.complete"], sent
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await task
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"], sent


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host.test")


def transport() -> MemoryTransport:
    memory = MemoryTransport()
    memory.add("memory://portal", TaskServiceKit("portal"))
    return memory


def host_app(
    coordinator: Coordinator,
    manager: RolloutManager,
    *,
    run_loops: bool = True,
    app_lifespans: bool = False,
) -> Starlette:
    """The recipe of docs/howto/embedding.md: both apps mounted, and (``run_loops``) their
    loops run by the host's own lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if not run_loops:
            yield
            return
        async with coordinator.running(), manager.running(interval=0.01):
            yield

    return Starlette(
        routes=[
            Mount(
                "/rc",
                app=coordinator_app(
                    coordinator, tokens={"ops": "ops-secret"}, lifespan=app_lifespans
                ),
            ),
            Mount(
                "/edge",
                app=rollout_app(
                    manager, operator_tokens={"ops": "ops-secret"}, lifespan=app_lifespans
                ),
            ),
        ],
        lifespan=lifespan,
    )


# -- the recipe ---------------------------------------------------------------------------------


async def test_a_host_mounting_both_apps_runs_their_loops_in_its_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    store, memory = MemoryStore(), transport()
    # A release created while no coordinator ran: only a running coordinator resumes it.
    before = Coordinator(store, memory, config=CONFIG)
    await before.close()
    await before.register_service("portal", "memory://portal")
    waiting = await before.create_release("resumed", studies=["SD_1"])

    coordinator = Coordinator(store, memory, config=CONFIG)
    manager = RolloutManager()
    host = host_app(coordinator, manager)
    async with lifespan_of(host), client_for(host) as client:
        assert coordinator.is_running
        assert manager.is_running

        async def state_of(release_id: str) -> str:
            response = await client.get(f"/rc/releases/{release_id}", headers=OPS)
            assert response.status_code == 200, response.text
            return str(response.json()["state"])

        await eventually(lambda: state_of(waiting.id), "staged")
        created = await client.post("/rc/releases", json={"name": "nightly"}, headers=OPS)
        assert created.status_code == 201, created.text
        await eventually(lambda: state_of(created.json()["id"]), "staged")

        # The child protocol and the operator API under /edge; the child goes quiet after
        # its first poll: a tick times it out, and the rollout completes (nothing else would).
        first = await client.post(
            "/edge/poll", json={"id": "c1", "geographic_area": INSIDE, "number_of_children": 0}
        )
        assert first.status_code == 200, first.text
        uploaded = await client.post(
            "/edge/rollouts",
            json={
                "strategy": STRATEGY,
                "archive": base64.b64encode(archive()).decode(),
                "target": EUROPE,
                "policy": {"type": "global_incremental", "child_timeout": 0.05},
            },
            headers=OPS,
        )
        assert uploaded.status_code == 201, uploaded.text
        offered = await client.post(
            "/edge/poll", json={"id": "c1", "geographic_area": INSIDE, "number_of_children": 0}
        )
        assert offered.json()["new_release"] == "42"

        async def rollout_state() -> str:
            return str((await client.get("/edge/rollouts/42", headers=OPS)).json()["state"])

        await eventually(rollout_state, "completed")
        status = (await client.get("/edge/rollouts/42/children", headers=OPS)).json()
        assert [c["outcome"] for c in status["items"]] == ["timed_out"]
    assert not coordinator.is_running
    assert not manager.is_running
    assert [r for r in caplog.records if r.name in APP_LOGGERS] == []  # nothing to warn of


async def test_without_the_loops_nothing_that_time_decides_happens() -> None:
    """The same host without its lifespan's loops: the rollout never completes."""
    manager = RolloutManager()
    host = host_app(Coordinator(config=CONFIG), manager, run_loops=False)
    async with lifespan_of(host), client_for(host) as client:
        await client.post("/edge/poll", json={"id": "c1", "geographic_area": INSIDE})
        await manager.create_rollout(bundle(), EUROPE, policy=QUICK)
        await client.post("/edge/poll", json={"id": "c1", "geographic_area": INSIDE})
        await asyncio.sleep(0.2)
        assert (await manager.get_rollout("42")).state is RolloutState.ACTIVE
        await manager.tick()  # what the loop would have done
        assert (await manager.get_rollout("42")).state is RolloutState.COMPLETED


# -- the warning --------------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in caplog.records:
        if record.name in APP_LOGGERS:
            assert record.levelno == logging.WARNING
            found.setdefault(record.name.rsplit(".", 1)[1], []).append(record.getMessage())
    return found


async def requests_to_both(host: Starlette) -> None:
    async with client_for(host) as client:
        for _ in range(3):
            assert (await client.get("/rc/status")).status_code == 200
            poll = await client.post("/edge/poll", json={"id": "c1", "geographic_area": INSIDE})
            assert poll.status_code == 200  # served all the same


async def test_mounted_apps_whose_lifespans_never_run_warn_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    host = host_app(
        Coordinator(config=CONFIG), RolloutManager(), run_loops=False, app_lifespans=True
    )
    async with lifespan_of(host):
        await requests_to_both(host)
    found = warnings_of(caplog)
    assert sorted(found) == ["coordinator_app", "rollout_app"]
    (coordinator_warning,) = found["coordinator_app"]
    (rollout_warning,) = found["rollout_app"]
    assert coordinator_warning.startswith("coordinator_app's coordinator is not running")
    assert "async with coordinator.running():" in coordinator_warning
    assert rollout_warning.startswith("rollout_app's background loops are not running")
    assert "async with manager.running():" in rollout_warning
    for warning in (coordinator_warning, rollout_warning):
        assert "lifespan=True but its lifespan never ran" in warning
        assert "mounted" in warning
        assert "docs/howto/embedding.md" in warning


async def test_apps_left_to_a_host_that_runs_no_loops_warn_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    host = host_app(Coordinator(config=CONFIG), RolloutManager(), run_loops=False)
    async with lifespan_of(host):
        await requests_to_both(host)
        await requests_to_both(host)
    found = warnings_of(caplog)
    assert [len(found[name]) for name in ("coordinator_app", "rollout_app")] == [1, 1]
    assert "made without lifespan=True" in found["rollout_app"][0]
    assert "async with manager.running():" in found["rollout_app"][0]


async def test_a_relay_app_names_the_relay_in_its_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    manager = RolloutManager()
    relay = Relay(manager, InProcessParent(RolloutManager()), area=Area.from_geojson(INSIDE))
    app = rollout_app(manager, allow_anonymous=True, relay=relay)
    # The manager ticking on its own is not the relay running: still a warning.
    async with client_for(app) as client, manager.running(interval=0.01):
        await client.post("/poll", json={"id": "c1", "geographic_area": INSIDE})
        await client.post("/poll", json={"id": "c1", "geographic_area": INSIDE})
    (warning,) = warnings_of(caplog)["rollout_app"]
    assert "async with relay.running():" in warning


async def test_an_app_whose_loops_run_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    manager = RolloutManager()
    coordinator = Coordinator(config=CONFIG)
    host = host_app(coordinator, manager, run_loops=False)
    async with coordinator.running(), manager.running(interval=0.01):
        await requests_to_both(host)
    assert warnings_of(caplog) == {}


async def test_an_app_s_own_lifespan_runs_the_loops_and_leaves_a_host_s_running() -> None:
    manager = RolloutManager()
    app = rollout_app(manager, allow_anonymous=True, lifespan=True, tick_interval=0.01)
    async with lifespan_of(app):
        assert manager.is_running
    assert not manager.is_running
    async with manager.running(interval=0.01):
        async with lifespan_of(app):
            assert manager.is_running
        assert manager.is_running  # the host's loop outlives the app's lifespan
    assert not manager.is_running

    coordinator = Coordinator(config=CONFIG)
    served = coordinator_app(coordinator, allow_anonymous=True, lifespan=True)
    async with coordinator.running():
        async with lifespan_of(served):
            assert coordinator.is_running
        assert coordinator.is_running
    assert not coordinator.is_running


# -- the lifecycles -----------------------------------------------------------------------------


async def test_the_manager_s_loop_starts_and_stops_idempotently() -> None:
    manager = RolloutManager()
    assert not manager.is_running
    await manager.stop_loops()  # nothing to stop
    await manager.start_loops(interval=0.01)
    loop = manager._loop
    await manager.start_loops(interval=5)  # running already: left as it is
    assert manager._loop is loop
    assert manager.is_running
    await manager.poll("c1", INSIDE, 0)
    await manager.create_rollout(bundle(), EUROPE, policy=QUICK)
    await manager.poll("c1", INSIDE, 0)
    await eventually(lambda: _state_is(manager, RolloutState.COMPLETED))
    await manager.stop_loops()
    await manager.stop_loops()
    assert not manager.is_running
    await manager.start_loops(interval=0.01, load=False)  # and again
    assert manager.is_running
    await manager.stop_loops()
    with pytest.raises(ConfigurationError, match="positive"):
        await manager.start_loops(interval=0)


async def _state_is(manager: RolloutManager, state: RolloutState) -> bool:
    return (await manager.get_rollout("42")).state is state


async def test_running_loads_the_store_and_stops_only_what_it_started() -> None:
    first = RolloutManager()
    await first.poll("c1", INSIDE, 0)
    await first.create_rollout(bundle(), EUROPE)
    restarted = RolloutManager(first.store)  # over the same store: loaded by running()
    async with restarted.running(interval=0.01) as running:
        assert running is restarted
        assert (await restarted.poll("c1", INSIDE, 0)).new_release == "42"
        async with restarted.running():
            pass
        assert restarted.is_running  # the inner block started nothing, stopped nothing
    assert not restarted.is_running


async def test_a_relay_s_rounds_are_its_manager_s_loop() -> None:
    parent = RolloutManager()
    manager = RolloutManager()
    relay = Relay(manager, InProcessParent(parent), relay_id="r", area=Area.from_geojson(INSIDE))
    relay.interval = 0.01
    async with relay.running() as running:
        assert running is relay
        assert relay.is_running
        assert manager.is_running  # ticked by the relay's rounds
        await manager.start_loops()  # running already (the relay's): nothing changes
        assert relay.is_running
        await eventually(lambda: _children_of(parent), ["r"])
        await relay.start()  # idempotent
    assert not relay.is_running
    assert not manager.is_running

    async with manager.running(interval=0.01):
        with pytest.raises(ConfigurationError, match="run the relay instead"):
            await relay.start()
        await relay.stop()  # not the relay's loop: left alone
        assert manager.is_running
    relay.interval = 0
    with pytest.raises(ConfigurationError, match="positive"):
        await relay.start()


async def _children_of(manager: RolloutManager) -> list[str]:
    return [c.id for c in await manager.children()]


async def test_the_coordinator_runs_in_a_block_and_starts_again() -> None:
    coordinator = Coordinator(config=CONFIG)
    assert not coordinator.is_running
    async with coordinator.running() as running:
        assert running is coordinator
        assert coordinator.is_running
        await coordinator.start()  # idempotent
        async with coordinator.running():
            pass
        assert coordinator.is_running  # the inner block started nothing, closed nothing
    assert not coordinator.is_running
    await coordinator.close()  # idempotent
    await coordinator.start()
    assert coordinator.is_running
    await coordinator.close()
    assert not coordinator.is_running
