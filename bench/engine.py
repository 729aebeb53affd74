"""Engine: what one stream costs per hop, whatever its window; JSON; memory; batching.

- Per hop: a stream of generated speech, music, noise and silence pushed in
  100 ms chunks (as a live client sends it) through an AudioStream with each
  window (0.5 to 10 s) at hops of 10 ms and 100 ms; CPU microseconds per hop,
  everything included (MFCC, network, silence rule, smoothing, segments,
  label events). Windows are timed in interleaved rounds; each is also given
  as a ratio to the 1 s window of the same hop and round: every frame goes
  through the network once, so the ratio should stay near 1.
- JSON: microseconds to encode one label event as the service sends it, and
  its share of a stream's cost per hop (events every hop).
- Memory: the Python heap of one open stream after 2 s of audio (tracemalloc
  over many streams, divided).
- Batching: CPU microseconds per stream-hop to score 10 new frames with their
  context, one stream per call against 100 streams in one call.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np

from bench.common import Options, paired_runs, ratios, rounded, show, skipped, summary, table
from service.batching import FrameRequest, score_requests
from service.features import SAMPLE_RATE, mfcc
from service.inference import Classifier
from service.stream import AudioStream, LabelEvent, StreamConfig
from tests.conftest import make_signal

WINDOWS_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HOPS_S = (0.01, 0.1)
CHUNK = SAMPLE_RATE // 10  # 100 ms pushes, as a live client sends them
MEMORY_STREAMS = 200
BATCH_STREAMS = 100


def _audio(seconds: float) -> np.ndarray:
    kinds = ("speech", "music", "silence", "noise")
    piece = seconds / len(kinds)
    return np.concatenate([make_signal(kind, piece, seed=i) for i, kind in enumerate(kinds)])


def _stream_runner(classifier: Classifier, config: StreamConfig, audio: np.ndarray):
    """CPU seconds per hop of one stream over ``audio`` pushed in 100 ms chunks (a new stream each run)."""
    hops = (audio.size // (config.hop_ticks * 160)) - config.first_decision_tick // config.hop_ticks + 1

    def run() -> float:
        stream = AudioStream(classifier, config)
        started = time.process_time()
        for start in range(0, audio.size, CHUNK):
            stream.push(audio[start : start + CHUNK])
        return (time.process_time() - started) / hops

    return run


def _per_hop(classifier: Classifier, options: Options) -> dict:
    audio = _audio(4.0 if options.quick else 20.0)
    result = {}
    for hop_s in HOPS_S:
        runners = {window_s: _stream_runner(classifier, StreamConfig(window_s=window_s, hop_s=hop_s), audio)
                   for window_s in WINDOWS_S}
        seconds = paired_runs({str(w): r for w, r in runners.items()}, options.repeats)
        result[f"{hop_s:g}"] = {
            window: {"us_per_hop": summary(1e6 * s for s in values),
                     "over_window_1s": ratios(values, seconds["1.0"])}
            for window, values in seconds.items()
        }
    return result


def _json_us(classifier: Classifier, calls: int) -> float:
    event = LabelEvent(12.3, "speech", dict(zip(classifier.labels, (0.8123456, 0.1234567, 0.0642))))
    started = time.process_time()
    for _ in range(calls):
        json.dumps(event.to_dict())
    return 1e6 * (time.process_time() - started) / calls


def _memory_kib(classifier: Classifier) -> float:
    audio = _audio(2.0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = [AudioStream(classifier) for _ in range(MEMORY_STREAMS)]
    for stream in streams:
        for start in range(0, audio.size, CHUNK):
            stream.push(audio[start : start + CHUNK])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / MEMORY_STREAMS / 1024


def _batching(classifier: Classifier, options: Options) -> dict:
    context = classifier.receptive_field_frames - 1
    requests = [FrameRequest(mfcc(make_signal("speech", 0.6, seed=i))[: context + 10], 10) for i in range(BATCH_STREAMS)]

    def alone() -> float:
        started = time.process_time()
        for request in requests:
            score_requests(classifier, [request])
        return (time.process_time() - started) / BATCH_STREAMS

    def together() -> float:
        started = time.process_time()
        score_requests(classifier, requests)
        return (time.process_time() - started) / BATCH_STREAMS

    seconds = paired_runs({"alone": alone, "batched": together}, options.repeats)
    return {"streams": BATCH_STREAMS, "new_frames": 10, "context_frames": context,
            "us_per_stream_hop": {name: summary(1e6 * s for s in values) for name, values in seconds.items()},
            "alone_over_batched": ratios(seconds["alone"], seconds["batched"])}


def run(options: Options, classifiers: dict[str, Classifier]) -> dict:
    if not classifiers:
        return skipped("no model to measure (pass --model PATH, or --tiny)")
    name, classifier = next(iter(classifiers.items()))
    per_hop = _per_hop(classifier, options)
    json_us = float(np.median([_json_us(classifier, 2000 if options.quick else 20000) for _ in range(3)]))
    hop_us = per_hop["0.1"]["1.0"]["us_per_hop"]["median"]
    return {
        "model": name,
        "chunk_s": CHUNK / SAMPLE_RATE,
        "per_hop": per_hop,
        "json_us_per_label_event": rounded(json_us),
        "json_share_of_hop_at_window_1s_hop_0.1s": rounded(json_us / hop_us),
        "memory_kib_per_stream": rounded(_memory_kib(classifier)),
        "batching": _batching(classifier, options),
    }


def render(result: dict) -> str:
    rows = [(f"{float(hop) * 1000:g} ms", f"{float(window):g} s", show(cell["us_per_hop"]), show(cell["over_window_1s"]))
            for hop, windows in result["per_hop"].items() for window, cell in windows.items()]
    batching = result["batching"]
    lines = [table(("hop", "window", "CPU us per hop", "x window 1 s"), rows),
             f"JSON: {result['json_us_per_label_event']:g} us per label event, "
             f"{100 * result['json_share_of_hop_at_window_1s_hop_0.1s']:.3g} % of a stream's hop (1 s window, 100 ms hop)",
             f"memory: {result['memory_kib_per_stream']:g} KiB of Python heap per open stream (after 2 s)",
             f"scoring {batching['new_frames']} new frames (+{batching['context_frames']} context) per stream: "
             f"alone {show(batching['us_per_stream_hop']['alone'])} us, {batching['streams']} streams in one call "
             f"{show(batching['us_per_stream_hop']['batched'])} us per stream (x{show(batching['alone_over_batched'])})"]
    return f"model {result['model']}, 100 ms pushes, CPU time\n" + "\n".join(lines)
