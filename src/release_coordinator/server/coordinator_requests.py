"""The Coordinator API's requests: its bodies read to their Structs, and its query filters.

A body is decoded from bytes to its Struct (:mod:`release_coordinator.coordinator.api_bodies`),
then the rules msgspec cannot check (printable text, names that are not blank) are checked on
it. A body that fails either goes the full way (:class:`Fields`, over the JSON object), which
lists every problem by its path: every refusal is what it always was, and a body the fast path
takes is one the full way takes, with the same values. Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from starlette.requests import Request

from release_coordinator.coordinator.api_bodies import (
    MAX_DESCRIPTION,
    MAX_ITEMS,
    MAX_NOTE,
    MAX_REASON,
    MAX_URL,
    CancelRequest,
    EmptyObject,
    NoteCreate,
    NoteUpdate,
    ReleaseCreate,
    ReleaseUpdate,
    RequestBody,
    TaskServiceCreate,
    TaskServiceUpdate,
)
from release_coordinator.coordinator.publish_gates import MAX_APPROVALS
from release_coordinator.errors import Problem, ValidationError
from release_coordinator.schemas import MAX_TEXT, BodyDecoder
from release_coordinator.server.common import Refusal
from release_coordinator.server.request_body import decode_object, read_body

__all__ = [
    "CANCEL",
    "NOTE_CREATE",
    "NOTE_UPDATE",
    "RELEASE_CREATE",
    "RELEASE_UPDATE",
    "SERVICE_CREATE",
    "SERVICE_UPDATE",
    "BodyReader",
    "Fields",
    "choices",
    "empty_body",
    "keeps_code_rules",
    "query_text",
    "since",
]

S = TypeVar("S", bound=RequestBody)


def _unprintable(value: str, multiline: bool) -> str | None:
    """Why ``value`` is not printable text (tabs and line ends allowed if ``multiline``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    allowed = "\n\t\r" if multiline else ""
    if any(not c.isprintable() and c not in allowed for c in value):
        return "must be printable text"
    return None


def keeps_code_rules(body: RequestBody) -> bool:
    """Whether every text of ``body`` (decoded by msgspec, which checked the rest) is
    printable, and not blank in the fields that must not be."""
    for name in body.__struct_fields__:
        value = getattr(body, name)
        for text in value if isinstance(value, list) else (value,):
            if not isinstance(text, str):
                continue
            if _unprintable(text, name in body.MULTILINE) is not None:
                return False
            if name in body.NOT_BLANK and not text.strip():
                return False
    return True


class Fields:
    """Reads the fields of a JSON object body, collecting every problem with its path (the
    full way: what a body msgspec refused, or that broke a rule it cannot check, goes)."""

    def __init__(self, body: Mapping[str, Any], what: str, allowed: Iterable[str]) -> None:
        self.body = body
        self.what = what
        self.problems: list[Problem] = [
            (str(key)[:60], "is not a field of this request")
            for key in body
            if key not in set(allowed)
        ]

    def _check_text(self, key: str, value: str, most: int, multiline: bool) -> bool:
        if len(value) > most:
            self.problems.append((key, f"is longer than {most} characters"))
            return False
        problem = _unprintable(value, multiline)
        if problem is not None:
            self.problems.append((key, problem))
            return False
        return True

    def text(
        self,
        key: str,
        *,
        required: bool = False,
        most: int = MAX_TEXT,
        multiline: bool = False,
        blank: bool = True,
    ) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                self.problems.append((key, "is required"))
            return None
        if not isinstance(value, str):
            self.problems.append((key, f"must be a string, not {type(value).__name__}"))
            return None
        if not blank and not value.strip():
            self.problems.append((key, "must not be empty"))
            return None
        return value if self._check_text(key, value, most, multiline) else None

    def flag(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problems.append((key, f"must be true or false, not {type(value).__name__}"))
            return None
        return value

    def count(self, key: str, *, most: int) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            self.problems.append((key, f"must be an integer within 0..{most}"))
            return None
        return value

    def time(self, key: str) -> datetime | None:
        """An ISO 8601 time with its zone."""
        value = self.body.get(key)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            self.problems.append((key, "must be an ISO 8601 time with its zone"))
            return None
        return moment

    def texts(self, key: str) -> list[str] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self.problems.append((key, "must be a list of strings"))
            return None
        if len(value) > MAX_ITEMS:
            self.problems.append((key, f"has more than {MAX_ITEMS} entries"))
            return None
        good = True
        for i, item in enumerate(value):
            path = f"{key}[{i}]"
            if not isinstance(item, str) or not item:
                self.problems.append((path, "must be a non-empty string"))
                good = False
            elif not self._check_text(path, item, MAX_TEXT, False):
                good = False
        return list(value) if good else None

    def check(self) -> None:
        if self.problems:
            raise ValidationError(f"invalid {self.what}", self.problems)


class BodyReader(Generic[S]):
    """A request body to the Struct ``S``: from bytes by msgspec, or, when msgspec refuses it
    or a rule it cannot check fails, by ``full`` from the JSON object (``full`` lists every
    problem). With ``empty``, an empty body is an empty object."""

    def __init__(
        self, type_: type[S], full: Callable[[Mapping[str, Any]], S], *, empty: bool = False
    ) -> None:
        self.type = type_
        self.full = full
        self.empty = empty
        self._decoder = BodyDecoder(type_)

    async def read(self, request: Request, max_body: int) -> S:
        raw = await read_body(request, max_body)
        if self.empty and not raw.strip():
            raw = b"{}"
        body = decode_object(raw, self._decoder)
        if isinstance(body, self.type):
            if keeps_code_rules(body):
                return body
            body = decode_object(raw)
        return self.full(body)


def _service_create(body: Mapping[str, Any]) -> TaskServiceCreate:
    fields = Fields(body, "task service", TaskServiceCreate.__struct_fields__)
    name = fields.text("name", required=True, blank=False)
    url = fields.text("url", required=True, most=MAX_URL, blank=False)
    enabled = fields.flag("enabled")
    check = fields.flag("check")
    fields.check()
    assert name is not None
    assert url is not None
    return TaskServiceCreate(name, url, enabled, check)


def _service_update(body: Mapping[str, Any]) -> TaskServiceUpdate:
    fields = Fields(body, "task service", TaskServiceUpdate.__struct_fields__)
    name = fields.text("name", blank=False)
    url = fields.text("url", most=MAX_URL, blank=False)
    fields.check()
    return TaskServiceUpdate(name, url)


def _release_create(body: Mapping[str, Any]) -> ReleaseCreate:
    fields = Fields(body, "release", ReleaseCreate.__struct_fields__)
    name = fields.text("name", required=True, blank=False)
    description = fields.text("description", most=MAX_DESCRIPTION, multiline=True)
    studies = fields.texts("studies")
    tags = fields.texts("tags")
    author = fields.text("author")
    is_major = fields.flag("is_major")
    auto_publish = fields.flag("auto_publish")
    approvals = fields.count("required_approvals", most=MAX_APPROVALS)
    checks = fields.texts("checks")
    publish_at = fields.time("publish_at")
    fields.check()
    assert name is not None
    return ReleaseCreate(
        name,
        description,
        studies,
        tags,
        author,
        is_major,
        auto_publish,
        required_approvals=approvals,
        checks=checks,
        publish_at=publish_at,
    )


def _release_update(body: Mapping[str, Any]) -> ReleaseUpdate:
    fields = Fields(body, "release", ReleaseUpdate.__struct_fields__)
    name = fields.text("name", blank=False)
    description = fields.text("description", most=MAX_DESCRIPTION, multiline=True)
    tags = fields.texts("tags")
    fields.check()
    return ReleaseUpdate(name, description, tags)


def _cancel(body: Mapping[str, Any]) -> CancelRequest:
    fields = Fields(body, "cancel request", CancelRequest.__struct_fields__)
    reason = fields.text("reason", most=MAX_REASON)
    fields.check()
    return CancelRequest(reason)


def _note_create(body: Mapping[str, Any]) -> NoteCreate:
    fields = Fields(body, "release note", NoteCreate.__struct_fields__)
    text = fields.text("text", required=True, most=MAX_NOTE, multiline=True, blank=False)
    study_id = fields.text("study_id")
    author = fields.text("author")
    fields.check()
    assert text is not None
    return NoteCreate(text, study_id, author)


def _note_update(body: Mapping[str, Any]) -> NoteUpdate:
    fields = Fields(body, "release note", NoteUpdate.__struct_fields__)
    text = fields.text("text", required=True, most=MAX_NOTE, multiline=True, blank=False)
    fields.check()
    assert text is not None
    return NoteUpdate(text)


SERVICE_CREATE = BodyReader(TaskServiceCreate, _service_create)
SERVICE_UPDATE = BodyReader(TaskServiceUpdate, _service_update)
RELEASE_CREATE = BodyReader(ReleaseCreate, _release_create)
RELEASE_UPDATE = BodyReader(ReleaseUpdate, _release_update)
CANCEL = BodyReader(CancelRequest, _cancel, empty=True)
NOTE_CREATE = BodyReader(NoteCreate, _note_create)
NOTE_UPDATE = BodyReader(NoteUpdate, _note_update)


def empty_body(what: str) -> BodyReader[EmptyObject]:
    """The body of an action that takes no field (``what``: its name in a refusal)."""

    def full(body: Mapping[str, Any]) -> EmptyObject:
        Fields(body, what, ()).check()
        return EmptyObject()

    return BodyReader(EmptyObject, full, empty=True)


# -- query parameters -------------------------------------------------------------------------


def choices(request: Request, name: str, allowed: Iterable[str]) -> set[str] | None:
    """A filter given as ``?name=a&name=b`` or ``?name=a,b``; 422 for a value not allowed."""
    given = [v for raw in request.query_params.getlist(name) for v in raw.split(",") if v]
    return _chosen(name, given, allowed, "invalid query")


def _chosen(
    name: str, given: Sequence[str] | None, allowed: Iterable[str], message: str
) -> set[str] | None:
    """The values ``given`` for the filter ``name`` (None: none, no filter); a 422
    ValidationError ``message`` naming (ten of) those not ``allowed`` otherwise. The REST
    API's query and the GraphQL API's arguments both check their filters so."""
    if not given:
        return None
    known = set(allowed)
    bad = sorted({v for v in given if v not in known})
    if bad:
        raise ValidationError(
            message,
            [(name, f"{v[:40]!r} is not one of {', '.join(sorted(known))}") for v in bad[:10]],
        )
    return set(given)


def query_text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and len(value) > MAX_TEXT:
        raise ValidationError("invalid query", [(name, f"is longer than {MAX_TEXT} characters")])
    if value is not None and "\x00" in value:  # (no stored text holds one)
        raise ValidationError("invalid query", [(name, "must not hold a NUL character")])
    return value


def since(request: Request) -> datetime | None:
    raw = request.query_params.get("since")
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Refusal(
            400, "the query parameter 'since' must be an ISO 8601 time", parameter="since"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
