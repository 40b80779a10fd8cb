"""Checkpoint model -> ONNX bundle -> edge: parity, manifest contents, hash refusal."""

import json

import numpy as np
import pytest
import torch

from edge.bundle import load_bundle
from edge.errors import BundleError, SignguardError
from edge.manifest import manifest_digest
from edge.preprocess import PreprocessConfig
from export.bundle import export_bundle
from train.models import create_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("lisa_cnn_tiny", num_classes=5, blur_kernel=3).eval()
    x = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(model, out, list("abcde"), PreprocessConfig(), x, name="tiny", source={"checkpoint": "x"})
    return model, x, out


def test_manifest_records_parity_and_tools(exported):
    _, _, out = exported
    m = json.loads((out / "manifest.json").read_text())
    entry = m["models"][0]
    assert entry["file"] == "model.onnx" and entry["precision"] == "fp32"
    assert entry["parity"]["n"] == 256 and entry["parity"]["max_abs_diff"] <= 1e-4
    assert {"torch", "onnx", "onnxruntime"} <= set(m["tools"])
    assert m["input"]["shape"] == [-1, 3, 32, 32] and m["classes"] == list("abcde")
    assert m["manifest_sha256"] == manifest_digest(m)  # export seals the manifest; edge checks it at load


def test_exported_graph_shapes_are_what_the_manifest_says(exported):
    _, _, out = exported
    b = load_bundle(out)
    graph_in, graph_out = b.backend.io_shapes
    assert graph_in[1:] == [3, 32, 32] and graph_out[1:] in ([5], [None])


def test_edge_bundle_matches_torch_logits_for_any_batch(exported):
    model, x, out = exported
    bundle = load_bundle(out)
    for n in (1, 7, 64):
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:n])).numpy()
        assert np.abs(bundle.classify(x[:n]) - ref).max() <= 1e-4


class _TraceDiffers(torch.nn.Module):
    """Adds a Python-side random constant: the traced graph freezes one draw, eager calls draw another."""

    def __init__(self):
        super().__init__()
        self.inner = create_model("lisa_cnn_tiny", num_classes=5)

    def forward(self, x):
        return self.inner(x) + float(np.random.default_rng().uniform(1, 2))


def test_parity_check_fails_when_the_graph_computes_something_else(tmp_path):
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    with pytest.raises(SignguardError, match="parity failed"):
        export_bundle(_TraceDiffers().eval(), tmp_path / "b", list("abcde"), PreprocessConfig(), x)


def test_tampered_onnx_is_refused_by_edge(exported, tmp_path):
    _, _, out = exported
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx"):
        load_bundle(copy)


def test_fp16_graph_keeps_fp32_io_and_is_close(exported, tmp_path):
    model, x, _ = exported
    out = export_bundle(model, tmp_path / "b16", list("abcde"), PreprocessConfig(), x, precisions=["fp16"])
    m = json.loads((out / "manifest.json").read_text())
    assert [(e["file"], e["precision"]) for e in m["models"]] == [("model.onnx", "fp32"), ("model.fp16.onnx", "fp16")]
    fp16 = load_bundle(out, precision="fp16")
    y = fp16.classify(x[:64])
    assert y.dtype == np.float32  # FP32 I/O: the device code does not change with the precision
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:64])).numpy()
    # measured ~1e-3: half precision, not a different model
    assert 0 < np.abs(y - ref).max() < 2e-2
    assert m["models"][1]["parity"]["argmax_agreement"] >= 0.98
    v = np.load(out / "verify.npz")
    assert v["inputs"].shape == (256, 3, 32, 32) and set(v.files) == {"inputs", "ref_fp32", "ref_fp16"}
    assert np.allclose(v["ref_fp16"], fp16.classify(v["inputs"]))  # the saved references are the graph's outputs


def test_defended_model_exports_as_one_graph_or_one_graph_per_part(tmp_path):
    torch.manual_seed(0)
    rectifier = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid())
    classifier = create_model("lisa_cnn_tiny", num_classes=5)
    parts = {"rectifier": rectifier.eval(), "classifier": classifier.eval()}
    x = np.random.default_rng(1).random((32, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = classifier(rectifier(torch.from_numpy(x))).numpy()
    one = export_bundle(parts, tmp_path / "one", list("abcde"), PreprocessConfig(), x, graphs="one")
    sep = export_bundle(parts, tmp_path / "sep", list("abcde"), PreprocessConfig(), x, graphs="separate")
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, sep))
    assert [e["part"] for e in m1["models"]] == ["model"]
    assert [(e["file"], e["part"]) for e in m2["models"]] == [("rectifier.onnx", "rectifier"),
                                                              ("classifier.onnx", "classifier")]
    assert np.abs(load_bundle(one).classify(x) - ref).max() <= 1e-4
    # the separate graphs chained give the defended model's logits (what verify.npz records)
    assert np.abs(np.load(sep / "verify.npz")["ref_fp32"] - ref).max() <= 1e-4
