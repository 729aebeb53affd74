"""The corpus sources file (models/corpus_sources.yaml): settings, sources, reserved packages."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Mapping

import platformdirs

from models.debian_sources import matches_any
from models.labels import LABELS
from service.cli import CommandError

SPLITS = ("train", "val", "test")
STYLES = ("", "band")  # "band": music driven by drums, guitars and bass (rock, pop, metal, electronic)
DEFAULT_SOURCES_FILE = Path(__file__).with_name("corpus_sources.yaml")
# Where corpus data goes by default: $SWISHNET_DATA_DIR, else the user's cache folder (~/.cache/swishnet on Linux).
DATA_DIR = Path(os.environ.get("SWISHNET_DATA_DIR") or platformdirs.user_cache_path("swishnet"))
DEFAULT_OUT = DATA_DIR / "corpus"  # shared: training reads it
DEFAULT_CACHE = DATA_DIR / "debs"


class CorpusError(CommandError):
    """A corpus, corpus request or sources file that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Cap:
    file_s: float
    package_h: float


@dataclass(frozen=True)
class Screen:
    """Speech-ratio bounds a clip must meet to keep its label; None means unbounded."""

    min_speech_ratio: float | None = None
    max_speech_ratio: float | None = None

    def reason(self, label: str, ratio: float) -> str | None:
        """Why a clip with this speech ratio is dropped, or None to keep it."""
        if self.min_speech_ratio is not None and ratio < self.min_speech_ratio:
            return "too_little_speech"
        if self.max_speech_ratio is not None and ratio > self.max_speech_ratio:
            return f"speech_in_{label}"
        return None


@dataclass(frozen=True)
class RenderSettings:
    """Rendered music (models/corpus_render.py), train split only."""

    hours: float = 0.0  # at most this much ...
    max_share: float = 0.4  # ... and at most this share of train music, so real recordings dominate
    band_fraction: float = 0.6  # arrangements with drums, bass and guitars
    soundfonts: tuple[str, ...] = ()  # Debian packages that ship GM soundfonts (.sf2 / .sf3)
    score_packages: tuple[str, ...] = ()  # Debian packages that ship .mid files
    music21: bool = True  # the music21 wheel's corpus of scores
    licence: str = "scores: music21 corpus (BSD-3 / public domain) and Debian .mid files; soundfonts: MIT / GPL"
    batch_scores: int = 40  # scores per resumable part
    max_score_s: float = 120.0  # render at most the start of a score: many scores, not a few long ones


@dataclass(frozen=True)
class SplitRules:
    """What each held-out split must satisfy, per class."""

    min_packages: int = 4
    max_package_share: float = 0.3  # larger packages are trimmed (whole clips, seeded) down to this share


@dataclass(frozen=True)
class Settings:
    seed: int = 1234
    min_clip_s: float = 0.5
    max_segment_s: float = 30.0
    silence_below_peak_db: float = 40.0
    silence_floor_dbfs: float = -60.0
    min_gap_s: float = 1.0
    caps: Mapping[str, Cap] = field(default_factory=dict)  # label -> cap; a missing label is uncapped
    screening: Mapping[str, Screen] = field(default_factory=dict)  # label -> bounds; missing: not screened
    synthetic_noise_h: float = 0.3
    synthetic_clip_s: float = 10.0
    render: RenderSettings = field(default_factory=RenderSettings)
    split_rules: SplitRules = field(default_factory=SplitRules)


@dataclass(frozen=True)
class Part:
    label: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    package: str
    split: str
    licence: str
    parts: tuple[Part, ...]
    group: str
    style: str = ""  # of its music: "band" for drum / guitar driven

    def label_of(self, member: str) -> str | None:
        """The label of the first part that takes ``member``, or None if no part does."""
        for part in self.parts:
            if matches_any(member, part.include) and not matches_any(member, part.exclude):
                return part.label
        return None

    @property
    def patterns(self) -> list[str]:
        return [pattern for part in self.parts for pattern in part.include]


@dataclass(frozen=True)
class SourcesFile:
    settings: Settings
    sources: dict[str, Source]
    reserved: frozenset[str]

    def select(self, names: Iterable[str] | None) -> list[Source]:
        """The sources to build: all when ``names`` is None. Reserved or unknown names are refused."""
        if names is None:
            return list(self.sources.values())
        names = list(dict.fromkeys(names))
        check_not_reserved(names, self.reserved)
        unknown = [name for name in names if name not in self.sources]
        if unknown:
            raise CorpusError(
                f"unknown source(s) {', '.join(unknown)}: add them to the sources file first "
                f"(known: {', '.join(sorted(self.sources))})"
            )
        return [self.sources[name] for name in names]


def check_not_reserved(packages: Iterable[str], reserved: Iterable[str]) -> None:
    """Raise CorpusError if any package is reserved for independent evaluation."""
    refused = sorted(set(packages) & set(reserved))
    if refused:
        raise CorpusError(
            f"refusing reserved package(s) {', '.join(refused)}: they are kept for independent "
            "evaluation (see DATA.md) and must never enter the training corpus"
        )


def load_sources(path: Path = DEFAULT_SOURCES_FILE) -> SourcesFile:
    """Read and validate a sources file."""
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CorpusError(f"cannot read sources file {path}: {error}") from None
    reserved = frozenset(document.get("reserved") or ())
    refused_members = tuple(document.get("reserved_members") or ())
    sources: dict[str, Source] = {}
    for entry in document.get("sources") or ():
        source = _refuse_members(_parse_source(entry), refused_members)
        if source.package in sources:
            raise CorpusError(f"{path}: package {source.package} is listed twice; list each package once")
        sources[source.package] = source
    check_not_reserved(sources, reserved)
    _check_groups(sources.values())
    return SourcesFile(_parse_settings(document.get("settings") or {}), sources, reserved)


def _parse_settings(raw: Mapping) -> Settings:
    raw = dict(raw)
    caps = {label: Cap(**cap) for label, cap in (raw.pop("caps", None) or {}).items()}
    screening = {label: Screen(**bounds) for label, bounds in (raw.pop("screening", None) or {}).items()}
    synthetic = raw.pop("synthetic_noise", None) or {}
    render = raw.pop("render", None) or {}
    rules = raw.pop("split_rules", None) or {}
    try:
        render_settings = RenderSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in render.items()})
        split_rules = SplitRules(**rules)
    except TypeError as error:
        raise CorpusError(f"bad render or split_rules settings: {error}") from None
    known = {f.name for f in fields(Settings)}
    unknown = (set(raw) - known) | ((set(caps) | set(screening)) - set(LABELS))
    if unknown:
        raise CorpusError(f"unknown settings {sorted(unknown)}: settings are {sorted(known)}; "
                          f"caps and screening are keyed by class ({', '.join(LABELS)})")
    return Settings(
        **raw,
        caps=caps,
        screening=screening,
        synthetic_noise_h=synthetic.get("hours", Settings.synthetic_noise_h),
        synthetic_clip_s=synthetic.get("clip_s", Settings.synthetic_clip_s),
        render=render_settings,
        split_rules=split_rules,
    )


def _parse_source(entry: Mapping) -> Source:
    package = entry.get("package")
    if not package:
        raise CorpusError(f"a source has no package name: {entry}")
    if entry.get("split") not in SPLITS:
        raise CorpusError(f"{package}: split must be one of {SPLITS}, got {entry.get('split')!r}")
    parts = []
    for part in entry.get("parts") or ():
        if part.get("label") not in LABELS or not part.get("include"):
            raise CorpusError(f"{package}: each part needs a label in {LABELS} and include globs, got {part}")
        parts.append(Part(part["label"], tuple(part["include"]), tuple(part.get("exclude") or ())))
    if not parts or not entry.get("licence"):
        raise CorpusError(f"{package}: a source needs a licence and at least one part")
    if entry.get("style", "") not in STYLES:
        raise CorpusError(f"{package}: style must be one of {STYLES}, got {entry.get('style')!r}")
    return Source(package, entry["split"], entry["licence"], tuple(parts), entry.get("group", package),
                  entry.get("style", ""))


def _refuse_members(source: Source, globs: tuple[str, ...]) -> Source:
    """Every part of ``source`` also excludes the members that hold reserved recordings."""
    parts = tuple(replace(part, exclude=part.exclude + globs) for part in source.parts)
    return replace(source, parts=parts)


def _check_groups(sources: Iterable[Source]) -> None:
    split_of: dict[str, str] = {}
    for source in sources:
        if split_of.setdefault(source.group, source.split) != source.split:
            raise CorpusError(
                f"group {source.group} spans splits {split_of[source.group]} and {source.split}: "
                "packages of one game or soundtrack must share a split"
            )


def assign_splits(
    weights: Mapping[str, float], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assign whole groups to splits so each split's weight nears its fraction.

    Groups are taken largest first (ties in a seeded random order) and each goes
    to the split furthest below its target; while there are only as many groups
    left as splits still empty, they go to the empty splits.
    """
    order = sorted(weights)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda name: -weights[name])
    total = sum(weights.values())
    assigned = {split: 0.0 for split in fractions}
    result: dict[str, str] = {}
    for index, name in enumerate(order):
        empty = [split for split in fractions if split not in result.values()]
        candidates = empty if empty and len(order) - index <= len(empty) else list(fractions)
        split = max(candidates, key=lambda s: fractions[s] * total - assigned[s])
        result[name] = split
        assigned[split] += weights[name]
    return result
