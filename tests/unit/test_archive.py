"""Tests of the function archive (fns.zip) checks and the deterministic folder build."""

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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from release_coordinator.errors import BundleError, ConfigurationError
from release_coordinator.rollout.archive import ArchiveLimits, FunctionArchive


def make_zip(
    entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip written by the standard library with the given entries, in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


VALID_ENTRIES: list[tuple[str | zipfile.ZipInfo, bytes]] = [
    ("fns/", b""),
    ("fns/sample_f1/", b""),
    ("fns/sample_f1/index.js", b"module.exports = (req, res) => res.send('hi');\n" * 20),
    ("fns/sample_f1/package.json", b'{"name": "f1"}\n'),
    ("fns/sample_f2/fn.py", b"def fn(x):\n    return x\n"),
]


def valid_zip() -> bytes:
    return make_zip(VALID_ENTRIES)


def problems_of(data: bytes, **kwargs: object) -> list[tuple[str, str]]:
    with pytest.raises(BundleError) as caught:
        FunctionArchive.from_bytes(data, **kwargs)  # type: ignore[arg-type]
    assert caught.value.problems, "a refusal lists its problems"
    return caught.value.problems


def paths_of(data: bytes, **kwargs: object) -> set[str]:
    return {path for path, _ in problems_of(data, **kwargs)}


def info(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    entry.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        entry.create_system = 3
        entry.external_attr = mode << 16
    return entry


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


TREE = {
    "fns/sample_f1/index.js": b"console.log('f1');\n",
    "fns/sample_f1/lib/util.js": b"exports.x = 1;\n",
    "fns/sample_f2/fn.py": b"def fn():\n    return 2\n",
    "strategy.yaml": b"id: '1'\n",  # outside fns/: left out
}


# --------------------------------------------------------------------------- accepted archives


def test_from_bytes_of_a_standard_zip() -> None:
    data = valid_zip()
    archive = FunctionArchive.from_bytes(data, required_folders=["fns/sample_f1", "fns/sample_f2/"])
    assert archive.data == data
    assert archive.size == len(data)
    assert archive.folders == frozenset({"fns/sample_f1", "fns/sample_f2"})
    assert archive.files == (
        "fns/sample_f1/index.js",
        "fns/sample_f1/package.json",
        "fns/sample_f2/fn.py",
    )
    assert archive.has_folder("fns/sample_f1")
    assert archive.has_folder("fns/sample_f2/")
    assert not archive.has_folder("fns/sample_f3")
    assert not archive.has_folder("fns")
    assert archive.sha256 == hashlib.sha256(data).hexdigest()


def test_bytearray_is_accepted_and_kept_as_bytes() -> None:
    data = valid_zip()
    archive = FunctionArchive.from_bytes(bytearray(data))  # type: ignore[arg-type]
    assert isinstance(archive.data, bytes)
    assert archive.data == data


def test_stored_entries_without_folder_entries_are_accepted() -> None:
    data = make_zip([("fns/a/x.js", b"x"), ("fns/b/y.py", b"")], zipfile.ZIP_STORED)
    archive = FunctionArchive.from_bytes(data, required_folders=["fns/a", "fns/b"])
    assert archive.folders == frozenset({"fns/a", "fns/b"})


def test_streamed_zip_with_data_descriptors_is_accepted() -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.chunks: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            chunk = bytes(b)  # type: ignore[call-overload]
            self.chunks.append(chunk)
            return len(chunk)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fns/a/index.js", b"hello " * 100)
    data = b"".join(sink.chunks)
    assert struct.unpack_from("<H", data, 6)[0] & 0x08, "the writer used a data descriptor"
    assert FunctionArchive.from_bytes(data).files == ("fns/a/index.js",)


def test_zip64_archive_is_accepted() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("fns/a/big.js", "w", force_zip64=True) as member,
    ):
        member.write(b"abc" * 1000)
    assert FunctionArchive.from_bytes(buffer.getvalue()).has_folder("fns/a")


def test_small_highly_compressible_file_is_not_a_bomb() -> None:
    # 16 KiB of blanks compresses far beyond 200:1 but stays under ratio_exempt_bytes.
    data = make_zip([("fns/a/blank.js", b" " * 16 * 1024)])
    FunctionArchive.from_bytes(data)


def test_utf8_names_are_accepted() -> None:
    data = make_zip([("fns/café/índex.js", b"x")])
    assert FunctionArchive.from_bytes(data).has_folder("fns/café")


# --------------------------------------------------------------------------- from_folder


def test_from_folder_is_deterministic_and_served_unchanged(tmp_path: Path) -> None:
    write_tree(tmp_path / "one", TREE)
    first = FunctionArchive.from_folder(tmp_path / "one")
    second = FunctionArchive.from_folder(tmp_path / "one")
    assert first.data == second.data
    assert first.sha256 == second.sha256

    # Another copy with other time stamps and permissions gives the same bytes.
    write_tree(tmp_path / "two", TREE)
    index = tmp_path / "two" / "fns" / "sample_f1" / "index.js"
    os.utime(index, (1_700_000_000, 1_700_000_000))
    index.chmod(0o600)
    third = FunctionArchive.from_folder(str(tmp_path / "two"))
    assert third.data == first.data

    assert first.files == (
        "fns/sample_f1/index.js",
        "fns/sample_f1/lib/util.js",
        "fns/sample_f2/fn.py",
    )
    assert first.folders == frozenset({"fns/sample_f1", "fns/sample_f2"})

    # The bytes round-trip through from_bytes unchanged.
    again = FunctionArchive.from_bytes(first.data, required_folders=["fns/sample_f1"])
    assert again == first

    with zipfile.ZipFile(io.BytesIO(first.data)) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert "strategy.yaml" not in names
        for entry in archive.infolist():
            assert entry.date_time == (1980, 1, 1, 0, 0, 0)
            mode = entry.external_attr >> 16
            if entry.is_dir():
                assert mode == stat.S_IFDIR | 0o755
            else:
                assert mode == stat.S_IFREG | 0o644
                assert entry.compress_type == zipfile.ZIP_DEFLATED
        assert archive.read("fns/sample_f1/index.js") == TREE["fns/sample_f1/index.js"]


def test_from_folder_content_change_changes_bytes(tmp_path: Path) -> None:
    write_tree(tmp_path, TREE)
    before = FunctionArchive.from_folder(tmp_path)
    (tmp_path / "fns" / "sample_f2" / "fn.py").write_bytes(b"def fn():\n    return 3\n")
    assert FunctionArchive.from_folder(tmp_path).sha256 != before.sha256


def test_from_folder_refuses_symlinks(tmp_path: Path) -> None:
    write_tree(tmp_path, TREE)
    (tmp_path / "fns" / "sample_f1" / "link.js").symlink_to(tmp_path / "strategy.yaml")
    (tmp_path / "fns" / "dirlink").symlink_to(tmp_path / "fns" / "sample_f2")
    with pytest.raises(BundleError) as caught:
        FunctionArchive.from_folder(tmp_path)
    assert {path for path, _ in caught.value.problems} == {
        "fns/sample_f1/link.js",
        "fns/dirlink",
    }
    assert all("symbolic link" in message for _, message in caught.value.problems)


def test_from_folder_refuses_a_symlinked_fns(tmp_path: Path) -> None:
    write_tree(tmp_path / "real", TREE)
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "fns").symlink_to(tmp_path / "real" / "fns")
    with pytest.raises(BundleError, match="symbolic link"):
        FunctionArchive.from_folder(tmp_path / "top")


def test_from_folder_without_fns(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="fns/"):
        FunctionArchive.from_folder(tmp_path)
    with pytest.raises(BundleError, match="not a folder"):
        FunctionArchive.from_folder(tmp_path / "missing")


def test_from_folder_checks_required_folders_and_limits(tmp_path: Path) -> None:
    write_tree(tmp_path, TREE)
    with pytest.raises(BundleError) as caught:
        FunctionArchive.from_folder(tmp_path, required_folders=["fns/sample_f9"])
    assert caught.value.problems == [
        ("fns/sample_f9/", "required function folder missing or empty")
    ]
    with pytest.raises(BundleError, match="entries"):
        FunctionArchive.from_folder(tmp_path, limits=ArchiveLimits(max_entries=3))
    with pytest.raises(BundleError, match="exceed"):
        FunctionArchive.from_folder(tmp_path, limits=ArchiveLimits(max_total_bytes=20))


def test_from_folder_refuses_names_from_bytes_refuses(tmp_path: Path) -> None:
    write_tree(tmp_path, {"fns/a/x\\y.js": b"x", "fns/a/ok.js": b"y", "fns/top.js": b"z"})
    assert paths_of_folder(tmp_path) == {"fns/a/x\\y.js", "fns/top.js"}


def paths_of_folder(path: Path) -> set[str]:
    with pytest.raises(BundleError) as caught:
        FunctionArchive.from_folder(path)
    return {p for p, _ in caught.value.problems}


# --------------------------------------------------------------------------- refusals


def test_not_a_zip() -> None:
    problems = problems_of(b"this is not a zip archive at all")
    assert problems[0][0] == ""
    assert "not a valid zip" in problems[0][1]
    with pytest.raises(BundleError):
        FunctionArchive.from_bytes(b"")
    with pytest.raises(BundleError):
        FunctionArchive.from_bytes("fns.zip")  # type: ignore[arg-type]


def test_empty_archive_is_refused() -> None:
    assert problems_of(make_zip([])) == [("", "archive holds no file")]
    assert problems_of(make_zip([("fns/", b""), ("fns/a/", b"")])) == [
        ("", "archive holds no file")
    ]


def test_absolute_path() -> None:
    problems = problems_of(make_zip([(info("/fns/a/x.js"), b"x"), ("fns/a/y.js", b"y")]))
    assert problems == [("/fns/a/x.js", "absolute path")]


def test_dotdot() -> None:
    problems = problems_of(make_zip([(info("fns/a/../../etc/passwd"), b"x")]))
    assert problems == [("fns/a/../../etc/passwd", "'..' component")]


def test_backslash_and_drive_letter() -> None:
    data = make_zip([(info("fns\\a\\x.js"), b"x"), (info("C:/fns/a/x.js"), b"y")])
    problems = problems_of(data)
    assert ("fns\\a\\x.js", "name contains a backslash") in problems
    assert ("C:/fns/a/x.js", "name starts with a drive letter") in problems


def test_nul_and_non_canonical_names() -> None:
    # zipfile cuts names at NUL when writing, so the NUL is patched in afterwards.
    data = make_zip(
        [
            (info("fns/a/x.js#../../evil"), b"x"),
            (info("fns/a/./y.js"), b"y"),
            (info("fns//z.js"), b"z"),
        ]
    ).replace(b"x.js#", b"x.js\x00")
    paths = paths_of(data)
    assert paths == {"fns/a/x.js\x00../../evil", "fns/a/./y.js", "fns//z.js"}


def test_symlink_entry() -> None:
    data = make_zip([(info("fns/a/link", stat.S_IFLNK | 0o777), b"/etc/passwd")])
    assert problems_of(data) == [("fns/a/link", "symbolic link")]


def test_special_file_entry() -> None:
    data = make_zip([(info("fns/a/fifo", stat.S_IFIFO | 0o644), b"")])
    (path, message), *_ = problems_of(data)
    assert path == "fns/a/fifo"
    assert "special file" in message


def test_entry_outside_fns() -> None:
    data = make_zip(
        [
            ("fns/a/x.js", b"x"),
            ("other/y.js", b"y"),
            ("README", b"r"),
            ("fns/top.js", b"t"),
            ("fns", b"f"),
        ]
    )
    problems = problems_of(data)
    assert {path for path, _ in problems} == {
        "other/y.js",
        "README",
        "fns/top.js",
        "fns",
        "fns/a/x.js",  # below the file "fns"
    }
    assert ("fns", "fns must be a folder") in problems
    assert ("fns/a/x.js", "'fns' is a file, not a folder") in problems
    assert ("other/y.js", "entry outside fns/") in problems


def test_duplicate_names() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fns/a/x.js", b"1")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("fns/a/x.js", b"2")
    assert problems_of(buffer.getvalue()) == [("fns/a/x.js", "duplicate entry name")]


def test_file_used_as_folder() -> None:
    data = make_zip([("fns/a/x", b"1"), ("fns/a/x/y.js", b"2")])
    assert paths_of(data) == {"fns/a/x/y.js"}


def test_missing_required_folder() -> None:
    data = make_zip([("fns/a/x.js", b"x"), ("fns/empty/", b"")])
    problems = problems_of(data, required_folders=["fns/a", "fns/b", "fns/empty", "elsewhere/c"])
    assert problems == [
        ("fns/b/", "required function folder missing or empty"),
        ("fns/empty/", "required function folder missing or empty"),
        ("elsewhere/c", "not a version folder path like fns/<name>"),
    ]


def test_required_folder_as_a_single_string() -> None:
    data = make_zip([("fns/a/x.js", b"x")])
    FunctionArchive.from_bytes(data, required_folders="fns/a")
    with pytest.raises(BundleError):
        FunctionArchive.from_bytes(data, required_folders="fns/b")


def test_too_many_entries() -> None:
    data = make_zip([(f"fns/a/{i}.js", b"x") for i in range(5)])
    problems = problems_of(data, limits=ArchiveLimits(max_entries=4))
    assert problems == [("", "5 entries exceed the limit of 4")]
    FunctionArchive.from_bytes(data, limits=ArchiveLimits(max_entries=5))


def test_archive_over_the_size_limit() -> None:
    data = valid_zip()
    (path, message), *_ = problems_of(data, limits=ArchiveLimits(max_archive_bytes=100))
    assert path == ""
    assert "exceeds 100 bytes" in message


def test_total_uncompressed_over_the_limit() -> None:
    data = make_zip([(f"fns/a/{i}.js", os.urandom(600)) for i in range(3)])
    problems = problems_of(data, limits=ArchiveLimits(max_total_bytes=1000))
    assert problems == [("", "declared total size 1800 exceeds 1000 bytes")]
    problems = problems_of(data, limits=ArchiveLimits(max_total_bytes=500))
    assert {path for path, _ in problems} == {"fns/a/0.js", "fns/a/1.js", "fns/a/2.js", ""}


def test_zip_bomb_by_ratio() -> None:
    data = make_zip([("fns/a/bomb.js", bytes(2 * 1024 * 1024))])
    (path, message), *_ = problems_of(data)
    assert path == "fns/a/bomb.js"
    assert "zip bomb" in message
    # The same member passes when the ratio limit allows it.
    FunctionArchive.from_bytes(data, limits=ArchiveLimits(max_ratio=5000))


def _patch_member_header(data: bytes, *, crc: int, file_size: int) -> bytes:
    """Rewrite the CRC and uncompressed size of the (only) member in both headers."""
    patched = bytearray(data)
    local = patched.index(b"PK\x03\x04")
    struct.pack_into("<L", patched, local + 14, crc)
    struct.pack_into("<L", patched, local + 22, file_size)
    central = patched.index(b"PK\x01\x02")
    struct.pack_into("<L", patched, central + 16, crc)
    struct.pack_into("<L", patched, central + 24, file_size)
    return bytes(patched)


def test_member_whose_header_lies_about_its_size() -> None:
    real = b"A" * 300_000
    data = make_zip([("fns/a/liar.js", real)])
    # Claim 10 bytes, with the CRC of the first 10: a reader that trusts the header and stops
    # after the declared size (like zipfile itself) sees a small, valid member.
    lying = _patch_member_header(data, crc=zlib.crc32(real[:10]), file_size=10)
    with zipfile.ZipFile(io.BytesIO(lying)) as archive:
        assert archive.testzip() is None
        assert archive.read("fns/a/liar.js") == real[:10]
    problems = problems_of(lying)
    assert problems == [
        ("fns/a/liar.js", "decompresses to more than its declared 10 bytes (lying header)")
    ]


def test_member_shorter_than_its_header_says() -> None:
    real = b"B" * 1000
    data = make_zip([("fns/a/short.js", real)])
    lying = _patch_member_header(data, crc=zlib.crc32(real), file_size=5000)
    (path, message), *_ = problems_of(lying)
    assert path == "fns/a/short.js"
    assert "declares 5000" in message


def test_corrupt_crc() -> None:
    content = b"stored content of the member\n" * 4
    data = bytearray(make_zip([("fns/a/x.js", content)], zipfile.ZIP_STORED))
    at = data.index(content) + 3
    data[at] ^= 0xFF
    assert problems_of(bytes(data)) == [("fns/a/x.js", "CRC mismatch (corrupt content)")]


def test_local_header_that_disagrees_with_the_central_directory() -> None:
    data = bytearray(make_zip([("fns/a/x.js", b"x" * 50)]))
    local = data.index(b"PK\x03\x04")
    data[local + 30] = ord("g")  # the local name now reads "gns/a/x.js"
    problems = problems_of(bytes(data))
    assert problems == [("fns/a/x.js", "local header name differs from the central directory")]


def test_prepended_bytes() -> None:
    data = b"#!/bin/sh\necho polyglot\n" + valid_zip()
    (path, message), *_ = problems_of(data)
    assert path == ""
    assert "before the first entry" in message


def test_unsupported_compression_and_encryption() -> None:
    data = make_zip([("fns/a/x.js", b"x" * 100)], zipfile.ZIP_BZIP2)
    assert problems_of(data) == [("fns/a/x.js", "compression method 12 (only stored and deflate)")]
    encrypted = bytearray(make_zip([("fns/a/x.js", b"x" * 100)]))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = encrypted.index(signature) + offset
        struct.pack_into("<H", encrypted, at, struct.unpack_from("<H", encrypted, at)[0] | 1)
    assert problems_of(bytes(encrypted)) == [("fns/a/x.js", "encrypted entry")]


def test_overlapping_entries() -> None:
    # Two central directory records pointing at the same local entry (the "better zip bomb").
    data = make_zip([("fns/a/x.js", b"x" * 100), ("fns/a/y.js", b"y" * 100)])
    patched = bytearray(data)
    first = patched.index(b"PK\x01\x02")
    second = patched.index(b"PK\x01\x02", first + 4)
    struct.pack_into("<L", patched, second + 42, 0)  # y.js now points at x.js' local header
    problems = problems_of(bytes(patched))
    assert ("fns/a/y.js", "local header name differs from the central directory") in problems


def test_long_name() -> None:
    name = "fns/a/" + "n" * 150
    (path, message), *_ = problems_of(
        make_zip([(name, b"x")]), limits=ArchiveLimits(max_path_length=100)
    )
    assert path == name
    assert "longer than 100" in message
    # Very long names are shortened in the problem list.
    huge = "fns/a/" + "n" * 1000
    (path, message), *_ = problems_of(make_zip([(huge, b"x")]))
    assert path == huge[:300] + "..."
    assert "longer than 255" in message


def test_several_problems_reported_together() -> None:
    data = make_zip(
        [
            (info("/abs.js"), b"1"),
            (info("fns/a/../../up.js"), b"2"),
            ("outside/x.js", b"3"),
            (info("fns/a/link", stat.S_IFLNK | 0o777), b"target"),
            ("fns/ok/index.js", b"4"),
        ]
    )
    with pytest.raises(BundleError) as caught:
        FunctionArchive.from_bytes(data, required_folders=["fns/missing"])
    error = caught.value
    assert [path for path, _ in error.problems] == [
        "/abs.js",
        "fns/a/../../up.js",
        "outside/x.js",
        "fns/a/link",
        "fns/missing/",
    ]
    assert error.code == "invalid_bundle"
    assert error.http_status == 422
    body = error.to_dict()["error"]
    assert len(body["details"]["problems"]) == 5
    assert "/abs.js: absolute path" in str(error)


def test_problem_list_is_capped() -> None:
    data = make_zip([(f"out/{i}.js", b"x") for i in range(150)])
    problems = problems_of(data)
    assert len(problems) == 101
    assert problems[-1] == ("", "50 further problem(s) not listed")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        ArchiveLimits(max_entries=0)
    with pytest.raises(ConfigurationError):
        ArchiveLimits(max_ratio=-1)
    with pytest.raises(ConfigurationError):
        ArchiveLimits(ratio_exempt_bytes=-1)
    assert ArchiveLimits(ratio_exempt_bytes=0).ratio_exempt_bytes == 0


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SMALL = ArchiveLimits(max_total_bytes=4 * 1024 * 1024)
BASE = valid_zip()
BASE_STORED = make_zip(VALID_ENTRIES, zipfile.ZIP_STORED)


def accepted_or_refused(data: bytes) -> None:
    refusal: BundleError | None = None
    try:
        archive = FunctionArchive.from_bytes(data, limits=SMALL, required_folders=["fns/sample_f1"])
    except BundleError as error:
        refusal = error
    if refusal is not None:
        assert refusal.problems
        return
    assert archive.data == data
    assert archive.has_folder("fns/sample_f1")


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    accepted_or_refused(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_with_zip_signatures_never_crash(tail: bytes) -> None:
    accepted_or_refused(b"PK\x03\x04" + tail + b"PK\x05\x06" + tail[:18])


@FUZZ
@given(
    base=st.sampled_from([BASE, BASE_STORED]),
    flips=st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 7)), max_size=8),
)
def test_bit_flips_never_crash(base: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(base)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    accepted_or_refused(bytes(data))


@FUZZ
@given(
    base=st.sampled_from([BASE, BASE_STORED]),
    cut=st.integers(0, len(BASE_STORED)),
    from_end=st.booleans(),
)
def test_truncation_never_crashes(base: bytes, cut: int, from_end: bool) -> None:
    cut %= len(base) + 1
    accepted_or_refused(base[cut:] if from_end else base[:cut])


@FUZZ
@given(
    base=st.sampled_from([BASE, BASE_STORED]),
    position=st.integers(0, len(BASE_STORED)),
    replacement=st.binary(min_size=1, max_size=16),
)
def test_overwritten_bytes_never_crash(base: bytes, position: int, replacement: bytes) -> None:
    position %= len(base)
    data = base[:position] + replacement + base[position + len(replacement) :]
    accepted_or_refused(data)
