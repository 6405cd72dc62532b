"""State machines, versions and the wire format: exhaustive and property-based checks."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from release_coordinator import (
    RELEASE_MACHINE,
    TASK_MACHINE,
    InvalidTransitionError,
    ReleaseState,
    TaskState,
    ValidationError,
)
from release_coordinator.coordinator.wire import (
    decode_answer,
    decode_callback,
    decode_request,
    decode_status,
)
from release_coordinator.fsm.release import reachable_task_path, task_state_behind
from release_coordinator.versions import Version, next_release_version, published_version

RELEASE_EDGES = {
    ("waiting", "initialize"): "initializing",
    ("initializing", "start"): "running",
    ("running", "stage"): "staged",
    ("waiting", "stage"): "staged",
    ("staged", "publish"): "publishing",
    ("publishing", "complete"): "published",
    ("canceling", "finish_cancel"): "canceled",
    ("canceling", "fail"): "failed",
    **{
        (s, "cancel"): "canceling"
        for s in ("waiting", "initializing", "running", "staged", "publishing")
    },
    **{
        (s, "fail"): "failed"
        for s in ("waiting", "initializing", "running", "staged", "publishing")
    },
}
TASK_EDGES = {
    ("waiting", "initialize"): "initialized",
    ("waiting", "reject"): "rejected",
    ("initialized", "start"): "running",
    ("running", "stage"): "staged",
    ("staged", "publish"): "publishing",
    ("publishing", "complete"): "published",
    **{
        (s, t): d
        for s in ("waiting", "initialized", "running", "staged", "publishing", "published")
        for t, d in (("fail", "failed"), ("cancel", "canceled"))
    },
}


@pytest.mark.parametrize(
    ("machine", "edges", "states"),
    [(RELEASE_MACHINE, RELEASE_EDGES, ReleaseState), (TASK_MACHINE, TASK_EDGES, TaskState)],
    ids=["release", "task"],
)
def test_machines_allow_exactly_the_protocol_edges(machine: Any, edges: Any, states: Any) -> None:
    assert set(machine.states) == {s.value for s in states}
    for state, trigger in itertools.product(machine.states, machine.triggers):
        if (state, trigger) in edges:
            assert machine.next_state(state, trigger) == edges[(state, trigger)]
            assert machine.can(states(state), trigger)
        else:
            with pytest.raises(InvalidTransitionError, match=trigger):
                machine.next_state(state, trigger, subject="X")
    for final in machine.final:
        assert machine.triggers_from(final) == {}


def test_refusal_names_the_final_state() -> None:
    with pytest.raises(InvalidTransitionError, match="it is final") as info:
        RELEASE_MACHINE.next_state(ReleaseState.PUBLISHED, "cancel", subject="RE_1")
    assert info.value.to_dict()["error"]["details"]["state"] == "published"


def test_early_reports_follow_the_path_within_reach() -> None:
    assert reachable_task_path("initialized", "staged", "running") == ["start", "stage"]
    assert reachable_task_path("staged", "published", "publishing") == ["publish", "complete"]
    assert reachable_task_path("running", "running", "running") == []
    assert reachable_task_path("initialized", "staged", "initializing") is None  # not sent
    assert reachable_task_path("staged", "published", "staged") is None  # publish not sent
    assert reachable_task_path("staged", "running", "running") is None  # behind
    assert reachable_task_path("failed", "running", "running") is None
    assert task_state_behind("running", "staged")
    assert not task_state_behind("staged", "running")


def test_versions() -> None:
    assert next_release_version([]) == "0.0.1"
    assert next_release_version(["0.1.0", "0.0.3"]) == "0.1.1"
    assert published_version(["0.1.4"], major=False) == "0.2.0"
    assert published_version(["0.1.4"], major=True) == "1.0.0"
    assert Version.parse("10.2.3") > Version.parse("9.20.30")
    for bad in ("1.2", "01.2.3", "a.b.c", "1.2.3-rc1", ""):
        with pytest.raises(ValidationError):
            Version.parse(bad)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))))
def test_new_versions_exceed_all(existing: list[tuple[int, int, int]]) -> None:
    texts = [f"{a}.{b}.{c}" for a, b, c in existing]
    new = Version.parse(next_release_version(texts))
    promoted = Version.parse(published_version([*texts, str(new)], major=False))
    assert all(new > Version.parse(t) for t in texts)
    assert promoted > new


def test_request_decoding() -> None:
    request = decode_request(
        {"action": "start", "task_id": "TA_1", "release_id": "RE_1", "studies": ["SD_1"]}
    )
    assert (request.action.value, request.studies) == ("start", ("SD_1",))
    with pytest.raises(ValidationError) as info:
        decode_request({"action": "explode", "task_id": 3, "studies": [1]})
    paths = [p for p, _ in info.value.problems]
    assert paths == ["action", "task_id", "release_id", "studies[0]"]


def test_answer_and_callback_decoding() -> None:
    answer = decode_answer(
        {"task_id": "T", "release_id": "R", "state": "running", "progress": "42%"}
    )
    assert answer.progress == 42
    assert decode_callback({"state": "staged"}).progress is None
    for bad in (
        {"state": "done"},
        {"state": "staged", "progress": 101},
        {"state": "staged", "progress": True},
        {"state": "staged", "extra": 1},
        [],
    ):
        with pytest.raises(ValidationError):
            decode_callback(bad)
    assert decode_status({"name": "portal"}).name == "portal"
    with pytest.raises(ValidationError, match="name"):
        decode_status({"message": "hi"})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["initialize", "start", "get_status", "publish", "cancel"])
        | JSON,
        "task_id": st.text(max_size=300) | JSON,
        "release_id": st.text(max_size=10) | JSON,
        "studies": st.lists(st.text(max_size=5)) | JSON,
        "state": st.sampled_from(["pending", "running", "staged"]) | JSON,
        "progress": st.integers(-5, 105) | st.text(max_size=5) | JSON,
        "name": JSON,
    },
)


@given(JSON | FIELDS)
def test_decoders_accept_or_explain_any_input(body: Any) -> None:
    for decode in (decode_request, decode_answer, decode_callback, decode_status):
        try:
            decode(body)
        except ValidationError as error:
            assert error.problems or "JSON object" in error.message  # noqa: PT017
