"""The manifest's gate block: a malformed one fails at load with the field named (torch-free)."""

from __future__ import annotations

import pytest

from edge.bundle import load_bundle
from edge.errors import BundleError

from .helpers import edit_manifest, random_weights, write_bundle

GATE = {"kind": "dct_svm", "score_output": "gate_score", "decision_output": "gate_fired", "threshold": 0.0,
        "kernel": "linear", "support_vectors": 0, "features": "log|DCT-II(gray(I - R(I)))|",
        "no_gate_part": "classifier"}


@pytest.mark.parametrize("field, value, message", [
    ("kernel", "poly", r"gate\.kernel: expected one of \['linear', 'rbf'\], got 'poly'"),
    ("kind", "magic", r"gate\.kind: expected one of \['dct_svm'\]"),
    ("threshold", "high", r"gate\.threshold"),
    ("decision_output", "gate_score", r"gate\.decision_output: must differ"),
    ("support_vectors", -3, r"gate\.support_vectors: expected >= 0"),
    ("no_gate_part", "head", r"gate\.no_gate_part"),
])
def test_a_malformed_gate_block_names_its_field(tmp_path, field, value, message):
    bundle = write_bundle(tmp_path / "b", [("model.onnx", "fp32", random_weights(0))], list("abcde"))
    edit_manifest(bundle, lambda m: m.update(gate={**GATE, field: value}))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_a_gate_block_missing_a_field_or_with_an_unknown_one_is_refused(tmp_path):
    bundle = write_bundle(tmp_path / "b", [("model.onnx", "fp32", random_weights(0))], list("abcde"))
    edit_manifest(bundle, lambda m: m.update(gate={k: v for k, v in GATE.items() if k != "score_output"}))
    with pytest.raises(BundleError, match=r"gate: missing field\(s\) \['score_output'\]"):
        load_bundle(bundle)
    edit_manifest(bundle, lambda m: m.update(gate={**GATE, "thresold": 1.0}))
    with pytest.raises(BundleError, match=r"gate: unknown field\(s\) \['thresold'\]"):
        load_bundle(bundle)


def test_no_gate_without_its_classifier_graph_is_one_error(tmp_path):
    bundle = write_bundle(tmp_path / "b", [("model.onnx", "fp32", random_weights(0))], list("abcde"))
    edit_manifest(bundle, lambda m: m.update(gate=GATE))
    assert load_bundle(bundle).gate["kernel"] == "linear"
    with pytest.raises(BundleError, match="no onnx 'classifier' graph to run without the gate"):
        load_bundle(bundle, gate=False)
