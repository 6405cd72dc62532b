"""The function archive of an edge release: ``fns.zip``, checked before it is stored or served.

An edge release ships its function code as one zip archive, served to edge children by
``GET /release/functions/{release_id}`` byte-for-byte as it was accepted. It holds one folder
per function version under ``fns/`` (the tinyFaaS layout)::

    fns/sample_f1/index.js
    fns/sample_f1/package.json
    fns/sample_f2/fn.py

The archive comes from operators and is therefore untrusted. :meth:`FunctionArchive.from_bytes`
refuses, with one :class:`~release_coordinator.errors.BundleError` listing every problem by its
entry name, an archive that:

* is not a zip archive, is encrypted, or uses a compression method other than stored/deflate;
* exceeds the :class:`ArchiveLimits` (archive size, number of entries, total uncompressed size,
  compression ratio of one entry, length of a name);
* has a member whose real decompressed size, CRC or compressed length differs from what its
  headers declare (the content is inflated here in bounded chunks, so a lying header cannot
  smuggle a zip bomb past the declared sizes);
* has a name that is absolute, has a drive letter, a backslash, a control character, a ``..``,
  ``.`` or empty component, is duplicated, clashes with another entry used as a folder, or lies
  outside ``fns/<version>/``;
* has a symbolic link or any other special file (Unix mode in ``external_attr``);
* has a local header that disagrees with the central directory, entries that overlap, or bytes
  before its first entry;
* lacks a required version folder (``fns/<name>/`` with at least one file).

:meth:`FunctionArchive.from_folder` builds the archive from a folder holding ``fns/``,
deterministically: the same folder gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from release_coordinator.errors import BundleError, ConfigurationError
from release_coordinator.problems import Problems

__all__ = [
    "ARCHIVE_FILENAME",
    "ARCHIVE_MEDIA_TYPE",
    "FUNCTIONS_ROOT",
    "ArchiveLimits",
    "FunctionArchive",
]

ARCHIVE_FILENAME: Final = "fns.zip"
"""The file name the archive is served under."""

ARCHIVE_MEDIA_TYPE: Final = "application/zip"
"""The media type the archive is served with."""

FUNCTIONS_ROOT: Final = "fns"
"""The top folder every entry of the archive lives under."""

_MiB: Final = 1024 * 1024

#: The time stamp every entry of a built archive carries (the earliest a zip can hold).
_FIXED_DATE_TIME: Final = (1980, 1, 1, 0, 0, 0)
#: Permissions of built entries; the type bits make the entry a regular file or a folder.
_FILE_ATTR: Final = (stat.S_IFREG | 0o644) << 16
_DIR_ATTR: Final = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: MS-DOS directory bit
_CREATE_SYSTEM_UNIX: Final = 3
_COMPRESS_LEVEL: Final = 9

#: Size of one step when inflating or reading a member.
_CHUNK: Final = 64 * 1024
#: At most this many problems are listed; the rest are summed up in one last problem.
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

#: What the zip module (and zlib underneath) may raise on a malformed archive.
_ZIP_FAILURES: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,  # includes UnicodeDecodeError of a name
    LookupError,  # KeyError, IndexError
    ArithmeticError,  # OverflowError
    RuntimeError,  # includes NotImplementedError (unsupported method or version)
)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"ArchiveLimits.{attribute.name} must be a positive int, not {value!r}",
            field=attribute.name,
        )


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"ArchiveLimits.{attribute.name} must be an int >= 0, not {value!r}",
            field=attribute.name,
        )


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


class _Problems(Problems):
    """Problems of an archive, its long entry names shortened."""

    __slots__ = ()

    def add(self, path: str, message: str) -> None:
        super().add(_shown(path), message)


def _shown(name: str) -> str:
    if len(name) <= _MAX_SHOWN_NAME:
        return name
    return name[:_MAX_SHOWN_NAME] + "..."


def _refuse(path: str, message: str) -> BundleError:
    return BundleError("function archive refused", problems=[(path, message)])


def _normalize_folder(folder: str) -> str:
    return folder.rstrip("/")


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


@attrs.frozen
class FunctionArchive:
    """A checked function archive (``fns.zip``) of an edge release.

    Build one with :meth:`from_bytes` (an uploaded archive) or :meth:`from_folder`; the
    constructor itself checks nothing.

    Attributes:
        data: the archive exactly as accepted; served back to children unchanged.
        sha256: hex SHA-256 of :attr:`data`.
        folders: the version folders holding at least one file, e.g. ``"fns/checkout_v1"``.
        files: the names of the file entries (folder entries left out), sorted.
    """

    data: bytes = attrs.field(repr=False)
    sha256: str
    folders: frozenset[str]
    files: tuple[str, ...]

    @property
    def size(self) -> int:
        """Length of :attr:`data` in bytes."""
        return len(self.data)

    def has_folder(self, path: str) -> bool:
        """Whether the version folder ``path`` (``"fns/<name>"``, a trailing ``/`` allowed)
        holds at least one file."""
        return _normalize_folder(path) in self.folders

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        limits: ArchiveLimits = ArchiveLimits(),  # frozen, hence shareable
        required_folders: Iterable[str] = (),
    ) -> FunctionArchive:
        """Check an uploaded archive and wrap it; ``data`` is kept byte-for-byte.

        ``required_folders`` are version folders (``"fns/<name>"``, as a strategy's version
        ``path``) that must be present with at least one file each.

        Raises:
            BundleError: listing every problem found, each with the entry name as its path
                (a required folder that is missing has the folder as its path).
        """
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise _refuse("", f"a function archive is bytes, not {type(data).__name__}")
        if isinstance(required_folders, str):
            required_folders = (required_folders,)
        if len(data) > limits.max_archive_bytes:
            raise _refuse(
                "", f"archive of {len(data)} bytes exceeds {limits.max_archive_bytes} bytes"
            )
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                infos = archive.infolist()
                end_of_entries = archive.start_dir
                problems = _check_entries(data, infos, end_of_entries, limits)
                if not problems:
                    bad = archive.testzip()
                    if bad is not None:
                        problems.add(bad, "CRC or header check failed")
        except _ZIP_FAILURES as exc:
            raise _refuse("", f"not a valid zip archive: {exc}") from exc

        files = sorted(i.orig_filename for i in infos if not i.orig_filename.endswith("/"))
        if not problems and not files:
            problems.add("", "archive holds no file")
        folders = frozenset(
            "/".join(name.split("/", 2)[:2]) for name in files if name.count("/") >= 2
        )
        for folder in required_folders:
            wanted = _normalize_folder(folder)
            parts = wanted.split("/")
            if len(parts) != 2 or parts[0] != FUNCTIONS_ROOT or parts[1] in ("", ".", ".."):
                problems.add(folder, f"not a version folder path like {FUNCTIONS_ROOT}/<name>")
            elif wanted not in folders:
                problems.add(wanted + "/", "required function folder missing or empty")
        problems.raise_if_any("function archive refused", BundleError)
        return cls(
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            folders=folders,
            files=tuple(files),
        )

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike[str],
        *,
        limits: ArchiveLimits = ArchiveLimits(),  # frozen, hence shareable
        required_folders: Iterable[str] = (),
    ) -> FunctionArchive:
        """Zip the ``fns/`` folder inside ``path`` deterministically and check the result.

        Entries are sorted, carry the time stamp 1980-01-01 00:00, mode 0644 (files) or 0755
        (folders) and are deflated at level 9, so the same folder always gives the same bytes
        (with the same zlib). Anything in ``path`` besides ``fns/`` is left out. Symbolic
        links and special files are refused, as is everything :meth:`from_bytes` refuses.

        Raises:
            BundleError: listing every problem, each with its name inside the archive.
        """
        root = Path(path)
        problems = _Problems()
        top = root / FUNCTIONS_ROOT
        if not root.is_dir():
            raise _refuse(str(path), "not a folder")
        if top.is_symlink():
            raise _refuse(FUNCTIONS_ROOT + "/", "symbolic link")
        if not top.is_dir():
            raise _refuse(FUNCTIONS_ROOT + "/", f"the folder holds no {FUNCTIONS_ROOT}/ folder")
        entries = _walk(top, limits, problems)
        problems.raise_if_any("function folder refused", BundleError)

        buffer = io.BytesIO()
        total = 0
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=_FIXED_DATE_TIME)
                info.create_system = _CREATE_SYSTEM_UNIX
                if name.endswith("/"):
                    info.external_attr = _DIR_ATTR
                    archive.writestr(info, b"", compress_type=zipfile.ZIP_STORED)
                    continue
                info.external_attr = _FILE_ATTR
                try:
                    content = _read_regular(entries[name], limits.max_total_bytes - total)
                except (OSError, _TooLarge) as exc:
                    problems.add(name, str(exc) or type(exc).__name__)
                    continue
                total += len(content)
                archive.writestr(
                    info,
                    content,
                    compress_type=zipfile.ZIP_DEFLATED,
                    compresslevel=_COMPRESS_LEVEL,
                )
        problems.raise_if_any("function folder refused", BundleError)
        return cls.from_bytes(buffer.getvalue(), limits=limits, required_folders=required_folders)


def _check_entries(
    data: bytes, infos: list[zipfile.ZipInfo], end_of_entries: int, limits: ArchiveLimits
) -> _Problems:
    """Check every entry's name, kind, declared sizes and (if those pass) its content."""
    problems = _Problems()
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


class _TooLarge(Exception):
    """A file of the folder is larger than what is left of the size budget."""


def _read_regular(path: Path, budget: int) -> bytes:
    """Read a regular file without following a symbolic link, at most ``budget`` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError("not a regular file")
        content = handle.read(budget + 1)
    if len(content) > budget:
        raise _TooLarge("total size of the files exceeds the limit")
    return content


def _walk(top: Path, limits: ArchiveLimits, problems: _Problems) -> dict[str, Path]:
    """Every folder (name ending in ``/``) and file below ``top``, by name in the archive."""
    entries: dict[str, Path] = {FUNCTIONS_ROOT + "/": top}
    pending: list[tuple[Path, str]] = [(top, FUNCTIONS_ROOT + "/")]
    total = 0
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            problems.add(prefix, f"cannot list the folder: {exc.strerror or exc}")
            continue
        for child in children:
            name = prefix + child.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                problems.add(name.encode("utf-8", "replace").decode(), "name is not valid UTF-8")
                continue
            try:
                if child.is_symlink():
                    problems.add(name, "symbolic link")
                elif child.is_dir(follow_symlinks=False):
                    entries[name + "/"] = Path(child.path)
                    pending.append((Path(child.path), name + "/"))
                elif child.is_file(follow_symlinks=False):
                    entries[name] = Path(child.path)
                    total += child.stat(follow_symlinks=False).st_size
                else:
                    problems.add(name, "special file (not a regular file or folder)")
            except OSError as exc:
                problems.add(name, f"cannot inspect: {exc.strerror or exc}")
            if len(entries) > limits.max_entries:
                problems.add("", f"more than {limits.max_entries} entries")
                return entries
            if total > limits.max_total_bytes:
                problems.add("", f"files exceed {limits.max_total_bytes} bytes in total")
                return entries
    return entries
