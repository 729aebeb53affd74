"""Build the training corpus: Debian packages (or a MUSAN folder) in, FLAC clips and a manifest out.

Layout of an output folder OUT:

- ``audio/<label>/<package>/<clip_id>.flac``: 16-bit FLAC, 16 kHz mono clips.
- ``manifest.csv``: one row per clip, columns MANIFEST_COLUMNS.
- ``dropped.csv``: what was left out, by package, label and reason.
- ``parts/<package>.csv`` and ``parts/<package>.dropped.csv``: written when a
  package is finished; a re-run skips packages that have them (resumable).
- ``CORPUS.md``: the report (``swishnet corpus stats OUT`` prints it).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import logging
import multiprocessing
import multiprocessing.pool
import os
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from models.corpus_audio import (
    SYNTHETIC_KINDS,
    active_regions,
    segment_bounds,
    speech_ratio,
    synthetic_noise,
    write_clip,
)
from models.corpus_config import (
    DEFAULT_CACHE,
    LABELS,
    SPLITS,
    CorpusError,
    Settings,
    Source,
    SourcesFile,
    SplitRules,
    assign_splits,
)
from models.corpus_render import RenderError, draw_arrangement, read_score, render, renderer_missing
from models.dataset import MANIFEST, MANIFEST_COLUMNS
from models.debian_sources import AUDIO_SUFFIXES, fetch_deb, unpack_members
from service.audio import AudioError, load_audio
from service.features import SAMPLE_RATE

log = logging.getLogger(__name__)

DROPPED_COLUMNS = ("package", "label", "reason", "count")
SYNTHETIC_PACKAGE = "synthetic-noise"
RENDERED_PACKAGE = "rendered-music"
SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc", ".mid", ".midi")
SOUNDFONT_SUFFIXES = (".sf2", ".sf3")
MUSAN_LICENCE = "MUSAN (CC BY 4.0 / CC BY 3.0 / public domain, per its LICENSE)"
MUSAN_FRACTIONS = {"train": 0.65, "val": 0.10, "test": 0.25}  # the paper's split


@dataclass(frozen=True)
class FileTask:
    """One audio file to turn into clips."""

    package: str
    label: str
    split: str
    licence: str
    source: str  # the file's path inside its package (or MUSAN folder)
    path: Path  # where the file lies now
    style: str = ""


@dataclass
class FileResult:
    task: FileTask
    rows: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> clips (files for undecodable / silent)


def clip_id(package: str, source: str, index: int) -> str:
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    return f"{package}-{digest}-{index:03d}"


def process_file(task: FileTask, out_dir: Path, settings: Settings) -> FileResult:
    """Decode, trim silence, cut, cap, screen and write the clips of one file."""
    result = FileResult(task)
    try:
        orig_rate = sf.info(str(task.path)).samplerate
        audio = load_audio(task.path)
    except (AudioError, RuntimeError):  # libsndfile's errors are RuntimeErrors
        result.dropped["undecodable"] += 1
        return result
    regions = active_regions(
        audio,
        below_peak_db=settings.silence_below_peak_db,
        floor_dbfs=settings.silence_floor_dbfs,
        min_gap_s=settings.min_gap_s,
    )
    if not regions:
        result.dropped["silent"] += 1
        return result
    for index, (start, end) in enumerate(_kept_segments(regions, task.label, settings, result.dropped)):
        clip = audio[start:end]
        screen = settings.screening.get(task.label)
        ratio = speech_ratio(clip) if screen else None
        reason = screen.reason(task.label, ratio) if screen else None
        if reason:
            result.dropped[reason] += 1
            continue
        cid = clip_id(task.package, task.source, index)
        path = f"audio/{task.label}/{task.package}/{cid}.flac"
        write_clip(out_dir / path, clip)
        result.rows.append(_row(task, cid, path, len(clip), orig_rate, ratio))
    return result


def _kept_segments(regions: list[tuple[int, int]], label: str, settings: Settings, dropped: Counter) -> Iterator:
    """Segments of the active regions that are long enough and fit in the per-file cap."""
    cap = settings.caps.get(label)
    budget = cap.file_s * SAMPLE_RATE if cap else float("inf")
    used = 0
    for region in regions:
        for start, end in segment_bounds(*region, settings.max_segment_s):
            if end - start < settings.min_clip_s * SAMPLE_RATE:
                dropped["too_short"] += 1
            elif used + end - start > budget:
                dropped["file_cap"] += 1
            else:
                used += end - start
                yield start, end


def _row(task: FileTask, cid: str, path: str, samples: int, orig_rate: int, ratio: float | None,
         synthetic: bool = False, render: str = "") -> dict:
    return {
        "clip_id": cid, "path": path, "label": task.label, "split": task.split, "package": task.package,
        "source": task.source, "licence": task.licence, "duration_s": f"{samples / SAMPLE_RATE:.3f}",
        "orig_sample_rate": orig_rate, "speech_ratio": "" if ratio is None else f"{ratio:.3f}",
        "synthetic": int(synthetic), "style": task.style, "render": render,
    }


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A pool of ``jobs`` processes for the whole run (each loads the speech detector once); None for 1."""
    if jobs <= 1:
        yield None
        return
    with multiprocessing.get_context("forkserver").Pool(jobs) as pool:
        yield pool


def run_tasks(tasks: list, out_dir: Path, settings: Settings, pool: multiprocessing.pool.Pool | None,
              desc: str, worker: Callable = process_file) -> list[FileResult]:
    """Run ``worker`` on each task in ``pool``, or in this process when it is None."""
    work = functools.partial(worker, out_dir=out_dir, settings=settings)
    bar = functools.partial(tqdm, total=len(tasks), desc=desc, unit="file", mininterval=2.0, leave=False)
    results = bar(pool.imap_unordered(work, tasks, chunksize=2) if pool else map(work, tasks))
    return sorted(results, key=lambda r: r.task.source)


def apply_package_caps(results: list[FileResult], settings: Settings, out_dir: Path, package: str
                       ) -> tuple[list[dict], Counter]:
    """Keep whole files, in a seeded random order, while their label's package cap allows.

    Returns the kept rows and drop counts keyed by (label, reason); clips of
    files over the cap are deleted.
    """
    dropped = Counter()
    for result in results:
        for reason, count in result.dropped.items():
            dropped[result.task.label, reason] += count
    order = list(results)
    random.Random(f"{settings.seed}:{package}").shuffle(order)
    used: Counter = Counter()
    rows = []
    for result in order:
        label = result.task.label
        cap = settings.caps.get(label)
        seconds = sum(float(row["duration_s"]) for row in result.rows)
        if cap and result.rows and used[label] + seconds > cap.package_h * 3600:
            for row in result.rows:
                (out_dir / row["path"]).unlink()
            dropped[label, "package_cap"] += len(result.rows)
            continue
        used[label] += seconds
        rows.extend(result.rows)
    return sorted(rows, key=lambda row: row["clip_id"]), dropped


def _part_paths(out_dir: Path, package: str) -> tuple[Path, Path]:
    parts = out_dir / "parts"
    return parts / f"{package}.csv", parts / f"{package}.dropped.csv"


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict]) -> None:
    """Write a CSV atomically (a crash never leaves a half-written file that looks finished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def process_package(out_dir: Path, package: str, make_tasks: Callable[[Path], list],
                    settings: Settings, pool: multiprocessing.pool.Pool | None,
                    worker: Callable = process_file) -> None:
    """Turn one package (or one part of a package) into clips and its part files, unless a previous run did.

    ``make_tasks(work_dir)`` lists the package's files, unpacking them into
    ``work_dir`` if needed; the work folder is removed afterwards. Clips lie
    in ``audio/<label>/<package>/``.
    """
    rows_path, dropped_path = _part_paths(out_dir, package)
    if rows_path.exists() and dropped_path.exists():
        log.info("%s: already done, skipped", package)
        return
    for label in LABELS:  # clips of an interrupted earlier run
        shutil.rmtree(out_dir / "audio" / label / package, ignore_errors=True)
    work_dir = out_dir / "work" / package
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        tasks = make_tasks(work_dir)
        results = run_tasks(tasks, out_dir, settings, pool, desc=package, worker=worker)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    rows, dropped = apply_package_caps(results, settings, out_dir, package)
    dropped_rows = [{"package": package, "label": label, "reason": reason, "count": count}
                    for (label, reason), count in sorted(dropped.items())]
    write_csv(dropped_path, DROPPED_COLUMNS, dropped_rows)
    write_csv(rows_path, MANIFEST_COLUMNS, rows)
    hours = sum(float(row["duration_s"]) for row in rows) / 3600
    log.info("%s: %d files -> %d clips, %.2f h; dropped %s", package, len(tasks), len(rows), hours,
             dict(Counter({reason: n for (_, reason), n in dropped.items()})))


def debian_tasks(source: Source, deb: Path, work_dir: Path) -> list[FileTask]:
    """Unpack the audio members of one package and label them by the source's parts."""
    tasks = []
    for member in unpack_members(deb, source.patterns, work_dir):
        label = source.label_of(member.source)
        if label:
            style = source.style if label == "music" else ""
            tasks.append(FileTask(source.package, label, source.split, source.licence, member.source, member.path,
                                  style))
    if not tasks:
        raise CorpusError(f"{source.package}: no member matches its include globs; fix them in the sources file")
    return tasks


def write_synthetic_noise(out_dir: Path, settings: Settings) -> None:
    """Stationary synthetic noise clips (train split only), as the pseudo-package SYNTHETIC_PACKAGE."""
    rows_path, dropped_path = _part_paths(out_dir, SYNTHETIC_PACKAGE)
    if rows_path.exists():
        return
    rng = np.random.default_rng(settings.seed)
    count = round(settings.synthetic_noise_h * 3600 / settings.synthetic_clip_s)
    rows = []
    for index in range(count):
        kind = SYNTHETIC_KINDS[index % len(SYNTHETIC_KINDS)]
        task = FileTask(SYNTHETIC_PACKAGE, "noise", "train", "generated, public domain", f"{kind}:{index}", Path())
        cid = clip_id(SYNTHETIC_PACKAGE, task.source, 0)
        path = f"audio/noise/{SYNTHETIC_PACKAGE}/{cid}.flac"
        clip = synthetic_noise(kind, settings.synthetic_clip_s, rng)
        write_clip(out_dir / path, clip)
        rows.append(_row(task, cid, path, len(clip), SAMPLE_RATE, None, synthetic=True))
    write_csv(dropped_path, DROPPED_COLUMNS, [])
    write_csv(rows_path, MANIFEST_COLUMNS, rows)

@dataclass(frozen=True)
class RenderTask:
    """One score to render as train music, into the folder of its part."""

    part: str  # RENDERED_PACKAGE-NNN: the resumable unit and the clips' folder
    source: str  # "music21:<path in its corpus>" or "<package>:<path>"
    score: Path
    soundfont: Path
    band: bool
    seed: int


def process_render(task: RenderTask, out_dir: Path, settings: Settings) -> FileResult:
    """Render one score with an arrangement drawn for it and cut it into clips (no screening: GM has no voices)."""
    file_task = FileTask(RENDERED_PACKAGE, "music", "train", settings.render.licence, task.source, task.score,
                         "band" if task.band else "")
    result = FileResult(file_task)
    try:
        parts = read_score(task.score)
        rng = np.random.default_rng([task.seed, int(hashlib.sha1(task.source.encode()).hexdigest()[:8], 16)])
        arrangement = draw_arrangement(parts, rng, task.band)
        audio = render(parts, arrangement, task.soundfont, settings.render.max_score_s)
    except RenderError as error:
        log.debug("%s", error)
        result.dropped["unrenderable"] += 1
        return result
    description = f"{arrangement.describe()};soundfont={task.soundfont.name}"
    for index, (start, end) in enumerate(_kept_segments([(0, len(audio))], "music", settings, result.dropped)):
        cid = clip_id(RENDERED_PACKAGE, task.source, index)
        path = f"audio/music/{task.part}/{cid}.flac"
        write_clip(out_dir / path, audio[start:end])
        result.rows.append(_row(file_task, cid, path, end - start, SAMPLE_RATE, None, synthetic=True,
                                render=description))
    return result


def _unpacked(package: str, suffixes: tuple[str, ...], cache_dir: Path) -> list[Path]:
    """Files of a Debian package with these suffixes, unpacked once into the cache."""
    folder = cache_dir / "unpacked" / package
    if not (folder / ".done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(fetch_deb(package, cache_dir)), str(folder)], check=True)
        (folder / ".done").touch()
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))


def score_sources(settings: Settings, cache_dir: Path) -> list[tuple[str, Path]]:
    """(source name, path) of every score to draw from: the music21 corpus and Debian .mid files."""
    scores = []
    if settings.render.music21:
        import music21

        root = Path(music21.__file__).parent / "corpus"
        scores += [(f"music21:{Path(p).relative_to(root)}", Path(p)) for p in music21.corpus.getPaths()
                   if str(p).lower().endswith(SCORE_SUFFIXES)]
    for package in settings.render.score_packages:
        folder = cache_dir / "unpacked" / package
        scores += [(f"{package}:{p.relative_to(folder)}", p) for p in _unpacked(package, (".mid", ".midi"), cache_dir)]
    return sorted(scores)


def render_tasks(settings: Settings, cache_dir: Path) -> list[list[RenderTask]]:
    """Every score in a seeded order, with its soundfont and band flag, in batches (the resumable parts)."""
    fonts = [font for package in settings.render.soundfonts for font in _unpacked(package, SOUNDFONT_SUFFIXES, cache_dir)]
    if not fonts:
        raise CorpusError("rendered music needs soundfonts: list Debian soundfont packages under render.soundfonts")
    scores = score_sources(settings, cache_dir)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(scores))
    size = settings.render.batch_scores
    tasks = [RenderTask(f"{RENDERED_PACKAGE}-{position // size:03d}", *scores[index],
                        fonts[int(rng.integers(len(fonts)))], bool(rng.random() < settings.render.band_fraction),
                        settings.seed)
             for position, index in enumerate(order)]
    return [tasks[start:start + size] for start in range(0, len(tasks), size)]


def render_target_s(out_dir: Path, sources: list[Source], settings: Settings) -> float:
    """Seconds of rendered music: at most ``render.hours`` and ``render.max_share`` of train music."""
    real = sum(float(row["duration_s"]) for source in sources if source.split == "train"
               for row in read_csv(_part_paths(out_dir, source.package)[0]) if row["label"] == "music")
    share = settings.render.max_share
    return min(settings.render.hours * 3600, share / (1 - share) * real)


def write_rendered_music(out_dir: Path, settings: Settings, target_s: float, cache_dir: Path,
                         pool: multiprocessing.pool.Pool | None) -> list[str]:
    """Render batches of scores until ``target_s`` is reached; returns the parts written (resumable)."""
    missing = renderer_missing()
    if missing:
        raise CorpusError(missing)
    parts, done_s = [], 0.0
    for batch in render_tasks(settings, cache_dir):
        if done_s >= target_s:
            break
        part = batch[0].part
        process_package(out_dir, part, lambda _work, batch=batch: batch, settings, pool, worker=process_render)
        parts.append(part)
        done_s += sum(float(row["duration_s"]) for row in read_csv(_part_paths(out_dir, part)[0]))
        log.info("rendered music: %.2f of %.2f h", done_s / 3600, target_s / 3600)
    return parts


def trim_rendered(rows: list[dict], target_s: float) -> tuple[list[dict], list[dict]]:
    """Keep rendered clips, in part order, while they fit in ``target_s``; (kept rows, dropped counts)."""
    kept, used, dropped = [], 0.0, 0
    for row in rows:
        if row["package"] == RENDERED_PACKAGE:
            if used + float(row["duration_s"]) > target_s:
                dropped += 1
                continue
            used += float(row["duration_s"])
        kept.append(row)
    counts = [{"package": RENDERED_PACKAGE, "label": "music", "reason": "render_cap", "count": dropped}] if dropped else []
    return kept, counts


def share_cap_s(hours_by_package: dict[str, float], max_share: float) -> float:
    """The largest per-package duration c with sum(min(d, c)) * max_share >= c (water filling)."""
    low, high = 0.0, max(hours_by_package.values(), default=0.0)
    for _ in range(60):
        middle = (low + high) / 2
        if sum(min(d, middle) for d in hours_by_package.values()) * max_share >= middle:
            low = middle
        else:
            high = middle
    return low


def balance_held_out(rows: list[dict], rules: SplitRules, seed: int) -> tuple[list[dict], list[dict]]:
    """Trim val and test so no package holds more than ``rules.max_package_share`` of its class.

    Whole clips of the largest packages are dropped in a seeded order; train is
    untouched. Clips are whole, so a trimmed package can land a little under
    its cap and leave another a little over: trimming repeats until none is.
    Returns the kept rows and dropped.csv rows (reason ``split_share``).
    """
    counts: Counter = Counter()
    for _ in range(20):
        removed = _trim_round(rows, rules, seed)
        if not removed:
            break
        counts.update((package, label) for package, label, _ in removed.values())
        rows = [row for row in rows if row["clip_id"] not in removed]
    dropped = [{"package": p, "label": label, "reason": "split_share", "count": n}
               for (p, label), n in sorted(counts.items())]
    return rows, dropped


def _trim_round(rows: list[dict], rules: SplitRules, seed: int) -> dict[str, tuple[str, str, str]]:
    """One pass of balancing: clip id -> (package, label, split) of each clip to drop."""
    by_group: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for row in rows:
        if row["split"] != "train":
            by_group.setdefault((row["split"], row["label"]), {}).setdefault(row["package"], []).append(row)
    removed = {}
    for (split, label), packages in sorted(by_group.items()):
        durations = {p: sum(float(r["duration_s"]) for r in clips) for p, clips in packages.items()}
        if len(durations) * rules.max_package_share < 1:
            continue  # too few packages to meet the share at all: split_problems reports it
        cap = share_cap_s(durations, rules.max_package_share)
        total = sum(durations.values())
        for package, clips in sorted(packages.items()):
            if durations[package] <= max(cap, rules.max_package_share * total) * (1 + 1e-9):
                continue
            order = sorted(clips, key=lambda r: r["clip_id"])
            random.Random(f"{seed}:{package}:{split}:{label}").shuffle(order)
            used = 0.0
            for row in order:
                if used + float(row["duration_s"]) > cap:
                    removed[row["clip_id"]] = (package, label, split)
                else:
                    used += float(row["duration_s"])
    return removed


def split_problems(rows: list[dict], rules: SplitRules) -> list[str]:
    """Each way val and test break the split rules (too few packages, a package over its share)."""
    problems = []
    for split in SPLITS[1:]:
        for label in LABELS:
            seconds = Counter()
            for row in rows:
                if row["split"] == split and row["label"] == label:
                    seconds[row["package"]] += float(row["duration_s"])
            total = sum(seconds.values())
            if len(seconds) < rules.min_packages:
                problems.append(f"{split} {label}: {len(seconds)} packages, fewer than {rules.min_packages}")
            for package, value in seconds.items():
                if value > rules.max_package_share * total * (1 + 1e-6) + 1e-6:
                    problems.append(f"{split} {label}: {package} holds {value / total:.0%}, "
                                    f"over {rules.max_package_share:.0%}")
    return problems


def drop_leaks(out_dir: Path, rows: list[dict], jobs: int) -> tuple[list[dict], list[dict]]:
    """Drop the val/test clips whose audio is also in a train clip (``swishnet corpus leaks``).

    The confirmed leaks are saved in ``leaks.csv`` with the digest of the
    manifest they were found in, so a re-run of an unchanged corpus skips the search.
    """
    from models.leaks import Leak, find_leaks

    digest = hashlib.sha256((out_dir / MANIFEST).read_bytes()).hexdigest()
    saved, key = out_dir / "leaks.csv", out_dir / "leaks.sha256"
    if saved.exists() and key.exists() and key.read_text() == digest:
        leaked = {row["clip_id"] for row in read_csv(saved)}
    else:
        found = [leak.to_row() for leak in find_leaks(out_dir, jobs)]
        write_csv(saved, Leak.COLUMNS, found)
        key.write_text(digest)
        leaked = {row["clip_id"] for row in found}
    counts = Counter((row["package"], row["label"]) for row in rows if row["clip_id"] in leaked)
    dropped = [{"package": p, "label": label, "reason": "leak", "count": n} for (p, label), n in sorted(counts.items())]
    return [row for row in rows if row["clip_id"] not in leaked], dropped


def finish(out_dir: Path, packages: Iterable[str], settings: Settings | None = None, render_target_s: float = 0.0,
           jobs: int = 2) -> None:
    """Merge the part files of ``packages`` into manifest.csv and dropped.csv and write the report.

    With ``settings`` (a full build), rendered music is trimmed to its target,
    val/test clips that leak train audio are dropped, and val/test are
    balanced so no package holds more than its share of a class.
    """
    from models.corpus_report import render_report

    rows, dropped = [], []
    for package in packages:
        rows_path, dropped_path = _part_paths(out_dir, package)
        rows += read_csv(rows_path)
        dropped += read_csv(dropped_path)
    if settings is not None:
        rows, more = trim_rendered(rows, render_target_s)
        dropped += more
        write_csv(out_dir / MANIFEST, MANIFEST_COLUMNS, rows)
        rows, more = drop_leaks(out_dir, rows, jobs)
        dropped += more
        rows, more = balance_held_out(rows, settings.split_rules, settings.seed)
        dropped += more
        for problem in split_problems(rows, settings.split_rules):
            log.warning("split rule broken: %s", problem)
    write_csv(out_dir / MANIFEST, MANIFEST_COLUMNS, rows)
    write_csv(out_dir / "dropped.csv", DROPPED_COLUMNS, dropped)
    shutil.rmtree(out_dir / "work", ignore_errors=True)  # emptied package by package
    rules = settings.split_rules if settings is not None else SplitRules()
    (out_dir / "CORPUS.md").write_text(render_report(rows, dropped, split_problems(rows, rules)))


def build(sources_file: SourcesFile, out_dir: Path, names: list[str] | None = None,
          cache_dir: Path = DEFAULT_CACHE, jobs: int = 2) -> None:
    """Build the corpus from Debian packages into ``out_dir`` (resumable).

    A full build (``names`` None) also renders music, adds synthetic noise,
    drops leaks and balances val/test; a build of named packages only merges them.
    """
    sources = sources_file.select(names)
    settings = sources_file.settings
    debs = {source.package: fetch_deb(source.package, cache_dir)
            for source in tqdm(sources, desc="download", unit="package")}
    packages = [source.package for source in sources]
    with worker_pool(jobs) as pool:
        for source in tqdm(sources, desc="packages", unit="package"):
            make_tasks = functools.partial(debian_tasks, source, debs[source.package])
            process_package(out_dir, source.package, make_tasks, settings, pool)
        if names is not None:
            finish(out_dir, packages)
            return
        target_s = render_target_s(out_dir, sources, settings)
        if target_s > 0:
            packages += write_rendered_music(out_dir, settings, target_s, cache_dir, pool)
    write_synthetic_noise(out_dir, settings)
    packages.append(SYNTHETIC_PACKAGE)
    finish(out_dir, packages, settings, target_s, jobs)


def musan_tasks(musan_dir: Path, seed: int) -> dict[str, list[FileTask]]:
    """MUSAN files as tasks, by package ``musan-<label>-<subfolder>``.

    Splits go by top-level subfolder under each class when it has at least
    three, else by file; either way with MUSAN_FRACTIONS and a fixed seed.
    """
    missing = [f"{label}/" for label in LABELS if not (musan_dir / label).is_dir()]
    if missing:
        raise CorpusError(f"{musan_dir} is not a MUSAN folder: it has no {' or '.join(missing)} subfolder")
    by_package: dict[str, list[FileTask]] = {}
    for label in LABELS:
        root = musan_dir / label
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(AUDIO_SUFFIXES))
        if not files:
            raise CorpusError(f"{root} holds no audio files")
        group_of = {path: path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else label
                    for path in files}
        by_group = len(set(group_of.values())) >= len(SPLITS)
        key_of = {path: group_of[path] if by_group else str(path.relative_to(root)) for path in files}
        weights = Counter()
        for path in files:
            weights[key_of[path]] += path.stat().st_size
        split_of = assign_splits(weights, MUSAN_FRACTIONS, seed)
        for path in files:
            package = f"musan-{label}-{group_of[path]}"
            task = FileTask(package, label, split_of[key_of[path]], MUSAN_LICENCE,
                            str(path.relative_to(musan_dir)), path)
            by_package.setdefault(package, []).append(task)
    return by_package


def import_musan(musan_dir: Path, out_dir: Path, jobs: int = 2, settings: Settings | None = None) -> None:
    """Build the same corpus layout from a MUSAN folder (speech/, music/, noise/).

    MUSAN is curated, so by default nothing is capped or screened.
    """
    settings = settings or Settings()
    by_package = musan_tasks(musan_dir, settings.seed)
    with worker_pool(jobs) as pool:
        for package, tasks in by_package.items():
            process_package(out_dir, package, lambda _work, tasks=tasks: tasks, settings, pool)
    finish(out_dir, by_package)
