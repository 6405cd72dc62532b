"""The Coordinator under random sequences of answers, faults, callbacks, user actions and
restarts (a hypothesis state machine), with its invariants checked after every step.

The machine owns one asyncio event loop. Every rule runs its coroutine on it and then lets the
system *settle*: it runs the loop until every release is final or waits for something only the
machine can do (a task service's staging/publishing work waiting on the machine's gate, a
staged release waiting for ``publish``), with no request in flight and no new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from release_coordinator import (
    RELEASE_MACHINE,
    TASK_MACHINE,
    ConflictError,
    Coordinator,
    CoordinatorConfig,
    EventKind,
    Fault,
    InvalidTransitionError,
    KitTask,
    MemoryStore,
    MemoryTransport,
    NotFoundError,
    Release,
    ReleaseState,
    RetryPolicy,
    SentRequest,
    Task,
    TaskAction,
    TaskAnswer,
    TaskRequest,
    TaskService,
    TaskServiceKit,
    TaskState,
    TransportError,
)

T = TypeVar("T")
RS = ReleaseState
TS = TaskState

CONFIG = CoordinatorConfig(
    poll_interval=0.01,
    retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
    health_interval=0,
    phase_timeout=30,
    release_timeout=60,
)
TRANSPORT_TIMEOUT = 0.05

FINAL_RELEASE = frozenset({RS.PUBLISHED, RS.CANCELED, RS.FAILED})
FINISHED_TASK = frozenset({TS.CANCELED, TS.FAILED, TS.REJECTED})
LIVE_TASK = frozenset(
    {TS.WAITING, TS.INITIALIZED, TS.RUNNING, TS.STAGED, TS.PUBLISHING, TS.PUBLISHED}
)
NOT_YET_STAGED = frozenset({TS.WAITING, TS.INITIALIZED, TS.RUNNING})

#: The normal path of a task, and what a task service reports for each step of it.
PATH = (TS.WAITING, TS.INITIALIZED, TS.RUNNING, TS.STAGED, TS.PUBLISHING, TS.PUBLISHED)
REPORTED = {
    "pending": TS.INITIALIZED,
    "running": TS.RUNNING,
    "staged": TS.STAGED,
    "publishing": TS.PUBLISHING,
    "published": TS.PUBLISHED,
}
BAD_REPORTS = ("failed", "canceled", "rejected")
#: Per the contract: the furthest task state the actions sent so far let a service reach.
REACH = {RS.INITIALIZING: TS.INITIALIZED, RS.RUNNING: TS.STAGED, RS.STAGED: TS.STAGED}
REACH[RS.PUBLISHING] = TS.PUBLISHED

#: The release state in which the coordinator sends each action.
SENT_IN = {
    "initialize": RS.INITIALIZING,
    "start": RS.RUNNING,
    "publish": RS.PUBLISHING,
    "cancel": RS.CANCELING,
}

FAULTS = st.one_of(
    st.sampled_from([500, 400, 404, 503]).map(Fault.status),
    st.sampled_from(["timeout", "refuse", "drop", "malformed"]).map(
        lambda kind: getattr(Fault, kind)()
    ),
)
ACTIONS = st.sampled_from(["initialize", "start", "get_status", "publish", "cancel", None])


class ControlledKit(TaskServiceKit):
    """A task service whose staging and publishing wait, per task, for the machine's gate;
    the machine also says whether the work then fails."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gates: dict[tuple[str, str], asyncio.Event] = {}
        self.failing: set[tuple[str, str]] = set()
        self.open = False  # at teardown: work no longer waits

    def gate(self, task_id: str, phase: str) -> asyncio.Event:
        return self.gates.setdefault((task_id, phase), asyncio.Event())

    async def _work(self, task: KitTask, phase: str) -> None:
        await task.report_progress(10)
        if not self.open:
            await self.gate(task.task_id, phase).wait()
        if (task.task_id, phase) in self.failing:
            raise RuntimeError(f"{phase} broke")

    async def stage(self, task: KitTask) -> None:
        await self._work(task, "stage")

    async def publish(self, task: KitTask) -> None:
        await self._work(task, "publish")

    def blocked(self, task_id: str, phase: str) -> bool:
        """True while ``phase`` work of the task waits for the machine."""
        task = self.tasks.get(task_id)
        busy = "running" if phase == "stage" else "publishing"
        if task is None or task.state != busy or self.open:
            return False
        gate = self.gates.get((task_id, phase))
        return gate is None or not gate.is_set()


class TrackingTransport(MemoryTransport):
    """A MemoryTransport that counts the requests in flight that move things on (polls,
    which go on all the time while work waits, do not count), to know when all is quiet."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inflight = 0

    async def send(self, service: TaskService, request: TaskRequest) -> TaskAnswer:
        counted = request.action is not TaskAction.GET_STATUS
        self.inflight += counted
        try:
            return await super().send(service, request)
        finally:
            self.inflight -= counted

    async def send_many(
        self, calls: Sequence[tuple[TaskService, TaskRequest]]
    ) -> list[TaskAnswer | TransportError]:
        counted = any(r.action is not TaskAction.GET_STATUS for _, r in calls)
        self.inflight += counted
        try:
            return await super().send_many(calls)
        finally:
            self.inflight -= counted


class _ErrorLog(logging.Handler):
    """Collects what the library logs at ERROR (a driver or claim loop that crashed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def event(what: str) -> None:
    """A hypothesis statistics event (``--hypothesis-show-statistics``), if under hypothesis."""
    with contextlib.suppress(InvalidArgument):  # run by hand, outside a hypothesis test
        _event(what)


def _chain_ok(machine: Any, start: str, states: Sequence[str]) -> str | None:
    """None when ``states`` is a walk of ``machine`` from ``start``; else the bad step."""
    here = start
    for state in states:
        if state not in machine.triggers_from(here).values():
            return f"{here} -> {state}"
        here = state
    return None


class CoordinatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.errors = _ErrorLog()
        logging.getLogger("release_coordinator").addHandler(self.errors)
        self.store = MemoryStore()
        self.transport = TrackingTransport(timeout=TRANSPORT_TIMEOUT)
        self.transport.on_send(self._on_send)
        self.violations: list[str] = []
        self.cancels_sent: set[str] = set()
        #: (task, action) -> the coordinator generation (restarts) that last sent it.
        self.last_sent: dict[tuple[str, str], int] = {}
        self.generation = 0
        self.kits: list[ControlledKit] = []
        self.coordinator: Coordinator | None = None
        self.release_ids: list[str] = []
        self.finals: dict[str, RS] = {}
        self.unsettled: list[str] = []

    # -- plumbing ----------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def c(self) -> Coordinator:
        assert self.coordinator is not None
        return self.coordinator

    def _on_send(self, sent: SentRequest) -> None:
        """Invariant 1 (and friends), checked as each request goes out."""
        if sent.action == "cancel":
            self.cancels_sent.add(sent.task_id)
        wanted = SENT_IN.get(sent.action)
        if wanted is None:
            return
        with self.store._lock:
            release = self.store._releases.get(sent.release_id)
            tasks = [self.store._tasks[t] for t in self.store._tasks_by_release[sent.release_id]]
        assert release is not None
        states = {t.id: str(t.state) for t in tasks}
        if sent.action == "publish" and any(t.state in NOT_YET_STAGED for t in tasks):
            self.violations.append(
                f"publish of {sent.task_id} sent while release {release.id} has tasks {states}"
            )
        if sent.action == "start" and any(t.state is TS.WAITING for t in tasks):
            self.violations.append(
                f"start of {sent.task_id} sent while release {release.id} has tasks {states}"
            )
        # The coordinator decides from a snapshot, so a first attempt may go out just after a
        # user's cancel (one loop turn later): unavoidable. A *retry* of it, though, is a new
        # decision to send, and must not go out once the release has left the state the action
        # belongs to (a service that never saw the first attempt would act after the cancel).
        key = (sent.task_id, sent.action)
        repeated = self.last_sent.get(key) == self.generation
        self.last_sent[key] = self.generation
        if release.state is not wanted and repeated:
            self.violations.append(
                f"{sent.action} of {sent.task_id} sent again while release {release.id} is "
                f"{release.state} (tasks {states})"
            )

    def _snapshot(self, release_id: str) -> tuple[Release, list[Task], int]:
        with self.store._lock:
            release = self.store._releases[release_id]
            tasks = [self.store._tasks[t] for t in self.store._tasks_by_release[release_id]]
            return release, tasks, len(self.store._events)

    def _quiet(self) -> bool:
        """Every release is final or waits for the machine."""
        with self.store._lock:
            releases = list(self.store._releases.values())
            tasks = {
                r.id: [self.store._tasks[t] for t in self.store._tasks_by_release[r.id]]
                for r in releases
            }
        kit_of = self._kit_by_service()
        for release in releases:
            if release.state in FINAL_RELEASE:
                continue
            if release.state is RS.STAGED and not release.auto_publish:
                continue
            if release.state not in (RS.RUNNING, RS.PUBLISHING):
                return False
            phase, busy, done = (
                ("stage", TS.RUNNING, TS.STAGED)
                if release.state is RS.RUNNING
                else ("publish", TS.PUBLISHING, TS.PUBLISHED)
            )
            blocked = 0
            for task in tasks[release.id]:
                if task.state is done:
                    continue
                kit = kit_of.get(task.service_id)
                if task.state is busy and kit is not None and kit.blocked(task.id, phase):
                    blocked += 1
                    continue
                return False
            if not blocked:
                return False
        return True

    def _kit_by_service(self) -> dict[str, ControlledKit]:
        with self.store._lock:
            services = list(self.store._services.values())
        by_url = {f"memory://{kit.name}": kit for kit in self.kits}
        return {s.id: by_url[s.url] for s in services if s.url in by_url}

    def settle(self, bound: float = 3.0) -> None:
        async def go() -> bool:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + bound
            stable, last = 0, -1
            while loop.time() < deadline:
                await asyncio.sleep(0.004)
                mark = len(self.store._events)
                if self.transport.inflight == 0 and mark == last and self._quiet():
                    stable += 1
                    if stable >= 2:
                        return True
                else:
                    stable = 0
                last = mark
            return False

        if not self.run(go()):
            self.unsettled.append(self._describe())
            event("a step did not settle")

    def _describe(self) -> str:
        lines = []
        kit_of = self._kit_by_service()
        for rid in self.release_ids:
            release, tasks, _ = self._snapshot(rid)
            parts = []
            for t in tasks:
                kit = kit_of.get(t.service_id)
                kt = kit.tasks.get(t.id) if kit else None
                parts.append(f"{t.state}/{kt.state if kt else '-'}")
            lines.append(f"{rid} {release.state} auto={release.auto_publish} tasks={parts}")
        return "; ".join(lines)

    def _restart(self) -> None:
        async def go() -> Coordinator:
            await self.c.close()
            self.generation += 1
            fresh = Coordinator(self.store, self.transport, config=CONFIG)
            await fresh.start()
            return fresh

        self.coordinator = self.run(go())

    def _all_tasks(self) -> list[Task]:
        """Every task, in a deterministic order (release by release, service by service)."""
        return [t for rid in self.release_ids for t in self._snapshot(rid)[1]]

    def _blocked_work(self) -> list[tuple[int, str, str]]:
        """``(kit, task, phase)`` of the work waiting for the machine, in a deterministic order."""
        kits = {kit.name: i for i, kit in enumerate(self.kits)}
        kit_of = self._kit_by_service()
        return [
            (kits[kit.name], task.id, phase)
            for task in self._all_tasks()
            if (kit := kit_of.get(task.service_id)) is not None
            for phase in ("stage", "publish")
            if kit.blocked(task.id, phase) and (task.id, phase) in kit.gates
        ]

    # -- rules -------------------------------------------------------------------------------
    @initialize(n_services=st.integers(2, 4), push=st.booleans(), auto_publish=st.booleans())
    def setup(self, n_services: int, push: bool, auto_publish: bool = False) -> None:
        async def go() -> Coordinator:
            coordinator = Coordinator(self.store, self.transport, config=CONFIG)
            await coordinator.start()
            for i in range(n_services):
                kit = ControlledKit(f"svc{i}")
                if push:  # callbacks go to whichever coordinator is current
                    kit.connect(self._push)
                self.kits.append(kit)
                url = self.transport.add(f"memory://{kit.name}", kit)
                await coordinator.register_service(kit.name, url)
            return coordinator

        self.coordinator = self.run(go())
        self.create_release(auto_publish=auto_publish, restart_after=None)

    def _push(self, task_id: str, release_id: str, state: str, progress: int) -> Awaitable[Task]:
        return self.c.report_task_state(task_id, release_id, state, progress)

    @precondition(lambda self: len(self.release_ids) < 5)
    @rule(
        auto_publish=st.booleans(),
        restart_after=st.none() | st.sampled_from([0.0, 0.005, 0.02, 0.06]),
    )
    def create_release(self, auto_publish: bool, restart_after: float | None) -> None:
        release = self.run(
            self.c.create_release(
                f"r{len(self.release_ids)}", studies=["SD_1"], auto_publish=auto_publish
            )
        )
        assert release.version not in {self._snapshot(r)[0].version for r in self.release_ids}
        self.release_ids.append(release.id)
        if restart_after is not None:
            self.run(asyncio.sleep(restart_after))
            self._restart()
        self.settle()

    @rule(
        service=st.integers(0, 3),
        action=ACTIONS,
        fault=FAULTS,
        times=st.integers(1, 2),
    )
    def inject_fault(self, service: int, action: str | None, fault: Fault, times: int) -> None:
        kit = self.kits[service % len(self.kits)]
        self.transport.inject(f"memory://{kit.name}", fault, action=action, times=times)
        self.settle()

    @rule(service=st.integers(0, 3), latency=st.sampled_from([0.0, 0.002, 0.01, 0.03]))
    def set_latency(self, service: int, latency: float) -> None:
        """Answers from one service take longer (within the transport's time-out): wider
        windows for answers, callbacks, cancels and restarts to race in."""
        kit = self.kits[service % len(self.kits)]
        self.transport.set_latency(f"memory://{kit.name}", latency)
        self.settle()

    # What waits for the machine depends on timing, so these two rules have no precondition on
    # it and pick by index (a draw whose shape never depends on timing keeps hypothesis's
    # generation consistent); with nothing waiting they do nothing.
    @rule(index=st.integers(0, 255), fail=st.booleans())
    def finish_work(self, index: int, fail: bool) -> None:
        """One task service finishes one task's staging or publishing, or fails it."""
        work = self._blocked_work()
        if work:
            i, task_id, phase = work[index % len(work)]
            kit = self.kits[i]
            if fail:
                kit.failing.add((task_id, phase))

            async def go() -> None:
                kit.gate(task_id, phase).set()

            self.run(go())
        self.settle()

    @rule(index=st.integers(0, 255))
    def finish_all_work_of_a_release(self, index: int) -> None:
        """Every task service of one release finishes its current work (and succeeds)."""
        work = self._blocked_work()
        if work:
            release_ids = sorted(
                {self.store._tasks[task_id].release_id for _, task_id, _ in work},
                key=self.release_ids.index,
            )
            release_id = release_ids[index % len(release_ids)]

            async def go() -> None:
                for i, task_id, phase in work:
                    if self.store._tasks[task_id].release_id == release_id:
                        self.kits[i].gate(task_id, phase).set()

            self.run(go())
        self.settle()

    @precondition(lambda self: bool(self.release_ids))
    @rule(
        data=st.data(),
        state=st.sampled_from([*REPORTED, *BAD_REPORTS, "initialized", "bogus"]),
        progress=st.none() | st.integers(0, 100),
        which_release=st.sampled_from(["right", "none", "wrong"]),
    )
    def callback(
        self, data: st.DataObject, state: str, progress: int | None, which_release: str
    ) -> None:
        task = data.draw(st.sampled_from(self._all_tasks()), label="task")
        release_id = {"right": task.release_id, "none": None, "wrong": "RE_WRONG"}[which_release]

        async def go() -> tuple[Any, Any, Any]:
            # Nothing in here yields to the loop (the MemoryStore never waits), so the
            # snapshots around the call see only what the call did.
            before = self._snapshot(task.release_id)
            try:
                result: Any = await self.c.report_task_state(task.id, release_id, state, progress)
            except (InvalidTransitionError, ConflictError, NotFoundError) as error:
                result = error
            return before, result, self._snapshot(task.release_id)

        (release, tasks, events), result, after = self.run(go())
        current = next(t for t in tasks if t.id == task.id)
        refused = isinstance(result, Exception)
        event(f"callback {state}: {type(result).__name__ if refused else 'accepted'}")
        if refused:
            assert after == (release, tasks, events), f"refused {state!r} changed something"
        expected = self._expected_callback(release, current, state, release_id)
        if expected == "refuse":
            assert isinstance(result, ConflictError), (  # InvalidTransitionError is one
                f"{state!r} on {current.state} task of {release.state} release: {result}"
            )
        elif expected == "not found":
            assert isinstance(result, NotFoundError)
        else:
            assert not refused, f"{state!r} on {current.state} task of {release.state}: {result}"
            now = next(t for t in after[1] if t.id == task.id)
            assert result == now
            if expected == "unchanged":
                assert now.state is current.state
                if current.state in FINISHED_TASK:
                    assert after == (release, tasks, events)
            elif expected == "finished":
                assert now.state in FINISHED_TASK
            else:
                assert now.state is TS(expected)
        self.settle()

    @staticmethod
    def _expected_callback(release: Release, task: Task, state: str, release_id: str | None) -> str:
        """What the contract says a callback does: refuse, unchanged, finished or a state."""
        if release_id is not None and release_id != release.id:
            return "not found"
        if release.state in FINAL_RELEASE:
            return "refuse"
        if state in BAD_REPORTS:
            return "unchanged" if task.state in FINISHED_TASK else "finished"
        target = REPORTED.get(state)
        if target is None or task.state in FINISHED_TASK or release.state is RS.CANCELING:
            return "refuse"
        here, there = PATH.index(task.state), PATH.index(target)
        if there == here:
            return "unchanged"
        reach = REACH.get(release.state)
        if there < here or reach is None or there > PATH.index(reach):
            return "refuse"
        return str(target)

    @precondition(lambda self: bool(self.release_ids))
    @rule(
        data=st.data(),
        race=st.none() | st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.01, 0.03])),
    )
    def publish(self, data: st.DataObject, race: tuple[int, float] | None) -> None:
        """A user publishes. With ``race=(service, delay)``, ``publish`` to that service times
        out (its retry follows the transport's time-out) and the user cancels ``delay`` later."""
        release_id = data.draw(st.sampled_from(self.release_ids), label="release")
        if race is not None:
            kit = self.kits[race[0] % len(self.kits)]
            self.transport.inject(f"memory://{kit.name}", Fault.timeout(), action="publish")

        async def go() -> tuple[Any, Any, Any]:
            before = self._snapshot(release_id)
            try:
                result: Any = await self.c.publish(release_id)
            except InvalidTransitionError as error:
                result = error
            return before, result, self._snapshot(release_id)

        before, result, after = self.run(go())
        state = before[0].state
        if isinstance(result, Exception):
            assert state not in (RS.STAGED, RS.PUBLISHING, RS.PUBLISHED), result
            assert after == before, "a refused publish changed something"
        elif state is RS.STAGED:
            assert after[0].state is RS.PUBLISHING
            assert result == after[0]
        else:
            assert state in (RS.PUBLISHING, RS.PUBLISHED)
            assert after == before
        if race is not None:
            self.run(asyncio.sleep(race[1]))
            self._cancel(release_id)
        self.settle()

    @precondition(lambda self: bool(self.release_ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._cancel(data.draw(st.sampled_from(self.release_ids), label="release"))
        self.settle()

    def _cancel(self, release_id: str) -> None:
        async def go() -> tuple[Any, Any, Any]:
            before = self._snapshot(release_id)
            try:
                result: Any = await self.c.cancel(release_id, reason="machine")
            except InvalidTransitionError as error:
                result = error
            return before, result, self._snapshot(release_id)

        before, result, after = self.run(go())
        state = before[0].state
        if isinstance(result, Exception):
            assert state in (RS.PUBLISHED, RS.FAILED), result
            assert after == before, "a refused cancel changed something"
        elif state in (RS.CANCELING, RS.CANCELED):
            assert after == before
        else:
            assert after[0].state is RS.CANCELING

    @rule(wait=st.sampled_from([0.0, 0.005, 0.02]))
    def restart(self, wait: float) -> None:
        self.run(asyncio.sleep(wait))
        self._restart()
        self.settle()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def invariants_hold(self) -> None:
        if self.coordinator is None:
            return
        assert not self.violations, self.violations
        assert not self.loop_errors, self.loop_errors
        assert not self.errors.records, [r.getMessage() for r in self.errors.records]
        # A step that does not settle within seconds: something stalls that should not.
        assert not self.unsettled, self.unsettled

        async def gather() -> dict[str, tuple[Release, list[Task], list[Any]]]:
            seen = {}
            for rid in self.release_ids:
                release = await self.c.get_release(rid)
                tasks = await self.c.list_tasks(rid)
                events = await self.c.events(release_id=rid, kinds=[EventKind.TRANSITION])
                seen[rid] = (release, tasks, events)
            return seen

        seen = self.run(gather())
        versions = [release.version for release, _, _ in seen.values()]
        assert len(set(versions)) == len(versions), f"versions repeat: {versions}"  # 5
        for rid, (release, tasks, events) in seen.items():
            # 3: a final state never changes.
            if rid in self.finals:
                assert release.state is self.finals[rid], (rid, self.finals[rid], release.state)
            elif release.state in FINAL_RELEASE:
                self.finals[rid] = release.state
            # 4: every state change has its event, in order, ending with the current state.
            walk = [e.state for e in events if e.task_id is None]
            assert (walk[-1] if walk else RS.WAITING) == release.state, (rid, walk, release)
            assert _chain_ok(RELEASE_MACHINE, RS.WAITING, walk) is None, (rid, walk)
            for task in tasks:
                walk = [e.state for e in events if e.task_id == task.id]
                assert (walk[-1] if walk else TS.WAITING) == task.state, (task, walk)
                assert _chain_ok(TASK_MACHINE, TS.WAITING, walk) is None, (task, walk)
            # 2: a failed or canceled release told every unfinished task to cancel.
            if release.state in (RS.FAILED, RS.CANCELED):
                live = [t for t in tasks if t.state in LIVE_TASK]
                assert not live, f"{release.state} release {rid} has live tasks {live}"
                for task in tasks:
                    if task.state is TS.CANCELED:
                        assert task.id in self.cancels_sent, f"{task} canceled, never told"
            if release.state is RS.PUBLISHED:
                assert all(t.state is TS.PUBLISHED for t in tasks), tasks

    # -- teardown: liveness ------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.coordinator is not None and not self.loop.is_closed():
                self._finish_everything()
        finally:
            self._cleanup()

    def _finish_everything(self) -> None:
        async def go() -> dict[str, RS]:
            for kit in self.kits:
                kit.open = True
                for gate in kit.gates.values():
                    gate.set()
            self.transport.clear_faults()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5.0
            while True:
                releases = [await self.c.get_release(rid) for rid in self.release_ids]
                if all(r.state in FINAL_RELEASE for r in releases) or loop.time() > deadline:
                    return {r.id: r.state for r in releases}
                for r in releases:
                    if r.state is RS.STAGED:
                        await self.c.publish(r.id)
                await asyncio.sleep(0.01)

        states = self.run(go())
        for state in states.values():
            event(f"release ends {state}")
        stuck = {rid: s for rid, s in states.items() if s not in FINAL_RELEASE}
        assert not stuck, f"releases not final in time: {stuck}; {self._describe()}"
        self.invariants_hold()

    def _cleanup(self) -> None:
        logging.getLogger("release_coordinator").removeHandler(self.errors)
        if self.loop.is_closed():
            return

        async def go() -> None:
            if self.coordinator is not None:
                await self.coordinator.close()
            for kit in self.kits:
                await kit.aclose()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(go())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


# Shrinking replays runs whose timing varies: it takes minutes and may end "flaky". It is off
# by default (a failure prints its whole, unshrunk program); RC_STATEFUL_SHRINK=1 turns it on,
# RC_STATEFUL_EXAMPLES=n runs more examples (a longer hunt).
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("RC_STATEFUL_SHRINK"):
    _PHASES.append(Phase.shrink)
CoordinatorMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("RC_STATEFUL_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoordinatorMachine = CoordinatorMachine.TestCase


def test_machine_settles_its_steps() -> None:
    """The harness itself: a plain run settles every step (else the machine explores little)."""
    machine = CoordinatorMachine()
    try:
        machine.setup(n_services=2, push=False)
        assert machine._blocked_work()
        assert not machine.unsettled, machine.unsettled
    finally:
        machine.teardown()


# -- regressions: what the state machine found -------------------------------------------------


class RecordingKit(TaskServiceKit):
    """A task service that records every action it receives; staging waits for ``gate``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.received: list[str] = []

    async def handle_task(self, body: Any) -> tuple[int, Any]:
        self.received.append(body["action"])
        return await super().handle_task(body)

    async def stage(self, task: KitTask) -> None:
        await self.gate.wait()


async def _two_services(
    config: CoordinatorConfig,
) -> tuple[Coordinator, MemoryTransport, list[RecordingKit]]:
    transport = MemoryTransport(timeout=TRANSPORT_TIMEOUT)
    kits = [RecordingKit(f"svc{i}") for i in range(2)]
    coordinator = Coordinator(MemoryStore(), transport, config=config)
    for kit in kits:
        await coordinator.register_service(kit.name, transport.add(f"memory://{kit.name}", kit))
    return coordinator, transport, kits


@pytest.mark.anyio
async def test_no_publish_retry_after_the_release_was_canceled() -> None:
    """Found by the machine: ``publish`` to one service times out, the user cancels during the
    time-out, and the coordinator still retries ``publish`` to it, with the release canceling."""
    coordinator, transport, kits = await _two_services(CONFIG)
    async with coordinator as c:
        for kit in kits:
            kit.gate.set()
        release = await c.create_release("r")
        await c.wait(release.id, [RS.STAGED], timeout=5)
        transport.inject("memory://svc0", Fault.timeout(), action="publish")
        await c.publish(release.id)
        await asyncio.sleep(TRANSPORT_TIMEOUT / 3)  # the first attempt is out, not answered
        await c.cancel(release.id)
        canceled_at = len(transport.sent)
        done = await c.wait(release.id, timeout=5)
    assert done.state is RS.CANCELED
    late = [s for s in transport.sent[canceled_at:] if s.action == "publish"]
    assert not late, f"publish retried after the cancel: {late}"


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["initialize", "start", "publish"])
async def test_a_service_that_missed_an_action_does_not_get_it_after_a_cancel(
    action: str,
) -> None:
    """The same with backoff: svc0 refuses the first attempt, the user cancels while the retry
    waits, and the retry must not reach svc0 (it would initialize, stage or make the data
    public after the release was canceled). Only ``cancel`` may follow."""
    config = CoordinatorConfig(
        poll_interval=0.01,
        retry=RetryPolicy(attempts=2, base_delay=0.2, max_delay=0.2, jitter=0),
        health_interval=0,
    )
    coordinator, transport, kits = await _two_services(config)
    async with coordinator as c:
        transport.inject("memory://svc0", Fault.refuse(), action=action)
        if action == "publish":
            for kit in kits:
                kit.gate.set()
        release = await c.create_release("r")
        if action == "start":
            await c.wait(release.id, [RS.RUNNING], timeout=5)
        elif action == "publish":
            await c.wait(release.id, [RS.STAGED], timeout=5)
            await c.publish(release.id)
        await asyncio.sleep(0.05)  # svc0's first attempt was refused; its retry waits 0.2 s
        before = list(kits[0].received)
        await c.cancel(release.id)
        done = await c.wait(release.id, timeout=5)
    assert done.state is RS.CANCELED
    after = kits[0].received[len(before) :]
    assert action not in after, f"svc0 got {after} after the cancel"
