"""Corpus reading, sampling, augmentation, window pools, training, resuming, evaluation and the CLI."""

import csv
import json
import time
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models import augment as A  # noqa: E402
from models.card import CARD_KEYS, card_for_model, write_card  # noqa: E402
from models.dataset import (WINDOW_MAX_SAMPLES, CorpusError, SamplingConfig, cap_shares, plan_windows,  # noqa: E402
                            read_manifest, read_segment, select)
from models.evaluate import CONDITIONS, engine_frames, evaluate, make_sequences, window_starts  # noqa: E402
from models.options import TrainOptions  # noqa: E402
from models.pool import (CONTEXT_FRAMES, CONTEXT_SAMPLES, PoolSpec, WindowSet, WindowTask,  # noqa: E402
                         crop_batch, load_or_build, make_window)
from models.train import RunState, _out_of_time, _stalled, cycle_ends, train  # noqa: E402
from service.cli import CommandError  # noqa: E402
from service.features import SAMPLE_RATE, mfcc, n_frames  # noqa: E402
from service.stream import StreamConfig  # noqa: E402
from tests.conftest import make_signal  # noqa: E402
from tests.fake_corpus import make_corpus  # noqa: E402
from tests.test_runtime_isolation import run_without_training_stack  # noqa: E402

TINY = dict(windows_per_class=64, variants=2, val_windows_per_class=12, batch_size=32, workers=0,
            learning_rate=1e-2, restart_epochs=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), seconds=(0.6, 1.5, 3.0, 6.0))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A few epochs of a tiny run, and the options that made it."""
    root = tmp_path_factory.mktemp("run")
    options = TrainOptions(corpus=corpus, out=root / "run", epochs=6, cache=root / "cache", **TINY)
    return options, train(options)


def test_manifest_is_read_and_checked(corpus, tmp_path):
    clips = read_manifest(corpus)
    assert len(clips) == 36 and {c.split for c in clips} == {"train", "val", "test"}
    rows = list(csv.reader(open(corpus / "manifest.csv")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.csv").write_text("\n".join(",".join(r) for r in [rows[0][:-1]] + [r[:-1] for r in rows[1:]]))
    with pytest.raises(CorpusError, match="columns"):
        read_manifest(bad)
    rows[1][2] = "birdsong"
    (bad / "manifest.csv").write_text("\n".join(",".join(r) for r in rows))
    with pytest.raises(CorpusError, match="line 2"):
        read_manifest(bad)
    with pytest.raises(CorpusError, match="no manifest.csv"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="no clips labelled"):
        select([c for c in clips if c.label != 2], "train")


def test_cap_shares_respects_caps_and_proportions():
    shares = cap_shares(np.array([100.0, 1.0, 1.0, 2.0]), 0.4)
    assert shares.sum() == pytest.approx(1.0) and shares.max() <= 0.4 + 1e-12
    assert shares[3] == pytest.approx(2 * shares[1])
    assert cap_shares(np.ones(3), np.array([0.1, 0.1, 0.1])).sum() == pytest.approx(0.3)


def test_plan_balances_classes_and_stays_inside_clips(corpus):
    clips = select(read_manifest(corpus), "train")
    plan = plan_windows(clips, 20, np.random.default_rng(0), SamplingConfig())
    counts = np.bincount([clips[i].label for i in plan.clip], minlength=3)
    assert np.all(counts == 20)
    total = np.array([int(clips[i].duration_s * SAMPLE_RATE) for i in plan.clip])
    assert np.all(plan.start >= 0) and np.all(plan.start + plan.length <= total)
    assert plan.length.max() <= WINDOW_MAX_SAMPLES


def test_per_clip_cap_limits_a_long_clip():
    from models.dataset import Clip, clip_shares

    clips = [Clip("a", None, 0, "train", "p", "x", 30.0, False), Clip("b", None, 0, "train", "q", "x", 1.0, False)]
    shares = clip_shares(clips, 1000, SamplingConfig(max_package_share=0.9, max_windows_per_second=2.0))
    assert shares[0] == pytest.approx(60 / 1000)  # 2 windows per second of its 30 s, not 50 % of all


def test_channel_effects_keep_length_and_cut_bandwidth():
    audio = make_signal("noise", seconds=1.0, seed=2)
    spectrum = lambda x: np.abs(np.fft.rfft(x)) ** 2  # noqa: E731
    high = slice(int(len(spectrum(audio)) * 4500 / 8000), None)
    for processed in (A.lowpass(audio, 3000), A.telephone(audio), A.mp3_round_trip(audio, 0.99)[0]):
        assert processed.shape == audio.shape and processed.dtype == np.float32
        assert spectrum(processed)[high].sum() < 0.05 * spectrum(audio)[high].sum()
    speech = make_signal("speech", seconds=1.0)
    coded, size = A.mp3_round_trip(speech, 0.95)
    assert np.corrcoef(coded, speech)[0, 1] > 0.8  # aligned despite the codec's delay
    assert size < SAMPLE_RATE  # low bitrate: well under 128 kbit/s


def test_augment_sets_level_and_never_changes_length():
    rng = np.random.default_rng(0)
    noise = lambda r, n: make_signal("noise", seconds=n / SAMPLE_RATE, seed=int(r.integers(100)))  # noqa: E731
    config = A.AugmentConfig(p_noise=1.0)
    for kind in ("speech", "music", "noise"):
        audio = make_signal(kind, seconds=1.2, seed=3)
        out = A.augment(audio, kind == "noise", rng, config, noise)
        assert out.shape == audio.shape and np.all(np.isfinite(out))
        assert config.level_dbfs[0] - 0.5 <= A.active_rms_db(out) <= config.level_dbfs[1] + 0.5


@pytest.mark.parametrize("codec", ["none", "ULAW", "ALAW", "GSM610", "OPUS"])
def test_the_telephone_chain_keeps_length_and_removes_the_high_band(codec):
    audio = make_signal("music", seconds=1.0, seed=4)
    out = A.telephone(audio, through_8k=True, codec=codec)
    assert out.shape == audio.shape and np.all(np.isfinite(out))
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    high = spectrum[np.fft.rfftfreq(out.size, 1 / SAMPLE_RATE) > 4200].sum()
    assert high < 1e-3 * spectrum.sum() and spectrum.sum() > 0


def test_reverb_and_clipping_keep_length_and_do_what_they_say():
    rng = np.random.default_rng(0)
    click = np.zeros(SAMPLE_RATE, np.float32)
    click[100] = 0.5
    tail = A.reverb(click, rt60_s=0.5, wet=0.5, rng=rng)
    assert tail.shape == click.shape and np.abs(tail[4000:6000]).max() > 1e-4  # energy 0.25 s later
    clipped = A.clip(make_signal("speech", 0.5, seed=1), gain_db=12.0)
    assert np.abs(clipped).max() == 1.0 and np.mean(np.abs(clipped) == 1.0) > 0.01


def test_silence_is_not_active():
    audio = np.concatenate([make_signal("speech", 0.5), np.zeros(8000, np.float32)])
    active = A.active_frames(audio)
    assert active[:30].mean() > 0.5 and not active[-40:].any()


def test_pool_is_cached_and_deterministic(corpus, tmp_path):
    clips = select(read_manifest(corpus), "val")
    spec = PoolSpec("val", "telephone", 8, seed=3)
    first = load_or_build(spec, clips, None, 0, 0, tmp_path, "digest")
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    again = load_or_build(spec, clips, None, 0, 0, tmp_path, "digest")
    np.testing.assert_array_equal(first.features, again.features)
    rebuilt = load_or_build(spec, clips, None, 0, 0, tmp_path / "other", "digest")
    np.testing.assert_array_equal(first.features, rebuilt.features)
    features, weights = crop_batch(first, np.arange(len(first)), 40, np.random.default_rng(0))
    assert features.shape[:2] == (len(first), 20) and weights.shape == (len(first), features.shape[2])
    assert weights.sum(axis=1).max() <= 40 and weights.sum(axis=1).min() >= 1
    with pytest.raises(ValueError, match="channel"):
        PoolSpec("val", "radio", 8, seed=3)


def test_windows_carry_left_context_that_is_never_pooled(corpus):
    clip = next(c for c in select(read_manifest(corpus), "train") if c.duration_s >= 3.0)
    start, length = 2 * SAMPLE_RATE, SAMPLE_RATE // 2  # 2 s in: a full CONTEXT_S of context exists
    task = WindowTask(clip.path, start, length, CONTEXT_SAMPLES, int(clip.duration_s * SAMPLE_RATE), clip.label,
                      [1], "clean")
    features, frames, context, active = make_window(task)
    assert context == CONTEXT_FRAMES and frames == n_frames(CONTEXT_SAMPLES + length)
    expected = mfcc(read_segment(clip.path, start - CONTEXT_SAMPLES, CONTEXT_SAMPLES + length))
    np.testing.assert_allclose(features[:frames].astype(np.float32), expected, rtol=2e-3, atol=2e-2)
    windows = WindowSet(features[None], np.array([frames]), np.array([clip.label]), np.array([context]),
                        active[None], np.array([clip.package]))
    batch, weights = crop_batch(windows, np.array([0]), 30, np.random.default_rng(0))
    assert weights[0, :CONTEXT_FRAMES].sum() == 0 and 1 <= weights[0].sum() <= 30  # context: seen, not pooled
    silent = WindowSet(features[None], np.array([frames]), np.array([clip.label]), np.array([context]),
                       np.zeros_like(active)[None], np.array([clip.package]))
    assert crop_batch(silent, np.array([0]), 30, np.random.default_rng(0))[1].sum() == 30  # all silent: pool all


def test_training_lowers_the_loss_and_writes_checkpoints(trained):
    options, state = trained
    losses = [record["train_loss"] for record in state.history]
    assert state.epoch == 6 and np.mean(losses[-2:]) < losses[0]
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(options.out / name, weights_only=True)
        assert checkpoint["config"]["arch"] == "slim"
        assert checkpoint["training"]["manifest_sha256"]
    assert "optimizer" in torch.load(options.out / "last.pt", weights_only=True)


def test_resume_continues_where_it_stopped(trained, tmp_path):
    options, state = trained
    out = tmp_path / "copy"
    out.mkdir()
    (out / "last.pt").write_bytes((options.out / "last.pt").read_bytes())
    resumed = train(replace(options, out=out, epochs=8, resume=True))
    assert resumed.epoch == 8 and resumed.history[:6] == state.history[:6]
    with pytest.raises(CommandError, match="arch"):
        train(replace(options, out=out, arch="wide", resume=True))
    with pytest.raises(CommandError, match="--resume"):
        train(replace(options, out=out))
    with pytest.raises(CommandError, match="nothing to resume"):
        train(replace(options, out=tmp_path / "empty", resume=True))


def test_resumed_run_matches_an_uninterrupted_one(corpus, trained, tmp_path):
    options, _ = trained
    short = replace(options, out=tmp_path / "r", epochs=3)
    train(short)
    train(replace(short, epochs=6, resume=True))
    resumed = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["model"]
    straight = torch.load(options.out / "last.pt", weights_only=True)["model"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-5, rtol=1e-4)


def test_time_budget_stops_before_an_epoch_that_would_overrun():
    state = RunState(history=[{"seconds": 10.0}])
    assert _out_of_time(state, time.monotonic() + 5)
    assert not _out_of_time(state, time.monotonic() + 60)
    assert not _out_of_time(RunState(), None)


def test_early_stopping_waits_for_the_end_of_a_cosine_cycle(corpus):
    options = TrainOptions(corpus=corpus, out=corpus, epochs=150, restart_epochs=10, restart_mult=2)
    assert cycle_ends(options) == [10, 30, 70, 150]
    assert _stalled(RunState(epoch=30, best_epoch=8), options)
    assert not _stalled(RunState(epoch=30, best_epoch=25), options)
    assert not _stalled(RunState(epoch=50, best_epoch=8), options)  # mid-cycle: scores dip after a restart
    assert not _stalled(RunState(epoch=10, best_epoch=2), options)  # the first cycle has nothing to beat


def test_evaluate_writes_a_complete_card(trained, tmp_path):
    options, _ = trained
    card = card_for_model(options.out / "best.pt")
    card["metrics"] = evaluate(options.out / "best.pt", options.corpus, "test", seed=0, workers=0)
    write_card(card, tmp_path / "card.json")
    saved = json.loads((tmp_path / "card.json").read_text())
    assert set(CARD_KEYS) - {"onnx_sha256", "opset"} <= saved.keys()
    assert saved["labels"] == ["speech", "music", "noise"] and saved["parameters"] == 4_919
    for length in ("0.5s", "1s", "2s"):
        for condition in CONDITIONS:
            report = saved["metrics"]["clip_classification"][length][condition]
            assert {"accuracy", "speech_vs_nonspeech_accuracy", "per_class", "confusion",
                    "accuracy_per_package"} <= report.keys()
    assert 0 <= saved["metrics"]["segmentation"]["accuracy_engine"] <= 100
    assert "Segmentation" in (tmp_path / "card.md").read_text()


class ToneOrHiss:
    """A stand-in model: music for harmonic tones, noise for white noise, told apart by the first cepstral slope."""

    labels = ("speech", "music", "noise")
    receptive_field_frames = 1

    def __init__(self) -> None:
        music, noise = (mfcc(make_signal(kind, 2.0))[:, 1].mean() for kind in ("music", "noise"))
        self.threshold, self.music_above = (music + noise) / 2, music > noise

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        music = ((frames[:, :, 1] > self.threshold) == self.music_above).astype(np.float32)
        return np.stack([np.full_like(music, -5.0), 5.0 * music, 5.0 * (1 - music)], axis=2)


def test_segmentation_dates_decisions_like_the_engine():
    # music, then noise from 3 s: a decision describes the middle of its 1 s window, so the frame-wise
    # labels must switch near 3 s, not half a window later where the trailing windows switch
    audio = np.concatenate([make_signal("music", 3.0), make_signal("noise", 3.0)])
    frames = engine_frames(ToneOrHiss(), audio, StreamConfig())
    centres_s = (np.arange(frames.segments.size) * 160 + 200) / SAMPLE_RATE
    for labels in (frames.segments, frames.decisions.argmax(axis=1)):
        switch_s = centres_s[np.flatnonzero(labels == 2)[0]]
        assert abs(switch_s - 3.0) <= 0.15
        assert np.all(labels[centres_s < 2.8] == 1) and np.all(labels[centres_s > 3.2] == 2)


def test_evaluation_sampling_is_seeded(corpus):
    active = np.ones(2000, dtype=bool)
    starts = [window_starts(active, 98, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(*starts)
    assert len(starts[0]) == 8 and np.all(np.diff(starts[0]) >= 98)
    clips = select(read_manifest(corpus), "test")
    one, two = (make_sequences(clips, np.random.default_rng(1))[0] for _ in range(2))
    np.testing.assert_array_equal(one[0], two[0])
    assert set(np.unique(one[1])) <= {-1, 0, 1, 2}


def test_distillation_pulls_towards_the_teachers_soft_targets(trained, tmp_path):
    from models.swishnet import load_checkpoint, pooled_mean
    from models.train import distillation_loss

    options, _ = trained
    teacher = load_checkpoint(options.out / "best.pt")[0]
    features = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 20, 60)).astype(np.float32))
    weights, target = torch.ones(4, 60), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        own = pooled_mean(teacher.frame_logits(features), weights)
        pure = replace(options, distill_weight=1.0)
        assert distillation_loss(own, target, weights, features, [teacher], pure).item() == pytest.approx(0, abs=1e-6)
        far = own + torch.tensor([5.0, -5.0, 0.0])
        assert distillation_loss(far, target, weights, features, [teacher], pure).item() > 0.5
        hard = torch.nn.functional.cross_entropy(own, target, label_smoothing=options.label_smoothing)
        assert distillation_loss(own, target, weights, features, [], options).item() == pytest.approx(hard.item())
    student = replace(options, out=tmp_path / "student", epochs=1, teachers=(str(options.out / "best.pt"),))
    assert train(student).epoch == 1
    saved = torch.load(tmp_path / "student" / "best.pt", weights_only=True)
    assert saved["options"]["teachers"] == [str(options.out / "best.pt")] or saved["options"]["teachers"] == (
        str(options.out / "best.pt"),)


def test_dilations_option_parses_and_travels_with_the_checkpoint(trained, tmp_path):
    import argparse

    from models.commands import _dilations

    assert _dilations("1,3,6,12,24") == (1, 3, 6, 12, 24)
    with pytest.raises(argparse.ArgumentTypeError):
        _dilations("1;3")
    options, _ = trained
    run = train(replace(options, out=tmp_path / "dilated", epochs=1, dilations=(1, 3, 6, 12, 24)))
    card = card_for_model(tmp_path / "dilated" / "best.pt")
    assert run.epoch == 1 and card["stack_dilations"] == [1, 3, 6, 12, 24] and card["receptive_field_frames"] == 108


def test_cli_registers_commands_without_importing_torch():
    result = run_without_training_stack("""
        from service.cli import build_parser
        parser = build_parser()
        for command in ("train", "evaluate", "export"):
            try:
                parser.parse_args([command, "--help"])
            except SystemExit as done:
                assert done.code == 0
    """)
    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "export"):
        assert "usage: " in result.stdout and command in result.stdout
