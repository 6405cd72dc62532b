"""What the ASGI apps share: JSON errors, bounded bodies, bearer tokens, query parameters.

- **Errors.** Every answer that is not a success is JSON ``{"error": {"code", "message",
  "details"}}`` (the shape of :meth:`~release_coordinator.errors.ReleaseCoordinatorError.to_dict`).
  A refusal decided at the HTTP edge is a :class:`Refusal`; a library error keeps its own
  ``code`` and ``http_status``. :func:`guarded` wraps an endpoint so that nothing else leaves it:
  a bug answers a JSON 500 (and is logged), never a plain-text page.
- **Bodies.** :func:`read_body` reads at most ``max_body`` bytes, whatever ``Content-Length``
  claims (413 beyond); :func:`parse_json` takes strict JSON only (no ``NaN``/``Infinity``;
  400 otherwise); :func:`decode_object` decodes a body to its Struct, or to a JSON object for
  the endpoint's full checks; :func:`parse_multipart` reads a ``multipart/form-data`` body
  without extra dependencies.
- **Tokens.** :class:`TokenAuth` checks ``Authorization: Bearer <token>`` against configured
  tokens (compared in constant time) and/or a verifier the host supplies. Tokens are accepted
  in that header only (never in a URL, which ends up in access logs) and are never logged or
  echoed.

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import hmac
import http
import inspect
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn

import attrs

try:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "release_coordinator.server needs the server extra: "
        "pip install 'release-coordinator[server]'"
    ) from error

from release_coordinator.errors import ConfigurationError, ReleaseCoordinatorError
from release_coordinator.schemas import BodyDecoder

__all__ = [
    "CODES",
    "DEFAULT_MAX_BODY",
    "Endpoint",
    "JsonObjectEndpoint",
    "JsonWork",
    "Principal",
    "Refusal",
    "StatusFor",
    "TokenAuth",
    "Verifier",
    "VerifierAnswer",
    "bearer_token",
    "check_token",
    "decode_object",
    "error_body",
    "error_response",
    "failure_response",
    "forbidden",
    "guarded",
    "http_error",
    "json_response",
    "method_routes",
    "page_of",
    "paging",
    "parse_json",
    "parse_multipart",
    "phrase",
    "query_int",
    "read_asgi_body",
    "read_body",
    "read_json",
    "read_object",
    "refused",
    "unauthorized",
]

log = logging.getLogger(__name__)

#: Largest request body accepted by default (1 MiB).
DEFAULT_MAX_BODY = 1024 * 1024

#: The error ``code`` of a refusal, by status, when nothing more precise is known.
CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


# -- errors ----------------------------------------------------------------------------------


class Refusal(Exception):
    """A refusal decided at the HTTP edge, answered as a JSON error by :func:`guarded`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status, "error")
        self.details = details
        self.headers = dict(headers or {})


def error_body(code: str, message: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON error shape of :meth:`ReleaseCoordinatorError.to_dict`."""
    return {"error": {"code": code, "message": message, "details": dict(details)}}


def _jsonable(value: object, depth: int = 0) -> Any:
    """``value`` as strict JSON values (error details may hold enums, tuples, odd floats)."""
    if depth > 20:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


# One encoder and one decoder for every request: json.dumps/json.loads with options build a
# new one at each call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def json_response(status: int, content: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer. ASCII-escaped: a lone surrogate echoed from a request (``"\\ud800"`` is
    valid JSON) cannot be encoded as UTF-8, but it can be escaped; ``allow_nan=False`` keeps
    the output strict JSON."""
    return Response(
        _ENCODER.encode(content).encode("ascii"),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def refused(refusal: Refusal) -> Response:
    """The JSON answer of a :class:`Refusal`."""
    body = error_body(refusal.code, refusal.message, _jsonable(refusal.details))
    return json_response(refusal.status, body, refusal.headers)


def error_response(error: ReleaseCoordinatorError, status: int | None = None) -> Response:
    """The JSON answer of a library error: its ``to_dict()`` with its ``http_status`` (or
    ``status``)."""
    body = error.to_dict()
    body["error"]["details"] = _jsonable(body["error"]["details"])
    return json_response(status or error.http_status, body)


def phrase(status: int) -> str:
    """The reason phrase of an HTTP status (``Not Found``)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


#: How an app may change the status of a library error (``None``: the error's own).
StatusFor = Callable[[ReleaseCoordinatorError], int | None]

Endpoint = Callable[[Request], Awaitable[Response]]


def failure_response(
    error: Exception, status_for: StatusFor | None, method: str, path: str
) -> Response:
    """The JSON answer of an endpoint that raised ``error`` (see the module docstring); a bug
    (any exception that is not a refusal or a library error) is logged."""
    if isinstance(error, Refusal):
        return refused(error)
    if isinstance(error, ReleaseCoordinatorError):
        return error_response(error, status_for(error) if status_for else None)
    if isinstance(error, RecursionError):  # a value nested too deeply to even describe
        return refused(Refusal(400, "the request is nested too deeply"))
    log.error("%s %s failed", method, path, exc_info=error)
    return json_response(500, error_body("internal", f"internal error: {type(error).__name__}", {}))


def guarded(handler: Endpoint, *, status_for: StatusFor | None = None) -> Endpoint:
    """``handler`` answering every failure as a JSON error (see the module docstring)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as error:
            return failure_response(error, status_for, request.method, request.url.path)

    return endpoint


#: The work of a :class:`JsonObjectEndpoint`: the request's body (its Struct, or the JSON
#: object when the Struct's decoder refused it), its bytes and its ASGI scope in,
#: ``(status, JSON value)`` out; raises like any endpoint.
JsonWork = Callable[[Any, bytes, Scope], Awaitable[tuple[int, Any]]]

_JSON_HEADER = (b"content-type", b"application/json")


def decode_object(raw: bytes, decoder: BodyDecoder[Any] | None = None) -> Any:
    """A request body decoded by ``decoder`` (to its Struct), or, when it refuses the body
    (or none is given), as a JSON object: exactly the refusals of :func:`parse_json` and
    400 for another value. The endpoint's own checks then list every problem of the body."""
    if decoder is not None and (decoded := decoder.decode(raw)) is not None:
        return decoded
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise Refusal(400, "the body must be a JSON object", got=type(body).__name__)
    return body


class JsonObjectEndpoint:
    """A pure ASGI endpoint for a request whose body is a JSON object and whose answer is
    JSON: what :func:`guarded` around :func:`read_object` and :func:`json_response` does, byte
    for byte (same limits, same refusals, same answers), without building Starlette's
    ``Request`` and ``Response`` on the way of a success. For the busiest child endpoint
    (``POST /poll``), where they were a fifth of the app's time per request. With a
    ``decoder``, the body is decoded to its Struct from bytes (see :func:`decode_object`).
    """

    def __init__(
        self,
        work: JsonWork,
        *,
        max_body: int,
        status_for: StatusFor | None = None,
        decoder: BodyDecoder[Any] | None = None,
    ) -> None:
        self.work = work
        self.max_body = max_body
        self.status_for = status_for
        self.decoder = decoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = await read_asgi_body(scope, receive, self.max_body)
            body = decode_object(raw, self.decoder)
            status, content = await self.work(body, raw, scope)
            payload = _ENCODER.encode(content).encode("ascii")
        except Exception as error:
            path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
            response = failure_response(error, self.status_for, str(scope.get("method")), path)
            await response(scope, receive, send)
            return
        headers = [(b"content-length", str(len(payload)).encode("ascii")), _JSON_HEADER]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def method_routes(table: Iterable[tuple[str, str, Endpoint]]) -> list[Route]:
    """One route per path serving every method the table lists for it (so that a wrong
    method's 405 names them all in ``Allow``), in the table's order."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for path, method, handler in table:
        by_path.setdefault(path, {})[method] = handler

    def dispatch(handlers: dict[str, Endpoint]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        return endpoint

    return [
        Route(path, dispatch(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (404 unknown path, 405 wrong method) in the error shape."""
    if isinstance(error, HTTPException):
        return refused(
            Refusal(
                error.status_code, str(error.detail), headers=error.headers, path=request.url.path
            )
        )
    raise error  # pragma: no cover - only registered for HTTPException


# -- bodies -----------------------------------------------------------------------------------


def _too_large(max_body: int, **details: Any) -> Refusal:
    return Refusal(413, f"the body is larger than {max_body} bytes", limit=max_body, **details)


async def read_body(request: Request, max_body: int) -> bytes:
    """The request body; 413 past ``max_body`` bytes, counted as read (``Content-Length`` may
    lie), 400 for a ``Content-Length`` that is not a number."""
    return await read_asgi_body(request.scope, request.receive, max_body)


async def read_asgi_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """:func:`read_body` from the ASGI scope and messages (what a pure ASGI endpoint has)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise Refusal(400, "Content-Length is not a number") from None
            if length > max_body:
                raise _too_large(max_body, length=length)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "the client disconnected before the body was read")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise _too_large(max_body)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON (no ``NaN``/``Infinity``), or a 400 refusal that says why."""
    try:
        if isinstance(raw, bytes | bytearray):  # as json.loads does
            text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        elif raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        else:
            text = raw
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and UnicodeDecodeError; RecursionError: nesting
        # too deep for the decoder.
        reason = str(error) if isinstance(error, ValueError) else "nested too deeply"
        raise Refusal(400, "the body is not valid JSON", reason=reason[:200]) from None


async def read_json(request: Request, max_body: int) -> Any:
    """The request body as a JSON value, or a refusal (400 or 413)."""
    return parse_json(await read_body(request, max_body))


async def read_object(request: Request, max_body: int, *, empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (400 for anything else). With ``empty``, an empty
    body is an empty object (action endpoints whose fields are all optional)."""
    raw = await read_body(request, max_body)
    if empty and not raw.strip():
        return {}
    value: dict[str, Any] = decode_object(raw)
    return value


_TOKEN_CHAR = re.compile(r"^[!-~]+$")  # printable ASCII without blanks
_PARAM = re.compile(
    r';\s*(?P<key>[A-Za-z0-9_.*-]+)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^;\s]*))'
)


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="x"`` as ``("form-data", {"name": "x"})``."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        quoted = match["quoted"]
        text = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match["token"]
        params[match["key"].lower()] = text
    return main.strip().lower(), params


def parse_multipart(
    body: bytes, content_type: str, *, max_parts: int = 16
) -> dict[str, tuple[bytes, str]]:
    """The parts of a ``multipart/form-data`` body by field name: ``(content, filename)``.

    Strict RFC 7578: the boundary of ``content_type`` delimits the parts (at the start of the
    body or after a CRLF), each part has headers with a ``Content-Disposition: form-data;
    name=...``, and the body ends with the closing delimiter. Content is kept byte for byte.
    400 for anything else (a repeated name, more than ``max_parts`` parts).
    """
    kind, params = _header_params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 0 < len(boundary) <= 70 or not boundary.isascii():
        raise Refusal(400, "a multipart/form-data body needs a boundary of 1 to 70 characters")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = (b"\r\n" + body).split(delimiter)
    parts: dict[str, tuple[bytes, str]] = {}
    closed = False
    for piece in pieces[1:]:  # pieces[0] is the preamble
        if piece.startswith(b"--"):
            closed = True
            break
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip(b" \t"):
            raise Refusal(400, "a multipart delimiter must end its line")
        head_end = piece.find(b"\r\n\r\n", line_end)
        if head_end < 0:
            raise Refusal(400, "a multipart part has no blank line after its headers")
        head = piece[line_end + 2 : head_end].decode("latin-1")
        content = piece[head_end + 4 :]
        name = filename = None
        for line in filter(None, head.split("\r\n")):
            key, sep, value = line.partition(":")
            if not sep:
                raise Refusal(400, "a multipart part header is not 'Name: value'")
            if key.strip().lower() == "content-disposition":
                disposition, values = _header_params(value)
                if disposition == "form-data":
                    name = values.get("name")
                    filename = values.get("filename", "")
        if name is None:
            raise Refusal(400, "a multipart part lacks 'Content-Disposition: form-data; name'")
        if name in parts:
            raise Refusal(400, f"the multipart field {name[:60]!r} is repeated")
        if len(parts) >= max_parts:
            raise Refusal(400, f"more than {max_parts} multipart fields")
        parts[name] = (content, filename or "")
    if not closed:
        raise Refusal(400, "the multipart body has no closing delimiter")
    return parts


# -- query parameters ---------------------------------------------------------------------------


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter: 400 if it is not one, 422 outside ``low..high``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text or len(text) > 20 or not text.lstrip("-").isdigit() or not text.isascii():
        raise Refusal(400, f"the query parameter {name!r} must be an integer", parameter=name)
    value = int(text)
    if not low <= value <= high:
        raise Refusal(
            422,
            f"the query parameter {name!r} must be within {low}..{high}",
            parameter=name,
            problems=[{"path": name, "message": f"must be within {low}..{high}"}],
        )
    return value


def paging(request: Request, *, default: int = 100, most: int = 1000) -> tuple[int, int]:
    """``(limit, offset)`` from the query (``limit`` 1..``most``, ``offset`` >= 0)."""
    limit = query_int(request, "limit", default, low=1, high=most)
    offset = query_int(request, "offset", 0, low=0, high=2**31 - 1)
    return limit, offset


def page_of(items: list[Any], limit: int, offset: int, *, more: bool) -> dict[str, Any]:
    """A page of a listing: ``{"items", "limit", "offset", "next_offset"}`` (``next_offset``
    is null on the last page)."""
    return {
        "items": items,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(items) if more else None,
    }


# -- tokens -----------------------------------------------------------------------------------

VerifierAnswer = bool | str | None
"""What a verifier answers: a principal's name or ``True`` to accept, ``False``/``None`` to
refuse."""

Verifier = Callable[[str], VerifierAnswer | Awaitable[VerifierAnswer]]
"""A host's check of a bearer token (sync or async); it gets the token without the scheme."""


@attrs.frozen
class Principal:
    """Who a request comes from: ``role`` is ``operator``, ``service`` or ``child``."""

    name: str
    role: str


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the scheme in any case), or None."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_token(token: object, what: str) -> str:
    """``token`` if it can travel in a header (printable ASCII, no blanks); else
    ConfigurationError (which never shows the token)."""
    if not isinstance(token, str) or not _TOKEN_CHAR.match(token):
        raise ConfigurationError(f"{what} must be non-empty printable ASCII without blanks")
    return token


class TokenAuth:
    """Bearer tokens of one role: configured ``tokens`` and/or a ``verifier``.

    ``tokens`` is a collection of tokens (their principal is called ``default_name``) or a
    mapping of principal names to tokens. Every configured token is compared, in constant
    time, with the one given; the verifier is asked when none matches.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = (),
        verifier: Verifier | None = None,
        *,
        role: str = "operator",
        default_name: str = "operator",
        what: str = "a token",
    ) -> None:
        if isinstance(tokens, str | bytes):
            raise ConfigurationError(f"{what}s must be a collection of tokens, not one string")
        if isinstance(tokens, Mapping):
            named = [(str(name), check_token(tok, what)) for name, tok in tokens.items()]
        else:
            named = [(default_name, check_token(tok, what)) for tok in tokens]
        if verifier is not None and not callable(verifier):
            raise ConfigurationError("verifier must be callable")
        self._tokens = [(name, tok.encode("ascii")) for name, tok in named]
        self._verifier = verifier
        self.role = role

    @property
    def configured(self) -> bool:
        """Whether any token or a verifier is configured."""
        return bool(self._tokens) or self._verifier is not None

    def __repr__(self) -> str:  # never the tokens themselves
        return f"TokenAuth(role={self.role!r}, tokens={len(self._tokens)})"

    async def identify(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None."""
        given = token.encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, expected in self._tokens:  # compare with all of them: no early exit
            if hmac.compare_digest(given, expected) and found is None:
                found = name
        if found is not None:
            return Principal(found, self.role)
        if self._verifier is None:
            return None
        try:
            answer = self._verifier(token)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as error:  # the host's code: its message may hold the token
            log.error("the token verifier raised %s", type(error).__name__)
            raise Refusal(503, "the token could not be verified now") from None
        if answer is True:
            return Principal(self.role, self.role)
        if isinstance(answer, str) and answer:
            return Principal(answer, self.role)
        return None


def unauthorized(message: str = "a valid bearer token is required") -> Refusal:
    """401 with ``WWW-Authenticate: Bearer``."""
    return Refusal(401, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> Refusal:
    """403: the token is valid, and not for this."""
    return Refusal(403, message)
