"""The answers of the approval and what-if routes of the operator API, as msgspec Structs (the
OpenAPI documents are generated from them): ``POST /rollouts/{id}/stages/{stage}/approve``
answers an :class:`ApprovalAnswerBody`, ``GET /rollouts/{id}/what-if`` a
:class:`WhatIfBody`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from release_coordinator.rollout.api_bodies import RolloutBody, StageApprovalBody

__all__ = [
    "APPROVAL_ANSWER_NAMES",
    "ApprovalAnswerBody",
    "StageApprovalBody",
    "WhatIfBody",
    "WhatIfGroupBody",
]

_Count = Annotated[int, msgspec.Meta(ge=0)]


class ApprovalAnswerBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The rollout after an approval, and where each of its approvals stands."""

    rollout: RolloutBody
    approvals: list[StageApprovalBody]


class WhatIfGroupBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An area or a wave: how many children (and relays among them) it holds, the first ids."""

    name: Annotated[
        str,
        msgspec.Meta(
            description="``groups[i]`` and ``outside every group`` (a LocationSequential "
            "policy's areas; a child's id when each child is a group), ``target``; "
            "``waves[i]`` (a Waves policy), ``everyone``."
        ),
    ]
    count: _Count
    relay_count: _Count
    children: Annotated[list[str], msgspec.Meta(description="The first ids (at most limit).")]
    relays: Annotated[
        list[str], msgspec.Meta(description="The first relays' ids (number_of_children > 0).")
    ]


class WhatIfBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which registered children the draft rollout would reach if it started now."""

    rollout: RolloutBody
    eligible: _Count
    relays: _Count
    lost: Annotated[int, msgspec.Meta(ge=0, description="Eligible children not polling lately.")]
    areas: list[WhatIfGroupBody]
    waves: list[WhatIfGroupBody]
    children: Annotated[list[str], msgspec.Meta(description="The first ids (at most limit).")]
    approvals: list[StageApprovalBody]
    note: str


#: The OpenAPI components' names of the Structs.
APPROVAL_ANSWER_NAMES = {
    "StageApprovalBody": "StageApproval",
    "ApprovalAnswerBody": "StageApprovalAnswer",
    "WhatIfGroupBody": "WhatIfGroup",
    "WhatIfBody": "WhatIf",
}
