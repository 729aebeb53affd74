"""Fetch Debian packages and unpack only the audio members a corpus source needs.

Members inside archives are named ``ARCHIVE!ENTRY``: zip archives (``.pk3``,
``.wz``) and the Flight of the Amazon Queen ``queen.1c`` table. Unpacked files
keep that name under the destination folder, so a file's path tells where it
came from.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable, Iterable

ARCHIVE_SEPARATOR = "!"
AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".wav", ".mp3", ".flac", ".sb")
ZIP_SUFFIXES = (".pk3", ".wz", ".zip")
QUEEN_SUFFIX = ".1c"

QUEEN_MAGIC = b"QTBL"
QUEEN_COMPRESSION_OFFSET = 12
QUEEN_MP3 = 1
QUEEN_COUNT_OFFSET = 13
QUEEN_ENTRIES_OFFSET = 15
QUEEN_ENTRY = struct.Struct(">12sBII")  # name (NUL padded), unused byte, offset, size: 21 bytes


class DebianSourceError(RuntimeError):
    """A package that cannot be fetched or unpacked; the message says what to do."""


@dataclass(frozen=True)
class QueenEntry:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class QueenTable:
    compression: int  # 1: the sound entries are MP3
    entries: list[QueenEntry]


@dataclass(frozen=True)
class Member:
    """One audio file taken from a package: where it came from and where it now lies."""

    source: str
    path: Path


def fetch_deb(package: str, cache_dir: Path) -> Path:
    """Return the cached ``.deb`` of ``package``, downloading it with apt-get if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache_dir.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    result = subprocess.run(["apt-get", "download", package], cwd=cache_dir, capture_output=True, text=True)
    cached = sorted(cache_dir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not cached:
        raise DebianSourceError(
            f"apt-get download {package} failed ({result.stderr.strip() or result.returncode}); "
            "run 'apt-get update' and check the package name"
        )
    return cached[-1]


def read_queen_table(data: bytes) -> QueenTable:
    """Parse the entry table of a Flight of the Amazon Queen ``queen.1c`` archive."""
    if data[:4] != QUEEN_MAGIC:
        raise DebianSourceError(f"not a queen.1c table: magic is {data[:4]!r}, expected {QUEEN_MAGIC!r}")
    if len(data) < QUEEN_ENTRIES_OFFSET:
        raise DebianSourceError("queen.1c table is truncated before its entry count")
    (count,) = struct.unpack_from(">H", data, QUEEN_COUNT_OFFSET)
    end = QUEEN_ENTRIES_OFFSET + count * QUEEN_ENTRY.size
    if len(data) < end:
        raise DebianSourceError(f"queen.1c table announces {count} entries but is only {len(data)} bytes long")
    entries = []
    for position in range(QUEEN_ENTRIES_OFFSET, end, QUEEN_ENTRY.size):
        raw_name, _, offset, size = QUEEN_ENTRY.unpack_from(data, position)
        entries.append(QueenEntry(raw_name.split(b"\0", 1)[0].decode("ascii", "replace"), offset, size))
    return QueenTable(data[QUEEN_COMPRESSION_OFFSET], entries)


def archive_globs(patterns: Iterable[str]) -> list[str]:
    """The globs that select package members: an ``ARCHIVE!ENTRY`` glob selects its archive."""
    return sorted({pattern.split(ARCHIVE_SEPARATOR, 1)[0] for pattern in patterns})


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_SUFFIXES)


def unpack_members(deb: Path, patterns: list[str], dest: Path) -> list[Member]:
    """Stream the members of ``deb`` matching ``patterns`` into ``dest``; expand archives.

    Only audio files (and archives that hold wanted audio) are written.
    Symlinks are skipped: Debian packages link duplicate files, and a
    duplicate would put the same sound in the corpus twice.
    """
    member_globs = archive_globs(patterns)
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    members: list[Member] = []
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if not info.isfile() or not matches_any(name, member_globs):
                    continue
                members.extend(_unpack_one(tar, info, name, patterns, dest))
    finally:
        process.stdout.close()
        if process.wait() != 0:
            raise DebianSourceError(f"dpkg-deb --fsys-tarfile {deb} failed: delete the file to download it again")
    return members


def _unpack_one(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, patterns: list[str], dest: Path) -> list[Member]:
    expand = _archive_reader(name)
    if expand is None and not (is_audio(name) and matches_any(name, patterns)):
        return []
    target = _safe_join(dest, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(info) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    if expand is None:
        return [Member(name, target)]
    members = expand(target, name, patterns, dest)
    target.unlink()
    return members


def _archive_reader(name: str) -> Callable[[Path, str, list[str], Path], list[Member]] | None:
    lowered = name.lower()
    if lowered.endswith(ZIP_SUFFIXES):
        return _expand_zip
    if lowered.endswith(QUEEN_SUFFIX):
        return _expand_queen
    return None


def _expand_zip(archive: Path, name: str, patterns: list[str], dest: Path) -> list[Member]:
    members = []
    with zipfile.ZipFile(archive) as bundle:
        for entry in bundle.infolist():
            source = f"{name}{ARCHIVE_SEPARATOR}{entry.filename}"
            if entry.is_dir() or not is_audio(entry.filename) or not matches_any(source, patterns):
                continue
            members.append(Member(source, _write(dest, source, bundle.read(entry))))
    return members


def _expand_queen(archive: Path, name: str, patterns: list[str], dest: Path) -> list[Member]:
    data = archive.read_bytes()
    table = read_queen_table(data)
    if table.compression != QUEEN_MP3:
        raise DebianSourceError(f"{name}: compression {table.compression} is not supported, only MP3 ({QUEEN_MP3})")
    members = []
    for entry in table.entries:
        source = f"{name}{ARCHIVE_SEPARATOR}{entry.name}"
        if not is_audio(entry.name) or not matches_any(source, patterns):
            continue
        if entry.offset + entry.size > len(data):
            raise DebianSourceError(f"queen.1c entry {entry.name} points past the end of the archive")
        members.append(Member(source, _write(dest, source, data[entry.offset:entry.offset + entry.size])))
    return members


def _write(dest: Path, source: str, data: bytes) -> Path:
    target = _safe_join(dest, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _safe_join(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise DebianSourceError(f"refusing member {name!r}: it would be written outside {dest}")
    return target
