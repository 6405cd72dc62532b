"""The rollout event log's answers on the operator API, as msgspec Structs (the OpenAPI
documents are generated from them): one event (``RolloutEvent``) and a page of them, the
shape of the Coordinator's ``Event`` with the rollout half's fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from release_coordinator.coordinator.models import EventType
from release_coordinator.rollout.events import RolloutEventKind
from release_coordinator.schemas import MAX_PAGE

__all__ = ["EVENT_ANSWER_NAMES", "RolloutEventBody", "RolloutEventPageBody"]

_Count = Annotated[int, msgspec.Meta(ge=0)]


class RolloutEventBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An event of the rollout event log."""

    id: Annotated[int, msgspec.Meta(ge=1)]
    at: Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]
    type: EventType
    kind: RolloutEventKind
    message: str
    rollout_id: str | None
    child_id: Annotated[str | None, msgspec.Meta(description="The child, for a child's event.")]
    stage: Annotated[str | None, msgspec.Meta(description="The stage, for a stage's event.")]
    state: Annotated[
        str | None,
        msgspec.Meta(
            description="The new state, for a transition: a rollout's state, a child's"
            " ReleaseStatus or a stage's StageStatus (by name)."
        ),
    ]
    actor: Annotated[
        str, msgspec.Meta(description="The operator who asked (empty: unknown, or none).")
    ]


class RolloutEventPageBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A page of rollout events, oldest first; ``next_offset`` is null on the last page."""

    items: list[RolloutEventBody]
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
    offset: _Count
    next_offset: _Count | None


#: The OpenAPI components' names of the Structs.
EVENT_ANSWER_NAMES = {
    "RolloutEventBody": "RolloutEvent",
    "RolloutEventPageBody": "RolloutEventPage",
}
