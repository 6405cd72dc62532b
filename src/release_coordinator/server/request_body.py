"""Request bodies: bounded reading, strict JSON, decoding to a Struct, multipart forms.

:func:`read_body` reads at most ``max_body`` bytes, whatever ``Content-Length`` claims (413
beyond); :func:`parse_json` takes strict JSON only (no ``NaN``/``Infinity``; 400 otherwise);
:func:`decode_object` decodes a body to its Struct, or to a JSON object for the endpoint's full
checks; :func:`parse_multipart` reads a ``multipart/form-data`` body without extra dependencies.

Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from starlette.requests import Request
from starlette.types import Receive, Scope

from release_coordinator.schemas import BodyDecoder
from release_coordinator.server.common import Refusal

__all__ = [
    "decode_object",
    "parse_json",
    "parse_multipart",
    "read_asgi_body",
    "read_body",
    "read_json",
    "read_object",
]


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


def _too_large(max_body: int, **details: Any) -> Refusal:
    return Refusal(413, f"the body is larger than {max_body} bytes", limit=max_body, **details)


async def read_body(request: Request, max_body: int) -> bytes:
    """The request body; 413 past ``max_body`` bytes, counted as read (``Content-Length`` may
    lie), 400 for a ``Content-Length`` that is not a number."""
    return await read_asgi_body(request.scope, request.receive, max_body)


async def read_asgi_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """:func:`read_body` from the ASGI scope and messages (what a pure ASGI endpoint has).

    With a ``Content-Length``, the body is complete once that many bytes came: no message is
    awaited after them (granian, for one, sends a body with ``more_body`` and then an empty
    last message, each a round trip to its own threads: a tenth of a poll's cost)."""
    length = -1
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
    while size != length:
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
            break
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
