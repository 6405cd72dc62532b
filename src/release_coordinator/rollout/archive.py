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
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from release_coordinator.errors import BundleError
from release_coordinator.rollout.archive_checks import (
    FUNCTIONS_ROOT,
    ArchiveLimits,
    EntryProblems,
    check_entries,
)

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


#: The time stamp every entry of a built archive carries (the earliest a zip can hold).
_FIXED_DATE_TIME: Final = (1980, 1, 1, 0, 0, 0)
#: Permissions of built entries; the type bits make the entry a regular file or a folder.
_FILE_ATTR: Final = (stat.S_IFREG | 0o644) << 16
_DIR_ATTR: Final = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: MS-DOS directory bit
_CREATE_SYSTEM_UNIX: Final = 3
_COMPRESS_LEVEL: Final = 9

#: The limits an archive is held to unless told otherwise (frozen, hence shareable).
_DEFAULT_LIMITS: Final = ArchiveLimits()

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


def _refuse(path: str, message: str) -> BundleError:
    return BundleError("function archive refused", problems=[(path, message)])


def _normalize_folder(folder: str) -> str:
    return folder.rstrip("/")


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
        limits: ArchiveLimits = _DEFAULT_LIMITS,
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
                problems = check_entries(data, infos, end_of_entries, limits)
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
        limits: ArchiveLimits = _DEFAULT_LIMITS,
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
        problems = EntryProblems()
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


def _walk(top: Path, limits: ArchiveLimits, problems: EntryProblems) -> dict[str, Path]:
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
