"""SyncRolloutManager: the RolloutManager as blocking calls, its loop ticking it in the facade's
thread; and the machinery it shares with SyncCoordinator."""

from __future__ import annotations

import threading
import time

import pytest

from release_coordinator import (
    GlobalIncremental,
    InProcessParent,
    MemoryRolloutStore,
    Relay,
    RolloutManager,
    RolloutState,
    SyncCoordinator,
    SyncRolloutManager,
)
from release_coordinator.errors import InvalidTransitionError, NotFoundError
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus
from release_coordinator.rollout.geo import Area

from .test_rollout_manager import EUROPE, INSIDE, OUTSIDE, archive, bundle, result


def wait_for(check: object, timeout: float = 5.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_child_s_whole_release_through_blocking_calls() -> None:
    with SyncRolloutManager(tick_interval=None) as manager:
        assert not manager.is_running
        registered = manager.poll("", INSIDE)
        rollout = manager.create_rollout(bundle(), EUROPE, name="checkout")
        assert rollout.state is RolloutState.ACTIVE
        assert [r.id for r in manager.list_rollouts(states={RolloutState.ACTIVE})] == ["42"]
        child = registered.id
        assert manager.poll(child, INSIDE).new_release == "42"
        assert manager.poll("", OUTSIDE).new_release == ""
        assert "canary-10" in manager.get_release(child, "42")
        assert manager.get_functions("42", child) == archive()
        assert manager.release(child, "42").id == "42"
        assert manager.archive("42").data == archive()
        waiting = int(StageStatus.SUCCESS_WAITING)
        assert manager.submit_result(result(child, "canary-10", waiting)) == ""
        assert manager.barrier("42", "canary-10").ready
        assert manager.stage_counts("42", "canary-10").ready_count == 1
        assert manager.end_stage(child, "42", "canary-10").end_stage
        done = int(StageStatus.COMPLETED)
        manager.submit_result(result(child, "canary-10", done, "ab-50"))
        manager.submit_result(result(child, "ab-50", done))
        report = manager.report("42")
        assert [c.status for c in report.children] == [ReleaseStatus.DONE]
        assert manager.get_rollout("42").state is RolloutState.COMPLETED
        assert {c.id for c in manager.children()} == {c.id for c in manager.live_children()}
        with pytest.raises(NotFoundError):  # the manager's errors, raised in the caller's thread
            manager.get_rollout("nope")


def test_the_operator_s_actions() -> None:
    with SyncRolloutManager(tick_interval=None) as manager:
        manager.create_rollout(bundle(), EUROPE, start=False)
        assert manager.start("42").state is RolloutState.ACTIVE
        assert manager.pause("42").state is RolloutState.PAUSED
        with pytest.raises(InvalidTransitionError):
            manager.promote("42", "canary-10")  # only an active rollout's
        assert manager.resume("42").state is RolloutState.ACTIVE
        manager.promote("42", "canary-10")
        assert manager.barrier("42", "canary-10").open
        manager.create_rollout(bundle("43"), EUROPE, gated=True)
        manager.open_barrier("43", "canary-10")
        assert manager.barrier("43", "canary-10").open
        aborted = manager.abort("42", reason="bad canary")
        assert aborted.state is RolloutState.ABORTED
        manager.tick()
        manager.load()


def test_the_loop_ticks_the_manager_in_the_facade_s_thread() -> None:
    quick = GlobalIncremental(child_timeout=0.05)
    manager = SyncRolloutManager(tick_interval=0.01)
    try:
        assert manager.is_running
        manager.poll("c1", INSIDE)
        manager.create_rollout(bundle(), EUROPE, policy=quick)
        assert manager.poll("c1", INSIDE).new_release == "42"
        # c1 never fetches: the loop times it out, and the rollout completes.
        wait_for(lambda: manager.get_rollout("42").state is RolloutState.COMPLETED)
        manager.stop_loops()
        assert not manager.is_running
        manager.start_loops(interval=0.01)
        assert manager.is_running
    finally:
        manager.close()
    assert manager.closed
    assert not manager.is_running
    manager.close()  # idempotent


def test_a_store_outlives_the_facade_and_is_loaded_by_the_next() -> None:
    store = MemoryRolloutStore()
    with SyncRolloutManager(store) as first:
        first.poll("c1", INSIDE)
        first.create_rollout(bundle(), EUROPE)
    with SyncRolloutManager(store) as second:
        assert second.poll("c1", INSIDE).new_release == "42"


def test_a_relay_runs_in_the_facade_s_thread() -> None:
    parent = RolloutManager()
    with SyncRolloutManager(tick_interval=None) as manager:
        area = Area.from_geojson(INSIDE)
        relay = Relay(
            manager.manager, InProcessParent(parent), relay_id="r", area=area, interval=0.01
        )
        manager.run(relay.start)
        assert manager.is_running
        wait_for(lambda: [c.id for c in manager.run(parent.children)] == ["r"])
    assert not relay.is_running


def test_the_sync_coordinator_shares_the_machinery() -> None:
    coordinator = SyncCoordinator()
    threads = threading.active_count()
    assert coordinator.coordinator.is_running
    release = coordinator.create_release("nightly")
    assert coordinator.get_release(release.id).name == "nightly"
    coordinator.close()
    assert coordinator.closed
    assert not coordinator.coordinator.is_running
    coordinator.close()
    assert threading.active_count() <= threads


def test_the_sync_coordinator_writes_notes_and_reads_studies() -> None:
    with SyncCoordinator() as coordinator:
        release = coordinator.create_release("2026-12", studies=["SD_1", "SD_2"])
        note = coordinator.add_note(release.id, "# Changes", study_id="SD_1", author="ann")
        assert coordinator.edit_note(note.id, "# Changes, fixed", editor="bob").text == (
            "# Changes, fixed"
        )
        assert [n.id for n in coordinator.list_notes(study_id="SD_1")] == [note.id]
        assert coordinator.get_note(note.id).author == "ann"
        assert [r.id for r in coordinator.list_releases(study="SD_2")] == [release.id]
        assert coordinator.get_study("SD_1").release_ids == (release.id,)
        assert {s.id for s in coordinator.list_studies()} == {"SD_1", "SD_2"}
        coordinator.delete_note(note.id, by="bob")
        assert coordinator.list_notes(release_id=release.id) == []
