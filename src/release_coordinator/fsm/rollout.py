"""The per-child state machines of an edge rollout (edge-rollout protocol, "Statuses").

ReleaseStatus, per (release, child)::

    No -target-> Todo -fetch-> Doing -finish-> Done
                  |            |  ^
                  |            +--+ fetch (a child that crashed after fetching asks again)
                  +-withdraw-> No          Doing -fail-> Failed
                  +-fail-----> Failed

StageStatus, per (release, stage, child)::

    Pending -begin-> InProgress -wait-> SuccessWaiting -signal-> ShouldEnd
    InProgress | SuccessWaiting | ShouldEnd -complete-> Completed
    InProgress | SuccessWaiting | ShouldEnd -fail-> Failure
    any state that is not final -error-> Error

Which of these moves a given stage may take (``complete`` straight from ``InProgress`` only for
an A/B stage, for instance) is the manager's policy; the machines say what can ever happen.
Both are declared once with ``transitions``; the hot path consults the derived tables.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Self

from release_coordinator.errors import ValidationError
from release_coordinator.fsm.base import MachineSpec, Transition

__all__ = [
    "CHILD_RELEASE_MACHINE",
    "STAGE_MACHINE",
    "STAGE_TRIGGER_FOR",
    "ReleaseStatus",
    "StageStatus",
    "release_step",
    "stage_step",
]


class _WireEnum(IntEnum):
    """A status with the protocol's number and name (``Completed`` = 4)."""

    @property
    def wire_name(self) -> str:
        return _WIRE_NAMES[type(self)][self]

    @classmethod
    def from_wire(cls, value: object, path: str = "status") -> Self:
        """The status a wire value stands for: its number, its digits, or its name."""
        if isinstance(value, bool):
            raise ValidationError(f"invalid {cls.__name__}", [(path, "must not be a boolean")])
        names = _WIRE_NAMES[cls]
        if isinstance(value, int) and value in cls._value2member_map_:
            return cls(value)
        if isinstance(value, str):
            if value.isascii() and value.isdigit() and int(value) in cls._value2member_map_:
                return cls(int(value))
            for member, name in names.items():
                if name == value:
                    return cls(member.value)
        allowed = ", ".join(f"{m.value}={n}" for m, n in names.items())
        raise ValidationError(
            f"invalid {cls.__name__}", [(path, f"must be one of {allowed}; got {value!r:.40}")]
        )


class ReleaseStatus(_WireEnum):
    NO = 0
    TODO = 1
    DOING = 2
    DONE = 3
    FAILED = 4


class StageStatus(_WireEnum):
    PENDING = 0
    IN_PROGRESS = 1
    SUCCESS_WAITING = 2
    SHOULD_END = 3
    COMPLETED = 4
    FAILURE = 5
    ERROR = 6

    @property
    def is_final(self) -> bool:
        return self >= StageStatus.COMPLETED


_WIRE_NAMES: dict[type[_WireEnum], dict[_WireEnum, str]] = {
    ReleaseStatus: {
        ReleaseStatus.NO: "No",
        ReleaseStatus.TODO: "Todo",
        ReleaseStatus.DOING: "Doing",
        ReleaseStatus.DONE: "Done",
        ReleaseStatus.FAILED: "Failed",
    },
    StageStatus: {
        StageStatus.PENDING: "Pending",
        StageStatus.IN_PROGRESS: "InProgress",
        StageStatus.SUCCESS_WAITING: "SuccessWaiting",
        StageStatus.SHOULD_END: "ShouldEnd",
        StageStatus.COMPLETED: "Completed",
        StageStatus.FAILURE: "Failure",
        StageStatus.ERROR: "Error",
    },
}

_R = {m: n for m, n in _WIRE_NAMES[ReleaseStatus].items()}
_S = {m: n for m, n in _WIRE_NAMES[StageStatus].items()}

#: The machines work on the protocol's names; ``machine.next_state(status.wire_name, ...)``.
CHILD_RELEASE_MACHINE = MachineSpec(
    "child release",
    list(_R.values()),
    [
        Transition("target", ("No",), "Todo"),
        Transition("withdraw", ("Todo",), "No"),
        Transition("fetch", ("Todo", "Doing"), "Doing"),
        Transition("finish", ("Doing",), "Done"),
        Transition("fail", ("Todo", "Doing"), "Failed"),
    ],
    initial="No",
    final=("Done", "Failed"),
)

_LIVE_STAGE = ("InProgress", "SuccessWaiting", "ShouldEnd")
STAGE_MACHINE = MachineSpec(
    "stage",
    list(_S.values()),
    [
        Transition("begin", ("Pending",), "InProgress"),
        Transition("wait", ("InProgress",), "SuccessWaiting"),
        Transition("signal", ("SuccessWaiting",), "ShouldEnd"),
        Transition("complete", _LIVE_STAGE, "Completed"),
        Transition("fail", _LIVE_STAGE, "Failure"),
        Transition("error", ("Pending", *_LIVE_STAGE), "Error"),
    ],
    initial="Pending",
    final=("Completed", "Failure", "Error"),
)

_BY_NAME_R = {n: m for m, n in _R.items()}
_BY_NAME_S = {n: m for m, n in _S.items()}


def release_step(status: ReleaseStatus, trigger: str, *, subject: str = "") -> ReleaseStatus:
    """The child-release status ``trigger`` leads to; InvalidTransitionError if refused."""
    return ReleaseStatus(
        _BY_NAME_R[CHILD_RELEASE_MACHINE.next_state(_R[status], trigger, subject=subject)]
    )


def stage_step(status: StageStatus, trigger: str, *, subject: str = "") -> StageStatus:
    """The stage status ``trigger`` leads to; InvalidTransitionError if refused."""
    return StageStatus(_BY_NAME_S[STAGE_MACHINE.next_state(_S[status], trigger, subject=subject)])


#: The trigger that reaches each stage status reported by a child (in a /result).
STAGE_TRIGGER_FOR = {
    StageStatus.SUCCESS_WAITING: "wait",
    StageStatus.COMPLETED: "complete",
    StageStatus.FAILURE: "fail",
    StageStatus.ERROR: "error",
}
