"""The bodies of the operator's interventions, as msgspec Structs (the OpenAPI documents are
generated from them): ``POST /rollouts/{id}/children/{child_id}/exclude`` takes an
:class:`ExcludeRequest` and answers the child's state (a ``ChildRelease``);
``POST /rollouts/{id}/retry`` takes a :class:`RetryRequest` and answers a
:class:`RetryAnswerBody`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from release_coordinator.rollout.api_bodies import RolloutBody
from release_coordinator.rollout.interventions import MAX_RETRY_CHILDREN
from release_coordinator.schemas import MAX_REASON, PRINTABLE_PATTERN

__all__ = [
    "INTERVENTION_ANSWER_NAMES",
    "INTERVENTION_BODIES",
    "ExcludeRequest",
    "RetryAnswerBody",
    "RetryRequest",
]

_ChildId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ExcludeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /rollouts/{rollout_id}/children/{child_id}/exclude``'s body (or an empty
    body)."""

    reason: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_REASON,
                pattern=PRINTABLE_PATTERN,
                description="Why, for the event log (printable text).",
            ),
        ]
        | None
    ) = None


class RetryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /rollouts/{rollout_id}/retry``'s body (or an empty body: every child whose
    release failed)."""

    children: (
        Annotated[
            list[_ChildId],
            msgspec.Meta(
                min_length=1,
                max_length=MAX_RETRY_CHILDREN,
                description="The children to offer the rollout again (each one's release "
                "failed, none excluded); null or left out: every such child.",
            ),
        ]
        | None
    ) = None


class RetryAnswerBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The rollout after a retry (active again if it had completed), and the children offered
    it again."""

    rollout: RolloutBody
    retried: list[str]


#: The Structs of the interventions' bodies, and the components' names of the answers'.
INTERVENTION_BODIES = (ExcludeRequest, RetryRequest, RetryAnswerBody)
INTERVENTION_ANSWER_NAMES = {"RetryAnswerBody": "RetryAnswer"}
