import numpy as np
import pytest
import soxr

from service.audio import AudioError
from service.events import SILENCE
from service.features import SAMPLE_RATE, WIN_LENGTH
from service.pcm import PcmDecoder
from service.inference import Classifier, pooled_probs
from service.stream import AudioStream, LabelEvent, SegmentEvent, StreamConfig, classify_audio
from tests.conftest import make_signal
from tests.tiny_model import CAUSAL_RECEPTIVE_FIELD, causal_graph, write_model

MIXED = [("speech", 1.6), ("music", 1.4), ("silence", 1.2), ("noise", 1.5), ("speech", 1.3)]


def concat(parts: list[tuple[str, float]], sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[float]]:
    """Generated audio of successive kinds, and the times where one kind changes to the next."""
    audio = np.concatenate([make_signal(kind, seconds, seed=i, sample_rate=sample_rate)
                            for i, (kind, seconds) in enumerate(parts)])
    return audio, list(np.cumsum([seconds for _, seconds in parts])[:-1])


def run(stream: AudioStream, audio, cuts) -> list:
    """Push ``audio`` split at ``cuts`` (indices), then flush."""
    events = []
    for part in np.split(audio, cuts):
        events += stream.push(part)
    return events + stream.flush()


def every(step: int, audio) -> np.ndarray:
    return np.arange(step, len(audio), step)


def dicts(events) -> list[dict]:
    return [event.to_dict() for event in events]


def segments(events) -> list[SegmentEvent]:
    return [event for event in events if isinstance(event, SegmentEvent)]


@pytest.fixture(scope="module")
def mixed():
    return concat(MIXED)


@pytest.fixture(scope="module")
def reference(classifier, mixed):
    """Events for the whole of MIXED pushed at once."""
    return run(AudioStream(classifier), mixed[0], [])


def test_reference_run_finds_every_part(reference, mixed):
    found = segments(reference)
    assert [segment.label for segment in found] == [kind for kind, _ in MIXED]
    assert found[0].start == 0 and found[-1].end == pytest.approx(len(mixed[0]) / SAMPLE_RATE)
    assert all(a.end == b.start for a, b in zip(found, found[1:]))
    labels = [event for event in reference if isinstance(event, LabelEvent)]
    assert [event.time for event in labels] == pytest.approx(np.arange(5, 71) / 10)


@pytest.mark.parametrize("step", [160, 997, 16_000])
def test_chunk_size_does_not_change_events(classifier, mixed, reference, step):
    assert dicts(run(AudioStream(classifier), mixed[0], every(step, mixed[0]))) == dicts(reference)


def test_random_chunks_give_the_same_events(classifier, mixed, reference):
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(len(mixed[0]), size=300, replace=False))
    assert dicts(run(AudioStream(classifier), mixed[0], cuts)) == dicts(reference)


def test_one_sample_chunks(classifier):
    audio, _ = concat([("music", 0.7), ("noise", 0.6)])
    whole = run(AudioStream(classifier), audio, [])
    assert len([e for e in whole if isinstance(e, LabelEvent)]) == 9  # at 0.5, 0.6, ... 1.3 s
    assert dicts(run(AudioStream(classifier), audio, every(1, audio))) == dicts(whole)


def test_reset_and_flush_start_a_new_stream(classifier, mixed, reference):
    stream = AudioStream(classifier)
    stream.push(make_signal("noise", 2.3))
    stream.reset()
    assert dicts(run(stream, mixed[0], every(4000, mixed[0]))) == dicts(reference)
    assert stream.time_s == 0  # flush reset it: the same object takes the next stream
    assert dicts(run(stream, mixed[0], [])) == dicts(reference)


def quantise_s16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_pcm_bytes_split_anywhere(classifier, mixed, encoding):
    audio = mixed[0]
    samples = quantise_s16(audio) if encoding == "pcm_s16le" else audio.astype("<f4")
    data = samples.tobytes()
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(len(data), size=400, replace=False))
    cuts = np.union1d(cuts, [1, 3, 5, 7])  # odd splits inside the first samples too
    stream = AudioStream(classifier, encoding=encoding)
    events = []
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(data)]):
        events += stream.push(data[start:stop])
    events += stream.flush()
    as_float = samples.astype(np.float32) / 32768 if encoding == "pcm_s16le" else samples
    assert dicts(events) == dicts(run(AudioStream(classifier), as_float, []))
    assert [s.label for s in segments(events)] == [kind for kind, _ in MIXED]


def test_pcm_decoder_carries_partial_frames():
    stereo = np.array([[1, -1], [2, -2], [32767, -32768]], dtype="<i2")
    data = stereo.tobytes()
    decoder = PcmDecoder("pcm_s16le", channels=2)
    first = decoder.decode(data[:5])  # one frame and one byte
    assert first.shape == (1, 2) and decoder.pending_bytes == 1
    rest = decoder.decode(data[5:])
    np.testing.assert_array_equal(np.concatenate([first, rest]) * 32768, stereo)


def test_stereo_is_mixed_to_mono(classifier, mixed, reference):
    audio = mixed[0]
    stereo = np.stack([2 * audio, np.zeros_like(audio)], axis=1)  # mean = audio, exactly
    events = run(AudioStream(classifier, channels=2), stereo, every(3001, audio))
    assert dicts(events) == dicts(reference)
    interleaved = stereo.astype("<f4").tobytes()
    stream = AudioStream(classifier, channels=2)
    events = [e for i in range(0, len(interleaved), 4099) for e in stream.push(interleaved[i:i + 4099])]
    assert dicts(events + stream.flush()) == dicts(reference)


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
def test_other_rates_give_the_same_labels(classifier, rate):
    parts = [("speech", 2.0), ("music", 2.0), ("silence", 1.5), ("music", 1.5), ("speech", 1.5)]
    audio, _ = concat(parts)
    at_16k = segments(run(AudioStream(classifier), audio, []))
    resampled = soxr.resample(audio, SAMPLE_RATE, rate, quality="HQ")
    stream = AudioStream(classifier, sample_rate=rate)
    at_rate = segments(run(stream, resampled, every(rate // 10 + 7, resampled)))
    assert [s.label for s in at_rate] == [s.label for s in at_16k] == [kind for kind, _ in parts]
    for a, b in zip(at_rate, at_16k):
        assert abs(a.end - b.end) <= StreamConfig().hop_s + 1e-9


def test_stream_equals_offline(classifier, mixed, reference):
    result = classify_audio(mixed[0], classifier)
    assert list(result.segments) == segments(run(AudioStream(classifier), mixed[0], every(1234, mixed[0])))
    assert result.duration_s == pytest.approx(len(mixed[0]) / SAMPLE_RATE)


def test_offline_summary(classifier):
    result = classify_audio(concat([("music", 3.0), ("silence", 2.0), ("speech", 1.0)])[0], classifier)
    assert result.label == "music"
    assert max(result.probs, key=result.probs.get) == "music"
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-4)
    summary = result.to_dict()
    assert set(summary) == {"file", "duration", "label", "probs", "segments"}
    assert set(summary["segments"][0]) == {"start", "end", "label", "confidence"}


def test_silence_gets_its_own_segment(classifier):
    audio, (start, end) = concat([("noise", 2.0), ("silence", 2.0), ("music", 2.0)])
    events = run(AudioStream(classifier), audio, [])
    found = segments(events)
    assert [s.label for s in found] == ["noise", SILENCE, "music"]
    assert abs(found[1].start - start) <= 0.2 and abs(found[1].end - end) <= 0.2
    assert found[1].confidence == 1.0
    quiet = [e for e in events if isinstance(e, LabelEvent) and 3.2 <= e.time - 0.5 <= 3.8]
    assert quiet and all(e.label == SILENCE and set(e.probs.values()) == {0.0} for e in quiet)


def test_silent_file(classifier):
    result = classify_audio(np.zeros(3 * SAMPLE_RATE, dtype=np.float32), classifier)
    assert result.label == SILENCE
    assert set(result.probs.values()) == {0.0}
    assert [(s.start, s.end, s.label) for s in result.segments] == [(0.0, 3.0, SILENCE)]


def test_quiet_sound_above_the_threshold_is_not_silence(classifier):
    quiet_music = make_signal("music", 2.0) * 10 ** (-30 / 20)  # about -36 dBFS
    assert [s.label for s in classify_audio(quiet_music, classifier).segments] == ["music"]
    config = StreamConfig(silence_threshold_db=-30)
    assert [s.label for s in classify_audio(quiet_music, classifier, config).segments] == [SILENCE]


@pytest.mark.parametrize("seed", range(4))
def test_boundaries_land_near_the_true_changes(classifier, seed):
    rng = np.random.default_rng(seed)
    kinds = [str(k) for k in rng.permutation(["speech", "music", "noise", "silence"])]
    kinds += [k for k in rng.permutation(["speech", "music", "noise", "silence"]) if k != kinds[-1]][:2]
    parts = [(kind, float(np.round(rng.uniform(1.5, 3.0), 3))) for kind in kinds]
    audio, changes = concat(parts)
    found = classify_audio(audio, classifier).segments
    assert [s.label for s in found] == kinds
    errors = [segment.end - change for segment, change in zip(found, changes)]
    assert max(map(abs, errors)) <= 0.2, errors


def test_first_decision_latency(classifier):
    for hop_s, first_s in [(0.1, 0.5), (0.03, 0.51), (0.2, 0.6)]:
        config = StreamConfig(hop_s=hop_s)
        stream = AudioStream(classifier, config)
        assert config.first_decision_s == pytest.approx(first_s)
        assert stream.push(make_signal("music", first_s - 0.01)) == []
        event = stream.push(make_signal("music", 0.01))[0]
        assert event.time == pytest.approx(first_s) and event.label == "music"


def test_too_short_for_a_decision(classifier):
    stream = AudioStream(classifier)
    assert stream.push(make_signal("music", 0.4)) == [] and stream.flush() == []
    with pytest.raises(AudioError, match="needs at least 0.5 s"):
        classify_audio(make_signal("music", 0.4), classifier)


def test_short_interruption_is_absorbed(classifier):
    parts = [("music", 2.0), ("silence", 0.4), ("music", 2.0)]
    audio, _ = concat(parts)
    eager = dict(median_hops=1, switch_hops=1)
    split = classify_audio(audio, classifier, StreamConfig(min_pause_s=0, min_segment_s=0, **eager)).segments
    assert [s.label for s in split] == ["music", SILENCE, "music"]
    joined = classify_audio(audio, classifier, StreamConfig(min_pause_s=0.5, min_segment_s=0, **eager)).segments
    assert [(s.label, s.start, s.end) for s in joined] == [("music", 0.0, 4.4)]


def test_events_are_json_ready(reference):
    import json

    label, segment = reference[0], segments(reference)[0]
    assert json.loads(json.dumps(label.to_dict())) == {
        "type": "label", "time": 0.5, "label": "speech", "probs": label.to_dict()["probs"]}
    assert set(label.to_dict()["probs"]) == {"speech", "music", "noise"}
    assert json.loads(json.dumps(segment.to_dict())).keys() == {"type", "start", "end", "label", "confidence"}
    with pytest.raises(AttributeError):
        label.label = "music"  # frozen


@pytest.mark.slow
def test_one_hour_stream_has_bounded_memory(classifier):
    config = StreamConfig()
    stream = AudioStream(classifier, config)
    pieces = [make_signal(kind, 1.0, seed=i) for i, kind in enumerate(["speech", "music", "noise", "silence"])]
    segment_count = 0
    for second in range(3600):
        for event in stream.push(pieces[(second // 13) % 4]):  # a new kind every 13 s
            segment_count += isinstance(event, SegmentEvent)
        for history in (stream._logits, stream._loud_sums, stream._energy_sums):
            assert history.buffered <= 2 * (history.keep + 200)  # a one-second push adds 100 frames, 200 blocks
        assert stream._context.buffered <= 2 * (stream._context.keep + 100)
        assert stream._mfcc._pending.size < WIN_LENGTH and stream._energy.buffered < 80
    assert len(stream._segmenter._unassigned) <= stream._smoother.lag_hops
    assert stream.time_s == 3600
    assert segment_count + len(segments(stream.flush())) == 3600 // 13 + 1


@pytest.mark.parametrize("kwargs,message", [
    ({"window_s": 0.3}, "window_s"),
    ({"window_s": 1.005}, "multiple of 10 ms"),
    ({"hop_s": 0.0}, "hop_s"),
    ({"hop_s": 0.015}, "multiple of 10 ms"),
    ({"hop_s": 0.6}, "hop_s"),
    ({"silence_threshold_db": 3}, "silence_threshold_db"),
    ({"min_segment_s": -1}, "min_segment_s"),
    ({"min_pause_s": "1"}, "min_pause_s"),
    ({"median_hops": 4}, "odd"),
    ({"median_hops": 3.0}, "integer"),
    ({"switch_hops": 0}, "switch_hops"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"sample_rate": 4_000}, "8000 to 192000"),
    ({"sample_rate": 44_100.5}, "sample rate"),
    ({"channels": 0}, "channel"),
    ({"encoding": "mp3"}, "pcm_s16le, pcm_f32le"),
])
def test_stream_format_is_validated(classifier, kwargs, message):
    with pytest.raises(AudioError, match=message):
        AudioStream(classifier, **kwargs)


def test_bad_chunks(classifier):
    stream = AudioStream(classifier, channels=2)
    with pytest.raises(AudioError, match=r"shape \(n, 2\)"):
        stream.push(np.zeros(100, dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        AudioStream(classifier).push(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="int16"):
        AudioStream(classifier).push(np.zeros(10, dtype=np.int32))


# --- the per-frame engine against a direct computation of its definition ---------------------------------

BLOCK = 80  # samples per energy block (service.buffers.ENERGY_BLOCK)


def window_loudness(audio: np.ndarray, first: int, end: int, hop_ticks: int, threshold_db: float) -> np.ndarray:
    """The silence rule, written out directly: a frame is loud when the mean square of the hop_s of
    audio centred on it, shifted right to start at the window's start and cut at its end, reaches the
    threshold."""
    blocks = audio[first * 160 : (end - 1) * 160 + 400].astype(np.float64).reshape(-1, BLOCK)
    energies = np.mean(blocks.astype(np.float32).astype(np.float64) ** 2, axis=1)
    span = 2 * hop_ticks
    loud = []
    for frame in range(end - first):
        start = min(max(frame * 2 + 2 - span // 2, 0), len(energies) - 1)
        stop = min(start + span, len(energies))
        loud.append(energies[start:stop].mean() >= 10 ** (threshold_db / 10))
    return np.array(loud)


def direct_decisions(scorer, audio: np.ndarray, config: StreamConfig) -> list[tuple[float, np.ndarray | None]]:
    """(time, probabilities or None for silence) of every hop, from the frame logits of the whole audio in
    one call: each window's frames scored once with all their left context."""
    from service.features import mfcc, n_frames

    logits = scorer.frame_logits(mfcc(audio)[None])[0]
    decisions = []
    for tick in range(config.first_decision_tick, audio.size // 160 + 1, config.hop_ticks):
        end = n_frames(tick * 160)
        first = end - min(config.window_frames, end)
        loud = window_loudness(audio, first, end, config.hop_ticks, config.silence_threshold_db)
        probs = pooled_probs(logits[first:end][loud][None])[0] if loud[(end - first) // 2] else None
        decisions.append((tick / 100, probs))
    return decisions


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """A model whose frame logits depend on CAUSAL_RECEPTIVE_FIELD frames of context."""
    path = write_model(tmp_path_factory.mktemp("causal"), "causal", causal_graph(),
                       receptive_field_frames=CAUSAL_RECEPTIVE_FIELD)
    return Classifier(path)


def quiet_gaps() -> np.ndarray:
    """Sound, silence, a quiet stretch near the threshold and brief dips: every branch of the silence rule."""
    audio, _ = concat([("music", 1.3), ("silence", 0.73), ("speech", 1.1), ("noise", 0.9), ("silence", 0.35),
                       ("music", 1.2)])
    audio[int(4.0 * SAMPLE_RATE) : int(4.4 * SAMPLE_RATE)] *= 10 ** (-45 / 20)
    audio[int(1.0 * SAMPLE_RATE) : int(1.03 * SAMPLE_RATE)] = 0
    return audio


@pytest.mark.parametrize("window_s,hop_s", [(1.0, 0.1), (0.5, 0.01), (2.0, 0.03), (0.7, 0.5), (10.0, 0.2)])
def test_decisions_equal_the_pooled_model_on_the_same_frames(causal, window_s, hop_s):
    audio = quiet_gaps()
    config = StreamConfig(window_s=window_s, hop_s=hop_s)
    labels = [e for e in run(AudioStream(causal, config), audio, every(2221, audio)) if isinstance(e, LabelEvent)]
    expected = direct_decisions(causal, audio, config)
    assert [e.time for e in labels] == pytest.approx([time for time, _ in expected])
    assert any(probs is None for _, probs in expected) and any(probs is not None for _, probs in expected)
    for event, (_, probs) in zip(labels, expected):
        got = np.array([event.probs[name] for name in causal.labels])
        if probs is None:
            assert not got.any()  # the smoothed label may lag; the hop itself is silence
        else:
            np.testing.assert_allclose(got, probs, atol=1e-5)


def test_a_window_from_the_start_equals_the_pooled_model(causal):
    """Before any context exists, a decision is what the time-pooled network gives for the same frames."""
    from service.features import mfcc

    audio = make_signal("music", 0.5) + make_signal("noise", 0.5)  # no silent frame: all are pooled
    (event,) = [e for e in AudioStream(causal).push(audio) if isinstance(e, LabelEvent)]
    pooled = causal.predict(mfcc(audio)[None])[0]
    np.testing.assert_allclose([event.probs[name] for name in causal.labels], pooled, atol=1e-5)


@pytest.mark.parametrize("step", [1, 160, 999, 24_000])
def test_context_models_give_the_same_events_for_any_chunking(causal, step):
    audio = quiet_gaps()[: 3 * SAMPLE_RATE] if step == 1 else quiet_gaps()
    whole = run(AudioStream(causal), audio, [])
    chunked = run(AudioStream(causal), audio, every(step, audio))
    assert [e.to_dict()["type"] for e in chunked] == [e.to_dict()["type"] for e in whole]
    for a, b in zip(chunked, whole):
        if isinstance(a, LabelEvent):
            assert (a.time, a.label) == (b.time, b.label)
            np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)
        else:
            assert a == b


def test_event_modes(classifier, mixed, reference):
    changes = run(AudioStream(classifier, StreamConfig(events="changes")), mixed[0], every(4000, mixed[0]))
    only_segments = run(AudioStream(classifier, StreamConfig(events="segments")), mixed[0], [])
    labels = [e for e in reference if isinstance(e, LabelEvent)]
    switches = [e for i, e in enumerate(labels) if i == 0 or e.label != labels[i - 1].label]
    assert dicts(e for e in changes if isinstance(e, LabelEvent)) == dicts(switches)
    assert segments(changes) == segments(only_segments) == segments(reference)
    assert all(isinstance(e, SegmentEvent) for e in only_segments)
    with pytest.raises(ValueError, match="events must be one of labels, changes, segments"):
        StreamConfig(events="all")


def test_cost_per_hop_does_not_depend_on_the_window(classifier):
    """The work a decision does touches the frames near the window's edges, not the whole window: the
    buffers a stream reads at each hop have a size set by the hop, whatever the window (no timing here)."""
    from service.stream import SilenceRule

    for hop_s in (0.01, 0.1, 0.5):
        rules = {window_s: SilenceRule(StreamConfig(window_s=window_s, hop_s=hop_s)) for window_s in (0.5, 10.0)}
        assert rules[0.5].edge_low == rules[10.0].edge_low <= round(hop_s * 100) // 2
        assert rules[0.5].edge_high == rules[10.0].edge_high <= round(hop_s * 100) // 2
