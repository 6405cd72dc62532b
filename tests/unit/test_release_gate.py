"""Rollouts gated on data releases (``after_release``, :class:`ReleaseGate`): the library with
the in-memory adapters, and end to end through ``service_app`` over HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from release_coordinator import (
    ConflictError,
    Coordinator,
    CoordinatorConfig,
    InvalidTransitionError,
    MemoryStore,
    MemoryTransport,
    NotFoundError,
    ReleaseGate,
    RetryPolicy,
    RolloutManager,
    RolloutState,
    TaskServiceKit,
    ValidationError,
)
from release_coordinator.coordinator.kit import KitTask
from release_coordinator.server.serve import service_app
from release_coordinator.storage.memory_rollout import MemoryRolloutStore

from .test_embedding import lifespan_of
from .test_rollout_manager import EUROPE, STRATEGY, archive, bundle

pytestmark = pytest.mark.anyio

CONFIG = CoordinatorConfig(
    poll_interval=0.01,
    health_interval=0,
    claim_interval=0.05,
    retry=RetryPolicy(attempts=1, base_delay=0, max_delay=0),
)


async def eventually(read: Callable[[], Awaitable[object]], want: object) -> None:
    for _ in range(500):
        got = await read()
        if got == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still {got!r}, not {want!r}")


async def _broken(task: KitTask) -> None:
    raise RuntimeError("disk full")


def transport() -> MemoryTransport:
    memory = MemoryTransport()
    memory.add("memory://portal", TaskServiceKit("portal"))
    memory.add("memory://broken", TaskServiceKit("broken", stage=_broken))
    return memory


@pytest.fixture
async def halves() -> AsyncIterator[tuple[Coordinator, RolloutManager]]:
    coordinator = Coordinator(MemoryStore(), transport(), config=CONFIG)
    manager = RolloutManager()
    async with coordinator.running(), manager.running(interval=0.01):
        yield coordinator, manager


async def staged(coordinator: Coordinator, service: str = "portal") -> str:
    if not any(s.name == service for s in await coordinator.list_services()):
        await coordinator.register_service(service, f"memory://{service}")
    release = await coordinator.create_release("nightly", studies=["SD_1"])
    await coordinator.wait(release.id, {"staged"}, timeout=5)
    return release.id


async def test_a_gated_rollout_starts_when_its_release_is_published(
    halves: tuple[Coordinator, RolloutManager],
) -> None:
    coordinator, manager = halves
    release_id = await staged(coordinator)
    async with ReleaseGate(coordinator, manager, interval=60).running():
        rollout = await manager.create_rollout(bundle(), EUROPE, after_release=release_id)
        assert rollout.state is RolloutState.DRAFT
        assert rollout.after_release == release_id
        # Not before the release is published: a clear refusal.
        with pytest.raises(InvalidTransitionError, match=f"waits for data release {release_id}"):
            await manager.start(rollout.id)
        await coordinator.publish(release_id)
        # The event wakes the gate (its own interval is a minute).
        await eventually(lambda: state_of(manager, "42"), RolloutState.ACTIVE)


async def state_of(manager: RolloutManager, rollout_id: str) -> RolloutState:
    return (await manager.get_rollout(rollout_id)).state


async def test_a_gated_rollout_is_aborted_when_its_release_is_canceled(
    halves: tuple[Coordinator, RolloutManager],
) -> None:
    coordinator, manager = halves
    release_id = await staged(coordinator)
    async with ReleaseGate(coordinator, manager, interval=60).running():
        await manager.create_rollout(bundle(), EUROPE, after_release=release_id)
        await coordinator.cancel(release_id, reason="bad data")
        await eventually(lambda: state_of(manager, "42"), RolloutState.ABORTED)
    rollout = await manager.get_rollout("42")
    assert rollout.reason == f"data release {release_id} is canceled"


async def test_a_gated_rollout_is_aborted_when_its_release_fails(
    halves: tuple[Coordinator, RolloutManager],
) -> None:
    coordinator, manager = halves
    await coordinator.register_service("broken", "memory://broken")
    release = await coordinator.create_release("nightly", studies=["SD_1"])
    async with ReleaseGate(coordinator, manager, interval=60).running():
        await manager.create_rollout(bundle(), EUROPE, after_release=release.id)
        ended = await coordinator.wait(release.id, timeout=5)
        assert ended.state.value == "failed"
        await eventually(lambda: state_of(manager, "42"), RolloutState.ABORTED)
    assert (await manager.get_rollout("42")).reason == f"data release {release.id} is failed"


async def test_a_release_published_already_starts_the_rollout_at_once(
    halves: tuple[Coordinator, RolloutManager],
) -> None:
    coordinator, manager = halves
    release_id = await staged(coordinator)
    await coordinator.publish(release_id)
    assert (await coordinator.wait(release_id, timeout=5)).state.value == "published"
    ReleaseGate(coordinator, manager)  # looks releases up for the manager; not running
    rollout = await manager.create_rollout(bundle(), EUROPE, after_release=release_id)
    assert rollout.state is RolloutState.ACTIVE


async def test_what_creation_refuses(halves: tuple[Coordinator, RolloutManager]) -> None:
    coordinator, manager = halves
    with pytest.raises(ValidationError, match="invalid rollout"):  # no gate: no releases known
        await manager.create_rollout(bundle(), EUROPE, after_release="RE_0")
    ReleaseGate(coordinator, manager)
    with pytest.raises(NotFoundError):
        await manager.create_rollout(bundle(), EUROPE, after_release="RE_unknown")
    release_id = await staged(coordinator)
    with pytest.raises(ValidationError, match="invalid rollout"):
        await manager.create_rollout(bundle(), EUROPE, after_release=release_id, start=False)
    await coordinator.cancel(release_id)
    await coordinator.wait(release_id, timeout=5)
    with pytest.raises(ConflictError, match="would never start"):
        await manager.create_rollout(bundle(), EUROPE, after_release=release_id)
    assert await manager.list_rollouts() == []


async def test_a_new_gate_over_the_same_stores_reconciles_what_it_missed() -> None:
    store, rollouts, memory = MemoryStore(), MemoryRolloutStore(), transport()
    coordinator = Coordinator(store, memory, config=CONFIG)
    manager = RolloutManager(rollouts)
    async with coordinator.running():
        published = await staged(coordinator)
        canceled = await staged(coordinator)
        ReleaseGate(coordinator, manager)
        await manager.create_rollout(bundle("a"), EUROPE, after_release=published)
        await manager.create_rollout(bundle("b"), EUROPE, after_release=canceled)
        # No gate runs while the releases end (a restart, or another process ended them).
        await coordinator.publish(published)
        await coordinator.cancel(canceled)
        await coordinator.wait(published, timeout=5)
        await coordinator.wait(canceled, timeout=5)
    again = Coordinator(store, memory, config=CONFIG)
    manager = RolloutManager(rollouts)
    async with again.running(), manager.running(interval=0.01):
        async with ReleaseGate(again, manager, interval=60).running():
            assert await state_of(manager, "a") is RolloutState.ACTIVE
            assert await state_of(manager, "b") is RolloutState.ABORTED
        # A second pass finds nothing to do.
        assert await ReleaseGate(again, manager).reconcile() == []


async def test_serve_starts_a_gated_rollout_when_the_release_is_published() -> None:
    coordinator = Coordinator(MemoryStore(), transport(), config=CONFIG)
    manager = RolloutManager()
    app = service_app(coordinator, manager, allow_anonymous=True, access_log=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    async with lifespan_of(app), client:
        release_id = await staged(coordinator)
        upload = {
            "strategy": STRATEGY,
            "archive": base64.b64encode(archive()).decode(),
            "target": EUROPE,
        }
        unknown = await client.post("/rollouts", json={**upload, "after_release": "RE_nope"})
        assert unknown.status_code == 404, unknown.text
        created = await client.post("/rollouts", json={**upload, "after_release": release_id})
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "draft"
        assert created.json()["after_release"] == release_id
        early = await client.post("/rollouts/42/start", json={})
        assert early.status_code == 409, early.text
        assert f"waits for data release {release_id}" in early.text
        listed = (await client.get("/rollouts")).json()["items"]
        assert [r["after_release"] for r in listed] == [release_id]

        published = await client.post(f"/releases/{release_id}/publish", json={})
        assert published.status_code in (200, 202), published.text

        async def rollout_state() -> str:
            return str((await client.get("/rollouts/42")).json()["state"])

        await eventually(rollout_state, "active")


def test_a_gate_s_interval_must_be_positive() -> None:
    from release_coordinator import ConfigurationError

    for interval in (0, -1.0, float("nan")):
        with pytest.raises(ConfigurationError, match="interval must be positive"):
            ReleaseGate(Coordinator(MemoryStore()), RolloutManager(), interval=interval)
