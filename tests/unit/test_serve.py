"""release_coordinator.server.serve in process: the combined app through httpx.ASGITransport
(both halves, both lifespans, one access-log line per request), the token variables, and the
command's refusals before anything is opened."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from release_coordinator import (
    Area,
    Child,
    ConfigurationError,
    Coordinator,
    CoordinatorConfig,
    MemoryRolloutStore,
    MemoryStore,
    MemoryTransport,
    Relay,
    RetryPolicy,
    RolloutManager,
    SimulatedLeaf,
    TaskServiceKit,
)
from release_coordinator.cli import area_from_file, main
from release_coordinator.fsm.rollout import ReleaseStatus
from release_coordinator.server import serve, serve_settings
from release_coordinator.server import service_app as service_app_module
from release_coordinator.server.access_log import ACCESS_LOGGER, AccessLog
from release_coordinator.server.coordinator_app import coordinator_app
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.server.serve import FastRoutes, service_app
from release_coordinator.server.tokens import ServeTokens, parse_tokens, tokens_from_env
from release_coordinator.storage.sql import SQLRolloutStore, SQLStore
from release_coordinator.transports.http import HttpParent

from .test_rollout_manager import bundle as rollout_bundle

OPERATOR_TOKEN = "op-token-0123456789"
PORTAL_TOKEN = "portal-token-0123456789"
OPS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
PORTAL = {"Authorization": f"Bearer {PORTAL_TOKEN}"}
AREA = {
    "type": "Polygon",
    "coordinates": [[[5, 45], [6, 45], [6, 46], [5, 46], [5, 45]]],
}
WAIT = 10.0  # seconds to wait for something to happen (never an assertion on time)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Served:
    """A coordinator and a manager served by one service_app, and a client of it."""

    def __init__(self, **options: Any) -> None:
        transport = MemoryTransport()
        transport.add("memory://portal", TaskServiceKit("portal"))
        self.coordinator = Coordinator(MemoryStore(), transport)
        self.manager = RolloutManager(MemoryRolloutStore())
        options.setdefault("operator_tokens", {"alice": OPERATOR_TOKEN})
        options.setdefault("callback_tokens", {"portal": PORTAL_TOKEN})
        self.app = service_app(self.coordinator, self.manager, **options)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://rc.test"
        )


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = Served(tick_interval=0.01)
    try:
        async with node.app.router.lifespan_context(node.app):  # httpx runs no lifespan
            yield node
    finally:
        await node.client.aclose()


# -- one app, both halves ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_both_halves_are_reachable_through_one_app(served: Served) -> None:
    client = served.client
    status = await client.get("/status")  # no token needed
    assert status.status_code == 200
    assert status.json()["name"] == "release-coordinator"
    # the coordinator's operator API
    assert (await client.get("/releases")).status_code == 401
    assert (await client.get("/releases", headers=OPS)).status_code == 200
    service = await client.post(
        "/task-services", json={"name": "portal", "url": "memory://portal"}, headers=OPS
    )
    assert service.status_code == 201, service.text
    created = await client.post(
        "/releases", json={"name": "nightly", "studies": ["SD_1"]}, headers=OPS
    )
    assert created.status_code == 201
    release = created.json()
    assert release["author"] == "alice"
    staged = await served.coordinator.wait(release["id"], ["staged"], timeout=WAIT)
    assert staged.state == "staged"  # the lifespan started the coordinator
    # a task service's callback token reports its own tasks, and operates nothing
    tasks = (await client.get(f"/releases/{release['id']}/tasks", headers=OPS)).json()["items"]
    task = tasks[0]
    report = await client.patch(
        f"/tasks/{task['id']}", json={"state": "staged", "progress": 100}, headers=PORTAL
    )
    assert report.status_code == 200, report.text
    assert (await client.get("/releases", headers=PORTAL)).status_code == 403
    assert (await client.get("/rollouts", headers=PORTAL)).status_code == 401
    # the rollout half: the child protocol (open) and the operator API (the same tokens)
    poll = await client.post(
        "/poll", json={"id": "", "geographic_area": AREA, "number_of_children": 0}
    )
    assert poll.status_code == 200
    child_id = poll.json()["id"]
    assert poll.json() == {"id": child_id, "new_release": "", "next_poll": 30}
    assert (await client.get("/rollouts")).status_code == 401
    assert (await client.get("/rollouts", headers=OPS)).json()["items"] == []
    children = (await client.get("/children", headers=OPS)).json()["items"]
    assert [c["id"] for c in children] == [child_id]


@pytest.mark.anyio
async def test_openapi_json_describes_both_halves(served: Served) -> None:
    answer = await served.client.get("/openapi.json")  # no token needed
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    assert {"/openapi.json", "/status", "/releases", "/poll", "/rollouts"} <= set(paths)


@pytest.mark.anyio
async def test_refusals_of_the_router_are_json(served: Served) -> None:
    missing = await served.client.get("/nowhere", headers=OPS)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await served.client.delete("/poll")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_the_two_halves_share_no_path() -> None:
    node = Served()
    coordinator = coordinator_app(node.coordinator, allow_anonymous=True)
    rollouts = rollout_app(node.manager, allow_anonymous=True)

    def paths(app: Starlette) -> set[str]:
        return {r.path for r in app.routes if isinstance(r, Route)}

    # the one path both serve: each app's OpenAPI document, one combined document here
    assert paths(coordinator) & paths(rollouts) == {"/openapi.json"}
    served_too = {"/metrics", "/graphql"}  # server.metrics; server.graphql (the graphql extra)
    assert paths(node.app) == paths(coordinator) | paths(rollouts) | served_too
    assert [r.path for r in node.app.routes if isinstance(r, Route)].count("/openapi.json") == 1
    assert {"/status", "/releases", "/poll", "/release", "/rollouts"} <= paths(node.app)


def test_a_clash_of_paths_is_refused() -> None:
    async def ok(request: Request) -> Response:
        return Response()

    first = Starlette(routes=[Route("/same", ok), Route("/a", ok)])
    second = Starlette(routes=[Route("/same", ok), Route("/b", ok)])
    with pytest.raises(ConfigurationError, match="/same"):
        service_app_module._merged_routes(first, second)


def test_without_operator_tokens_the_app_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="allow_anonymous"):
        Served(operator_tokens=())
    Served(operator_tokens=(), allow_anonymous=True)  # on purpose


# -- lifespans -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_lifespan_starts_and_stops_both_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    node = Served(tick_interval=0.01)
    calls: list[str] = []
    ticked = asyncio.Event()

    def spy(target: object, name: str, event: asyncio.Event | None = None) -> None:
        original = getattr(target, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if event is not None:
                event.set()
            return await original(*args, **kwargs)

        monkeypatch.setattr(target, name, wrapper)

    spy(node.coordinator, "start")
    spy(node.coordinator, "close")
    spy(node.manager, "load")
    spy(node.manager, "tick", ticked)
    async with node.app.router.lifespan_context(node.app):
        assert calls[:2] == ["start", "load"]  # the coordinator first, then the manager
        await asyncio.wait_for(ticked.wait(), WAIT)  # the manager ticks
        assert "close" not in calls
    assert calls[-1] == "close"  # the manager stopped ticking first, then the coordinator
    await node.client.aclose()


@pytest.mark.anyio
async def test_without_lifespan_the_host_owns_both_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    node = Served(lifespan=False)
    started: list[str] = []

    async def start() -> None:
        started.append("start")

    async def load() -> None:
        started.append("load")

    monkeypatch.setattr(node.coordinator, "start", start)
    monkeypatch.setattr(node.manager, "load", load)
    async with node.app.router.lifespan_context(node.app):
        pass
    assert started == []
    await node.client.aclose()


# -- the poll fast path --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_poll_skips_the_router_and_keeps_its_answers() -> None:
    node = Served(lifespan=False)
    polled = {"id": "edge-1", "geographic_area": AREA, "number_of_children": 0}
    # Mounted under a prefix in a host's app: the fast path still finds /poll, nothing else.
    host = Starlette(routes=[Mount("/edge", app=node.app)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host), base_url="http://host.test"
    ) as client:
        answer = await client.post("/edge/poll", json=polled)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": "edge-1", "new_release": "", "next_poll": 30}
        assert (await client.post("/poll", json=polled)).status_code == 404
        wrong = await client.get("/edge/poll")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        refused = await client.post("/edge/poll", content=b"{")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid"
        assert (await client.get("/edge/status")).status_code == 200
    assert [c.id for c in await node.manager.children()] == ["edge-1"]
    await node.client.aclose()


@pytest.mark.anyio
async def test_fast_routes_send_only_their_method_and_path_ahead() -> None:
    reached: list[str] = []

    def app(name: str) -> Any:
        async def answer(scope: Any, receive: Any, send: Any) -> None:
            reached.append(f"{name} {scope['method']} {scope['path']}")
            await Response(b"", status_code=204)(scope, receive, send)

        return answer

    fast = FastRoutes(app("router"), {("POST", "/poll"): app("poll")})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fast), base_url="http://rc.test"
    ) as client:
        for method, path in (("POST", "/poll"), ("GET", "/poll"), ("POST", "/poll/x")):
            assert (await client.request(method, path)).status_code == 204
    assert reached == ["poll POST /poll", "router GET /poll", "router POST /poll/x"]


# -- the access log -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_access_line_per_request_without_secrets(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        await served.client.get("/status?token=query-secret")
        await served.client.get("/releases", headers=OPS)
        await served.client.get("/releases")
        await served.client.post(
            "/poll", json={"id": "", "geographic_area": AREA, "number_of_children": 0}
        )
        await served.client.get("/nowhere%0A2026-01-01 INFO forged", headers=OPS)
    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/status", 200),
        ("GET", "/releases", 200),
        ("GET", "/releases", 401),
        ("POST", "/poll", 200),
        ("GET", "/nowhere%0A2026-01-01%20INFO%20forged", 404),
    ]
    for record in lines:
        message = record.getMessage()
        assert "\n" not in message
        assert OPERATOR_TOKEN not in message
        assert "query-secret" not in message
        assert isinstance(record.duration_ms, float)  # type: ignore[attr-defined]
        assert record.duration_ms >= 0  # type: ignore[attr-defined]
        assert record.client  # type: ignore[attr-defined]
    assert lines[0].getMessage().startswith(lines[0].client + ' "GET /status" 200 ')  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_access_log_can_be_left_out(caplog: pytest.LogCaptureFixture) -> None:
    node = Served(access_log=False)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        assert (await node.client.get("/status")).status_code == 200
    assert [r for r in caplog.records if r.name == ACCESS_LOGGER] == []
    await node.client.aclose()


@pytest.mark.anyio
async def test_a_request_that_raises_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug")

    app = AccessLog(broken)
    scope = {"type": "http", "method": "GET", "path": "/x", "client": ("::1", 5)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER), pytest.raises(RuntimeError):
        await app(scope, receive, send)
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.status == 500  # type: ignore[attr-defined]
    assert record.getMessage().startswith('[::1]:5 "GET /x" 500 ')


# -- tokens from the environment -------------------------------------------------------------------


def test_bare_and_named_tokens() -> None:
    assert parse_tokens("", variable="V") == []
    assert parse_tokens(" a-token , ,b-token,", variable="V") == [("", "a-token"), ("", "b-token")]
    assert parse_tokens("alice=tok-1, bob = tok-2", variable="V") == [
        ("alice", "tok-1"),
        ("bob", "tok-2"),
    ]
    # base64 padding is part of a bare token, and of a named one
    assert parse_tokens("YWJjZA==,eHl6=", variable="V") == [("", "YWJjZA=="), ("", "eHl6=")]
    assert parse_tokens("alice=YWJjZA==", variable="V") == [("alice", "YWJjZA==")]


@pytest.mark.parametrize(
    ("text", "named", "match"),
    [
        ("alice=tok-1,tok-2", None, "name every token"),
        ("tok-1", True, "every entry must be name=token"),
        ("alice=tok-1", False, "not name=token"),
        ("alice=tok-1,alice=tok-2", None, "a name is given twice"),
        ("alice=tok-1,bob=tok-1", None, "the same token is given twice"),
        ("alice=bad token", None, "entry 1"),
        ("ok,caf\u00e9-token", None, "entry 2"),
    ],
)
def test_unusable_token_variables_are_refused_without_showing_tokens(
    text: str, named: bool | None, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        parse_tokens(text, variable="RC_X", named=named)
    assert "RC_X" in caught.value.message
    for secret in ("tok-1", "tok-2", "bad token", "caf\u00e9"):
        assert secret not in caught.value.message


def test_tokens_from_env() -> None:
    tokens = tokens_from_env(
        {
            "RC_OPERATOR_TOKENS": "alice=op-token-0123456789",
            "RC_CALLBACK_TOKENS": "portal=portal-token-0123,SV_1=other-token-0123",
            "RC_TASK_SERVICE_TOKEN": " outbound-token ",
            "UNRELATED": "x",
        }
    )
    assert tokens.operator_tokens() == {"alice": "op-token-0123456789"}
    assert tokens.callback_tokens() == {"portal": "portal-token-0123", "SV_1": "other-token-0123"}
    assert tokens.task_service == "outbound-token"
    assert "token-0123" not in repr(tokens)
    assert "outbound" not in repr(tokens)
    bare = tokens_from_env({"RC_OPERATOR_TOKENS": "op-token-0123456789,op-token-9876543210"})
    assert bare.operator_tokens() == ["op-token-0123456789", "op-token-9876543210"]
    assert bare.callback_tokens() == {}
    assert bare.task_service is None
    assert tokens_from_env({}) == ServeTokens()


def test_token_variable_rules(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="RC_CALLBACK_TOKENS: every entry"):
        tokens_from_env({"RC_CALLBACK_TOKENS": "portal-token-0123"})
    with pytest.raises(ConfigurationError, match="also an operator token"):
        tokens_from_env(
            {
                "RC_OPERATOR_TOKENS": "same-token-0123456",
                "RC_CALLBACK_TOKENS": "p=same-token-0123456",
            }
        )
    with pytest.raises(ConfigurationError, match="RC_TASK_SERVICE_TOKEN"):
        tokens_from_env({"RC_TASK_SERVICE_TOKEN": "two words"})
    with caplog.at_level(logging.WARNING, logger="release_coordinator.server.serve"):
        tokens_from_env({"RC_OPERATOR_TOKENS": "short"})
    assert "shorter than 16 characters" in caplog.text
    assert "short" not in caplog.text.replace("shorter", "")


# -- the command's refusals -----------------------------------------------------------------------


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean environment and working directory for ``main(["serve", ...])``."""
    for name in (
        "RC_OPERATOR_TOKENS",
        "RC_CALLBACK_TOKENS",
        "RC_TASK_SERVICE_TOKEN",
        "RC_PARENT_TOKEN",
        "RC_DB",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield tmp_path
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_serve_refuses_to_start_without_operator_tokens(
    command: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "RC_OPERATOR_TOKENS" in err
    assert "--allow-anonymous" in err
    assert list(command.iterdir()) == []  # no database was opened


def test_serve_refuses_a_bad_token_variable(
    command: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RC_OPERATOR_TOKENS", "alice=not a token")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "RC_OPERATOR_TOKENS, entry 1" in err
    assert "not a token" not in err
    assert list(command.iterdir()) == []


def test_serve_refuses_a_port_in_use(
    command: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RC_OPERATOR_TOKENS", OPERATOR_TOKEN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert list(command.iterdir()) == []


@pytest.mark.anyio
async def test_serve_async_checks_its_arguments_first(command: Path) -> None:
    with pytest.raises(ConfigurationError, match="RC_OPERATOR_TOKENS"):
        await serve.serve_async(db="memory", port=0, tokens=ServeTokens())
    with pytest.raises(ConfigurationError, match="log level"):
        await serve.serve_async(db="memory", port=0, log_level="loud")
    with pytest.raises(ConfigurationError, match="port"):
        await serve.serve_async(db="memory", port=70000, allow_anonymous=True)
    with pytest.raises(ConfigurationError, match=r"--lease-seconds .* at least twice"):
        await serve.serve_async(
            db="memory", port=0, allow_anonymous=True, lease_seconds=1, tick_interval=1
        )
    with pytest.raises(ConfigurationError, match="--workers 2 needs a database"):
        await serve.serve_async(db="memory", port=0, allow_anonymous=True, workers=2)


def test_the_listening_socket_is_tcp() -> None:
    # asyncio sets TCP_NODELAY on the connections of an IPPROTO_TCP socket only
    with serve_settings.listen_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] != 0


@pytest.mark.anyio
async def test_a_failed_startup_answers_1_and_closes_the_stores(
    command: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []

    class Store(MemoryStore):
        async def close(self) -> None:
            closed.append("store")

    class Rollouts(MemoryRolloutStore):
        async def close(self) -> None:
            closed.append("rollouts")

    async def stores(db: str) -> tuple[Store, Rollouts, str]:
        assert db == "sqlite:///somewhere.db"
        return Store(), Rollouts(), "spies"

    async def load(self: RolloutManager) -> None:
        raise RuntimeError("the store is broken")

    monkeypatch.setattr(serve, "_open_stores", stores)
    monkeypatch.setattr(RolloutManager, "load", load)
    status = await serve.serve_async(
        db="sqlite:///somewhere.db", host="127.0.0.1", port=0, allow_anonymous=True
    )
    assert status == 1
    assert sorted(closed) == ["rollouts", "store"]


# -- the settings: poll interval, retry budget, lost_after, tick interval ------------------------


def test_the_settings_default_to_the_library_defaults() -> None:
    assert CoordinatorConfig().poll_interval == serve.DEFAULT_POLL_INTERVAL
    assert RetryPolicy().attempts == serve.DEFAULT_RETRY_ATTEMPTS
    assert RolloutManager().lost_after == serve.DEFAULT_LOST_AFTER
    tick = inspect.signature(rollout_app).parameters["tick_interval"].default
    assert tick == serve.DEFAULT_TICK_INTERVAL
    assert RolloutManager().lease_seconds == serve.DEFAULT_LEASE_SECONDS
    for name in (
        "tick_interval",
        "poll_interval",
        "retry_attempts",
        "lost_after",
        "lease_seconds",
        "workers",
        "log_format",
    ):
        async_default = inspect.signature(serve.serve_async).parameters[name].default
        assert inspect.signature(serve.serve).parameters[name].default == async_default


def test_the_help_names_each_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (
        ("--poll-interval", serve.DEFAULT_POLL_INTERVAL),
        ("--retry-attempts", serve.DEFAULT_RETRY_ATTEMPTS),
        ("--lost-after", serve.DEFAULT_LOST_AFTER),
        ("--tick-interval", serve.DEFAULT_TICK_INTERVAL),
        ("--lease-seconds", serve.DEFAULT_LEASE_SECONDS),
        ("--workers", 1),
    ):
        start = text.rindex(f"{option} ")  # its entry, after the usage line
        end = text.index("(default: ", start)
        shown = text[end + len("(default: ") :].split(")")[0]
        assert float(shown) == default, (option, shown)
    for option in ("--parent URL", "--relay-id ID", "--area FILE", "RC_PARENT_TOKEN"):
        assert option in text


class Built:
    """What ``serve`` built, caught at :func:`service_app`; no server ever starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = serve.service_app

        def spy(coordinator: Coordinator, manager: RolloutManager, **options: Any) -> Starlette:
            self.calls.append({"coordinator": coordinator, "manager": manager, **options})
            return real(coordinator, manager, **options)

        async def no_server(*args: Any, **options: Any) -> bool:
            return False  # never started: serve answers 1

        monkeypatch.setattr(serve, "service_app", spy)
        monkeypatch.setattr(serve.servers, "run", no_server)

    @property
    def one(self) -> dict[str, Any]:
        assert len(self.calls) == 1
        return self.calls[0]


def test_the_settings_reach_the_coordinator_and_the_manager(
    command: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Built(monkeypatch)
    argv = ["serve", "--db", "memory", "--port", "0", "--allow-anonymous"]
    assert main([*argv, "--poll-interval", "0.25", "--retry-attempts", "1"]) == 1
    assert main([*argv, "--lost-after", "7.5", "--tick-interval", "0.5"]) == 1
    first, second = built.calls
    assert first["coordinator"].config.poll_interval == 0.25
    assert first["coordinator"].config.retry.attempts == 1
    assert first["coordinator"].config.retry.base_delay == RetryPolicy().base_delay
    assert first["manager"].lost_after == serve.DEFAULT_LOST_AFTER
    assert first["tick_interval"] == serve.DEFAULT_TICK_INTERVAL
    assert first["relay"] is None
    assert second["coordinator"].config.poll_interval == serve.DEFAULT_POLL_INTERVAL
    assert second["coordinator"].config.retry.attempts == serve.DEFAULT_RETRY_ATTEMPTS
    assert second["manager"].lost_after == 7.5
    assert second["tick_interval"] == 0.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--poll-interval", "0"], "--poll-interval must be a positive number of seconds"),
        (["--poll-interval", "-1"], "--poll-interval must be a positive number of seconds"),
        (["--poll-interval", "nan"], "--poll-interval must be a positive number of seconds"),
        (["--poll-interval", "soon"], "argument --poll-interval: invalid float value"),
        (["--retry-attempts", "0"], "--retry-attempts must be a whole number of at least 1"),
        (["--retry-attempts", "2.5"], "argument --retry-attempts: invalid int value"),
        (["--lost-after", "0"], "--lost-after must be a positive number of seconds"),
        (["--lost-after", "inf"], "--lost-after must be a positive number of seconds"),
        (["--tick-interval", "-0.5"], "--tick-interval must be a positive number of seconds"),
        (["--tick-interval", ""], "argument --tick-interval: invalid float value"),
        (["--parent", "ftp://top.example"], "--parent: 'ftp://top.example' is not an http(s)"),
        (["--parent", "top.example"], "--parent: 'top.example' is not an http(s)"),
        (["--relay-id", "r1"], "--relay-id needs --parent"),
        (["--parent", "http://127.0.0.1:9", "--relay-id", " r1"], "--relay-id must be printable"),
        (["--parent", "http://127.0.0.1:9", "--relay-id", "r" * 257], "at most 256 characters"),
        (["--area", "missing.geojson"], "--area missing.geojson: cannot read it"),
    ],
)
def test_unusable_settings_exit_2_naming_the_option(
    command: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    built = Built(monkeypatch)
    argv = ["serve", "--port", "0", "--allow-anonymous", *options]  # the default SQLite file
    try:
        status = main(argv)
    except SystemExit as stopped:  # argparse's own refusals
        status = int(stopped.code or 0)
    assert status == 2
    assert message in capsys.readouterr().err
    assert built.calls == []
    assert list(command.iterdir()) == []  # refused before the database was opened


def test_an_area_without_a_parent_is_refused(
    command: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (command / "area.geojson").write_text(json.dumps(AREA))
    argv = ["serve", "--db", "memory", "--port", "0", "--allow-anonymous"]
    assert main([*argv, "--area", "area.geojson"]) == 2
    assert "--area needs --parent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"type": "Point", "coordinates": [5, 45]}', "not a valid area: area.type"),
        (
            '{"type": "Polygon", "coordinates": [[[5, 45], [6, 45], [6, 46], [5, 46]]]}',
            "not a valid area: area.coordinates",
        ),
    ],
)
def test_an_area_file_that_is_no_area_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "area.geojson"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=f"--area {path}") as caught:
        area_from_file(path)
    assert message in caught.value.message


def test_an_area_file_holds_a_polygon_or_a_feature(tmp_path: Path) -> None:
    polygon, feature = tmp_path / "polygon.geojson", tmp_path / "feature.geojson"
    polygon.write_text(json.dumps(AREA))
    feature.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": AREA}))
    assert area_from_file(polygon) == Area.from_geojson(AREA)
    assert area_from_file(str(feature)) == Area.from_geojson(AREA)


# -- relay mode -----------------------------------------------------------------------------------


def test_parent_makes_the_manager_a_relay_under_http_parent(
    command: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built = Built(monkeypatch)
    monkeypatch.setenv("RC_PARENT_TOKEN", "parent-secret-0123456789")
    (command / "area.geojson").write_text(json.dumps(AREA))
    argv = ["serve", "--db", "memory", "--port", "0", "--allow-anonymous", "--tick-interval", "2"]
    with caplog.at_level(logging.INFO, logger="release_coordinator.server.serve"):
        status = main(
            [
                *argv,
                "--parent",
                "http://user:pw@127.0.0.1:9/edge/?key=query-secret",
                "--relay-id",
                "berlin",
                "--area",
                "area.geojson",
            ]
        )
    assert status == 1  # the spy kept the server from starting
    relay = built.one["relay"]
    assert isinstance(relay, Relay)
    assert relay.manager is built.one["manager"]
    assert (relay.id, relay.own_area, relay.area) == ("berlin", True, Area.from_geojson(AREA))
    assert relay.interval == 2.0  # it polls its parent at each tick
    assert isinstance(relay.parent, HttpParent)
    assert relay.parent.token == "parent-secret-0123456789"
    assert relay.parent._client.is_closed  # closed at the stop
    assert "relay under http://127.0.0.1:9/edge/ as berlin" in caplog.text
    for secret in ("parent-secret", "query-secret", "pw@"):
        assert secret not in caplog.text


def test_a_relay_without_area_or_id_takes_its_childrens_and_the_parents(
    command: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Built(monkeypatch)
    argv = ["serve", "--db", "memory", "--port", "0", "--allow-anonymous"]
    assert main([*argv, "--parent", "https://top.example/edge"]) == 1
    relay = built.one["relay"]
    assert (relay.id, relay.own_area, relay.area) == ("", False, None)
    assert relay.parent.token is None
    assert relay.interval == serve.DEFAULT_TICK_INTERVAL


def test_the_parent_token_comes_from_the_environment() -> None:
    tokens = tokens_from_env({"RC_PARENT_TOKEN": " parent-token-0123 "})
    assert tokens.parent == "parent-token-0123"
    assert "parent-token" not in repr(tokens)
    assert "parent=set" in repr(tokens)
    assert tokens_from_env({}).parent is None
    with pytest.raises(ConfigurationError, match="RC_PARENT_TOKEN") as caught:
        tokens_from_env({"RC_PARENT_TOKEN": "two words"})
    assert "two words" not in caught.value.message


@pytest.mark.anyio
async def test_a_relay_app_adopts_its_parents_release_and_reports_upward() -> None:
    """serve's relay mode in process: a top service_app, a relay service_app whose Relay
    reaches the top over HttpParent (through ASGITransport), a leaf below the relay."""
    top = Served(tick_interval=0.01)
    local = RolloutManager(MemoryRolloutStore(), lost_after=1e9)
    link = HttpParent("http://top.test", transport=httpx.ASGITransport(app=top.app))
    relay = Relay(local, link, relay_id="r1", interval=0.01)
    middle = service_app(
        Coordinator(MemoryStore(), MemoryTransport()),
        local,
        operator_tokens={"alice": OPERATOR_TOKEN},
        relay=relay,
    )
    leaf = SimulatedLeaf(
        HttpParent("http://relay.test", transport=httpx.ASGITransport(app=middle)),
        AREA,
        leaf_id="leaf-1",
        calls_per_step=60,
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(top.client.aclose)
        stack.push_async_callback(link.aclose)
        await stack.enter_async_context(top.app.router.lifespan_context(top.app))
        await stack.enter_async_context(middle.router.lifespan_context(middle))
        await leaf.step()  # registers below the relay; the relay then polls the top
        await wait_until(lambda: top.manager.children(), "the relay registered at the top")
        assert [(c.id, c.number_of_children) for c in await top.manager.children()] == [("r1", 1)]
        await top.manager.create_rollout(rollout_bundle(), Area.from_geojson(AREA))
        for _ in range(200):
            if leaf.done:
                break
            await leaf.step()
            await asyncio.sleep(0.01)
        assert (leaf.outcome, leaf.history) == ("rolled_out", ["canary-10", "ab-50"])

        async def done_at_the_top() -> bool:
            rows = await top.manager.store.child_releases("42")
            return [(c.child_id, c.status) for c in rows] == [("r1", ReleaseStatus.DONE)]

        await wait_until(done_at_the_top, "the top counted the relay done")
        rows = await top.manager.store.child_releases("42")
        assert rows[0].outcome.value == "rolled_out"
        assert (await local.get_rollout("42")).gated


async def wait_until(check: Any, what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {WAIT:g}s: {what}")


# -- the stores -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_over_a_database_both_stores_share_one_engine(tmp_path: Path) -> None:
    store, rollouts, described = await serve._open_stores(f"sqlite:///{tmp_path / 'rc.db'}")
    try:
        assert isinstance(store, SQLStore)
        assert isinstance(rollouts, SQLRolloutStore)
        assert described == store.url
        before = store.rollout_changes
        await rollouts.save_child(Child("c1", Area.from_geojson(AREA)))
        assert store.rollout_changes > before  # one engine: the write went through the store's
        await rollouts.close()  # leaves the shared engine open
        assert await store.list_services() == []
    finally:
        await store.close()
