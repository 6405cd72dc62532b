"""The child protocol's answers (``/poll``, ``/end_stage``), as a manager gives them.

The request bodies' Structs are in :mod:`release_coordinator.rollout.bodies`; result bodies
(``/result``) are parsed by :mod:`release_coordinator.rollout.results`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["EndStageAnswer", "PollAnswer"]


@attrs.frozen
class PollAnswer:
    """``POST /poll``'s answer: the child's id and the first release waiting for it.

    ``target_area`` (GeoJSON) is an extra for relays (children with children of their own):
    the release's target, so that they offer it only to their children inside it. Old agents
    ignore it; leaves never get it.

    ``aborted`` (an extra old agents ignore) names the releases the child is running whose
    rollout was aborted: roll them back now (old agents learn it at ``/end_stage`` and
    ``/result`` instead).

    ``next_poll`` (an extra old agents ignore) is the manager's hint: seconds until the child
    should poll again (shorter while it runs a release, longer while its rollouts wait for a
    maintenance window); None: no hint.
    """

    id: str
    new_release: str = ""
    target_area: Mapping[str, Any] | None = None
    aborted: tuple[str, ...] = ()
    next_poll: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "new_release": self.new_release}
        if self.target_area is not None:
            body["target_area"] = self.target_area
        if self.aborted:
            body["aborted"] = list(self.aborted)
        if self.next_poll is not None:
            body["next_poll"] = self.next_poll
        return body


@attrs.frozen
class EndStageAnswer:
    """``POST /end_stage``'s answer; ``action`` (``"rollback"``) is an extra old agents ignore."""

    end_stage: bool
    action: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"end_stage": self.end_stage}
        if self.action:
            body["action"] = self.action
        return body
