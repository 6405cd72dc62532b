"""The wire schemas' shared machinery: bodies declared once as msgspec Structs.

A body of a protocol or of an operator API is a :class:`msgspec.Struct` (its JSON shape and
every rule JSON Schema can state: types, lengths, ranges, enumerations). That one declaration
serves two purposes:

- **decoding**: :class:`BodyDecoder` decodes request bytes straight to the Struct, and
  :class:`BodyConverter` converts an already decoded JSON value to it, both strictly. They
  answer ``None`` when msgspec refuses the body; the caller then runs the module's full path,
  which lists *every* problem by its path (msgspec stops at the first) and raises the same
  :class:`~release_coordinator.errors.ValidationError` as ever. A body msgspec accepts is one
  the full path accepts, with the same values;
- **documenting**: :func:`schema_components` gives the JSON Schemas of the OpenAPI documents.

Rules JSON Schema cannot state (a valid polygon, a strategy's YAML, result bodies in two key
encodings) stay in code; the Struct types such a field as its JSON shape and names the rule in
the field's description.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Generic, TypeVar

import msgspec

__all__ = [
    "DEFAULT_PAGE",
    "MAX_INT32",
    "MAX_PAGE",
    "MAX_REASON",
    "MAX_TEXT",
    "MULTILINE_PATTERN",
    "PRINTABLE_PATTERN",
    "BodyConverter",
    "BodyDecoder",
    "OptionalText",
    "Text",
    "schema_components",
]

T = TypeVar("T")

#: Longest id or name accepted on the wire.
MAX_TEXT = 256
#: Longest reason of an operator's action (a cancel, an abort).
MAX_REASON = 1000
#: The most items of one page of a list, and how many a page has unless asked.
MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: The largest count or offset the APIs take (a 32-bit signed integer).
MAX_INT32 = 2**31 - 1

# "Printable text": no control characters. The apps also refuse other unprintable characters
# (format characters, lone surrogates) in code, which JSON Schema patterns cannot say.
#: The JSON Schema pattern of one line of printable text.
PRINTABLE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
#: The same, with tabs and line breaks allowed (descriptions, notes).
MULTILINE_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"

#: An id or name on the wire: 1 to :data:`MAX_TEXT` characters.
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
#: An optional name on the wire: at most :data:`MAX_TEXT` characters, possibly empty.
OptionalText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


class BodyDecoder(Generic[T]):
    """JSON bytes to ``T`` (a Struct), or ``None`` when msgspec refuses them (invalid JSON,
    the wrong shape, a value out of range): the caller's full path then decides."""

    __slots__ = ("_decode", "type")

    def __init__(self, type_: type[T]) -> None:
        self.type = type_
        self._decode = msgspec.json.Decoder(type_).decode

    def decode(self, raw: bytes) -> T | None:
        try:
            return self._decode(raw)
        # (msgspec.ValidationError is a DecodeError; msgspec's nesting limit is not json's, so
        # a body nested too deeply for it goes to the full path too, which refuses it as before)
        except (msgspec.DecodeError, RecursionError):
            return None


class BodyConverter(Generic[T]):
    """A decoded JSON value to ``T`` (a Struct), strictly, or ``None`` when msgspec refuses
    it: the caller's full path then decides (and lists every problem)."""

    __slots__ = ("type",)

    def __init__(self, type_: type[T]) -> None:
        self.type = type_

    def convert(self, value: object) -> T | None:
        try:
            return msgspec.convert(value, self.type)
        except (msgspec.ValidationError, RecursionError):
            return None


_REF = "#/components/schemas/"


def _renamed(node: Any, refs: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: refs.get(value, value) if key == "$ref" else _renamed(value, refs)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renamed(value, refs) for value in node]
    return node


def schema_components(
    types: Iterable[Any], names: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The JSON Schemas of ``types`` (and of the Structs they use) by name, with references
    into an OpenAPI document's ``#/components/schemas``. ``names`` renames components (a
    Struct's name to the document's, e.g. ``PollAnswerBody`` to ``PollAnswer``); msgspec's
    ``title`` (the class name) is left out. A Struct whose field defaults to ``None`` only to
    tell a left-out field apart may name what that means in a class variable
    ``documented_defaults`` (``{"field": value}``), which becomes the field's ``default``."""
    types = tuple(types)
    _, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    for kind in types:  # what a left-out (or null) field means, where it is not the Struct's None
        for field, default in getattr(kind, "documented_defaults", {}).items():
            components[kind.__name__]["properties"][field]["default"] = default
    names = names or {}
    refs = {_REF + old: _REF + new for old, new in names.items()}
    return {
        names.get(name, name): _renamed({k: v for k, v in schema.items() if k != "title"}, refs)
        for name, schema in components.items()
    }
