"""What an uploaded function archive must be: its limits, and the checks of its zip entries.

:class:`ArchiveLimits` bounds an archive; :func:`check_entries` checks every entry of an opened
zip against them and against the layout (names under ``fns/<version>/``, regular files and
folders only, local headers that agree with the central directory, no overlaps) and, when all
of that passes, inflates each member in bounded chunks to check its real size and CRC.
:class:`~release_coordinator.rollout.archive.FunctionArchive` is the entry point.
"""

from __future__ import annotations

import itertools
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Final

import attrs

from release_coordinator.errors import ConfigurationError
from release_coordinator.problems import Problems

__all__ = ["FUNCTIONS_ROOT", "ArchiveLimits", "EntryProblems", "check_entries"]

FUNCTIONS_ROOT: Final = "fns"
"""The top folder every entry of the archive lives under."""

_MiB: Final = 1024 * 1024
#: Size of one step when inflating or reading a member.
_CHUNK: Final = 64 * 1024
#: Names longer than this are shortened in problem paths.
_MAX_SHOWN_NAME: Final = 300

_LOCAL_HEADER: Final = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE: Final = b"PK\x03\x04"
_ZIP32_MAX: Final = 0xFFFFFFFF
_FLAG_ENCRYPTED: Final = 1 << 0
_FLAG_DATA_DESCRIPTOR: Final = 1 << 3
_FLAG_STRONG_ENCRYPTION: Final = 1 << 6
_FLAG_UTF8: Final = 1 << 11

_DRIVE: Final = re.compile(r"^[A-Za-z]:")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _at_least(low: int, wording: str) -> Callable[[object, attrs.Attribute[int], int], None]:
    """An attrs validator: the field is an int (not a bool) >= ``low``."""

    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigurationError(
                f"ArchiveLimits.{attribute.name} must be {wording}, not {value!r}",
                field=attribute.name,
            )

    return check


_positive: Final = _at_least(1, "a positive int")
_not_negative: Final = _at_least(0, "an int >= 0")


@attrs.frozen
class ArchiveLimits:
    """Bounds a function archive must stay within; every field must be positive.

    ``max_ratio`` is the zip-bomb guard: an entry whose uncompressed size exceeds
    ``max_ratio`` times its compressed size is refused. Entries of at most
    ``ratio_exempt_bytes`` uncompressed are not held to it (a few KiB of blanks compress far
    beyond any ratio and are harmless; ``max_total_bytes`` still bounds them all together).
    ``max_path_length`` counts the UTF-8 bytes of an entry name.
    """

    max_archive_bytes: int = attrs.field(default=50 * _MiB, validator=_positive)
    max_total_bytes: int = attrs.field(default=200 * _MiB, validator=_positive)
    max_entries: int = attrs.field(default=10_000, validator=_positive)
    max_ratio: int = attrs.field(default=200, validator=_positive)
    max_path_length: int = attrs.field(default=255, validator=_positive)
    ratio_exempt_bytes: int = attrs.field(default=64 * 1024, validator=_not_negative)


class EntryProblems(Problems):
    """Problems of an archive, its long entry names shortened."""

    __slots__ = ()

    def add(self, path: str, message: str) -> None:
        super().add(_shown(path), message)


def _shown(name: str) -> str:
    if len(name) <= _MAX_SHOWN_NAME:
        return name
    return name[:_MAX_SHOWN_NAME] + "..."


def _name_problems(name: str, info: zipfile.ZipInfo, limits: ArchiveLimits) -> list[str]:
    """Everything wrong with one entry's name and flags, as messages."""
    found: list[str] = []
    if not name:
        return ["empty entry name"]
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_path_length:
        found.append(f"name longer than {limits.max_path_length} bytes")
    if _CONTROL.search(name):
        found.append("name contains a control character (NUL, newline, ...)")
    if "\\" in name:
        found.append("name contains a backslash")
    if name.startswith("/"):
        found.append("absolute path")
    if _DRIVE.match(name):
        found.append("name starts with a drive letter")
    if not info.flag_bits & _FLAG_UTF8 and not name.isascii():
        found.append("non-ASCII name without the UTF-8 flag (its encoding is ambiguous)")
    parts = (name[:-1] if name.endswith("/") else name).split("/")
    if ".." in parts:
        found.append("'..' component")
    if "." in parts or ("" in parts and not name.startswith("/")):
        found.append("'.' or empty component (the name is not in canonical form)")
    if not found:
        if parts[0] != FUNCTIONS_ROOT:
            found.append(f"entry outside {FUNCTIONS_ROOT}/")
        elif len(parts) == 1 and not name.endswith("/"):
            found.append(f"{FUNCTIONS_ROOT} must be a folder")
        elif len(parts) == 2 and not name.endswith("/"):
            found.append(
                f"file directly under {FUNCTIONS_ROOT}/; "
                f"functions live in {FUNCTIONS_ROOT}/<version>/"
            )
    return found


def _type_problems(name: str, info: zipfile.ZipInfo) -> list[str]:
    """Everything wrong with one entry's kind (file type bits, encryption, method)."""
    found: list[str] = []
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    is_dir_name = name.endswith("/")
    if kind == stat.S_IFLNK:
        found.append("symbolic link")
    elif kind == stat.S_IFDIR:
        if not is_dir_name:
            found.append("folder attributes on a name without a trailing '/'")
    elif kind not in (0, stat.S_IFREG):
        found.append(f"special file (mode {mode:#o})")
    elif kind == stat.S_IFREG and is_dir_name:
        found.append("regular-file attributes on a folder name")
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        found.append("encrypted entry")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        found.append(f"compression method {info.compress_type} (only stored and deflate)")
    if is_dir_name and info.file_size != 0:
        found.append("folder entry with content")
    return found


def _check_content(
    data: bytes,
    info: zipfile.ZipInfo,
    end_of_entries: int,
    budget: int,
    limits: ArchiveLimits,
) -> tuple[int, int, list[str]]:
    """Check one member against its headers by inflating it in bounded chunks.

    Returns ``(start, end, problems)``: the span of the entry (local header through compressed
    data) and the messages. ``budget`` is how many uncompressed bytes the archive may still
    hold. Never inflates more than ``min(declared size, budget) + one chunk``.
    """
    start = info.header_offset
    if start < 0 or start + _LOCAL_HEADER.size > end_of_entries:
        return start, start, ["local header lies outside the archive"]
    (
        signature,
        _extract_version,
        flags,
        method,
        _time,
        _date,
        crc,
        compress_size,
        file_size,
        name_length,
        extra_length,
    ) = _LOCAL_HEADER.unpack_from(data, start)
    if signature != _LOCAL_SIGNATURE:
        return start, start, ["no local header where the central directory points"]
    name_start = start + _LOCAL_HEADER.size
    data_start = name_start + name_length + extra_length
    data_end = data_start + info.compress_size
    if data_end > end_of_entries:
        return start, start, ["compressed data runs past the end of the entries"]

    found: list[str] = []
    raw_name = info.orig_filename.encode(
        "utf-8" if info.flag_bits & _FLAG_UTF8 else "cp437", "surrogatepass"
    )
    if data[name_start : name_start + name_length] != raw_name:
        found.append("local header name differs from the central directory")
    if method != info.compress_type:
        found.append("local header compression method differs from the central directory")
    if (flags ^ info.flag_bits) & (_FLAG_ENCRYPTED | _FLAG_DATA_DESCRIPTOR):
        found.append("local header flags differ from the central directory")
    if not flags & _FLAG_DATA_DESCRIPTOR:
        if crc != info.CRC:
            found.append("local header CRC differs from the central directory")
        if compress_size != _ZIP32_MAX and compress_size != info.compress_size:
            found.append("local header compressed size differs from the central directory")
        if file_size != _ZIP32_MAX and file_size != info.file_size:
            found.append("local header size differs from the central directory")
    if found:
        return start, data_end, found

    allowed = min(info.file_size, budget)
    source = memoryview(data)[data_start:data_end]
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            return start, data_end, ["stored entry whose compressed and real sizes differ"]
        real, running_crc, complete = _read_stored(source)
        trailing = False
    else:
        real, running_crc, complete, trailing = _inflate(source, allowed)
    if real > info.file_size:
        found.append(
            f"decompresses to more than its declared {info.file_size} bytes (lying header)"
        )
    elif real > budget:
        found.append(f"total uncompressed size exceeds {limits.max_total_bytes} bytes")
    elif not complete:
        found.append("compressed data is truncated")
    elif real != info.file_size:
        found.append(f"decompresses to {real} bytes, the header declares {info.file_size}")
    elif trailing:
        found.append("compressed size is larger than the deflate stream")
    elif running_crc != info.CRC:
        found.append("CRC mismatch (corrupt content)")
    return start, data_end, found


def _read_stored(source: memoryview) -> tuple[int, int, bool]:
    crc = 0
    for offset in range(0, len(source), _CHUNK):
        crc = zlib.crc32(source[offset : offset + _CHUNK], crc)
    return len(source), crc, True


def _inflate(source: memoryview, allowed: int) -> tuple[int, int, bool, bool]:
    """Inflate raw deflate data, stopping as soon as more than ``allowed`` bytes come out.

    Returns ``(bytes out, crc32, stream complete, bytes left after the stream)``.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    position = 0
    produced = 0
    crc = 0
    while not inflater.eof:
        if inflater.unconsumed_tail:
            chunk: bytes | memoryview = inflater.unconsumed_tail
        elif position < len(source):
            chunk = source[position : position + _CHUNK]
            position += len(chunk)
        else:
            chunk = b""
        tail_before = len(inflater.unconsumed_tail)
        out = inflater.decompress(chunk, _CHUNK)
        produced += len(out)
        crc = zlib.crc32(out, crc)
        if produced > allowed:
            return produced, crc, False, False
        if not out and (not chunk or len(inflater.unconsumed_tail) == tail_before > 0):
            break  # no input left (or no progress) and no output: the stream is cut short
    trailing = bool(inflater.unused_data or inflater.unconsumed_tail) or position < len(source)
    return produced, crc, inflater.eof, trailing


def check_entries(
    data: bytes, infos: list[zipfile.ZipInfo], end_of_entries: int, limits: ArchiveLimits
) -> EntryProblems:
    """Check every entry's name, kind, declared sizes and (if those pass) its content."""
    problems = EntryProblems()
    if len(infos) > limits.max_entries:
        problems.add("", f"{len(infos)} entries exceed the limit of {limits.max_entries}")
        return problems  # not worth looking at each of them

    declared_total = 0
    seen: set[str] = set()
    file_names: set[str] = set()
    clean: list[zipfile.ZipInfo] = []
    for info in infos:
        name = info.orig_filename
        messages = _name_problems(name, info, limits) + _type_problems(name, info)
        if name in seen:
            messages.append("duplicate entry name")
        seen.add(name)
        if not name.endswith("/"):
            file_names.add(name)
        ratio_limit = limits.max_ratio * max(info.compress_size, 1)
        if info.file_size > limits.max_total_bytes:
            messages.append(
                f"declared size {info.file_size} exceeds {limits.max_total_bytes} bytes"
            )
        elif info.file_size > limits.ratio_exempt_bytes and info.file_size > ratio_limit:
            messages.append(
                f"compression ratio above {limits.max_ratio} (declared {info.file_size} bytes "
                f"from {info.compress_size}): zip bomb"
            )
        declared_total += info.file_size
        for message in messages:
            problems.add(name, message)
        if not messages:
            clean.append(info)

    # A file name that is also used as a folder of another entry cannot be extracted.
    for name in sorted(seen):
        parts = name.rstrip("/").split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in file_names:
                problems.add(name, f"{prefix!r} is a file, not a folder")
                break

    if declared_total > limits.max_total_bytes:
        problems.add(
            "", f"declared total size {declared_total} exceeds {limits.max_total_bytes} bytes"
        )
    if infos and min(i.header_offset for i in infos) > 0:
        first = min(i.header_offset for i in infos)
        problems.add("", f"{first} bytes before the first entry")
    if problems:
        return problems  # the declared sizes are not trustworthy enough to inflate anything

    budget = limits.max_total_bytes
    spans: list[tuple[int, int, str]] = []
    for info in clean:
        start, end, messages = _check_content(data, info, end_of_entries, budget, limits)
        for message in messages:
            problems.add(info.orig_filename, message)
        if not messages:
            budget -= info.file_size
        spans.append((start, end, info.orig_filename))
    spans.sort()
    for (_, end, _), (start, _, name) in itertools.pairwise(spans):
        if start < end:
            problems.add(name, "entry overlaps the data of another entry")
    return problems
