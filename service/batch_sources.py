"""What ``swishnet batch`` classifies: SOURCES expanded into a sorted list of file names.

A source is a folder (every audio file under it, recursively), a glob
(``*``, ``?``, ``[...]``; ``**`` crosses folders), a manifest (a ``.txt`` or
``.lst`` file with one path or URI per line, or a ``.csv`` file with a
``path`` column), a single audio file, or a URI (``s3://...``, ``file://...``;
read on the workers through fsspec). Relative paths in a manifest are relative
to the manifest's folder. A file is named in the output exactly as it is
listed here, and that name is what a resumed run compares.

Nothing here imports Ray: the list is made on the driver, before Ray starts.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from pathlib import Path
from typing import Iterable

from service.audio import AUDIO_SUFFIXES  # what a folder contributes, by suffix

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
CSV_SUFFIX = ".csv"
PATH_COLUMN = "path"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")


class SourceError(ValueError):
    """A source that cannot be expanded: missing, matching nothing, or a manifest without paths."""


def is_uri(name: str) -> bool:
    return bool(_URI.match(name))


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Every file the sources name, each once, sorted; SourceError for a source that names none."""
    names: set[str] = set()
    for source in sources:
        found = _expand(source)
        if not found:
            raise SourceError(f"{source}: no audio files there")
        names.update(found)
    return sorted(names)


def _expand(source: str) -> list[str]:
    if is_uri(source):
        if _GLOB_CHARS.search(source):
            raise SourceError(f"{source}: globs of URIs are not supported; list the files in a manifest")
        return [source]
    path = Path(source)
    if path.is_dir():
        return _audio_under(path)
    if path.is_file():
        return read_manifest(path) if is_manifest(path) else [source]
    if _GLOB_CHARS.search(source):
        return [name for match in sorted(glob.glob(source, recursive=True)) for name in _matched(Path(match))]
    raise SourceError(f"{source}: no such file or folder")


def _matched(path: Path) -> list[str]:
    """A glob's match: a folder's audio files, or the file itself (a manifest is read)."""
    if path.is_dir():
        return _audio_under(path)
    return read_manifest(path) if is_manifest(path) else [str(path)]


def _audio_under(folder: Path) -> list[str]:
    found = []
    for root, _, files in os.walk(folder, followlinks=True):
        found += [os.path.join(root, name) for name in files if Path(name).suffix.lower() in AUDIO_SUFFIXES]
    return found


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES or path.suffix.lower() == CSV_SUFFIX


def read_manifest(path: Path) -> list[str]:
    """The paths a manifest lists: one per line (blank lines and ``#`` comments skipped), or a CSV's
    ``path`` column. Relative paths are taken from the manifest's folder; URIs are kept as they are."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if path.suffix.lower() == CSV_SUFFIX:
                reader = csv.DictReader(handle)
                if PATH_COLUMN not in (reader.fieldnames or []):
                    raise SourceError(f"{path}: a CSV manifest needs a '{PATH_COLUMN}' column, "
                                      f"it has {reader.fieldnames or 'none'}")
                entries = [row[PATH_COLUMN].strip() for row in reader]
            else:
                entries = [line.strip() for line in handle if not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{path}: cannot read the manifest ({error})") from None
    return [_beside(path, entry) for entry in entries if entry]


def _beside(manifest: Path, entry: str) -> str:
    if is_uri(entry) or os.path.isabs(entry):
        return entry
    return os.path.normpath(os.path.join(manifest.parent, entry))
