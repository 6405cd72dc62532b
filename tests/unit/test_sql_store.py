"""The SQL store beyond the shared contract: schema versions and upgrades, driver errors,
timestamps, several stores over one database, and the Coordinator running on it.

Tests that need PostgreSQL are marked ``postgres``; each gets a schema of its own.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from release_coordinator import (
    ConcurrentUpdateError,
    ConfigurationError,
    Coordinator,
    CoordinatorConfig,
    CoordinatorStore,
    Event,
    EventFilter,
    EventKind,
    EventType,
    KitTask,
    MemoryStore,
    MemoryTransport,
    NotFoundError,
    Release,
    ReleaseState,
    RetryPolicy,
    SchemaError,
    StorageError,
    TaskChange,
    TaskService,
    TaskServiceKit,
    TaskState,
)
from release_coordinator.cli import main
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.models import Child
from release_coordinator.storage.sql import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLRolloutStore,
    SQLStore,
    check,
    normalize_url,
    upgrade,
)
from release_coordinator.versions import Version
from sql_support import postgres_schema

pytestmark = pytest.mark.anyio

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}

FAST = CoordinatorConfig(
    poll_interval=0.01,
    retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0),
    health_interval=0,
    claim_interval=0.05,
)


def ev(message: str, **kw: object) -> Event:
    return Event(EventType.INFO, EventKind.TRANSITION, message, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rc.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.connect(db_url)
    yield opened
    await opened.close()


async def execute(url: str, *statements: str) -> None:
    """Run SQL by hand, outside the store (to make old or broken schemas)."""
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
    ],
)
def test_urls_are_normalised_to_the_async_drivers(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+asyncpg://u@h/db", "::nonsense"])
async def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        await SQLStore.connect(url)


# -- schema versions ---------------------------------------------------------------------------


def test_migrations_are_an_ordered_list_of_steps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


async def test_a_fresh_schema_is_created_and_checked(db_url: str) -> None:
    with pytest.raises(SchemaError, match="db upgrade"):
        await SQLStore.connect(db_url, create=False)
    store = await SQLStore.connect(db_url)
    await store.close()
    await store.close()  # idempotent
    assert await check(db_url) == SCHEMA_VERSION
    assert await upgrade(db_url) == (SCHEMA_VERSION, SCHEMA_VERSION)
    reopened = await SQLStore.connect(db_url, create=False)
    await reopened.close()


async def test_upgrade_creates_a_schema_in_an_empty_database(db_url: str) -> None:
    assert await upgrade(db_url) == (None, SCHEMA_VERSION)
    assert await check(db_url) == SCHEMA_VERSION


async def make_version_0(url: str) -> None:
    """The version-0 layout: releases without lease columns, and the version row at 0."""
    await execute(
        url,
        "ALTER TABLE rc_releases DROP COLUMN lease_owner",
        "ALTER TABLE rc_releases DROP COLUMN lease_expires_at",
        "UPDATE rc_schema_version SET version = 0",
    )


async def test_an_older_schema_names_the_upgrade_command_and_upgrades(db_url: str) -> None:
    store = await SQLStore.connect(db_url)
    await store.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
    kept, _ = await store.create_release(Release("RE_old", "old", "0.0.0"), ["TS_1"], ev("new"))
    await store.close()
    await make_version_0(db_url)

    with pytest.raises(SchemaError) as info:
        await SQLStore.connect(db_url)
    assert "schema version 0" in info.value.message
    assert f"release-coordinator db upgrade --db {db_url}" in info.value.message
    with pytest.raises(SchemaError, match="db upgrade"):
        await check(db_url)

    assert await upgrade(db_url) == (0, SCHEMA_VERSION)
    assert await check(db_url) == SCHEMA_VERSION
    store = await SQLStore.connect(db_url, create=False)
    try:
        assert await store.get_release("RE_old") == kept  # the data survived
        assert await store.claim_release("RE_old", "A", 30)  # and leases work
        assert not await store.claim_release("RE_old", "B", 30)
    finally:
        await store.close()


async def test_version_1_gains_the_rollout_tables(db_url: str) -> None:
    store = await SQLStore.connect(db_url)
    await store.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
    await store.close()
    await execute(
        db_url,
        *(f"DROP TABLE {t}" for t in ("rc_barriers", "rc_child_releases", "rc_children")),
        "DROP TABLE rc_rollouts",
        "DROP TABLE rc_counters",
        "UPDATE rc_schema_version SET version = 1",
    )
    with pytest.raises(SchemaError, match="schema version 1"):
        await SQLRolloutStore.connect(db_url)
    assert await upgrade(db_url) == (1, SCHEMA_VERSION)
    rollouts = await SQLRolloutStore.connect(db_url, create=False)
    try:
        await rollouts.save_child(Child("c1", Area.from_geojson(SQUARE)))
        assert [c.id for c in await rollouts.list_children()] == ["c1"]
    finally:
        await rollouts.close()
    store = await SQLStore.connect(db_url, create=False)
    try:
        assert [s.id for s in await store.list_services()] == ["TS_1"]
    finally:
        await store.close()


async def test_version_2_gains_the_child_tokens_table(db_url: str) -> None:
    rollouts = await SQLRolloutStore.connect(db_url)
    await rollouts.save_child(Child("c1", Area.from_geojson(SQUARE)))
    await rollouts.close()
    await execute(db_url, "DROP TABLE rc_child_tokens", "UPDATE rc_schema_version SET version = 2")
    with pytest.raises(SchemaError, match="schema version 2"):
        await SQLRolloutStore.connect(db_url)
    assert await upgrade(db_url) == (2, SCHEMA_VERSION)
    rollouts = await SQLRolloutStore.connect(db_url, create=False)
    try:
        assert [c.id for c in await rollouts.list_children()] == ["c1"]  # kept
        assert await rollouts.add_child_token("c1", "d" * 64)
        assert await rollouts.child_token("c1") == "d" * 64
    finally:
        await rollouts.close()


async def test_a_newer_schema_is_refused(db_url: str) -> None:
    await (await SQLStore.connect(db_url)).close()
    await execute(db_url, f"UPDATE rc_schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer"):
        await SQLStore.connect(db_url)
    with pytest.raises(SchemaError, match="newer"):
        await upgrade(db_url)


async def test_tables_without_a_schema_version_are_refused(db_url: str) -> None:
    await (await SQLStore.connect(db_url)).close()
    await execute(db_url, "DROP TABLE rc_schema_version")
    with pytest.raises(SchemaError, match="no schema version"):
        await SQLStore.connect(db_url)


def test_the_db_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["db", "check", "--db", url]) == 1
    assert "no database file" in capsys.readouterr().err
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"created schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "check", "--db", url]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    asyncio.run(make_version_0(url))
    assert main(["db", "check", "--db", url]) == 1
    assert "release-coordinator db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"from schema version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "check", "--db", "mysql://nowhere/x"]) == 1
    assert "unsupported database URL" in capsys.readouterr().err


# -- driver errors -----------------------------------------------------------------------------


async def test_a_corrupt_sqlite_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database " * 400)
    with pytest.raises(StorageError, match="not a database"):
        await SQLStore.connect(f"sqlite:///{path}")


async def test_an_unopenable_sqlite_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unable to open"):
        await SQLStore.connect(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")


async def test_a_read_only_sqlite_file_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    writable = await SQLStore.connect(f"sqlite:///{path}")
    await writable.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
    await writable.close()
    store = await SQLStore.connect(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        assert [s.id for s in await store.list_services()] == ["TS_1"]
        with pytest.raises(StorageError, match="readonly"):
            await store.add_service(TaskService("TS_2", "b", "memory://b"), ev("add"))
    finally:
        await store.close()


async def test_postgresql_on_a_closed_port_is_a_storage_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StorageError) as info:
        await SQLStore.connect(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert not isinstance(info.value, SchemaError)
    assert "refused" in info.value.message.lower() or "connect" in info.value.message.lower()


async def test_a_schema_dropped_under_a_live_store_is_a_schema_error(db_url: str) -> None:
    store = await SQLStore.connect(db_url)
    try:
        await execute(db_url, "DROP TABLE rc_events")
        with pytest.raises(SchemaError):
            await store.last_event_id()
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_state_change_and_its_events_commit_together(pg_url: str) -> None:
    store = await SQLStore.connect(pg_url)
    try:
        await store.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
        _, (task,) = await store.create_release(Release("RE_1", "r", "0.0.0"), ["TS_1"], ev("n"))
        before = await store.last_event_id()
        too_long = Event(EventType.INFO, EventKind.TRANSITION, "x", state="s" * 100)
        change = TaskChange(
            task.id, frozenset({TaskState.WAITING}), TaskState.INITIALIZED, events=(too_long,)
        )
        with pytest.raises(StorageError):  # the event cannot be stored...
            await store.change_task(change)
        assert (await store.get_task(task.id)).state is TaskState.WAITING  # ...nor the change
        assert await store.last_event_id() == before
    finally:
        await store.close()


# -- timestamps --------------------------------------------------------------------------------


async def test_timestamps_come_back_aware_utc_and_equal(store: SQLStore) -> None:
    memory = MemoryStore()
    away = timezone(timedelta(hours=-5))
    at = datetime(2026, 3, 1, 7, 30, 15, 123456, tzinfo=away)
    service = TaskService("TS_1", "svc", "memory://svc", created_at=at, updated_at=at)
    draft = Release("RE_1", "r", "0.0.0", created_at=at, updated_at=at, state_changed_at=at)
    event = Event(EventType.INFO, EventKind.USER_ACTION, "hello", at=at)
    for adapter in (memory, store):
        await adapter.add_service(service, ev("add"))
        await adapter.create_release(draft, ["TS_1"], ev("new"))
        await adapter.append_events([event])
    sql_release, mem_release = await store.get_release("RE_1"), await memory.get_release("RE_1")
    (sql_task,) = await store.list_tasks("RE_1")
    stamps = [
        (await store.get_service("TS_1")).created_at,
        sql_release.created_at,
        sql_release.updated_at,
        sql_release.state_changed_at,
        sql_task.created_at,
        sql_task.progress_at,
        (await store.list_events())[-1].at,
    ]
    for stamp in stamps:
        assert stamp.tzinfo is UTC
    assert sql_release == mem_release  # equal instants, in kind what the memory store returns
    assert (await store.get_service("TS_1")) == (await memory.get_service("TS_1"))
    assert (await store.list_events())[-1].at == at
    since = await store.list_events(EventFilter(since=at))
    assert [e.message for e in since][-1] == "hello"


# -- several stores over one database ----------------------------------------------------------


async def stores(url: str, n: int) -> list[SQLStore]:
    return [await SQLStore.connect(url) for _ in range(n)]


async def close_all(opened: list[SQLStore]) -> None:
    for store in opened:
        await store.close()


@pytest.mark.postgres
async def test_twenty_concurrent_creations_over_four_stores_get_unique_versions(
    pg_url: str,
) -> None:
    opened = await stores(pg_url, 4)
    try:
        await opened[0].add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
        created = await asyncio.gather(
            *(
                opened[i % 4].create_release(
                    Release(f"RE_{i}", f"r{i}", "0.0.0"), ["TS_1"], ev("n")
                )
                for i in range(20)
            )
        )
        versions = sorted((r.version for r, _ in created), key=Version.parse)
        assert versions == [f"0.0.{i}" for i in range(1, 21)]
        # publications racing with creations stay unique too
        for release, _ in created[:5]:
            await opened[0].transition_release(
                release.id, {ReleaseState.WAITING}, ReleaseState.PUBLISHING, ev("p")
            )
        mixed = await asyncio.gather(
            *(
                opened[i % 4].transition_release(
                    created[i][0].id, {ReleaseState.PUBLISHING}, ReleaseState.PUBLISHED, ev("done")
                )
                for i in range(5)
            ),
            *(
                opened[i % 4].create_release(Release(f"RE_x{i}", "x", "0.0.0"), [], ev("n"))
                for i in range(10)
            ),
        )
        all_versions = [r.version for r in await opened[1].list_releases()]
        assert len(all_versions) == 30
        assert len(set(all_versions)) == 30
        assert len(mixed) == 15
    finally:
        await close_all(opened)


@pytest.mark.postgres
async def test_racing_writers_in_two_stores_never_both_win(pg_url: str) -> None:
    a, b = await stores(pg_url, 2)
    try:
        await a.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
        for round_ in range(10):
            _, (task,) = await a.create_release(
                Release(f"RE_{round_}", "r", "0.0.0"), ["TS_1"], ev("n")
            )
            results = await asyncio.gather(
                *(
                    s.change_task(
                        TaskChange(task.id, frozenset({TaskState.WAITING}), to, events=(ev(to),))
                    )
                    for s, to in ((a, TaskState.INITIALIZED), (b, TaskState.REJECTED))
                ),
                return_exceptions=True,
            )
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, ConcurrentUpdateError)]
            assert len(winners) == len(losers) == 1
            assert losers[0].actual == winners[0].state  # type: ignore[union-attr]
            assert (await b.get_task(task.id)).state is winners[0].state  # type: ignore[union-attr]
            logged = await a.list_events(EventFilter(task_id=None, release_id=None))
            assert [e.message for e in logged].count(str(winners[0].state)) >= 1  # type: ignore[union-attr]
    finally:
        await close_all([a, b])


@pytest.mark.postgres
async def test_two_stores_claim_disjoint_releases(pg_url: str) -> None:
    a, b = await stores(pg_url, 2)
    try:
        for i in range(30):
            await a.create_release(Release(f"RE_{i:02d}", "r", "0.0.0"), [], ev("n"))
        mine, theirs = await asyncio.gather(
            a.claim_releases("A", 30, limit=20), b.claim_releases("B", 30, limit=20)
        )
        ids_a, ids_b = {r.id for r in mine}, {r.id for r in theirs}
        assert not ids_a & ids_b
        assert len(ids_a | ids_b) == 30
        assert [r.id for r in mine] == sorted(ids_a)  # oldest first
    finally:
        await close_all([a, b])


async def test_a_lease_expires_by_the_database_clock(db_url: str) -> None:
    a, b = await stores(db_url, 2)
    try:
        await a.create_release(Release("RE_1", "r", "0.0.0"), [], ev("n"))
        assert await a.claim_release("RE_1", "A", 0.3)
        assert not await b.claim_release("RE_1", "B", 30)
        assert await b.claim_releases("B", 30) == []
        await asyncio.sleep(0.45)
        assert [r.id for r in await b.claim_releases("B", 30)] == ["RE_1"]
        assert not await a.renew_lease("RE_1", "A", 30)
        with pytest.raises(NotFoundError):
            await b.claim_release("RE_missing", "B", 30)
    finally:
        await close_all([a, b])


@pytest.mark.postgres
async def test_a_follower_of_the_log_never_skips_a_late_commit(pg_url: str) -> None:
    writers = await stores(pg_url, 3)
    follower = await SQLStore.connect(pg_url)
    seen: list[int] = []
    done = asyncio.Event()

    async def write(store: SQLStore, n: int) -> None:
        for i in range(n):
            await store.append_events([ev(f"e{i}"), ev(f"f{i}")])

    async def follow() -> None:
        after = 0
        while True:
            finished = done.is_set()
            batch = await follower.list_events(EventFilter(after_id=after))
            seen.extend(e.id for e in batch)
            if batch:
                after = batch[-1].id
            elif finished:
                return
            await asyncio.sleep(0)

    try:
        reader = asyncio.create_task(follow())
        await asyncio.gather(*(write(s, 40) for s in writers))
        done.set()
        await reader
        everything = [e.id for e in await follower.list_events()]
        assert len(everything) == 240
        assert seen == everything  # every id, once, in order
    finally:
        await close_all([*writers, follower])


async def test_an_in_memory_sqlite_database_serves_concurrent_callers() -> None:
    store = await SQLStore.connect("sqlite://")
    try:
        await store.add_service(TaskService("TS_1", "svc", "memory://svc"), ev("add"))
        created = await asyncio.gather(
            *(
                store.create_release(Release(f"RE_{i}", "r", "0.0.0"), ["TS_1"], ev("n"))
                for i in range(10)
            ),
            *(store.list_releases() for _ in range(5)),
        )
        assert len({r.version for r, _ in created[:10]}) == 10  # type: ignore[misc]
    finally:
        await store.close()


# -- the Coordinator on the SQL store ----------------------------------------------------------


class GatedKit(TaskServiceKit):
    """A task service whose staging waits for a gate."""

    def __init__(self, name: str, *, gated: bool = False) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def stage(self, task: KitTask) -> None:
        await self.gate.wait()
        await task.report_progress(50)


class Setup:
    def __init__(self, store: CoordinatorStore, n: int = 3, *, gated: bool = False) -> None:
        self.store = store
        self.transport = MemoryTransport(timeout=0.5)
        self.kits = [GatedKit(f"svc{i}", gated=gated) for i in range(n)]
        for kit in self.kits:
            self.transport.add(f"memory://{kit.name}", kit)

    def coordinator(self, store: CoordinatorStore | None = None) -> Coordinator:
        return Coordinator(store or self.store, self.transport, config=FAST)

    async def register(self, coordinator: Coordinator) -> None:
        for kit in self.kits:
            await coordinator.register_service(kit.name, f"memory://{kit.name}")

    async def aclose(self) -> None:
        for kit in self.kits:
            await kit.aclose()


async def test_the_coordinator_publishes_a_release_over_sql(store: SQLStore) -> None:
    setup = Setup(store)
    try:
        async with setup.coordinator() as coordinator:
            await setup.register(coordinator)
            release = await coordinator.create_release("r1", studies=["SD_1"], author="ann")
            assert release.version == "0.0.1"
            staged = await coordinator.wait(release.id, [ReleaseState.STAGED], timeout=10)
            await coordinator.publish(staged.id)
            done = await coordinator.wait(release.id, timeout=10)
            assert done.state is ReleaseState.PUBLISHED
            assert done.version == "0.1.0"
            tasks = await coordinator.list_tasks(release.id)
            assert {t.state for t in tasks} == {TaskState.PUBLISHED}
            states = [
                e.state
                for e in await coordinator.events(
                    release_id=release.id, kinds=[EventKind.TRANSITION]
                )
                if e.task_id is None
            ]
            assert states == ["initializing", "running", "staged", "publishing", "published"]
    finally:
        await setup.aclose()


async def test_a_restarted_coordinator_finishes_the_release(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    first = await SQLStore.connect(url)
    setup = Setup(first, gated=True)
    try:
        async with setup.coordinator() as coordinator:
            await setup.register(coordinator)
            release = await coordinator.create_release("r", auto_publish=True)
            await coordinator.wait(release.id, [ReleaseState.RUNNING], timeout=10)
            for _ in range(1000):  # every task started (staging waits at the gate)
                tasks = await coordinator.list_tasks(release.id)
                if {t.state for t in tasks} == {TaskState.RUNNING}:
                    break
                await asyncio.sleep(0.01)
        await first.close()  # the process goes away; the file stays

        second = await SQLStore.connect(url)
        try:
            for kit in setup.kits:
                kit.gate.set()
            async with setup.coordinator(second) as coordinator:
                done = await coordinator.wait(release.id, timeout=10)
                assert done.state is ReleaseState.PUBLISHED, done.failure
                assert {t.state for t in await coordinator.list_tasks(release.id)} == {
                    TaskState.PUBLISHED
                }
                # start went out once per task: the restarted coordinator polled instead
                assert sum(1 for s in setup.transport.sent if s.action == "start") == 3
        finally:
            await second.close()
    finally:
        await setup.aclose()


# -- the demo on SQLite --------------------------------------------------------------------------


def test_the_demo_keeps_its_state_in_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--studies", "1", "--records", "5", "--workdir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"Store: SQLite, {tmp_path / 'release-coordinator.db'}" in out
    assert "is published, version 0.1.0" in out
    assert main(args) == 0  # again over the same file: the services are known already
    assert "is published, version 0.2.0" in capsys.readouterr().out
    assert main([*args, "--db", "memory"]) == 0
    out = capsys.readouterr().out
    assert "Store: in memory (--db memory)" in out
    assert "version 0.1.0" in out


def test_the_demo_runs_in_memory_without_the_sql_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None; "
        "from release_coordinator.cli import main; "
        "sys.exit(main(['demo', '--studies', '1', '--records', '5']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Store: in memory: the sql extra is not installed" in run.stdout
    assert "is published" in run.stdout


async def test_version_5_gains_the_rollouts_data_release(db_url: str) -> None:
    from release_coordinator.rollout.models import Rollout

    from .test_rollout_manager import bundle

    area = Area.from_geojson(SQUARE)
    rollouts = await SQLRolloutStore.connect(db_url)
    await rollouts.add_rollout(Rollout("old", "old", area), bundle("old"))
    await rollouts.close()
    await execute(
        db_url,
        "ALTER TABLE rc_rollouts DROP COLUMN after_release",
        "UPDATE rc_schema_version SET version = 5",
    )
    with pytest.raises(SchemaError, match="schema version 5"):
        await SQLRolloutStore.connect(db_url)
    assert await upgrade(db_url) == (5, SCHEMA_VERSION)
    rollouts = await SQLRolloutStore.connect(db_url, create=False)
    try:
        assert (await rollouts.get_rollout("old")).after_release == ""  # waits for nothing
        gated = Rollout("new", "new", area, after_release="RE_1")
        await rollouts.add_rollout(gated, bundle("new"))
        assert (await rollouts.get_rollout("new")).after_release == "RE_1"
    finally:
        await rollouts.close()


async def test_version_8_gains_the_gates_before_publish(db_url: str) -> None:
    """A release of a version-8 database upgrades to one without gates (NULL: it waits for
    its tasks only), and a new one keeps its gates, times with their zone."""
    from datetime import UTC, datetime

    from release_coordinator import Approval, PublishGates, Release

    store = await SQLStore.connect(db_url)
    await store.create_release(Release("RE_old", "old", "0.0.0"), [], ev("created"))
    await store.close()
    await execute(
        db_url,
        "ALTER TABLE rc_releases DROP COLUMN gates",
        "UPDATE rc_schema_version SET version = 8",
    )
    with pytest.raises(SchemaError, match="schema version 8"):
        await SQLStore.connect(db_url)
    assert await upgrade(db_url) == (8, SCHEMA_VERSION)
    store = await SQLStore.connect(db_url, create=False)
    try:
        assert (await store.get_release("RE_old")).gates == PublishGates()
        at = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
        gates = PublishGates(2, ("WH_1",), at, (Approval("alice", at),))
        new, _ = await store.create_release(
            Release("RE_new", "new", "0.0.0", gates=gates), [], ev("created")
        )
        assert (await store.get_release("RE_new")).gates == gates
        assert new.gates == gates
    finally:
        await store.close()
