"""User actions racing the drivers (issue #16): ``cancel()`` and ``publish()`` issued while a
driver moves the same release, over every CoordinatorStore adapter.

A user action is a compare-and-set against the release's freshly read state; when a driver
moved the release in between, it is judged again against the state that won. So:

- an action allowed from the fresh state never fails (no ConcurrentUpdateError, no other
  ConflictError); only a genuinely disallowed one is refused (InvalidTransitionError, naming
  the state by its wire name);
- an accepted cancel always ends the release ``canceled`` (or ``failed``), never ``staged`` or
  ``published``; an accepted publish is never lost;
- a driver that loses the race logs no error: it reads the release again and takes the next
  step at once (the coordinators here never claim releases in the background and never pause
  for long, so a driver that died or missed the news would leave the release unfinished, and
  the wait for it would run out).

The in-memory store answers without suspending, so on it the race needs help: the store's
methods are wrapped to yield to the event loop a drawn number of times before and after each
call, and hypothesis draws those interleavings. The SQL stores suspend on their own (a thread
for SQLite, the network for PostgreSQL); they get the same wrapping and the same properties,
with fewer examples, and a burst of releases created and canceled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator import (
    ConflictError,
    Coordinator,
    CoordinatorConfig,
    CoordinatorStore,
    EventKind,
    InvalidTransitionError,
    MemoryStore,
    MemoryTransport,
    Release,
    ReleaseState,
    RetryPolicy,
    TaskServiceKit,
)

pytestmark = pytest.mark.anyio

RS = ReleaseState
FINAL = frozenset({RS.PUBLISHED, RS.CANCELED, RS.FAILED})
SETTLE_WITHIN = 20.0  # a bound on waiting, never an assertion on time

#: Fast steps; no background claiming and no long pauses to hide a driver that died or slept
#: through a user's action: the release would simply never finish.
CONFIG = CoordinatorConfig(
    poll_interval=0.005,
    retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
    health_interval=0,
    claim_interval=3600.0,
    lease_seconds=3600.0,
)

#: The store methods a driver and a user action go through, wrapped to yield around each call.
_INTERLEAVED = (
    "get_release",
    "list_tasks",
    "transition_release",
    "change_tasks",
    "move_tasks",
    "renew_lease",
    "claim_release",
    "drop_lease",
    "list_services",
    "append_events",
)


def interleave(store: CoordinatorStore, pauses: Iterator[int]) -> None:
    """Make each of ``store``'s methods in :data:`_INTERLEAVED` yield to the event loop
    ``next(pauses)`` times before it runs and again before its caller gets the answer."""

    def wrapped(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def yielding(*args: Any, **kwargs: Any) -> Any:
            for _ in range(next(pauses)):
                await asyncio.sleep(0)
            result = await method(*args, **kwargs)
            for _ in range(next(pauses)):
                await asyncio.sleep(0)
            return result

        return yielding

    for name in _INTERLEAVED:
        setattr(store, name, wrapped(getattr(store, name)))


class ErrorLog(logging.Handler):
    """Every record of ERROR or above logged under ``release_coordinator`` meanwhile."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @classmethod
    @contextlib.contextmanager
    def watching(cls) -> Iterator[ErrorLog]:
        handler = cls()
        logger = logging.getLogger("release_coordinator")
        logger.addHandler(handler)
        try:
            yield handler
        finally:
            logger.removeHandler(handler)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


StoreFactory = Callable[[], contextlib.AbstractAsyncContextManager[CoordinatorStore]]


@contextlib.asynccontextmanager
async def memory_store() -> AsyncIterator[CoordinatorStore]:
    yield MemoryStore()


def sql_store(url: str) -> StoreFactory:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[CoordinatorStore]:
        from release_coordinator.storage.sql import SQLStore

        store = await SQLStore.connect(url)
        try:
            yield store
        finally:
            await store.close()

    return opened


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database for one test (its examples share it: each makes releases of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'races.db'}"
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


async def quiesce(c: Coordinator) -> None:
    """Wait until ``c`` drives nothing (its drivers of finished releases have ended), so that
    closing it does not cancel one in the middle of a store call."""
    async with asyncio.timeout(SETTLE_WITHIN):
        while c._drivers:
            await asyncio.wait(list(c._drivers.values()))


# -- one race -------------------------------------------------------------------------------------

Action = tuple[str, int]  # ("cancel" | "publish", yields to the loop before it is issued)


async def _act(c: Coordinator, release_id: str, action: Action) -> Release | ConflictError:
    what, delay = action
    for _ in range(delay):
        await asyncio.sleep(0)
    try:
        if what == "cancel":
            return await c.cancel(release_id, reason="race")
        return await c.publish(release_id)
    except ConflictError as error:  # judged below: only a genuine refusal may come back
        return error


async def race(
    opened: StoreFactory,
    *,
    services: int,
    auto_publish: bool,
    actions: list[Action],
    pauses: list[int],
) -> None:
    """Create a release and issue ``actions`` while its driver runs; check what came of it."""
    transport = MemoryTransport(timeout=1.0)
    with ErrorLog.watching() as errors:
        async with opened() as store:
            interleave(store, itertools.cycle(pauses))
            async with Coordinator(store, transport, config=CONFIG) as c:
                # (A SQL store keeps the services of earlier examples: reuse them.)
                known = {s.name for s in await c.list_services()}
                for i in range(services):
                    name = f"svc{i}"
                    url = transport.add(f"memory://{name}", TaskServiceKit(name))
                    if name not in known:
                        await c.register_service(name, url)
                for s in await c.list_services():
                    enabled = int(s.name[3:]) < services
                    if s.enabled != enabled:
                        await (c.enable_service if enabled else c.disable_service)(s.id)
                release = await c.create_release("race", auto_publish=auto_publish)
                results = await asyncio.gather(*(_act(c, release.id, a) for a in actions))
                canceled = published = False
                for (what, _), result in zip(actions, results, strict=True):
                    if isinstance(result, ConflictError):
                        # Only a refusal the fresh state calls for, named by its wire name.
                        assert isinstance(result, InvalidTransitionError), result
                        assert "<" not in result.message, result.message
                        if what == "cancel":
                            assert result.state in ("published", "failed"), result
                        else:
                            assert result.state not in ("staged", "publishing", "published")
                    elif what == "cancel":
                        canceled = True
                        assert result.state in (RS.CANCELING, RS.CANCELED), result
                    else:
                        published = True
                        assert result.state in (RS.STAGED, RS.PUBLISHING, RS.PUBLISHED), result
                if canceled:
                    end = await c.wait(release.id, timeout=SETTLE_WITHIN)
                    assert end.state in (RS.CANCELED, RS.FAILED), end
                elif published or auto_publish:
                    end = await c.wait(release.id, timeout=SETTLE_WITHIN)
                    assert end.state is RS.PUBLISHED, end
                else:  # nothing asked for more than staging
                    end = await c.wait(release.id, [RS.STAGED, *FINAL], timeout=SETTLE_WITHIN)
                    assert end.state is RS.STAGED, end
                requests = await c.events(release_id=release.id, kinds=[EventKind.USER_ACTION])
                asked = [e.message.split(" ", 1)[0] for e in requests if "requested" in e.message]
                # One request event per action that changed the state, none for a lost race.
                assert asked.count("cancel") == int(canceled), asked
                assert asked.count("publish") <= int(published), asked
                if published and not auto_publish and not canceled:
                    assert asked.count("publish") == 1, asked
                if end.state is RS.STAGED:  # leave nothing for the next example to drive
                    await c.cancel(release.id)
                    await c.wait(release.id, timeout=SETTLE_WITHIN)
                await quiesce(c)
    assert not errors.records, [r.getMessage() for r in errors.records]


ACTIONS = st.lists(
    st.tuples(st.sampled_from(["cancel", "publish"]), st.integers(0, 40)), min_size=1, max_size=4
)
PAUSES = st.lists(st.integers(0, 3), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    services=st.integers(0, 3),
    auto_publish=st.booleans(),
    actions=ACTIONS,
    pauses=PAUSES,
)
async def test_user_actions_racing_a_driver_in_memory(
    anyio_backend: str, services: int, auto_publish: bool, actions: list[Action], pauses: list[int]
) -> None:
    await race(
        memory_store, services=services, auto_publish=auto_publish, actions=actions, pauses=pauses
    )


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    services=st.integers(0, 2),
    auto_publish=st.booleans(),
    actions=ACTIONS,
    pauses=PAUSES,
)
async def test_user_actions_racing_a_driver_in_sql(
    anyio_backend: str,
    sql_url: str,
    services: int,
    auto_publish: bool,
    actions: list[Action],
    pauses: list[int],
) -> None:
    await race(
        sql_store(sql_url),
        services=services,
        auto_publish=auto_publish,
        actions=actions,
        pauses=pauses,
    )


# -- a burst: many releases created and canceled at once ----------------------------------------


async def burst(opened: StoreFactory, releases: int = 8, services: int = 3) -> None:
    transport = MemoryTransport(timeout=1.0)
    with ErrorLog.watching() as errors:
        async with opened() as store, Coordinator(store, transport, config=CONFIG) as c:
            for i in range(services):
                url = transport.add(f"memory://svc{i}", TaskServiceKit(f"svc{i}"))
                await c.register_service(f"svc{i}", url)

            async def create_and_cancel(i: int) -> Release:
                release = await c.create_release(f"r{i}")
                return await c.cancel(release.id)

            answers = await asyncio.gather(*(create_and_cancel(i) for i in range(releases)))
            assert {a.state for a in answers} <= {RS.CANCELING, RS.CANCELED}
            ends = [await c.wait(a.id, timeout=SETTLE_WITHIN) for a in answers]
            assert {e.state for e in ends} == {RS.CANCELED}, ends
            await quiesce(c)
    assert not errors.records, [r.getMessage() for r in errors.records]


async def test_releases_created_and_canceled_at_once_all_end_canceled_in_memory() -> None:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[CoordinatorStore]:
        store = MemoryStore()
        interleave(store, itertools.cycle([0, 1, 2, 1]))
        yield store

    await burst(opened)


async def test_releases_created_and_canceled_at_once_all_end_canceled_in_sql(
    sql_url: str,
) -> None:
    await burst(sql_store(sql_url))


# -- the store: a request's event is stored with the change it made, or not at all -------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[CoordinatorStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        async with sql_store(f"sqlite:///{tmp_path / 'store.db'}")() as store:
            yield store
        return
    from sql_support import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        async with sql_store(url)() as store:
            yield store


async def test_a_transition_stores_the_events_before_it_with_it_or_none(
    any_store: CoordinatorStore,
) -> None:
    from release_coordinator import Event, EventType

    def event(message: str, kind: EventKind = EventKind.TRANSITION) -> Event:
        return Event(EventType.INFO, kind, message, release_id="RE_1")

    release, _ = await any_store.create_release(Release("RE_1", "r", "0.0.0"), [], event("new"))
    before = len(await any_store.list_events())
    request = event("cancel requested", EventKind.USER_ACTION)
    with pytest.raises(ConflictError):  # lost: neither the request nor the change is logged
        await any_store.transition_release(
            release.id, {RS.STAGED}, RS.CANCELING, event("moved"), before=[request]
        )
    assert len(await any_store.list_events()) == before
    moved = await any_store.transition_release(
        release.id, {RS.WAITING}, RS.CANCELING, event("moved"), before=[request]
    )
    assert moved.state is RS.CANCELING
    logged = (await any_store.list_events())[before:]
    assert [(e.kind, e.message) for e in logged] == [
        (EventKind.USER_ACTION, "cancel requested"),
        (EventKind.TRANSITION, "moved"),
    ]
    assert logged[0].id < logged[1].id


# -- one driver per release: the claim loop racing a creation -------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pauses=PAUSES)
async def test_the_claim_loop_racing_a_creation_never_makes_a_second_driver(
    anyio_backend: str, pauses: list[int]
) -> None:
    """A release just created is claimed by ``create_release`` and, at the same moment, by the
    claim loop: one of them drives it, so every action reaches each task once."""
    from collections import Counter

    import attrs

    store = MemoryStore()
    interleave(store, itertools.cycle(pauses))
    transport = MemoryTransport(timeout=1.0)
    config = attrs.evolve(CONFIG, claim_interval=0.001)
    with ErrorLog.watching() as errors:
        async with Coordinator(store, transport, config=config) as c:
            for i in range(2):
                url = transport.add(f"memory://svc{i}", TaskServiceKit(f"svc{i}"))
                await c.register_service(f"svc{i}", url)
            created = [await c.create_release(f"r{i}", auto_publish=True) for i in range(3)]
            for release in created:
                end = await c.wait(release.id, timeout=SETTLE_WITHIN)
                assert end.state is RS.PUBLISHED, end
            await quiesce(c)
    assert not errors.records, [r.getMessage() for r in errors.records]
    sent = Counter(
        (s.action, s.task_id) for s in transport.sent if s.action not in ("get_status", "status")
    )
    assert len(sent) == 3 * 2 * 3, sent  # initialize, start, publish to each of 6 tasks ...
    assert set(sent.values()) == {1}, sent  # ... once
