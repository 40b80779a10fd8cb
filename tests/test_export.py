"""Checkpoint model -> ONNX bundle -> edge: parity, manifest contents, hash refusal."""

import json

import numpy as np
import pytest
import torch

from edge.bundle import load_bundle
from edge.errors import BundleError, SignguardError
from edge.preprocess import PreprocessConfig
from export.bundle import export_bundle
from export.onnx_export import check_parity
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


def test_edge_bundle_matches_torch_logits_for_any_batch(exported):
    model, x, out = exported
    bundle = load_bundle(out)
    for n in (1, 7, 64):
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:n])).numpy()
        assert np.abs(bundle.classify(x[:n]) - ref).max() <= 1e-4


def test_parity_check_fails_on_a_different_model(exported):
    _, x, out = exported
    other = create_model("lisa_cnn_tiny", num_classes=5, blur_kernel=3).eval()
    with pytest.raises(SignguardError, match="parity failed"):
        check_parity(other, out / "model.onnx", x[:16])


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
