"""The operator's interventions over HTTP: the Client's ``exclude_child`` and
``retry_rollout``, the CLI's ``rollouts exclude`` and ``rollouts retry``, the roles (a
releaser's, not a reader's) and the refusals (409, 404, 422) the API answers."""

from __future__ import annotations

import argparse
import io
import json

import httpx
import pytest

from release_coordinator import (
    Client,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    RolloutManager,
    ValidationError,
)
from release_coordinator.cli import _parser
from release_coordinator.client import AccessDeniedError
from release_coordinator.client.intervention_commands import rollouts_exclude, rollouts_retry
from release_coordinator.client.render import Output
from release_coordinator.server.roles import OperatorToken
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.storage.memory_rollout import MemoryRolloutStore

from .test_client import strategy
from .test_rollout_manager import EUROPE, INSIDE, archive, result, square

pytestmark = pytest.mark.anyio

TOKENS = {
    "rel": OperatorToken("releaser-token", "releaser"),
    "ro": OperatorToken("reader-token", "reader"),
}


def client(manager: RolloutManager, token: str) -> Client:
    app = rollout_app(manager, operator_tokens=TOKENS)
    return Client("http://rc.test", token=token, transport=httpx.ASGITransport(app=app))


async def test_exclude_and_retry_over_http() -> None:
    manager = RolloutManager(MemoryRolloutStore())
    async with client(manager, "releaser-token") as ops, client(manager, "reader-token") as ro:
        await ops.create_rollout(strategy("42"), archive(), EUROPE)
        running = (await manager.poll("", INSIDE, 0)).id
        failing = (await manager.poll("", square(6, 46), 0)).id
        for child in (running, failing):
            await manager.get_release(child, "42")
        await manager.submit_result(result(failing, "canary-10", 5, "rollback"))
        with pytest.raises(AccessDeniedError):
            await ro.exclude_child("42", running)
        with pytest.raises(AccessDeniedError):
            await ro.retry_rollout("42")
        state = await ops.exclude_child("42", running, reason="bad modem")
        assert (state["status"], state["outcome"], state["lost"]) == ("Failed", "excluded", False)
        assert state["stages"]["canary-10"]["status"] == "Error"
        with pytest.raises(NotFoundError):
            await ops.exclude_child("42", "ghost")
        with pytest.raises(InvalidTransitionError):  # an excluded child is never retried
            await ops.retry_rollout("42", children=running)
        answer = await ops.retry_rollout("42")
        assert (answer["rollout"]["state"], answer["retried"]) == ("active", [failing])
        with pytest.raises(ConflictError):  # nothing failed any more
            await ops.retry_rollout("42")
        with pytest.raises(ValidationError):
            await ops.retry_rollout("42", children=[""])
        events = await ops.list_rollout_events("42", kind=["user_action"])
        assert [(e["message"], e["actor"]) for e in events["items"][-2:]] == [
            (f"exclusion of child {running} requested by rel: bad modem", "rel"),
            ("retry of 1 child requested by rel", "rel"),
        ]

        # the CLI's commands
        await manager.get_release(failing, "42")
        await manager.submit_result(result(failing, "canary-10", 6))
        printed = Output(json_mode=False, use_rich=False, stream=io.StringIO())
        args = argparse.Namespace(id="42", child=[failing])
        assert await rollouts_retry(ops, args, printed) == 0
        assert f"offered again to 1: {failing}" in printed.stream.getvalue()  # type: ignore[attr-defined]
        printed = Output(json_mode=True, stream=io.StringIO())
        args = argparse.Namespace(id="42", child=failing, reason=None)
        assert await rollouts_exclude(ops, args, printed) == 0
        shown = json.loads(printed.stream.getvalue())  # type: ignore[attr-defined]
        assert (shown["child_id"], shown["outcome"]) == (failing, "excluded")


def test_the_cli_parses_the_commands() -> None:
    parsed = _parser().parse_args(["rollouts", "exclude", "42", "c-1", "--reason", "flaky"])
    assert (parsed.rollout_action, parsed.id, parsed.child, parsed.reason) == (
        "exclude",
        "42",
        "c-1",
        "flaky",
    )
    parsed = _parser().parse_args(["rollouts", "retry", "42", "--child", "a", "--child", "b"])
    assert (parsed.rollout_action, parsed.id, parsed.child) == ("retry", "42", ["a", "b"])
    assert _parser().parse_args(["rollouts", "retry", "42"]).child is None
