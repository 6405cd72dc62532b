"""The Coordinator against in-process task services: the happy path and every failure path."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from release_coordinator import (
    ConflictError,
    Coordinator,
    CoordinatorConfig,
    EventKind,
    EventType,
    Fault,
    HealthStatus,
    InvalidTransitionError,
    KitTask,
    MemoryStore,
    MemoryTransport,
    NotFoundError,
    ReleaseState,
    RetryPolicy,
    TaskServiceKit,
    TaskState,
    ValidationError,
)

pytestmark = pytest.mark.anyio

FAST = CoordinatorConfig(
    poll_interval=0.01,
    retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0),
    health_interval=0,
    claim_interval=0.05,
)


class GatedKit(TaskServiceKit):
    """A task service whose work waits for a gate and can be told to fail."""

    def __init__(self, name: str, *, gated: bool = False) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_stage = False
        self.fail_publish = False
        self.canceled: list[str] = []

    async def stage(self, task: KitTask) -> None:
        await self.gate.wait()
        await task.report_progress(50)
        if self.fail_stage:
            raise RuntimeError("staging broke")

    async def publish(self, task: KitTask) -> None:
        if self.fail_publish:
            raise RuntimeError("publishing broke")

    async def cancel(self, task: KitTask) -> None:
        self.canceled.append(task.task_id)


class Setup:
    def __init__(self, n: int = 3, *, gated: bool = False, connect: bool = False) -> None:
        self.store = MemoryStore()
        self.transport = MemoryTransport(timeout=0.2)
        self.kits = [GatedKit(f"svc{i}", gated=gated) for i in range(n)]
        self.connect = connect
        self.coordinator = self.new_coordinator()

    def new_coordinator(self) -> Coordinator:
        coordinator = Coordinator(self.store, self.transport, config=FAST)
        for kit in self.kits:
            if self.connect:
                kit.connect(coordinator.report_task_state)
        return coordinator

    async def register(self) -> None:
        for kit in self.kits:
            url = self.transport.add(f"memory://{kit.name}", kit)
            await self.coordinator.register_service(kit.name, url)

    def url(self, i: int) -> str:
        return f"memory://svc{i}"

    def sent(self, action: str) -> Counter[str]:
        return Counter(s.url for s in self.transport.sent if s.action == action)


@pytest.fixture
async def setup() -> Setup:
    s = Setup()
    await s.register()
    async with s.coordinator:
        yield s


async def states(c: Coordinator, release_id: str) -> dict[str, TaskState]:
    return {t.service_id: t.state for t in await c.list_tasks(release_id)}


# -- the happy path ----------------------------------------------------------------------------


async def test_release_is_staged_then_published_on_request(setup: Setup) -> None:
    c = setup.coordinator
    release = await c.create_release("r1", studies=["SD_1", "SD_2"], author="ann")
    assert release.version == "0.0.1"
    staged = await c.wait(release.id, [ReleaseState.STAGED], timeout=5)
    assert set((await states(c, release.id)).values()) == {TaskState.STAGED}
    assert setup.sent("publish") == Counter()  # never before the publish request
    published = await c.publish(staged.id)
    assert published.state is ReleaseState.PUBLISHING
    done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED
    assert done.version == "0.1.0"
    assert set((await states(c, release.id)).values()) == {TaskState.PUBLISHED}
    # every service got the studies and each action once
    for i in range(3):
        assert setup.sent("initialize")[setup.url(i)] == 1
        assert setup.sent("start")[setup.url(i)] == 1
        assert setup.sent("publish")[setup.url(i)] == 1
    kit_task = next(iter(setup.kits[0].tasks.values()))
    assert kit_task.studies == ("SD_1", "SD_2")
    transitions = [
        e.state
        for e in await c.events(release_id=release.id, kinds=[EventKind.TRANSITION])
        if e.task_id is None
    ]
    assert transitions == ["initializing", "running", "staged", "publishing", "published"]


async def test_auto_publish_and_versions(setup: Setup) -> None:
    c = setup.coordinator
    first = await c.wait((await c.create_release("a", auto_publish=True)).id, timeout=5)
    second = await c.wait(
        (await c.create_release("b", auto_publish=True, is_major=True)).id, timeout=5
    )
    third = await c.create_release("c")
    assert (first.version, second.version, third.version) == ("0.1.0", "1.0.0", "1.0.1")


async def test_concurrent_creations_never_share_a_version(setup: Setup) -> None:
    releases = await asyncio.gather(*(setup.coordinator.create_release(f"r{i}") for i in range(25)))
    versions = [r.version for r in releases]
    assert len(set(versions)) == 25


async def test_callbacks_apply_and_may_run_ahead_of_answers() -> None:
    s = Setup(connect=True)
    await s.register()
    for i in range(3):  # answers arrive late; callbacks arrive at once
        s.transport.set_latency(s.url(i), 0.05)
    async with s.coordinator as c:
        release = await c.create_release("r", auto_publish=True)
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED
    callbacks = [e for e in await c.events(release_id=release.id) if "(callback)" in e.message]
    assert callbacks, "kits push their state; the coordinator must have applied some"


# -- initialize failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        (Fault.status(500), 1),
        (Fault.status(503), 1),
        (Fault.status(400), 1),
        (Fault.refuse(), 3),
        (Fault.timeout(), 3),
        (Fault.malformed(), 1),
    ],
    ids=["500", "503", "400", "connection-error", "timeout", "malformed"],
)
async def test_initialize_failure_rejects_task_and_fails_release(
    setup: Setup, fault: Fault, attempts: int
) -> None:
    setup.transport.inject(setup.url(1), fault, action="initialize", times=None)
    c = setup.coordinator
    release = await c.create_release("r")
    done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    assert "rejected" in done.failure
    tasks = {t.service_id: t for t in await c.list_tasks(release.id)}
    by_url = {(await c.get_service(sid)).url: t for sid, t in tasks.items()}
    assert by_url[setup.url(1)].state is TaskState.REJECTED
    assert by_url[setup.url(0)].state is TaskState.CANCELED
    assert by_url[setup.url(2)].state is TaskState.CANCELED
    assert setup.sent("initialize")[setup.url(1)] == attempts  # real answers are not retried
    assert setup.sent("cancel")[setup.url(0)] == 1
    assert setup.sent("cancel")[setup.url(2)] == 1
    assert setup.sent("start") == Counter()
    errors = await c.events(release_id=release.id, kinds=[EventKind.REQUEST_ERROR])
    assert len(errors) == attempts
    assert errors[-1].type is EventType.ERROR


async def test_transient_error_that_succeeds_on_retry_continues(setup: Setup) -> None:
    setup.transport.inject(setup.url(0), Fault.refuse(), action="start", times=2)
    setup.transport.inject(setup.url(1), Fault.drop(), action="initialize", times=1)
    c = setup.coordinator
    release = await c.create_release("r", auto_publish=True)
    done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED
    assert setup.sent("start")[setup.url(0)] == 3
    assert setup.sent("initialize")[setup.url(1)] == 2  # a dropped answer: asked again
    warnings = await c.events(release_id=release.id, types=[EventType.WARNING])
    assert len(warnings) == 3


# -- failures while running ---------------------------------------------------------------------


async def test_task_failing_while_running_cancels_the_others(setup: Setup) -> None:
    setup.kits[2].fail_stage = True
    c = setup.coordinator
    release = await c.create_release("r", auto_publish=True)
    done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    st = await states(c, release.id)
    assert sorted(st.values()) == sorted([TaskState.CANCELED, TaskState.CANCELED, TaskState.FAILED])
    assert len(setup.kits[0].canceled) == 1
    assert len(setup.kits[1].canceled) == 1
    assert setup.sent("publish") == Counter()


async def test_get_status_answered_with_error_fails_the_task() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        s.transport.inject(s.url(0), Fault.status(500), action="get_status")
        release = await c.create_release("r")
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    assert "500" in done.failure


async def test_task_reporting_canceled_fails_the_release() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        await c.wait(release.id, [ReleaseState.RUNNING], timeout=5)
        task = (await c.list_tasks(release.id))[0]
        await c.report_task_state(task.id, release.id, "canceled")
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    st = await states(c, release.id)
    assert st[task.service_id] is TaskState.FAILED
    assert list(st.values()).count(TaskState.CANCELED) == 2


async def test_publish_failure_cancels_published_tasks_too(setup: Setup) -> None:
    setup.kits[1].fail_publish = True
    c = setup.coordinator
    release = await c.create_release("r", auto_publish=True)
    done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    st = await states(c, release.id)
    assert TaskState.PUBLISHED not in st.values()
    # the services that had published were told to cancel
    assert setup.sent("cancel")[setup.url(0)] == 1
    assert setup.sent("cancel")[setup.url(2)] == 1


async def test_phase_time_limit_fails_a_silent_task() -> None:
    s = Setup(gated=True)
    await s.register()
    s.coordinator = Coordinator(
        s.store,
        s.transport,
        config=CoordinatorConfig(
            poll_interval=0.02,
            phase_timeout=0.2,
            health_interval=0,
            retry=RetryPolicy(attempts=1),
        ),
    )
    async with s.coordinator as c:
        release = await c.create_release("r")
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    assert "no progress" in done.failure


async def test_release_time_limit() -> None:
    s = Setup(gated=True)
    await s.register()
    s.coordinator = Coordinator(
        s.store,
        s.transport,
        config=CoordinatorConfig(
            poll_interval=0.02,
            release_timeout=0.2,
            health_interval=0,
        ),
    )
    async with s.coordinator as c:
        release = await c.create_release("r")
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.FAILED
    assert "release stayed running" in done.failure


# -- user actions -------------------------------------------------------------------------------


async def test_cancel_twice_is_idempotent() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        await c.wait(release.id, [ReleaseState.RUNNING], timeout=5)
        first = await c.cancel(release.id, reason="operator")
        second = await c.cancel(release.id)
        assert first.state is second.state is ReleaseState.CANCELING
        done = await c.wait(release.id, timeout=5)
        assert done.state is ReleaseState.CANCELED
        again = await c.cancel(release.id)
        assert again.state is ReleaseState.CANCELED
    assert set((await states(c, release.id)).values()) == {TaskState.CANCELED}
    assert s.sent("cancel") == Counter({s.url(i): 1 for i in range(3)})
    user = await c.events(release_id=release.id, kinds=[EventKind.USER_ACTION])
    assert [e.message for e in user][1:] == ["cancel of release 'r' requested (operator)"]


async def test_published_release_cannot_be_canceled(setup: Setup) -> None:
    c = setup.coordinator
    done = await c.wait((await c.create_release("r", auto_publish=True)).id, timeout=5)
    with pytest.raises(InvalidTransitionError, match="published"):
        await c.cancel(done.id)
    assert (await c.get_release(done.id)).state is ReleaseState.PUBLISHED


async def test_publish_before_staged_is_refused_and_changes_nothing() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        running = await c.wait(release.id, [ReleaseState.RUNNING], timeout=5)
        events_before = len(await c.events())
        with pytest.raises(InvalidTransitionError, match="only a staged release"):
            await c.publish(release.id)
        after = await c.get_release(release.id)
        assert after.state is ReleaseState.RUNNING
        assert after.version == running.version
        assert len(await c.events()) == events_before
        assert s.sent("publish") == Counter()
        for kit in s.kits:
            kit.gate.set()
        await c.wait(release.id, [ReleaseState.STAGED], timeout=5)
        await c.publish(release.id)
        assert (await c.wait(release.id, timeout=5)).state is ReleaseState.PUBLISHED


async def test_zero_services_goes_straight_to_staged() -> None:
    async with Coordinator(config=FAST) as c:
        release = await c.create_release("empty")
        staged = await c.wait(release.id, [ReleaseState.STAGED], timeout=5)
        assert staged.state is ReleaseState.STAGED
        transitions = await c.events(release_id=release.id, kinds=[EventKind.TRANSITION])
        assert [e.state for e in transitions] == ["staged"]
        await c.publish(release.id)
        assert (await c.wait(release.id, timeout=5)).state is ReleaseState.PUBLISHED


async def test_all_services_disabled(setup: Setup) -> None:
    c = setup.coordinator
    for service in await c.list_services():
        await c.disable_service(service.id)
    release = await c.create_release("r", auto_publish=True)
    assert await c.list_tasks(release.id) == []
    assert (await c.wait(release.id, timeout=5)).state is ReleaseState.PUBLISHED
    assert [s for s in setup.transport.sent if s.action != "status"] == []
    enabled = await c.enable_service((await c.list_services())[0].id)
    assert enabled.enabled
    assert len(await c.list_services(enabled=True)) == 1


async def test_run_again_and_listing(setup: Setup) -> None:
    setup.kits[0].fail_stage = True
    c = setup.coordinator
    failed = await c.wait(
        (await c.create_release("nightly", studies=["SD_9"], tags=["x"])).id, timeout=5
    )
    assert failed.state is ReleaseState.FAILED
    setup.kits[0].fail_stage = False
    again = await c.run_again(failed.id)
    assert (again.name, again.studies, again.tags, again.cloned_from) == (
        "nightly",
        ("SD_9",),
        ("x",),
        failed.id,
    )
    await c.wait(again.id, [ReleaseState.STAGED], timeout=5)
    with pytest.raises(ConflictError, match="only a finished release"):
        await c.run_again(again.id)
    assert [r.id for r in await c.list_releases(states=["failed"])] == [failed.id]
    assert [r.id for r in await c.list_releases()] == [again.id, failed.id]
    assert [r.id for r in await c.list_releases(limit=1, offset=1)] == [failed.id]
    updated = await c.update_release(again.id, name="nightly-2", tags=["y"])
    assert (updated.name, updated.tags) == ("nightly-2", ("y",))


# -- callbacks ----------------------------------------------------------------------------------


async def test_impossible_callbacks_are_refused_and_change_nothing() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        await c.wait(release.id, [ReleaseState.RUNNING], timeout=5)
        task = (await c.list_tasks(release.id))[0]
        await asyncio.sleep(0.05)
        task = await c.get_task(task.id)
        before = (task, len(await c.events()))
        for state in ("published", "publishing", "pending"):
            with pytest.raises(InvalidTransitionError):
                await c.report_task_state(task.id, release.id, state)
        with pytest.raises(NotFoundError):
            await c.report_task_state(task.id, "RE_OTHER", "staged")
        with pytest.raises(NotFoundError):
            await c.report_task_state("TA_NOPE", None, "staged")
        assert (await c.get_task(task.id), len(await c.events())) == before
        # a reachable state is accepted, with progress
        moved = await c.report_task_state(task.id, release.id, "staged", 100)
        assert moved.state is TaskState.STAGED
        assert moved.progress == 100
        for kit in s.kits:
            kit.gate.set()
        done = await c.wait(release.id, [ReleaseState.STAGED], timeout=5)
        await c.cancel(done.id)
        await c.wait(release.id, timeout=5)
        with pytest.raises(InvalidTransitionError, match="canceled"):
            await c.report_task_state(task.id, release.id, "staged")


# -- restarts -----------------------------------------------------------------------------------


async def test_restarted_coordinator_finishes_the_release() -> None:
    s = Setup(gated=True)
    await s.register()
    first = s.coordinator
    await first.start()
    release = await first.create_release("r", auto_publish=True)
    await first.wait(release.id, [ReleaseState.RUNNING], timeout=5)
    await first.close()  # stops mid-release: tasks are running
    assert (await s.store.get_release(release.id)).state is ReleaseState.RUNNING
    for kit in s.kits:
        kit.gate.set()
    second = s.new_coordinator()
    async with second:
        done = await second.wait(release.id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED
    for i in range(3):
        assert s.sent("start")[s.url(i)] == 1  # nothing done twice
        assert s.sent("publish")[s.url(i)] == 1


async def test_crashed_coordinator_is_taken_over_after_its_lease() -> None:
    s = Setup(gated=True)
    await s.register()
    config = CoordinatorConfig(
        poll_interval=0.01, health_interval=0, lease_seconds=0.3, claim_interval=0.05
    )
    crashed = Coordinator(s.store, s.transport, config=config, owner="crashed")
    await crashed.start()
    release = await crashed.create_release("r", auto_publish=True)
    await crashed.wait(release.id, [ReleaseState.RUNNING], timeout=5)
    for task in [*crashed._background, *crashed._drivers.values()]:
        task.cancel()  # dies without giving its leases up
    await asyncio.sleep(0.01)
    for kit in s.kits:
        kit.gate.set()
    async with Coordinator(s.store, s.transport, config=config, owner="heir") as heir:
        done = await heir.wait(release.id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED


# -- services -----------------------------------------------------------------------------------


async def test_registration_checks_status() -> None:
    transport = MemoryTransport()
    kit = TaskServiceKit("portal")
    transport.add("memory://portal", kit)
    async with Coordinator(transport=transport, config=FAST) as c:
        with pytest.raises(ValidationError, match="not answering"):
            await c.register_service("ghost", "memory://ghost")
        kit.healthy = False
        with pytest.raises(ValidationError, match="503"):
            await c.register_service("portal", "memory://portal")
        kit.healthy = True
        service = await c.register_service("portal", "memory://portal")
        assert service.health.status is HealthStatus.OK
        assert service.health.reported_name == "portal"
        with pytest.raises(ConflictError):
            await c.register_service("portal", "memory://portal")
        with pytest.raises(ValidationError, match="name"):
            await c.register_service(" ", "memory://x", check=False)
        assert [s.name for s in await c.list_services()] == ["portal"]
        assert (await c.list_services(enabled=False)) == []


async def test_health_checks_count_failures_and_report_down() -> None:
    transport = MemoryTransport()
    kit = TaskServiceKit("portal")
    transport.add("memory://portal", kit)
    config = CoordinatorConfig(health_interval=0.02, health_threshold=3)
    async with Coordinator(transport=transport, config=config) as c:
        service = await c.register_service("portal", "memory://portal")
        kit.healthy = False
        for _ in range(200):
            await asyncio.sleep(0.01)
            current = await c.get_service(service.id)
            if current.health.status is HealthStatus.DOWN:
                break
        assert current.health.status is HealthStatus.DOWN
        assert current.health.consecutive_failures >= 3
        kit.healthy = True
        back = await c.check_health(service.id)
        assert back.health.status is HealthStatus.OK
        assert back.health.consecutive_failures == 0
        health = await c.events(kinds=[EventKind.HEALTH])
        assert [e.message.split(" is ")[1].split()[0] for e in health] == ["down", "ok"]


async def test_remove_service_in_use_is_refused() -> None:
    s = Setup(gated=True)
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        service = (await c.list_services())[0]
        with pytest.raises(ConflictError, match="unfinished release"):
            await c.remove_service(service.id)
        await c.cancel(release.id)
        await c.wait(release.id, timeout=5)
        await c.remove_service(service.id)
        with pytest.raises(NotFoundError):
            await c.get_service(service.id)
        renamed = await c.update_service((await c.list_services())[0].id, name="renamed")
        assert renamed.name == "renamed"


# -- events and subscribers ---------------------------------------------------------------------


async def test_subscribers_get_every_event_in_order(setup: Setup) -> None:
    c = setup.coordinator
    seen: list[int] = []
    async_seen: list[int] = []

    def broken(_event: object) -> None:
        raise RuntimeError("subscriber bug")

    async def collect(event: object) -> None:
        async_seen.append(event.id)  # type: ignore[attr-defined]

    unsubscribe = await c.subscribe(lambda e: seen.append(e.id))
    await c.subscribe(broken)
    await c.subscribe(collect)
    release = await c.create_release("r", auto_publish=True)
    await c.wait(release.id, timeout=5)
    await asyncio.sleep(0.05)
    all_ids = [e.id for e in await c.events() if e.id > 3]  # after the registrations
    assert seen == all_ids == async_seen
    unsubscribe()
    await c.create_release("r2")
    await asyncio.sleep(0.05)
    assert seen == all_ids
    assert len(async_seen) > len(all_ids)
    by_task = await c.events(task_id=(await c.list_tasks(release.id))[0].id)
    assert by_task
    assert all(e.task_id for e in by_task)


async def test_awaiting_subscribers_see_each_event_once_in_order(setup: Setup) -> None:
    c = setup.coordinator
    seen: list[int] = []

    async def slow(event: object) -> None:
        await asyncio.sleep(0.001)  # flushes pile up while this awaits
        seen.append(event.id)  # type: ignore[attr-defined]

    await c.subscribe(slow)
    release = await c.create_release("r", auto_publish=True)
    await c.wait(release.id, timeout=5)
    await c.close()
    logged = [e.id for e in await c.events() if e.id > 3]
    assert seen == logged


async def test_gateway_errors_in_memory_are_transient_like_http(setup: Setup) -> None:
    setup.transport.inject(setup.url(0), Fault.status(502), action="initialize")
    setup.transport.inject(setup.url(1), Fault.status(504), action="start")
    c = setup.coordinator
    done = await c.wait((await c.create_release("r", auto_publish=True)).id, timeout=5)
    assert done.state is ReleaseState.PUBLISHED
    assert setup.sent("initialize")[setup.url(0)] == 2
    assert setup.sent("start")[setup.url(1)] == 2


async def test_addresses_the_transport_cannot_reach_are_refused(setup: Setup) -> None:
    c = setup.coordinator
    with pytest.raises(ValidationError, match="memory://<name>"):
        await c.register_service("web", "https://web.example/release", check=False)
    service = (await c.list_services())[0]
    with pytest.raises(ValidationError, match="url"):
        await c.update_service(service.id, url="ftp://nowhere")
    assert (await c.get_service(service.id)).url == service.url


async def test_bad_studies_and_tags_are_refused_before_anything_is_stored(setup: Setup) -> None:
    c = setup.coordinator
    with pytest.raises(ValidationError) as info:
        await c.create_release("r", studies=["SD_1", "", "SD_\ud800"], tags=["x" * 300])
    paths = [p for p, _ in info.value.problems]
    assert paths == ["studies[1]", "studies[2]", "tags[0]"]
    assert await c.list_releases() == []


async def test_a_finished_release_ends_its_driver_quietly(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    c = setup.coordinator
    done = await c.wait((await c.create_release("r", auto_publish=True)).id, timeout=5)
    await asyncio.sleep(0.05)
    assert done.state is ReleaseState.PUBLISHED
    assert not [r for r in caplog.records if "lost the lease" in r.getMessage()]
    assert not c._drivers


async def test_publish_is_recorded_when_decided_not_after_a_cancel() -> None:
    class CancelDuringFanOut(MemoryTransport):
        """Schedules a user's cancel to run at the first suspension of a publish fan-out."""

        coordinator: Coordinator

        async def send_many(self, calls):  # type: ignore[no-untyped-def]
            if calls and calls[0][1].action.value == "publish":
                asyncio.get_running_loop().create_task(
                    self.coordinator.cancel(calls[0][1].release_id)
                )
            return await super().send_many(calls)

    s = Setup()
    s.transport = CancelDuringFanOut(timeout=0.2)
    s.coordinator = s.new_coordinator()
    s.transport.coordinator = s.coordinator
    await s.register()
    async with s.coordinator as c:
        release = await c.create_release("r")
        await c.wait(release.id, [ReleaseState.STAGED], timeout=5)
        states_at_publish: list[ReleaseState] = []
        s.transport.on_send(
            lambda sent: (
                states_at_publish.append(s.store._releases[sent.release_id].state)
                if sent.action == "publish"
                else None
            )
        )
        await c.publish(release.id)
        done = await c.wait(release.id, timeout=5)
    assert done.state is ReleaseState.CANCELED
    assert states_at_publish == [ReleaseState.PUBLISHING] * 3  # decided while publishing
    assert set((await states(c, release.id)).values()) == {TaskState.CANCELED}


def test_a_kit_tasks_answer_body_is_its_answers_json() -> None:
    from datetime import UTC, datetime

    task = KitTask("TA_1", "RE_1", ("SD_1",), progress=40)
    assert task.answer_json("portal") == task.answer("portal").to_json()
    assert task.answer_json("") == task.answer("").to_json()
    task.submitted_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # formatted anew
    assert task.answer_json("portal")["date_submitted"] == "2026-01-02T03:04:05+00:00"
    assert task.answer_json("portal") == task.answer("portal").to_json()


async def test_a_kit_forgets_its_jobs_when_they_end_or_are_canceled() -> None:
    gate = asyncio.Event()

    async def stage(task: KitTask) -> None:
        await gate.wait()

    kit = TaskServiceKit("svc", stage=stage)
    bodies = [
        {"action": "initialize", "task_id": f"TA_{i}", "release_id": "RE_1", "studies": []}
        for i in range(3)
    ]
    for body in bodies:
        await kit.handle_task(body)
        await kit.handle_task({**body, "action": "start"})
    assert set(kit._jobs) == {"TA_0", "TA_1", "TA_2"}
    # canceled before its job ever ran: forgotten by the cancel
    await kit.handle_task({**bodies[0], "action": "cancel"})
    assert set(kit._jobs) == {"TA_1", "TA_2"}
    gate.set()
    for _ in range(5):  # the jobs run to their end ...
        await asyncio.sleep(0)
    assert kit.tasks["TA_1"].state == kit.tasks["TA_2"].state == "staged"
    assert kit._jobs == {}  # ... and are forgotten
    assert kit.tasks["TA_0"].state == "canceled"
    # a job that ends after a newer job of its task started leaves the newer one be: here
    # the push of "staged" publishes at once (as a coordinator could)
    kit2 = TaskServiceKit("svc2", stage=None, publish=stage)
    gate.clear()

    async def push(task_id: str, release_id: str, state: str, progress: int) -> None:
        if state == "staged":
            await kit2.handle_task({**bodies[0], "action": "publish"})

    kit2.connect(push)
    await kit2.handle_task(bodies[0])
    await kit2.handle_task({**bodies[0], "action": "start"})
    for _ in range(5):
        await asyncio.sleep(0)
    assert kit2.tasks["TA_0"].state == "publishing"
    publishing = kit2._jobs["TA_0"]
    assert not publishing.done()
    await kit2.aclose()
    assert kit2._jobs == {}
    assert publishing.cancelled()
    # closed before a job ever ran: forgotten too
    await kit2.handle_task(bodies[1])
    await kit2.handle_task({**bodies[1], "action": "start"})
    assert set(kit2._jobs) == {"TA_1"}
    await kit2.aclose()
    assert kit2._jobs == {}
