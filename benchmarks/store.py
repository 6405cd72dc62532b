"""Store benchmark: the memory, SQLite and PostgreSQL stores side by side.

- task transitions per second through ``change_tasks``: in batches (one call moves every task
  of a release, as the coordinator's fan-out does) and one by one (``change_task``); every
  transition is a compare-and-set with one event, as the coordinator writes them;
- releases completed per second: a Coordinator drives releases to ``published`` across
  ``--services`` in-memory task services (TaskServiceKit over MemoryTransport, latency 0,
  ``auto_publish``, ``poll_interval`` 0), one release after another;
- RolloutManager polls per second: ``--children`` children (10,000) registered, with 10
  active rollouts over parts of the map, then every child polls with its unchanged area, in
  random order: one poll at a time (a client that waits for each answer), and ``--in-flight``
  (64) polls at once (what a server sees; the SQL store shares one query among the polls
  waiting at the same moment). Target (issue 4): PostgreSQL at least a quarter of memory.

    python benchmarks/store.py [--services 50] [--transitions 5000] [--releases 10]
                               [--children 10000] [--in-flight 64]

SQLite is a file in a temporary folder; PostgreSQL is ``RC_POSTGRES_URL`` (default: the local
server), in a schema of its own that is dropped afterwards, and is left out when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench_bundle import STRATEGY, archive, square

from release_coordinator import (
    Coordinator,
    CoordinatorConfig,
    CoordinatorStore,
    Event,
    EventKind,
    EventType,
    MemoryRolloutStore,
    MemoryStore,
    MemoryTransport,
    Release,
    ReleaseBundle,
    ReleaseState,
    RolloutManager,
    RolloutStore,
    TaskChange,
    TaskService,
    TaskServiceKit,
    TaskState,
)

POSTGRES_URL = os.environ.get("RC_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

StoreFactory = Callable[[], contextlib.AbstractAsyncContextManager[CoordinatorStore]]
RolloutFactory = Callable[[], contextlib.AbstractAsyncContextManager[RolloutStore]]


@contextlib.asynccontextmanager
async def memory_store() -> AsyncIterator[CoordinatorStore]:
    yield MemoryStore()


@contextlib.asynccontextmanager
async def sqlite_store() -> AsyncIterator[CoordinatorStore]:
    from release_coordinator.storage.sql import SQLStore

    with tempfile.TemporaryDirectory(prefix="rc-bench-") as folder:
        store = await SQLStore.connect(f"sqlite:///{Path(folder) / 'bench.db'}")
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def postgres_store() -> AsyncIterator[CoordinatorStore]:
    import psycopg
    from sqlalchemy.engine import make_url

    from release_coordinator.storage.sql import SQLStore

    schema = f"rc_bench_{secrets.token_hex(4)}"
    libpq = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(libpq, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        store = await SQLStore.connect(url)
        try:
            yield store
        finally:
            await store.close()
    finally:
        async with await psycopg.AsyncConnection.connect(libpq, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def memory_rollouts() -> AsyncIterator[RolloutStore]:
    yield MemoryRolloutStore()


@contextlib.asynccontextmanager
async def sqlite_rollouts() -> AsyncIterator[RolloutStore]:
    from release_coordinator.storage.sql import SQLRolloutStore

    with tempfile.TemporaryDirectory(prefix="rc-bench-") as folder:
        store = await SQLRolloutStore.connect(f"sqlite:///{Path(folder) / 'bench.db'}")
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def postgres_rollouts() -> AsyncIterator[RolloutStore]:
    from release_coordinator.storage.sql import SQLRolloutStore, SQLStore

    async with postgres_store() as coordinator_store:  # a schema of its own, dropped after
        assert isinstance(coordinator_store, SQLStore)
        store = SQLRolloutStore.over(coordinator_store)
        try:
            yield store
        finally:
            await store.close()


def ev(message: str, **kw: str) -> Event:
    return Event(EventType.INFO, EventKind.TRANSITION, message, **kw)  # type: ignore[arg-type]


async def transitions_per_second(
    factory: StoreFactory, services: int, total: int
) -> tuple[float, float]:
    """(batched, one by one) task transitions per second."""
    async with factory() as store:
        ids = []
        for i in range(services):
            service = TaskService(f"TS_{i}", f"svc{i}", f"memory://svc{i}")
            ids.append((await store.add_service(service, ev("add"))).id)
        _, tasks = await store.create_release(Release("RE_1", "bench", "0.0.0"), ids, ev("new"))
        states = {t.id: TaskState.RUNNING for t in tasks}
        await store.change_tasks(
            [TaskChange(t.id, frozenset({TaskState.WAITING}), TaskState.RUNNING) for t in tasks]
        )

        def change(task_id: str) -> TaskChange:
            here = states[task_id]
            there = TaskState.STAGED if here is TaskState.RUNNING else TaskState.RUNNING
            states[task_id] = there
            return TaskChange(task_id, frozenset({here}), there, events=(ev(there),))

        rounds = max(1, total // len(tasks))
        started = time.perf_counter()
        for _ in range(rounds):
            results = await store.change_tasks([change(t.id) for t in tasks])
            assert all(not isinstance(r, Exception) for r in results)
        batched = rounds * len(tasks) / (time.perf_counter() - started)

        singles = max(1, total // 5)
        started = time.perf_counter()
        for i in range(singles):
            await store.change_task(change(tasks[i % len(tasks)].id))
        single = singles / (time.perf_counter() - started)
    return batched, single


async def releases_per_second(factory: StoreFactory, services: int, releases: int) -> float:
    async with factory() as store:
        transport = MemoryTransport(record=False)
        config = CoordinatorConfig(poll_interval=0, health_interval=0)
        kits = [TaskServiceKit(f"svc-{i}") for i in range(services)]
        async with Coordinator(store, transport, config=config) as coordinator:
            for i, kit in enumerate(kits):
                url = transport.add(f"memory://svc-{i}", kit, latency=0)
                await coordinator.register_service(f"svc-{i}", url, check=False)
            started = time.perf_counter()
            for i in range(releases):
                release = await coordinator.create_release(f"bench {i}", auto_publish=True)
                done = await coordinator.wait(release.id, timeout=300)
                assert done.state is ReleaseState.PUBLISHED, done.failure
            elapsed = time.perf_counter() - started
        for kit in kits:
            await kit.aclose()
    return releases / elapsed




async def polls_per_second(
    factory: RolloutFactory, children: int, in_flight: int
) -> tuple[float, float, float]:
    """(one at a time, ``in_flight`` at once) polls per second, and the share offered."""
    rng = random.Random(7)
    async with factory() as store:
        manager = RolloutManager(store, lost_after=3600)
        functions = archive()
        for i in range(10):  # ten rollouts, each over a tenth of the map's width
            bundle = ReleaseBundle.from_parts(STRATEGY.format(id=f"r{i}"), functions)
            await manager.create_rollout(bundle, square(i * 10.0, 0.0, 6.0), priority=i % 3)
        fleet = [
            (f"c{i}", square(rng.uniform(0, 99), rng.uniform(0, 5), 0.1)) for i in range(children)
        ]
        for child_id, area in fleet:  # registration (not measured)
            await manager.poll(child_id, area)
        await store.flush()
        offered = 0
        order = fleet[:]
        rng.shuffle(order)
        started = time.perf_counter()
        for child_id, area in order:
            offered += bool((await manager.poll(child_id, area)).new_release)
        one = len(order) / (time.perf_counter() - started)

        rng.shuffle(order)
        chunks = [order[k::in_flight] for k in range(in_flight)]

        async def poller(mine: list[tuple[str, dict[str, Any]]]) -> None:
            for child_id, area in mine:
                await manager.poll(child_id, area)

        started = time.perf_counter()
        await asyncio.gather(*(poller(chunk) for chunk in chunks))
        many = len(order) / (time.perf_counter() - started)
        await store.flush()
    return one, many, offered / len(order)


async def postgres_reachable() -> bool:
    try:
        async with postgres_store():
            return True
    except Exception as error:  # report and go on without it
        print(f"(PostgreSQL left out: {type(error).__name__}: {error})")
        return False


async def main_async(args: argparse.Namespace) -> None:
    stores: dict[str, StoreFactory] = {"memory": memory_store, "sqlite": sqlite_store}
    if await postgres_reachable():
        stores["postgresql"] = postgres_store
    print(
        f"{args.services} task services; {args.transitions} batched transitions, "
        f"{args.transitions // 5} single ones; {args.releases} releases one after another"
    )
    header = f"{'store':<11} {'batched tx/s':>13} {'single tx/s':>12} {'releases/s':>11}"
    print(header)
    print("-" * len(header))
    base: tuple[float, float, float] | None = None
    for name, factory in stores.items():
        batched, single = await transitions_per_second(factory, args.services, args.transitions)
        rate = await releases_per_second(factory, args.services, args.releases)
        figures = (batched, single, rate)
        base = base or figures
        ratios = " ".join(f"{b / f:5.1f}x" for f, b in zip(figures, base, strict=True))
        print(
            f"{name:<11} {batched:>13,.0f} {single:>12,.0f} {rate:>11.2f}"
            + ("" if name == "memory" else f"   (memory is {ratios} faster)")
        )

    rollout_stores: dict[str, RolloutFactory] = {
        "memory": memory_rollouts,
        "sqlite": sqlite_rollouts,
    }
    if "postgresql" in stores:
        rollout_stores["postgresql"] = postgres_rollouts
    print()
    print(
        f"RolloutManager.poll, {args.children:,} children with unchanged areas, 10 active rollouts"
    )
    in_flight = f"polls/s, {args.in_flight} at once"
    header = f"{'store':<11} {'polls/s, 1 at a time':>21} {in_flight:>22} {'vs memory':>10}"
    print(header)
    print("-" * len(header))
    memory_many = 0.0
    for name, rollout_factory in rollout_stores.items():
        one, many, share = await polls_per_second(rollout_factory, args.children, args.in_flight)
        memory_many = memory_many or many
        print(f"{name:<11} {one:>21,.0f} {many:>22,.0f} {many / memory_many:>10.2f}")
    print(
        f"({share:.0%} of the polls were offered a release; target: PostgreSQL >= 0.25 of memory)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=50, help="task services (50)")
    parser.add_argument("--transitions", type=int, default=5000, help="batched moves (5000)")
    parser.add_argument("--releases", type=int, default=10, help="releases per store (10)")
    parser.add_argument("--children", type=int, default=10_000, help="polling children (10000)")
    parser.add_argument("--in-flight", type=int, default=64, help="polls at once (64)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
