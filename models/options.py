"""Training settings, importable without torch (the CLI takes its defaults from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainOptions:
    corpus: Path
    out: Path
    arch: str = "slim"
    dilations: tuple[int, ...] | None = None  # the stack's dilations; None: the paper's 3, 2, 2, 2, 2
    epochs: int = 310  # 10 + 20 + 40 + 80 + 160: ends where a cosine cycle ends (the shipped slim's recipe)
    max_minutes: float | None = None
    seed: int = 0
    resume: bool = False
    batch_size: int = 256
    learning_rate: float = 3e-3
    windows_per_class: int = 8_000
    variants: int = 8
    val_windows_per_class: int = 1_000
    label_smoothing: float = 0.05
    package_floor: float = 60.0  # percent: selection penalises a validation package scored below this
    teachers: tuple[str, ...] = ()  # checkpoints whose mean soft targets the model is distilled towards
    distill_weight: float = 0.9  # the paper: 90 % soft targets, 10 % hard labels
    distill_temperature: float = 2.0
    restart_epochs: int = 10
    restart_mult: int = 2
    workers: int = 2
    threads: int = 1  # see docs/training.md: two OpenMP threads collapse (5 to 15x) when anyone else uses a core
    cache: Path | None = None  # default: a "features" directory beside the corpus

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.corpus).resolve().parent / "features"

    def to_dict(self) -> dict:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}
