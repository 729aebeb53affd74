"""The corpus report: hours per class, package and split, original sample rates,
licences and what was dropped, as Markdown."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from models.corpus_config import LABELS, SPLITS


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _table(header: list[str], rows: Iterable[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def render_report(rows: list[dict], dropped: list[dict], problems: Iterable[str] = ()) -> str:
    """Markdown report of a manifest's rows, a dropped.csv's rows and the broken split rules."""
    seconds = Counter()
    clips = Counter()
    for row in rows:
        key = (row["label"], row["split"], row["package"], str(row["synthetic"]) == "1")
        seconds[key] += float(row["duration_s"])
        clips[key] += 1
    lines = ["# Training corpus report", "",
             f"{len(rows)} clips, {_hours(sum(seconds.values()))} h in all.", "",
             "## Hours per class and split", ""]
    lines += _split_table(seconds)
    lines += ["## Per split and class: packages, real and band-music hours", ""]
    lines += _split_class_table(rows)
    problems = list(problems)
    lines += ["## Split rules", ""]
    lines += [f"- broken: {problem}" for problem in problems] or ["- val and test meet the split rules."]
    lines += [""]
    lines += ["## Hours per package", ""]
    lines += _table(["package", "class", "split", "clips", "hours"],
                    [[package, label, split, clips[key], _hours(seconds[key])]
                     for key in sorted(seconds, key=lambda k: (LABELS.index(k[0]), SPLITS.index(k[1]), k[2]))
                     for label, split, package, _ in [key]])
    lines += ["## Sample rates of the original files (clips per rate)", ""]
    rates = Counter((row["label"], int(row["orig_sample_rate"])) for row in rows)
    all_rates = sorted({rate for _, rate in rates})
    lines += _table(["class"] + [f"{rate} Hz" for rate in all_rates],
                    [[label] + [rates[label, rate] for rate in all_rates] for label in LABELS])
    lines += ["## Licences", ""]
    licences = sorted({(row["package"], row["licence"]) for row in rows})
    lines += _table(["package", "licence"], licences)
    lines += ["## Dropped (clips; files for undecodable and silent)", ""]
    lines += _dropped_tables(dropped)
    return "\n".join(lines)


def _split_table(seconds: Counter) -> list[str]:
    per: dict[tuple[str, str], float] = defaultdict(float)
    synthetic: dict[str, float] = defaultdict(float)
    for (label, split, _, is_synthetic), value in seconds.items():
        per[label, split] += value
        if is_synthetic:
            synthetic[label] += value
    body = [[label] + [_hours(per[label, split]) for split in SPLITS]
            + [_hours(sum(per[label, split] for split in SPLITS)), _hours(synthetic[label])] for label in LABELS]
    return _table(["class", *SPLITS, "total", "of which synthetic"], body)


def _split_class_table(rows: list[dict]) -> list[str]:
    body = []
    for split in SPLITS:
        for label in LABELS:
            chosen = [row for row in rows if row["split"] == split and row["label"] == label]
            hours = sum(float(r["duration_s"]) for r in chosen)
            real = sum(float(r["duration_s"]) for r in chosen if str(r["synthetic"]) != "1")
            band = sum(float(r["duration_s"]) for r in chosen if r.get("style") == "band")
            long_real = sum(float(r["duration_s"]) for r in chosen
                            if str(r["synthetic"]) != "1" and float(r["duration_s"]) >= 10)
            packages = sorted({r["package"] for r in chosen})
            body.append([split, label, len(packages), _hours(hours), _hours(real), _hours(band), _hours(long_real),
                         ", ".join(packages) if split != "train" else f"{len(packages)} packages"])
    return _table(["split", "class", "packages", "hours", "real hours", "band hours", "real in clips >= 10 s",
                   "package names"], body)


def _dropped_tables(dropped: list[dict]) -> list[str]:
    by_reason = Counter()
    by_package = defaultdict(Counter)
    for row in dropped:
        by_reason[row["label"], row["reason"]] += int(row["count"])
        by_package[row["package"]][row["reason"]] += int(row["count"])
    reasons = sorted({reason for _, reason in by_reason})
    lines = _table(["class", *reasons], [[label] + [by_reason[label, r] for r in reasons] for label in LABELS])
    lines += _table(["package", *reasons],
                    [[package] + [counts[r] for r in reasons] for package, counts in sorted(by_package.items())])
    return lines
