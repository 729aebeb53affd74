"""Held-out splits that measure: package shares, package counts, leak dropping, per-split summaries."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from models.corpus import balance_held_out, drop_leaks, read_csv, share_cap_s, split_problems, write_csv
from models.corpus_config import SplitRules
from models.dataset import MANIFEST, MANIFEST_COLUMNS, corpus_summary, read_manifest
from service.features import SAMPLE_RATE
from tests.test_leaks import leaky_corpus

RULES = SplitRules(min_packages=4, max_package_share=0.3)


def rows_for(split: str, label: str, seconds_by_package: dict[str, list[float]]) -> list[dict]:
    return [{"clip_id": f"{split}-{label}-{package}-{i}", "split": split, "label": label, "package": package,
             "duration_s": str(seconds), "synthetic": "0", "style": ""}
            for package, durations in seconds_by_package.items() for i, seconds in enumerate(durations)]


def shares(rows: list[dict], split: str, label: str) -> dict[str, float]:
    total, per = 0.0, {}
    for row in rows:
        if row["split"] == split and row["label"] == label:
            per[row["package"]] = per.get(row["package"], 0.0) + float(row["duration_s"])
            total += float(row["duration_s"])
    return {package: value / total for package, value in per.items()}


def test_share_cap_is_the_water_level_that_meets_the_share():
    cap = share_cap_s({"a": 100.0, "b": 10.0, "c": 10.0, "d": 10.0, "e": 10.0}, 0.3)
    assert cap == pytest.approx(0.3 * (cap + 40.0), rel=1e-6)  # only "a" is over the level
    assert share_cap_s({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, 0.3) == pytest.approx(1.0)


def test_balancing_trims_only_the_dominant_held_out_packages():
    telephone = [2.0] * 200  # one voice holds 400 s of 430 s, like the old test split
    rows = rows_for("test", "speech", {"it": telephone, "klettres": [1.0] * 10, "warmux": [1.0] * 10,
                                       "ru": [1.0] * 10})
    rows += rows_for("train", "speech", {"queen": [2.0] * 300})
    kept, dropped = balance_held_out(rows, RULES, seed=1)
    assert max(shares(kept, "test", "speech").values()) <= 0.3 + 1e-9
    assert [(d["package"], d["reason"]) for d in dropped] == [("it", "split_share")]
    assert sum(r["split"] == "train" for r in kept) == 300  # train is never trimmed
    assert {r["clip_id"] for r in kept if r["package"] != "it"} == {r["clip_id"] for r in rows if r["package"] != "it"}
    assert balance_held_out(rows, RULES, seed=1)[0] == kept  # seeded
    assert split_problems(kept, RULES) == [f"{split} {label}: 0 packages, fewer than 4"
                                           for split in ("val", "test") for label in ("speech", "music", "noise")
                                           if (split, label) != ("test", "speech")]


def test_split_problems_name_too_few_packages_and_oversized_ones():
    rows = rows_for("val", "music", {"big": [10.0] * 5, "small": [1.0], "tiny": [1.0]})
    problems = [p for p in split_problems(rows, RULES) if p.startswith("val music")]
    assert problems == ["val music: 3 packages, fewer than 4", "val music: big holds 96%, over 30%"]


def write_corpus(root, clips: list[tuple[str, str, str, np.ndarray]]) -> None:
    rows = []
    for index, (split, label, package, audio) in enumerate(clips):
        path = f"audio/{label}/{package}/{index}.flac"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / path, audio, SAMPLE_RATE)
        rows.append({"clip_id": f"c{index}", "path": path, "label": label, "split": split, "package": package,
                     "source": f"{index}.wav", "licence": "CC0-1.0", "duration_s": f"{len(audio) / SAMPLE_RATE:.3f}",
                     "orig_sample_rate": SAMPLE_RATE, "speech_ratio": "", "synthetic": 0,
                     "style": "", "render": ""})
    write_csv(root / MANIFEST, MANIFEST_COLUMNS, rows)


def test_leaked_held_out_clips_are_dropped_and_the_search_is_not_repeated(tmp_path, monkeypatch):
    _clips, _source, leaked = leaky_corpus(tmp_path)
    rows = read_csv(tmp_path / MANIFEST)
    kept, dropped = drop_leaks(tmp_path, rows, jobs=1)
    assert [row["clip_id"] for row in rows if row not in kept] == [leaked.clip_id]
    assert dropped == [{"package": leaked.package, "label": "noise", "reason": "leak", "count": 1}]

    def no_search(*_args, **_kwargs):
        raise AssertionError("the leak search ran again on an unchanged manifest")

    monkeypatch.setattr("models.leaks.find_leaks", no_search)
    assert drop_leaks(tmp_path, rows, jobs=1) == (kept, dropped)


def test_corpus_summary_carries_hours_real_hours_and_packages_per_split_and_class(tmp_path):
    tone = (0.3 * np.sin(np.arange(2 * SAMPLE_RATE) * 0.05)).astype(np.float32)
    write_corpus(tmp_path, [("train", "music", "game-a", tone), ("train", "music", "game-b", tone),
                            ("test", "noise", "game-c", tone)])
    summary = corpus_summary(read_manifest(tmp_path))
    music = summary["train"]["music"]
    assert music["packages"] == ["game-a", "game-b"] and music["hours"] == pytest.approx(4 / 3600, abs=1e-3)
    assert music["real_hours"] == music["hours"] and summary["test"]["noise"]["packages"] == ["game-c"]
    assert summary["val"]["speech"] == {"clips": 0, "hours": 0.0, "real_hours": 0.0, "band_hours": 0.0,
                                        "packages": []}
