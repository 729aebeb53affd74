"""ONNX export: the runtime contract, parity with PyTorch, self-containment, the card, int8, and the
conversion of models exported before frame logits."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export.parity import BATCH_SIZES, FRAME_COUNTS, PARITY_ATOL, max_difference  # noqa: E402
from export.quantize import calibration_windows, quantize  # noqa: E402
from export.ship import accuracy_gate, ship  # noqa: E402
from models.card import CARD_KEYS, card_for_model, sha256_file  # noqa: E402
from export.frame_logits import ConversionError, convert_file, pooled_difference, to_frame_logits  # noqa: E402
from models.evaluate import (OnnxScorer, TorchScorer, clip_classification, mean_clean_accuracy,  # noqa: E402
                             prepare_split, segmentation)
from service.inference import Classifier, pooled_probs  # noqa: E402
from models.swishnet import build  # noqa: E402
from service.cli import CommandError  # noqa: E402
from service.features import FEATURE_CONTRACT, mfcc  # noqa: E402
from tests.conftest import make_signal  # noqa: E402
from tests.fake_corpus import make_corpus  # noqa: E402
from tests.tiny_model import pooled_graph, write_model  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build("slim")
    model.set_normalisation(torch.linspace(-300, 10, 20), torch.linspace(5, 60, 20))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    torch.save({"config": model.config.to_dict(), "model": model.state_dict(),
                "training": {"window_s": [0.5, 2.0], "seed": 0}}, path)
    return path, model.eval()


@pytest.fixture(scope="module")
def shipped(checkpoint, tmp_path_factory):
    """One export (the slow part: about 10 s), shared by the tests below."""
    out = tmp_path_factory.mktemp("models") / "swishnet-test.onnx"
    return out, ship(checkpoint[0], out)


def test_contract_names_types_and_dynamic_axes(shipped):
    session = ort.InferenceSession(str(shipped[0]), providers=["CPUExecutionProvider"])
    (given,), (produced,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1]) == ("mfcc", "tensor(float)", 20)
    assert isinstance(given.shape[0], str) and isinstance(given.shape[2], str)
    assert (produced.name, produced.type, produced.shape[2]) == ("frame_logits", "tensor(float)", 3)
    assert isinstance(produced.shape[0], str) and isinstance(produced.shape[1], str)
    assert shipped[1]["opset"] >= 17


def test_onnx_matches_pytorch_for_batches_and_lengths(shipped, checkpoint):
    assert BATCH_SIZES == (1, 3) and min(FRAME_COUNTS) <= 8 and max(FRAME_COUNTS) >= 998  # 0.1 s to 10 s
    assert max_difference(checkpoint[1], shipped[0]) < PARITY_ATOL
    assert shipped[1]["parity_max_abs_diff"] < PARITY_ATOL


def test_real_features_in_frame_logits_out(shipped, checkpoint):
    session = ort.InferenceSession(str(shipped[0]), providers=["CPUExecutionProvider"])
    features = np.stack([mfcc(make_signal(kind, seconds=1.0)).T for kind in ("speech", "music", "noise")])
    logits = session.run(["frame_logits"], {"mfcc": features})[0]
    assert logits.shape == (3, 98, 3)
    with torch.no_grad():
        pooled = torch.softmax(checkpoint[1](torch.from_numpy(features)), dim=-1).numpy()  # the model's forward
    np.testing.assert_allclose(pooled_probs(logits), pooled, atol=1e-5)


def test_the_file_is_self_contained(shipped):
    out, _ = shipped
    assert sorted(p.name for p in out.parent.iterdir()) == [out.stem + ".json", out.stem + ".md", out.name]
    model = onnx.load(str(out), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    onnx.checker.check_model(model)
    assert not any(node.metadata_props for node in model.graph.node)  # no local paths from stack traces


def test_card_describes_the_file(shipped):
    out, card = shipped
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == card and set(CARD_KEYS) <= saved.keys()
    assert saved["onnx_sha256"] == sha256_file(out)
    assert saved["features"] == FEATURE_CONTRACT
    assert (saved["input"], saved["output"], saved["labels"]) == ("mfcc", "frame_logits", ["speech", "music", "noise"])
    assert saved["output_shape"] == ["batch", "frames", 3] and saved["receptive_field_frames"] == 38
    assert saved["architecture"] == "slim" and saved["parameters"] == 4_919 and saved["window_s"] == [0.5, 2.0]
    assert "output `frame_logits` (batch, frames, 3)" in out.with_suffix(".md").read_text()


def test_onnx_models_are_evaluated_like_a_stream(shipped, checkpoint, tmp_path):
    windows = mfcc(np.concatenate([make_signal("music", 1.5), make_signal("speech", 1.0)]))[None, 102:200]
    # the checkpoint and its export score a window alike, as the engine calls them
    np.testing.assert_allclose(OnnxScorer(shipped[0]).predict(windows), TorchScorer(checkpoint[1]).predict(windows),
                               atol=1e-4)
    corpus = make_corpus(tmp_path / "corpus", {"train": 1, "val": 1, "test": 3})
    found = segmentation(Classifier(shipped[0]), prepare_split(corpus, "test", workers=0).clips, seed=0)
    assert "streaming engine" in found["method"] and found["frames_scored"] > 0
    assert all(0 <= found[key] <= 100 for key in ("accuracy_engine", "accuracy_raw", "accuracy_median"))
    card = card_for_model(shipped[0])
    assert card["onnx_sha256"] == shipped[1]["onnx_sha256"] and card["name"] == shipped[1]["name"]


def test_bad_requests_are_refused(checkpoint, tmp_path):
    with pytest.raises(CommandError, match=".onnx"):
        ship(checkpoint[0], tmp_path / "model.bin")
    with pytest.raises(CommandError, match="--corpus"):
        ship(checkpoint[0], tmp_path / "m.onnx", quantize_mode="dynamic")


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_keeps_the_contract(shipped, tmp_path, mode):
    corpus = make_corpus(tmp_path / "corpus", {"train": 3, "val": 1, "test": 1})
    windows = calibration_windows(corpus, n_per_class=4)
    assert windows.shape[1:] == (20, 98)
    int8_path = quantize(shipped[0], tmp_path / "int8.onnx", mode, windows if mode == "static" else None)
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["mfcc"]
    assert [o.name for o in session.get_outputs()] == ["frame_logits"]
    logits = session.run(["frame_logits"], {"mfcc": windows})[0]
    assert logits.dtype == np.float32 and logits.shape == (len(windows), 98, 3)


def test_int8_ships_only_within_half_a_point():
    assert accuracy_gate("static", 95.0, 94.6)["drop_points"] == 0.4
    with pytest.raises(CommandError, match="loses 0.6 points"):
        accuracy_gate("dynamic", 95.0, 94.4)


def test_int8_is_gated_on_validation_and_reported_on_test(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("export.ship.MAX_ACCURACY_DROP", 100.0)  # random weights: the gate is tested above
    corpus = make_corpus(tmp_path / "corpus", {"train": 3, "val": 3, "test": 3})
    out = tmp_path / "models" / "swishnet-int8.onnx"
    card = ship(checkpoint[0], out, quantize_mode="dynamic", corpus=corpus, workers=0)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["onnx_sha256"] == sha256_file(out)
    assert saved["quantization"]["mode"] == "dynamic" and saved["quantization"]["split"] == "val"
    assert card["metrics"]["split"] == "test" and 0 <= card["metrics"]["segmentation"]["accuracy_engine"] <= 100
    val = prepare_split(corpus, "val", workers=0)
    int8_on_val = {"clip_classification": clip_classification(OnnxScorer(out), val.clips, val.prepared, 0)}
    assert saved["quantization"]["int8_accuracy"] == round(mean_clean_accuracy(int8_on_val), 2)
    onnx_model = onnx.load(str(out))
    assert any(node.op_type in ("ConvInteger", "DynamicQuantizeLinear") for node in onnx_model.graph.node)


def test_quantize_rejects_unknown_modes(shipped, tmp_path):
    with pytest.raises(ValueError, match="dynamic"):
        quantize(shipped[0], tmp_path / "x.onnx", "float16")


# --- models exported before frame logits -----------------------------------------------------------------

def old_export(tmp_path, model=None):
    """A model in the old contract (probs), with its card and markdown, as old exports wrote them."""
    path = write_model(tmp_path, "old", model or pooled_graph(), output="probs", input="mfcc",
                       receptive_field_frames=1)
    path.with_suffix(".md").write_text(f"# old\n\nSlim, labels speech, music, noise; input `mfcc` (batch, 20, frames), "
                                       f"output `probs` (batch, 3).\n\nsha256 `{sha256_file(path)}`.\n")
    return path


def transposed_pooled_graph():
    """The old graph with its logits held as (batch, classes, frames), pooled over axis 2 (as in the int8 export)."""
    model = pooled_graph()
    graph = model.graph
    mean = next(node for node in graph.node if node.op_type == "ReduceMean")
    graph.node.insert(list(graph.node).index(mean),
                      onnx.helper.make_node("Transpose", ["logits"], ["logits_t"], perm=[0, 2, 1]))
    mean.input[0] = "logits_t"
    del mean.attribute[:]
    mean.attribute.extend([onnx.helper.make_attribute("axes", [2]), onnx.helper.make_attribute("keepdims", 0)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("transposed", [False, True])
def test_old_models_convert_to_frame_logits(tmp_path, transposed):
    path = old_export(tmp_path, transposed_pooled_graph() if transposed else None)
    old_bytes, old_sha = path.read_bytes(), sha256_file(path)
    card = convert_file(path)
    assert card["frame_logits_conversion"]["max_abs_diff_pooled_probs"] <= 1e-5
    assert card["frame_logits_conversion"]["from_onnx_sha256"] == old_sha
    assert card["onnx_sha256"] == sha256_file(path) != old_sha
    assert json.loads(path.with_suffix(".json").read_text()) == card
    markdown = path.with_suffix(".md").read_text()
    assert card["onnx_sha256"] in markdown and old_sha not in markdown and "`frame_logits` (batch, frames, 3)" in markdown
    converted = Classifier(path)  # the runtime accepts it
    windows = np.stack([mfcc(make_signal(kind, 1.0))[:98] for kind in ("speech", "music", "noise")])
    old = ort.InferenceSession(old_bytes, providers=["CPUExecutionProvider"]).run(["probs"], {"mfcc": windows.transpose(0, 2, 1)})[0]
    np.testing.assert_allclose(pooled_probs(converted.frame_logits(windows)), old, atol=1e-5)
    assert pooled_difference(old_bytes, path.read_bytes()) <= 1e-5
    model = onnx.load(str(path))
    assert not any(node.op_type in ("ReduceMean", "Softmax") for node in model.graph.node)


def test_conversion_refuses_other_graphs(tmp_path):
    from tests.tiny_model import centroid_graph

    with pytest.raises(ConversionError, match="expected one output 'probs'"):
        to_frame_logits(centroid_graph())  # already frame logits
    path = old_export(tmp_path)
    model = onnx.load(str(path))
    model.graph.node[-1].op_type = "Sigmoid"
    with pytest.raises(ConversionError, match="ReduceMean -> Softmax"):
        to_frame_logits(model)


@pytest.mark.parametrize("name", ["swishnet-slim", "swishnet-slim-int8", "swishnet-wide"])
def test_shipped_models_have_frame_logits_and_their_conversion_is_recorded(name):
    from importlib.resources import files

    path = Path(str(files("models"))) / f"{name}.onnx"
    classifier = Classifier(path)
    card = classifier.card
    assert card["output"] == "frame_logits" and card["output_shape"] == ["batch", "frames", 3]
    assert classifier.receptive_field_frames == card["receptive_field_frames"] == 38
    assert card["frame_logits_conversion"]["max_abs_diff_pooled_probs"] <= 1e-5
