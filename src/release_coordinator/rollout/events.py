"""The rollout event log's records: :class:`RolloutEvent`, what it is about
(:class:`RolloutEventKind`), which ones to list (:class:`RolloutEventFilter`), and the events
the RolloutManager writes with its state changes (a rollout's, a child's, a barrier's).

The same shape and rules as the Coordinator's log (:class:`~release_coordinator.coordinator.
models.Event`): the store assigns ``id`` when it appends an event (gapless in memory, growing
over SQL), nothing is changed later, listings are oldest first and follow the log with
``after_id``. An event is written by the store call that makes the change it records (the
rollout's compare-and-set, the child's, the targeting, the barrier's opening), so a change
that loses its compare-and-set leaves no event, and a poll that changes nothing writes none.

Kept free of the rollout half's geometry (no shapely): the storage layer imports it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import attrs

from release_coordinator.coordinator.models import EventType, utcnow
from release_coordinator.fsm.rollout import ReleaseStatus, StageStatus

if TYPE_CHECKING:
    from release_coordinator.rollout.models import ChildRelease

__all__ = [
    "RolloutEvent",
    "RolloutEventFilter",
    "RolloutEventKind",
    "child_events",
    "offered_event",
    "rollout_event",
    "withdrawn_event",
]


class RolloutEventKind(StrEnum):
    """What a rollout event is about (its ``type`` says how bad it is)."""

    #: A rollout's state, a child's release or one of its stages changed.
    TRANSITION = "transition"
    #: An operator asked for something (create, start, pause, resume, abort, promote).
    USER_ACTION = "user_action"
    #: The rollout's policy decided: a barrier opened, a wave or group was admitted, an abort.
    POLICY = "policy"


@attrs.frozen
class RolloutEvent:
    """One entry of the rollout event log.

    ``id`` is assigned by the store when the event is appended (0 before that) and grows with
    every append. ``state`` is the new state of a transition: a rollout's
    (:class:`~release_coordinator.rollout.models.RolloutState` value), a child's release or a
    stage's (their protocol names, ``Doing``, ``SuccessWaiting``); ``stage`` the stage's
    name; ``actor`` the operator who asked (empty when unknown or not an operator's).
    """

    type: EventType
    kind: RolloutEventKind
    message: str
    rollout_id: str | None = None
    child_id: str | None = None
    stage: str | None = None
    state: str | None = None
    actor: str = ""
    at: datetime = attrs.field(factory=utcnow)
    id: int = 0


@attrs.frozen
class RolloutEventFilter:
    """Which rollout events to list. Every field left ``None`` matches everything."""

    rollout_id: str | None = None
    child_id: str | None = None
    stage: str | None = None
    types: Collection[EventType] | None = None
    kinds: Collection[RolloutEventKind] | None = None
    #: Only events with an id greater than this (to follow the log incrementally).
    after_id: int = 0
    since: datetime | None = None

    def matches(self, event: RolloutEvent) -> bool:
        return (
            event.id > self.after_id
            and (self.rollout_id is None or event.rollout_id == self.rollout_id)
            and (self.child_id is None or event.child_id == self.child_id)
            and (self.stage is None or event.stage == self.stage)
            and (self.types is None or event.type in self.types)
            and (self.kinds is None or event.kind in self.kinds)
            and (self.since is None or event.at >= self.since)
        )


ALL_EVENTS = RolloutEventFilter()


def rollout_event(
    kind: RolloutEventKind,
    message: str,
    rollout_id: str,
    *,
    type: EventType = EventType.INFO,
    state: str | None = None,
    stage: str | None = None,
    child_id: str | None = None,
    actor: str = "",
) -> RolloutEvent:
    """An event about the rollout ``rollout_id`` (dated now)."""
    return RolloutEvent(type, kind, message, rollout_id, child_id, stage, state, actor)


#: What a child's release turning into a status says (Failed: by its outcome).
_RELEASE_WORDS = {
    ReleaseStatus.NO: "withdrawn: the release is no longer offered to it",
    ReleaseStatus.TODO: "offered the release",
    ReleaseStatus.DOING: "fetched the release",
    ReleaseStatus.DONE: "finished the release",
}
_OUTCOME_WORDS = {
    "rolled_out": "rolled out",
    "rolled_back": "rolled back",
    "timed_out": "timed out (no progress within the policy's child_timeout)",
    "aborted": "stopped by the rollout's abort",
    "excluded": "excluded from the rollout by the operator",
    "": "failed",
}
_STAGE_WORDS = {
    StageStatus.PENDING: "pending",
    StageStatus.IN_PROGRESS: "started",
    StageStatus.SUCCESS_WAITING: "waiting at its barrier",
    StageStatus.SHOULD_END: "told to end",
}
_TRANSITION = RolloutEventKind.TRANSITION


@functools.lru_cache(maxsize=1024)
def _stage_message(name: str, status: StageStatus) -> tuple[str, EventType]:
    """What a stage turning ``status`` says, and how bad it is (one string for all events)."""
    if status.is_final:
        bad = status is not StageStatus.COMPLETED
        return (
            f"stage {name!r} ended {status.wire_name}",
            EventType.WARNING if bad else EventType.INFO,
        )
    return f"stage {name!r} {_STAGE_WORDS.get(status, status.wire_name)}", EventType.INFO


def child_events(
    expected: ChildRelease, new: ChildRelease, at: datetime | None = None
) -> list[RolloutEvent]:
    """The events of a child's state going from ``expected`` to ``new``: one per stage whose
    status changed (in the strategy's order), then one if the release's status changed (its
    outcome said). Nothing for a change of bookkeeping only (``acknowledged``)."""
    at = at or utcnow()
    rid, cid = new.rollout_id, new.child_id
    found: list[RolloutEvent] = []
    for name, stage in new.stages.items():
        old = expected.stages.get(name)
        if old is not None and old.status is stage.status:
            continue
        status = stage.status
        message, type_ = _stage_message(name, status)
        found.append(
            RolloutEvent(type_, _TRANSITION, message, rid, cid, name, status.wire_name, "", at)
        )
    if new.status is not expected.status or new.outcome is not expected.outcome:
        release = new.status
        if release is ReleaseStatus.FAILED or (release is ReleaseStatus.DONE and new.outcome):
            words = _OUTCOME_WORDS.get(new.outcome.value, new.outcome.value)
        else:
            words = _RELEASE_WORDS.get(release, release.wire_name)
        bad = release is ReleaseStatus.FAILED or new.outcome.value == "rolled_back"
        type_ = EventType.WARNING if bad else EventType.INFO
        found.append(
            RolloutEvent(type_, _TRANSITION, words, rid, cid, None, release.wire_name, "", at)
        )
    return found


def offered_event(rollout_id: str) -> RolloutEvent:
    """The template of the events a targeting writes, one per child newly offered the
    release (the store sets ``child_id``)."""
    return RolloutEvent(
        EventType.INFO, _TRANSITION, _RELEASE_WORDS[ReleaseStatus.TODO], rollout_id, None, None,
        ReleaseStatus.TODO.wire_name,
    )  # fmt: skip


def withdrawn_event(rollout_id: str) -> RolloutEvent:
    """The template of the events a withdrawal writes, one per child it took back."""
    return RolloutEvent(
        EventType.INFO, _TRANSITION, _RELEASE_WORDS[ReleaseStatus.NO], rollout_id, None, None,
        ReleaseStatus.NO.wire_name,
    )  # fmt: skip
