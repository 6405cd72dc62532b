"""HttpTransport against scripted answers (httpx.MockTransport), and task_service_app at its edge.

The behaviour both transports share is in ``tests/contract/test_transport_contract.py``; this
module covers what only HTTP has: headers, status codes, bodies that are not JSON, httpx's own
exceptions, and the server's refusals (401, 405, 413, invalid JSON).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import release_coordinator
from asgi_support import asgi_post
from release_coordinator import (
    BadGatewayError,
    ConfigurationError,
    HttpTransport,
    KitTask,
    MalformedAnswerError,
    PeerAnswerError,
    PeerTimeoutError,
    PeerUnreachableError,
    ServiceStatus,
    TaskAction,
    TaskAnswer,
    TaskRequest,
    TaskService,
    TaskServiceKit,
    TransientTransportError,
    TransportError,
)
from release_coordinator.coordinator.wire import REPORTED_STATES, decode_answer
from release_coordinator.server.taskservice_app import DEFAULT_MAX_BODY, task_service_app

pytestmark = pytest.mark.anyio

SERVICE = TaskService(id="TS_1", name="svc", url="http://svc.test/base")
REQUEST = TaskRequest(TaskAction.INITIALIZE, "TA_1", "RE_1", ("SD_1", "SD_2"))
GOOD = {"task_id": "TA_1", "release_id": "RE_1", "state": "pending", "progress": 0}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _answering(status: int = 200, **response: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, **response)

    return handler


def _raising(error: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


async def _send(handler: Handler, request: TaskRequest = REQUEST, **options: Any) -> TaskAnswer:
    transport = HttpTransport(transport=httpx.MockTransport(handler), **options)
    try:
        return await transport.send(SERVICE, request)
    finally:
        await transport.aclose()


async def _status(handler: Handler, **options: Any) -> ServiceStatus:
    transport = HttpTransport(transport=httpx.MockTransport(handler), **options)
    try:
        return await transport.status(SERVICE)
    finally:
        await transport.aclose()


class Recorder:
    """A MockTransport handler that keeps every request and answers GOOD (or a status)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"name": "svc", "message": "ok", "version": "9"})
        return httpx.Response(200, json=GOOD)


# -- what a request looks like -----------------------------------------------------------------


async def test_a_task_request_is_a_json_post_with_the_protocol_headers() -> None:
    recorder = Recorder()
    answer = await _send(recorder, token="s3cret")
    assert answer == TaskAnswer("TA_1", "RE_1", "pending", 0)
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "http://svc.test/base/tasks"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["user-agent"] == f"release-coordinator/{release_coordinator.__version__}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert json.loads(request.content) == {
        "action": "initialize",
        "task_id": "TA_1",
        "release_id": "RE_1",
        "studies": ["SD_1", "SD_2"],
    }


async def test_status_is_a_get_without_a_body() -> None:
    recorder = Recorder()
    status = await _status(recorder, token="s3cret")
    assert status == ServiceStatus("svc", "ok", "9")
    (request,) = recorder.requests
    assert request.method == "GET"
    assert str(request.url) == "http://svc.test/base/status"
    assert request.content == b""
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["user-agent"].startswith("release-coordinator/")


async def test_a_trailing_slash_in_the_base_url_is_not_doubled() -> None:
    recorder = Recorder()
    transport = HttpTransport(transport=httpx.MockTransport(recorder))
    service = TaskService(id="TS_2", name="s", url="https://svc.test/base/")
    await transport.send(service, REQUEST)
    await transport.aclose()
    assert str(recorder.requests[0].url) == "https://svc.test/base/tasks"


async def test_no_token_no_authorization_header() -> None:
    recorder = Recorder()
    await _send(recorder)
    assert "authorization" not in recorder.requests[0].headers


async def test_a_token_per_service() -> None:
    recorder = Recorder()
    tokens = {"TS_1": "one"}
    transport = HttpTransport(
        transport=httpx.MockTransport(recorder), token=lambda service: tokens.get(service.id)
    )
    other = TaskService(id="TS_2", name="other", url="http://other.test")
    await transport.send(SERVICE, REQUEST)
    await transport.send(other, REQUEST)
    await transport.status(SERVICE)
    await transport.aclose()
    first, second, third = recorder.requests
    assert first.headers["authorization"] == "Bearer one"
    assert "authorization" not in second.headers
    assert third.headers["authorization"] == "Bearer one"


async def test_a_custom_user_agent_and_a_host_client() -> None:
    recorder = Recorder()
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
    transport = HttpTransport(client=client, user_agent="portal/2")
    await transport.send(SERVICE, REQUEST)
    await transport.aclose()
    assert not client.is_closed  # the host's client is the host's to close
    await client.aclose()
    assert recorder.requests[0].headers["user-agent"] == "portal/2"


# -- answers -----------------------------------------------------------------------------------


async def test_a_percent_progress_is_read_as_an_int() -> None:
    answer = await _send(_answering(json={**GOOD, "state": "running", "progress": "42%"}))
    assert answer.progress == 42
    assert answer.state == "running"


@pytest.mark.parametrize("code", [502, 504])
async def test_gateway_errors_are_transient(code: int) -> None:
    with pytest.raises(BadGatewayError) as caught:
        await _send(_answering(code, text="upstream down"))
    assert isinstance(caught.value, TransientTransportError)
    assert caught.value.peer == SERVICE.url
    with pytest.raises(BadGatewayError):
        await _status(_answering(code))


@pytest.mark.parametrize("code", [500, 400, 404, 503, 401, 409, 418, 204, 301])
async def test_other_statuses_are_peer_answers(code: int) -> None:
    with pytest.raises(PeerAnswerError) as caught:
        await _send(_answering(code, json={"message": "no"}))
    error = caught.value
    assert error.status_code == code
    assert not isinstance(error, TransientTransportError)
    assert not isinstance(error, MalformedAnswerError)
    assert json.loads(error.body) == {"message": "no"}
    with pytest.raises(PeerAnswerError) as caught_status:
        await _status(_answering(code))
    assert caught_status.value.status_code == code


async def test_a_200_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedAnswerError) as caught:
        await _send(_answering(text="<html>hello</html>"))
    assert caught.value.status_code == 200
    assert "<html>" in caught.value.body
    with pytest.raises(MalformedAnswerError):
        await _status(_answering(text="ok"))


@pytest.mark.parametrize(
    "body",
    [
        {"task_id": "TA_1", "release_id": "RE_1"},  # no state
        {**GOOD, "state": "done"},
        {**GOOD, "progress": 101},
        {**GOOD, "task_id": 7},
        [GOOD],
        None,
    ],
)
async def test_a_json_200_that_breaks_the_protocol_is_malformed(body: Any) -> None:
    with pytest.raises(MalformedAnswerError) as caught:
        await _send(_answering(json=body))
    assert caught.value.status_code == 200


async def test_a_status_without_a_name_is_malformed() -> None:
    with pytest.raises(MalformedAnswerError):
        await _status(_answering(json={"message": "hi"}))


# -- httpx's exceptions never leave --------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("refused"), PeerUnreachableError),
        (httpx.ReadError("reset"), PeerUnreachableError),
        (httpx.RemoteProtocolError("closed"), PeerUnreachableError),
        (httpx.ReadTimeout("slow"), PeerTimeoutError),
        (httpx.ConnectTimeout("slow"), PeerTimeoutError),
        (httpx.PoolTimeout("busy"), PeerTimeoutError),
    ],
)
async def test_network_trouble_is_transient(error: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught:
        await _send(_raising(error))
    assert isinstance(caught.value, TransientTransportError)
    assert isinstance(caught.value.__cause__, httpx.HTTPError)
    with pytest.raises(expected):
        await _status(_raising(error))


async def test_other_httpx_errors_are_transport_errors() -> None:
    with pytest.raises(TransportError) as caught:
        await _send(_raising(httpx.UnsupportedProtocol("nope")))
    assert not isinstance(caught.value, TransientTransportError | PeerAnswerError)


@pytest.mark.parametrize(
    "url",
    [
        "memory://svc",
        "ftp://svc.test",
        "svc.test/base",
        "",
        "http://",
        "http://[::1",
        "https://\x00",
    ],
)
async def test_a_base_url_that_http_cannot_reach_is_refused_before_sending(url: str) -> None:
    # Not a ConfigurationError (that would crash a release's fan-out): a TransportError that
    # is no answer and no transient trouble, so nothing retries it; and nothing is sent.
    recorder = Recorder()
    transport = HttpTransport(transport=httpx.MockTransport(recorder))
    assert transport.check_url(url)
    service = TaskService(id="TS_9", name="svc", url=url)
    for call in (transport.send(service, REQUEST), transport.status(service)):
        with pytest.raises(TransportError) as caught:
            await call
        assert not isinstance(caught.value, TransientTransportError | PeerAnswerError)
        assert caught.value.peer == url
    await transport.aclose()
    assert recorder.requests == []


def test_http_urls_are_reachable() -> None:
    transport = HttpTransport()
    assert transport.check_url("http://svc.test") is None
    assert transport.check_url("https://svc.test:8443/base/") is None


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        HttpTransport(timeout=0)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and Infinity too: Python's json writes and reads them
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
NEAR_ANSWERS = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.sampled_from(["TA_1", ""]) | JSON_LEAVES,
        "release_id": st.sampled_from(["RE_1", "x" * 300]) | JSON_LEAVES,
        "state": st.sampled_from(sorted(REPORTED_STATES)) | JSON_LEAVES,
        "progress": st.sampled_from([0, 50, 100, "7%", " 99 % ", -1, 101, 2.0, 2.5]) | JSON_LEAVES,
        "name": JSON_LEAVES,
        "date_submitted": JSON_LEAVES,
    },
)
ANSWER_BODIES = (
    st.binary(max_size=64)
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | NEAR_ANSWERS.map(lambda value: json.dumps(value).encode())
)
ANSWER_HEADERS = st.dictionaries(
    st.sampled_from(["content-type", "content-encoding"]),
    st.sampled_from(
        [
            "application/json",
            "text/plain; charset=latin-1",
            "text/html; charset=no-such",
            *("gzip", "deflate", "identity", "zstd-ish"),
        ]
    ),
    max_size=2,
)


@FUZZ
@given(status=st.integers(100, 599), body=ANSWER_BODIES, headers=ANSWER_HEADERS)
async def test_any_answer_is_an_answer_or_a_transport_error(
    anyio_backend: str, status: int, body: bytes, headers: dict[str, str]
) -> None:
    handler = _answering(status, content=body, headers=headers)
    for call in (_send(handler), _status(handler)):
        outcome: object
        try:
            outcome = await call
        except TransportError as error:
            outcome = error
        if isinstance(outcome, TaskAnswer | ServiceStatus):
            assert status == 200
        elif type(outcome) is TransportError:
            # a body httpx cannot decode (a content-encoding that lies), whatever the status
            assert "content-encoding" in headers
        elif status in (502, 504):
            assert isinstance(outcome, BadGatewayError)
        else:
            assert isinstance(outcome, PeerAnswerError)
            assert outcome.status_code == status
            assert isinstance(outcome, MalformedAnswerError) == (status == 200)


# -- hostile answers and odd inputs -------------------------------------------------------------


async def test_a_deeply_nested_answer_is_malformed() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedAnswerError):
        await _send(_answering(content=deep))


async def test_an_oversized_answer_is_refused_without_reading_it_all() -> None:
    from release_coordinator.transports.http import MAX_ANSWER_BYTES

    with pytest.raises(MalformedAnswerError, match="more than"):
        await _send(_answering(content=b" " * (MAX_ANSWER_BYTES + 1)))


async def test_a_gateway_answer_is_transient_whatever_its_body() -> None:
    # A raw ASGI app (MockTransport would decode the body inside the transport itself).
    async def broken_gateway(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-encoding", b"gzip"), (b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 504, "headers": headers})
        await send({"type": "http.response.body", "body": b"\x00 not gzip at all"})

    transport = HttpTransport(transport=httpx.ASGITransport(app=broken_gateway))
    try:
        with pytest.raises(BadGatewayError):
            await transport.send(SERVICE, REQUEST)
    finally:
        await transport.aclose()


async def test_a_study_with_a_lone_surrogate_travels_as_escaped_json() -> None:
    recorder = Recorder()
    request = TaskRequest(TaskAction.INITIALIZE, "TA_1", "RE_1", ("SD_\ud800",))
    await _send(recorder, request)
    (sent,) = recorder.requests
    assert json.loads(sent.content)["studies"] == ["SD_\ud800"]


async def test_tokens_must_be_printable_ascii() -> None:
    with pytest.raises(release_coordinator.ConfigurationError, match="ASCII"):
        HttpTransport(token="tøk")
    with pytest.raises(release_coordinator.TransportError, match="ASCII"):
        await _send(Recorder(), token=lambda service: "tøk")


# -- task_service_app at its edge --------------------------------------------------------------


class FaultyKit(TaskServiceKit):
    """A kit whose accept hook can be made to blow up (a bug in the host's code)."""

    def __init__(self) -> None:
        super().__init__("svc")
        self.explode = False

    async def accept(self, task: KitTask) -> bool:
        if self.explode:
            raise RuntimeError("bug in the host")
        return True


@pytest.fixture
async def kit(anyio_backend: str) -> AsyncIterator[FaultyKit]:
    kit = FaultyKit()
    yield kit
    await kit.aclose()


def _client(kit: TaskServiceKit, **options: Any) -> httpx.AsyncClient:
    app = task_service_app(kit, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test")


def _assert_error_shape(response: httpx.Response, code: str | None = None) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


async def test_a_token_is_required_when_set(kit: FaultyKit) -> None:
    async with _client(kit, token="s3cret") as client:
        for response in (
            await client.get("/status"),
            await client.post("/tasks", json=REQUEST.to_json()),
            await client.get("/status", headers={"Authorization": "Bearer wrong"}),
            await client.get("/status", headers={"Authorization": "s3cret"}),
            await client.get("/status", headers=[(b"Authorization", b"Bearer s3cr\xe9t")]),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            _assert_error_shape(response, "unauthorized")
        assert kit.tasks == {}
        ok = await client.get("/status", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert ok.json()["name"] == "svc"


async def test_http_transport_with_the_token_reaches_a_guarded_app(kit: FaultyKit) -> None:
    app = task_service_app(kit, token="s3cret")
    service = TaskService(id="TS_1", name="svc", url="http://svc.test")
    good = HttpTransport(transport=httpx.ASGITransport(app=app), token="s3cret")
    bad = HttpTransport(transport=httpx.ASGITransport(app=app))
    try:
        assert (await good.send(service, REQUEST)).state == "pending"
        with pytest.raises(PeerAnswerError) as caught:
            await bad.send(service, REQUEST)
        assert caught.value.status_code == 401
    finally:
        await good.aclose()
        await bad.aclose()


async def test_a_body_too_large_is_413(kit: FaultyKit) -> None:
    async with _client(kit, max_body=100) as client:
        declared = await client.post("/tasks", content=b" " * 101)
        assert declared.status_code == 413
        _assert_error_shape(declared, "too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(5):
                yield b" " * 30

        streamed = await client.post("/tasks", content=chunks())
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        _assert_error_shape(streamed, "too_large")

        body = json.dumps(REQUEST.to_json(), separators=(",", ":")).encode()
        assert len(body) < 100
        fits = await client.post("/tasks", content=body.ljust(100))
        assert fits.status_code == 200
    async with _client(kit) as client:
        big = await client.post("/tasks", content=b" " * (DEFAULT_MAX_BODY + 1))
        assert big.status_code == 413


async def test_a_lying_content_length_is_counted_as_read(kit: FaultyKit) -> None:
    app = task_service_app(kit, max_body=100)
    status, _, _ = await asgi_post(
        app, "/tasks", [b" " * 60, b" " * 60], [(b"content-length", b"10")], host=b"svc.test"
    )
    assert status == 413


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'a': 1}", b"NaN", b'{"progress": Infinity}', b"\xff\xfe\xfd", b"[" * 100_000],
)
async def test_invalid_json_is_400_with_the_error_shape(kit: FaultyKit, body: bytes) -> None:
    async with _client(kit) as client:
        response = await client.post("/tasks", content=body)
    assert response.status_code == 400
    _assert_error_shape(response, "invalid")


async def test_an_invalid_request_lists_its_problems(kit: FaultyKit) -> None:
    async with _client(kit) as client:
        response = await client.post("/tasks", json={"action": "explode", "studies": "x"})
    assert response.status_code == 400
    error = _assert_error_shape(response, "invalid")
    paths = {problem["path"] for problem in error["details"]["problems"]}
    assert paths == {"action", "task_id", "release_id", "studies"}


async def test_wrong_methods_and_paths_are_json_errors(kit: FaultyKit) -> None:
    async with _client(kit, token="t") as client:
        wrong_get = await client.get("/tasks")
        wrong_post = await client.post("/status", json={})
        nowhere = await client.get("/nowhere")
    assert wrong_get.status_code == 405
    assert wrong_get.headers["allow"] == "POST"
    _assert_error_shape(wrong_get, "method_not_allowed")
    assert wrong_post.status_code == 405
    _assert_error_shape(wrong_post, "method_not_allowed")
    assert nowhere.status_code == 404
    _assert_error_shape(nowhere, "not_found")


async def test_the_kits_refusals_get_the_error_shape(kit: FaultyKit) -> None:
    async with _client(kit) as client:
        unknown = await client.post(
            "/tasks", json={"action": "get_status", "task_id": "TA_x", "release_id": "RE_1"}
        )
        assert unknown.status_code == 404
        assert "TA_x" in _assert_error_shape(unknown, "not_found")["message"]

        await client.post("/tasks", json=REQUEST.to_json())
        early = await client.post("/tasks", json={**REQUEST.to_json(), "action": "publish"})
        assert early.status_code == 400
        assert "not staged" in _assert_error_shape(early, "invalid")["message"]

        kit.healthy = False
        down = await client.get("/status")
        assert down.status_code == 503
        error = _assert_error_shape(down, "unavailable")
        assert error["details"]["name"] == "svc"


async def test_a_rejected_task_is_503_rejected() -> None:
    async def never(task: KitTask) -> bool:
        return False

    kit = TaskServiceKit("picky", accept=never)
    async with _client(kit) as client:
        response = await client.post("/tasks", json=REQUEST.to_json())
    assert response.status_code == 503
    assert "picky" in _assert_error_shape(response, "rejected")["message"]
    assert kit.tasks == {}


async def test_a_lone_surrogate_is_echoed_as_valid_json(kit: FaultyKit) -> None:
    async with _client(kit) as client:
        body = b'{"action": "initialize", "task_id": "TA_\\ud800", "release_id": "RE_1"}'
        response = await client.post("/tasks", content=body)
    assert response.status_code == 200
    assert response.content.isascii()
    assert response.json()["task_id"] == "TA_\ud800"


async def test_a_bug_in_the_kit_is_a_json_500_not_a_crash(
    kit: FaultyKit, caplog: pytest.LogCaptureFixture
) -> None:
    kit.explode = True
    async with _client(kit) as client:
        response = await client.post("/tasks", json=REQUEST.to_json())
    assert response.status_code == 500
    _assert_error_shape(response, "internal")
    assert "bug in the host" in caplog.text


async def test_the_apps_shutdown_stops_the_kits_jobs() -> None:
    gate = asyncio.Event()

    async def stage(task: KitTask) -> None:
        await gate.wait()

    kit = TaskServiceKit("slow", stage=stage)
    await kit.handle_task(REQUEST.to_json())
    await kit.handle_task({**REQUEST.to_json(), "action": "start"})
    assert kit._jobs  # a staging job is running
    app = task_service_app(kit)
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not kit._jobs


def test_max_body_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        task_service_app(TaskServiceKit("svc"), max_body=0)


# what a client can send: strict JSON (no NaN or Infinity; those are refused as invalid JSON)
STRICT_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
STRICT_VALUES = st.recursive(
    STRICT_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
TASK_IDS = st.sampled_from(["TA_1", "TA_2", ""]) | STRICT_LEAVES
REQUEST_BODIES = STRICT_VALUES | st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from([*(a.value for a in TaskAction), "INITIALIZE", ""])
        | STRICT_LEAVES,
        "task_id": TASK_IDS,
        "release_id": st.sampled_from(["RE_1", "RE_2", "x" * 300]) | STRICT_LEAVES,
        "studies": st.lists(st.text(max_size=6), max_size=3) | STRICT_VALUES,
        "extra": STRICT_VALUES,
    },
)


def _snapshot(kit: TaskServiceKit) -> dict[str, tuple[Any, ...]]:
    return {
        task_id: (task.release_id, task.state, task.progress, task.studies)
        for task_id, task in kit.tasks.items()
    }


@FUZZ
@given(
    body=REQUEST_BODIES.map(lambda value: json.dumps(value, allow_nan=False).encode())
    | st.binary(max_size=64),
    staged=st.booleans(),
)
async def test_any_task_body_is_answered_and_a_refusal_changes_nothing(
    anyio_backend: str, body: bytes, staged: bool
) -> None:
    kit = TaskServiceKit("svc")
    await kit.handle_task({"action": "initialize", "task_id": "TA_1", "release_id": "RE_1"})
    if staged:
        kit.tasks["TA_1"].state = "staged"
    before = _snapshot(kit)
    try:
        async with _client(kit) as client:
            response = await client.post("/tasks", content=body)
        assert response.status_code < 500
        if response.status_code == 200:
            answer = decode_answer(response.json())
            assert answer.task_id in kit.tasks
        else:
            assert response.status_code in (400, 404, 503)
            _assert_error_shape(response)
            assert _snapshot(kit) == before
    finally:
        await kit.aclose()


@pytest.mark.anyio
async def test_a_password_in_a_service_url_stays_out_of_errors_and_events() -> None:
    """An unreachable task service whose URL carries a password: the transport's errors and
    the events the coordinator logs of them show it as ``***``."""
    from release_coordinator import Coordinator, CoordinatorConfig, MemoryStore, RetryPolicy

    transport = HttpTransport()
    config = CoordinatorConfig(poll_interval=0.01, retry=RetryPolicy(attempts=1))
    coordinator = Coordinator(MemoryStore(), transport, config=config)
    try:
        service = await coordinator.register_service(
            "svc", "http://svc:s3cret-pass@127.0.0.1:9/x", check=False
        )
        with pytest.raises(TransportError) as failed:
            await transport.status(service)
        assert "s3cret-pass" not in str(failed.value)
        assert "svc:***@127.0.0.1:9/x" in failed.value.peer
        async with coordinator.running():
            release = await coordinator.create_release("r1")
            await coordinator.wait(release.id, timeout=10)
        text = " ".join(e.message for e in await coordinator.events())
        assert "cannot reach http://svc:***@127.0.0.1:9/x" in text
        assert "s3cret-pass" not in text
    finally:
        await coordinator.close()
        await transport.aclose()
