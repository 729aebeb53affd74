import json
import threading
from pathlib import Path

import numpy as np
import pytest

from service import inference
from service.features import FRAMES_PER_SECOND, N_MFCC, mfcc
from service.inference import Classifier, ModelError
from tests.conftest import make_signal
from tests.tiny_model import (CAUSAL_RECEPTIVE_FIELD, LABELS, causal_graph, centroid_graph, make_card,
                              pooled_graph, write_model)


def windows_of(kind: str, count: int = 4, seed: int = 0) -> np.ndarray:
    """``count`` one-second MFCC windows (time-major, as service.features gives them) of one kind."""
    frames = mfcc(make_signal(kind, seconds=2.0, seed=seed))
    return np.stack([frames[i * 10 : i * 10 + FRAMES_PER_SECOND] for i in range(count)])


def test_labels_card_and_probabilities(classifier):
    assert classifier.labels == tuple(LABELS)
    assert classifier.card["name"] == "centroid-test"
    probs = classifier.predict(windows_of("music"))
    assert probs.shape == (4, len(LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", LABELS)
def test_time_major_windows_are_classified(classifier, kind):
    # The transpose to the model's channels-first layout is the classifier's job.
    assert set(classifier.predict(windows_of(kind, seed=3)).argmax(axis=1)) == {LABELS.index(kind)}


def test_batch_rows_equal_single_windows(classifier):
    batch = np.concatenate([windows_of(kind) for kind in LABELS])
    together = classifier.predict(batch)
    alone = np.concatenate([classifier.predict(window[None]) for window in batch])
    np.testing.assert_array_equal(together, alone)


@pytest.mark.parametrize("shape", [(98, N_MFCC), (1, N_MFCC, 98), (2, 0, N_MFCC)])
def test_bad_window_shapes(classifier, shape):
    with pytest.raises(ValueError, match="batch, frames>0, 20"):
        classifier.predict(np.zeros(shape, dtype=np.float32))


def test_explicit_threads(tiny_model_path):
    default = Classifier(tiny_model_path)._session.get_session_options()
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (1, 1)
    assert Classifier(tiny_model_path, intra_op_num_threads=2)._session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        Classifier(tiny_model_path, intra_op_num_threads=0)


def test_shared_by_threads(classifier):
    inputs = [windows_of(kind, seed=seed) for kind in LABELS for seed in range(3)]
    expected = [classifier.predict(x) for x in inputs]
    results: dict[int, list[list[np.ndarray]]] = {}

    def work(worker: int) -> None:
        results[worker] = [[classifier.predict(x) for x in inputs] for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    for rounds in results.values():
        for got in rounds:
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)


def rewrite_card(model_path: Path, **changes: object) -> None:
    card_path = model_path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_mismatched_features_name_the_keys(tmp_path):
    path = write_model(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    features = dict(card["features"], n_mels=40)
    del features["n_fft"]
    rewrite_card(path, features=features)
    with pytest.raises(ModelError, match="other features") as error:
        Classifier(path)
    assert "n_mels (card 40, runtime 32)" in str(error.value)
    assert "n_fft (missing from card" in str(error.value)


def test_unknown_feature_key_is_refused(tmp_path):
    path = write_model(tmp_path)
    rewrite_card(path, features=dict(make_card(b"")["features"], preemphasis=0.97))
    with pytest.raises(ModelError, match="preemphasis"):
        Classifier(path)


def test_wrong_sha_is_refused(tmp_path):
    path = write_model(tmp_path)
    rewrite_card(path, onnx_sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match its card"):
        Classifier(path)


def test_corrupt_model_file(tmp_path):
    path = tmp_path / "broken.onnx"
    garbage = b"this is not an onnx protobuf" * 20
    path.write_bytes(garbage)
    path.with_suffix(".json").write_text(json.dumps(make_card(garbage)))  # the card itself is right
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Classifier(path)


def test_truncated_model_file(tmp_path):
    path = write_model(tmp_path)
    data = path.read_bytes()[:-40]
    path.write_bytes(data)
    rewrite_card(path, onnx_sha256=make_card(data)["onnx_sha256"])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        Classifier(path)


def test_missing_card_and_missing_model(tmp_path):
    path = write_model(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="card .* is missing"):
        Classifier(path)
    with pytest.raises(ModelError, match="no such model file"):
        Classifier(tmp_path / "nothing.onnx")


@pytest.mark.parametrize("changes,message", [
    ({"labels": ["speech", "music", "silence"]}, "reserved"),
    ({"labels": ["speech", "speech", "noise"]}, "distinct"),
    ({"labels": ["speech", "music"]}, "outputs .*3.* 2 labels"),
    ({"features": "mfcc"}, "must be an object"),
    ({"receptive_field_frames": 0}, "receptive_field_frames"),
    ({"receptive_field_frames": 38.0}, "receptive_field_frames"),
])
def test_bad_card_fields(tmp_path, changes, message):
    path = write_model(tmp_path)
    rewrite_card(path, **changes)
    with pytest.raises(ModelError, match=message):
        Classifier(path)


def test_card_without_required_keys(tmp_path):
    path = write_model(tmp_path)
    path.with_suffix(".json").write_text(json.dumps({"name": "x", "labels": LABELS}))
    with pytest.raises(ModelError, match="lacks required keys: features, receptive_field_frames, onnx_sha256"):
        Classifier(path)


def test_wrong_input_name(tmp_path):
    model = centroid_graph()
    model.graph.input[0].name = "features"
    model.graph.node[0].input[0] = "features"
    with pytest.raises(ModelError, match="must have an input 'mfcc'"):
        Classifier(write_model(tmp_path, model=model))


def test_default_model_is_the_bundled_one(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "files", lambda package: tmp_path)
    with pytest.raises(ModelError, match="no bundled model is installed.*--model"):
        Classifier()
    write_model(tmp_path, name=Path(inference.DEFAULT_MODEL).stem)
    assert Classifier().path == tmp_path / inference.DEFAULT_MODEL


def test_a_model_without_frame_logits_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ModelError, match="must have an input 'mfcc' and an output 'frame_logits'.*export.frame_logits"):
        Classifier(write_model(tmp_path, model=pooled_graph()))


def test_frame_logits_and_pooled_probabilities(classifier):
    windows = windows_of("music")
    logits = classifier.frame_logits(windows)
    assert logits.shape == (4, FRAMES_PER_SECOND, len(LABELS)) and logits.dtype == np.float32
    np.testing.assert_allclose(inference.pooled_probs(logits), classifier.predict(windows), atol=1e-7)


# --- batched scoring ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    path = write_model(tmp_path_factory.mktemp("causal"), "causal", causal_graph(),
                       receptive_field_frames=CAUSAL_RECEPTIVE_FIELD)
    return Classifier(path)


def requests_of(lengths: list[tuple[int, int]], seed: int = 0) -> list:
    """FrameRequests of (context, new) frames cut from generated audio of every kind."""
    from service.batching import FrameRequest

    frames = np.concatenate([mfcc(make_signal(kind, 4.0, seed=seed)) for kind in LABELS])
    rng = np.random.default_rng(seed)
    requests = []
    for context, new in lengths:
        start = int(rng.integers(0, len(frames) - context - new))
        requests.append(FrameRequest(frames[start : start + context + new], new))
    return requests


LENGTHS = [(8, 10), (0, 1), (8, 1), (3, 7), (8, 1000), (8, 0), (8, 240), (0, 50), (8, 10), (8, 57)]


def test_batched_scoring_equals_one_stream_at_a_time(causal):
    from service.batching import score_requests

    requests = requests_of(LENGTHS)
    together = score_requests(causal, requests)
    for request, logits in zip(requests, together):
        (alone,) = score_requests(causal, [request])
        assert logits.shape == (request.new, len(LABELS))
        np.testing.assert_allclose(logits, alone, atol=1e-5)
        # the new frames' logits are those of the frames scored with their context, in one row
        whole = causal.frame_logits(request.frames[None])[0] if request.new else alone
        np.testing.assert_allclose(logits, whole[len(request.frames) - request.new :], atol=1e-5)


def test_rows_of_very_different_lengths_are_not_padded_together(causal, monkeypatch):
    from service.batching import MAX_PADDING, score_requests

    shapes = []
    original = causal.frame_logits
    monkeypatch.setattr(causal, "frame_logits", lambda batch: shapes.append(batch.shape) or original(batch))
    score_requests(causal, requests_of(LENGTHS))
    assert sum(shape[0] for shape in shapes) == sum(1 for _, new in LENGTHS if new)
    assert sorted(shapes) == [(1, 248, 20), (1, 1008, 20), (2, 65, 20), (5, 18, 20)]  # all short rows in one call
    padded = sum(shape[0] * shape[1] for shape in shapes)
    assert padded <= sum(c + n for c, n in LENGTHS if n) / (1 - MAX_PADDING)


def test_the_scheduler_batches_concurrent_streams(causal):
    import asyncio

    from service.batching import BatchScheduler, score_requests

    requests = requests_of(LENGTHS, seed=1)

    async def main() -> tuple[list, int]:
        async with BatchScheduler(causal, max_batch_frames=600) as scheduler:
            results = await asyncio.gather(*(scheduler.score(request) for request in requests))
            return results, scheduler.batches

    results, batches = asyncio.run(main())
    assert 1 < batches < len(LENGTHS)  # the 1008-frame row is alone; the small ones share calls
    for request, logits in zip(requests, results):
        np.testing.assert_allclose(logits, score_requests(causal, [request])[0], atol=1e-5)


def test_a_failing_batch_fails_its_streams_and_the_next_batch_runs(causal, monkeypatch):
    import asyncio

    from service.batching import BatchScheduler

    requests = requests_of([(8, 10), (8, 20)])

    async def main() -> np.ndarray:
        async with BatchScheduler(causal) as scheduler:
            original = causal.frame_logits
            monkeypatch.setattr(causal, "frame_logits", lambda batch: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                await scheduler.score(requests[0])
            monkeypatch.setattr(causal, "frame_logits", original)
            return await scheduler.score(requests[1])

    assert asyncio.run(main()).shape == (20, len(LABELS))
