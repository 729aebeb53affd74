"""Training: Adam, cosine annealing with warm restarts, early stopping, resumable.

One epoch is one pass over a cached variant of augmented windows (models.pool),
each batch cropped to its own random length of 0.5 to 2 s. Classes are
balanced by sampling, so the loss needs no class weights; light label
smoothing keeps the tiny network from chasing the label noise of game audio.

Model selection (best.pt) uses the mean of three balanced
accuracies (mean per-class recall) on fixed validation windows: clean, the
same windows through an 8 kHz telephone channel, and through a low-bitrate
MP3. The channel terms punish a model that leans on bandwidth to tell the
classes apart. Windows carry their left context (models.pool), as a stream has.
Early stopping fits the warm restarts: training stops at the end of a cosine
cycle that did not beat the best score of the cycles before it (mid-cycle,
right after a restart, scores dip by design).

Everything random derives from ``--seed`` and the epoch number, so a resumed
run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from models.dataset import (WINDOW_MAX_FRAMES, WINDOW_MAX_S, WINDOW_MIN_FRAMES, WINDOW_MIN_S, corpus_summary,
                            manifest_sha256, read_manifest, select)
from models.metrics import balanced_accuracy
from models.pool import NoiseBank, PoolSpec, WindowSet, crop_batch, load_or_build, training_batches
from models.options import TrainOptions
from models.labels import LABELS
from models.swishnet import SwishNet, SwishNetConfig, parameter_count, pooled_mean
from service.cli import CommandError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
VALIDATION_CHANNELS = ("clean", "telephone", "mp3")


@dataclass
class Data:
    """What training reads: the corpus's identity, a source of training variants, validation windows."""

    clips: list  # the training split
    digest: str
    summary: dict
    spec: PoolSpec
    noise: NoiseBank
    validation: dict[str, WindowSet]
    variants: dict[int, WindowSet] = field(default_factory=dict)  # in memory: no reload every epoch


def prepare_data(options: TrainOptions) -> Data:
    """Read the corpus and build (or find cached) the validation windows and every training variant."""
    clips = read_manifest(options.corpus)
    digest = manifest_sha256(options.corpus)
    train, val = select(clips, "train"), select(clips, "val")
    noise = NoiseBank([clip for clip in train if LABELS[clip.label] == "noise"])
    spec = PoolSpec("train", "augmented", options.windows_per_class, options.seed)
    data = Data(train, digest, corpus_summary(clips), spec, noise, {})
    for channel in VALIDATION_CHANNELS:
        val_spec = PoolSpec("val", channel, options.val_windows_per_class, options.seed)
        data.validation[channel] = load_or_build(val_spec, val, None, 0, options.workers, options.cache_dir, digest)
    for variant in range(options.variants):
        training_variant(data, options, variant)
    return data


def training_variant(data: Data, options: TrainOptions, variant: int) -> WindowSet:
    if variant not in data.variants:
        data.variants[variant] = load_or_build(data.spec, data.clips, data.noise, variant, options.workers,
                                               options.cache_dir, data.digest)
    return data.variants[variant]


def feature_statistics(windows: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and standard deviation over the windows' real (unpadded) frames."""
    valid = np.arange(windows.features.shape[1])[None, :] < windows.lengths[:, None]
    frames = windows.features[valid].astype(np.float64)
    return frames.mean(axis=0), frames.std(axis=0)


def validate(model: SwishNet, validation: dict[str, WindowSet], seed: int, package_floor: float = 0.0
             ) -> dict[str, float]:
    """Balanced accuracy (percent) per validation channel on fixed random crops, their mean, the worst
    package's accuracy (over all channels), and the selection score: the mean, less how far the worst
    package falls below ``package_floor`` (so a model that fails one source outright is not picked)."""
    model.eval()
    scores, hits = {}, {}
    for channel, windows in validation.items():
        rng = np.random.default_rng([seed, 99])  # the same crops every epoch, and for every channel
        targets = rng.integers(WINDOW_MIN_FRAMES, WINDOW_MAX_FRAMES + 1, size=len(windows))
        predictions = []
        with torch.no_grad():
            for start in range(0, len(windows), 512):
                index = np.arange(start, min(start + 512, len(windows)))
                features, weights = crop_batch(windows, index, targets[index], rng)
                logits = pooled_mean(model.frame_logits(torch.from_numpy(features)), torch.from_numpy(weights))
                predictions.append(logits.argmax(dim=1).numpy())
        predicted = np.concatenate(predictions)
        scores[channel] = round(100.0 * balanced_accuracy(windows.labels, predicted), 3)
        for package in np.unique(windows.packages):
            chosen = windows.packages == package
            hits.setdefault(str(package), []).append(np.mean(predicted[chosen] == windows.labels[chosen]))
    mean = float(np.mean([scores[c] for c in validation]))
    worst = min(hits, key=lambda p: np.mean(hits[p]))
    scores["worst_package"], scores["worst_package_accuracy"] = worst, round(100.0 * float(np.mean(hits[worst])), 3)
    scores["mean"] = round(mean, 3)
    scores["score"] = round(mean - max(0.0, package_floor - scores["worst_package_accuracy"]), 3)
    return scores


@dataclass
class RunState:
    """Everything a checkpoint restores besides the weights."""

    epoch: int = 0  # completed epochs
    best_score: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    history: list = field(default_factory=list)


RESUME_MUST_MATCH = ("arch", "dilations", "seed", "batch_size", "windows_per_class", "variants",
                     "val_windows_per_class", "teachers")


def _check_run_dir(options: TrainOptions) -> Path:
    """RUN_DIR/last.pt, after checking that --resume matches what is there."""
    last = Path(options.out) / "last.pt"
    if options.resume and not last.is_file():
        raise CommandError(f"nothing to resume: {last} does not exist; run without --resume to start")
    if not options.resume and last.is_file():
        raise CommandError(f"{options.out} already holds a run; pass --resume to continue it or choose another --out")
    Path(options.out).mkdir(parents=True, exist_ok=True)
    return last


def _restore(model: SwishNet, optimizer: torch.optim.Optimizer, last: Path, options: TrainOptions,
             digest: str) -> RunState:
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    saved = checkpoint["options"]
    changed = [key for key in RESUME_MUST_MATCH if saved.get(key) != getattr(options, key)]
    if checkpoint["training"]["manifest_sha256"] != digest:
        changed.append("corpus manifest")
    if changed:
        raise CommandError(f"cannot resume {last}: {', '.join(changed)} differ from the saved run; "
                          "resume with the original settings or start a new --out")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return RunState(**checkpoint["state"])


def training_info(options: TrainOptions, data: Data, state: RunState) -> dict:
    """The card's ``training`` section: corpus, settings and outcome."""
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    return {
        "corpus": data.summary,
        "manifest_sha256": data.digest,
        "seed": options.seed,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "train_minutes": round(state.train_seconds / 60, 1),
        "window_s": [WINDOW_MIN_S, WINDOW_MAX_S],
        "validation": {key: best.get(key) for key in (*VALIDATION_CHANNELS, "mean", "worst_package",
                                                      "worst_package_accuracy", "score")},
        "augmentation": asdict(data.spec.augment),
        "sampling": asdict(data.spec.sampling),
        "options": options.to_dict(),
    }


def _save(payload: dict, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    partial.replace(path)  # atomic: a kill mid-save never leaves a broken checkpoint


def _save_checkpoints(model: SwishNet, optimizer: torch.optim.Optimizer, options: TrainOptions, data: Data,
                      state: RunState, improved: bool) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "model": model.state_dict(),
               "state": asdict(state), "options": options.to_dict(),
               "training": training_info(options, data, state)}
    if improved:
        _save(payload, Path(options.out) / "best.pt")
    _save({**payload, "optimizer": optimizer.state_dict()}, Path(options.out) / "last.pt")


def load_teachers(options: TrainOptions) -> list[SwishNet]:
    from models.swishnet import load_checkpoint

    return [load_checkpoint(path)[0] for path in options.teachers]


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, features: torch.Tensor,
                      teachers: list[SwishNet], options: TrainOptions) -> torch.Tensor:
    """Cross-entropy to the labels, or with teachers, mixed with KL to their mean soft targets (paper, Sec. 3)."""
    hard = F.cross_entropy(logits, target, label_smoothing=options.label_smoothing)
    if not teachers:
        return hard
    temperature = options.distill_temperature
    with torch.no_grad():
        soft = torch.stack([F.softmax(pooled_mean(t.frame_logits(features), weights) / temperature, dim=1)
                            for t in teachers]).mean(dim=0)
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean") * temperature ** 2
    return options.distill_weight * kl + (1 - options.distill_weight) * hard


def run_epoch(model: SwishNet, optimizer: torch.optim.Optimizer, scheduler, windows: WindowSet, epoch: int,
              options: TrainOptions, deadline: float | None, teachers: list[SwishNet] | None = None) -> dict:
    """Train on one variant; stops early (``partial``) when the time budget runs out."""
    model.train()
    rng = np.random.default_rng([options.seed, epoch])
    n_batches = math.ceil(len(windows) / options.batch_size)
    batches = tqdm(training_batches(windows, options.batch_size, rng), total=n_batches, leave=False,
                   desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch")
    loss_sum, correct, seen, started, partial = 0.0, 0, 0, time.monotonic(), False
    for step, (features, weights, labels) in enumerate(batches):
        scheduler.step(epoch + step / n_batches)
        target, features, weights = torch.from_numpy(labels), torch.from_numpy(features), torch.from_numpy(weights)
        logits = pooled_mean(model.frame_logits(features), weights)
        loss = distillation_loss(logits, target, weights, features, teachers or [], options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * target.numel()
        correct += int((logits.argmax(dim=1) == target).sum())
        seen += target.numel()
        batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        if deadline is not None and time.monotonic() > deadline:
            partial = True
            break
    batches.close()
    seconds = time.monotonic() - started
    return {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": round(loss_sum / seen, 4),
            "train_accuracy": round(100 * correct / seen, 2), "windows_per_second": round(seen / seconds, 1),
            "partial": partial}


def _build(options: TrainOptions, data: Data, last: Path) -> tuple[SwishNet, torch.optim.Optimizer, object, RunState]:
    torch.manual_seed(options.seed)
    model = SwishNet(SwishNetConfig.for_arch(options.arch, options.dilations))
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=options.restart_epochs, T_mult=options.restart_mult, eta_min=options.learning_rate / 100)
    if options.resume:
        return model, optimizer, scheduler, _restore(model, optimizer, last, options, data.digest)
    model.set_normalisation(*feature_statistics(training_variant(data, options, 0)))
    return model, optimizer, scheduler, RunState()


def _out_of_time(state: RunState, deadline: float | None) -> bool:
    """Whether another epoch (estimated from the last one, plus 10 %) would overrun the budget."""
    if deadline is None:
        return False
    estimate = 1.1 * state.history[-1]["seconds"] if state.history else 0.0
    return time.monotonic() + estimate > deadline


def train(options: TrainOptions) -> RunState:
    """Train until ``epochs``, early stopping, or the time budget; returns the final run state."""
    from threadpoolctl import threadpool_limits

    started = time.monotonic()
    deadline = started + 60 * options.max_minutes if options.max_minutes else None
    torch.set_num_threads(options.threads)
    last = _check_run_dir(options)
    with threadpool_limits(1, user_api="blas"):  # numpy work here is small; torch owns the cores
        data = prepare_data(options)
        model, optimizer, scheduler, state = _build(options, data, last)
        teachers = load_teachers(options)
        log.info("SwishNet-%s, %d parameters; data ready after %.1f min", options.arch, parameter_count(model),
                 (time.monotonic() - started) / 60)
        while state.epoch < options.epochs and not _stalled(state, options):
            if _out_of_time(state, deadline):
                log.info("stopping before epoch %d: the %g min budget would run out", state.epoch + 1,
                         options.max_minutes)
                break
            epoch_started = time.monotonic()
            windows = training_variant(data, options, state.epoch % options.variants)
            record = run_epoch(model, optimizer, scheduler, windows, state.epoch, options, deadline, teachers)
            record.update(validate(model, data.validation, options.seed, options.package_floor))
            record["seconds"] = round(time.monotonic() - epoch_started, 1)
            improved = _advance(state, record)
            _save_checkpoints(model, optimizer, options, data, state, improved)
            log.info("epoch %(epoch)d: loss %(train_loss).3f, train %(train_accuracy).1f %%, val clean %(clean).1f %%"
                     ", telephone %(telephone).1f %%, mp3 %(mp3).1f %%, %(windows_per_second).0f windows/s, "
                     "%(seconds).0f s", record)
            if record["partial"]:
                break
    log.info("best validation score %.2f %% at epoch %d; checkpoints in %s", state.best_score, state.best_epoch,
             options.out)
    return state


def _advance(state: RunState, record: dict) -> bool:
    """Book an epoch's record; True if it is the best so far."""
    state.epoch += 1
    state.train_seconds += record["seconds"]
    state.history.append(record)
    improved = record["score"] > state.best_score
    if improved:
        state.best_score, state.best_epoch = record["score"], record["epoch"]
    return improved


def cycle_ends(options: TrainOptions) -> list[int]:
    """Epoch counts at which a cosine cycle ends: 10, 30, 70, 150, ... for T_0 = 10, T_mult = 2."""
    ends, length = [options.restart_epochs], options.restart_epochs
    while ends[-1] < options.epochs:
        length *= options.restart_mult
        ends.append(ends[-1] + length)
    return ends


def _stalled(state: RunState, options: TrainOptions) -> bool:
    """True at the end of a cycle (not the first) whose epochs never improved on the best score."""
    ends = cycle_ends(options)
    if state.epoch not in ends[1:]:
        return False
    previous_end = ends[ends.index(state.epoch) - 1]
    stalled = state.best_epoch <= previous_end
    if stalled:
        log.info("early stop: epochs %d to %d did not beat epoch %d", previous_end + 1, state.epoch, state.best_epoch)
    return stalled
