"""Bundle loading: hashes, schema, precision selection, and onnxruntime against a numpy reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edge.backends import OrtBackend, make_backend, resolve_providers, softmax, topk
from edge.bundle import load_bundle
from edge.errors import BundleError, SignguardError
from edge.manifest import read_manifest, write_manifest
from edge.preprocess import PreprocessConfig

from .helpers import TensorProto, edit_manifest, helper, numpy_forward, random_weights


def test_load_exposes_manifest_fields(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert b.classes == ["c0", "c1", "c2", "c3", "c4"]
    assert b.preprocess_cfg == PreprocessConfig()
    assert b.model_path == tiny_bundle / "model.onnx"
    assert b.precision == "fp32"
    assert b.manifest["name"] == "tiny-test"


def test_onnxruntime_logits_equal_numpy_reference(tiny_bundle: Path) -> None:
    """The backend is proven on real weights, not mocked: ORT == an independent numpy forward."""
    x = np.random.RandomState(3).rand(4, 3, 32, 32).astype(np.float32)
    b = load_bundle(tiny_bundle)
    got = b.classify(x)
    assert got.shape == (4, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_forward(x, random_weights(0)), rtol=1e-4, atol=1e-5)
    # batch of one gives the same row (dynamic batch dimension)
    np.testing.assert_allclose(b.classify(x[1:2])[0], got[1], rtol=1e-5, atol=1e-6)


def test_precision_selection(tiny_bundle: Path) -> None:
    x = np.random.RandomState(4).rand(2, 3, 32, 32).astype(np.float32)
    b16 = load_bundle(tiny_bundle, precision="fp16")
    assert b16.model_path.name == "model.fp16.onnx" and b16.precision == "fp16"
    np.testing.assert_allclose(b16.classify(x), numpy_forward(x, random_weights(1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(BundleError) as e:
        load_bundle(tiny_bundle, precision="int8")
    msg = str(e.value)
    assert "'int8'" in msg and "model.onnx (fp32" in msg and "model.fp16.onnx (fp16" in msg


def test_default_precision_falls_back_to_first(tiny_bundle: Path) -> None:
    def edit(m: dict) -> None:
        m["models"] = [e for e in m["models"] if e["precision"] == "fp16"]
        del m["files"]["model.onnx"]

    edit_manifest(tiny_bundle, edit)
    assert load_bundle(tiny_bundle).model_path.name == "model.fp16.onnx"


def test_hash_mismatch_names_the_file(tiny_bundle: Path) -> None:
    p = tiny_bundle / "model.fp16.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.fp16\.onnx: SHA-256 mismatch"):
        load_bundle(tiny_bundle)


def test_unknown_schema_version(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(tiny_bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(gaet=None), r"unknown field\(s\) \['gaet'\]"),
        (lambda m: m["models"][0].update(precision="fp64"),
         r"models\[0\]\.precision: expected one of \['fp32', 'fp16', 'int8'\], got 'fp64'"),
        (lambda m: m["models"][1].update(fromat="onnx"), r"models\[1\]: unknown field\(s\) \['fromat'\]"),
        (lambda m: m["models"][0].update(opset="17"), r"models\[0\]\.opset: expected an integer, got '17'"),
        (lambda m: m["models"][0].pop("part"), r"models\[0\]: missing field\(s\) \['part'\]"),
        (lambda m: m["input"].update(shape=[-1, 3, "32", 32]), r"input\.shape\[2\]: expected an integer, got '32'"),
        (lambda m: m["output"].pop("name"), r"output: missing field\(s\) \['name'\]"),
        (lambda m: m["preprocess"].update(input_size=4), r"preprocess\.input_size: expected an integer >= 8, got 4"),
        (lambda m: m["preprocess"].update(colour="RGB"), r"preprocess: unknown field\(s\) \['colour'\]"),
        (lambda m: m.update(classes=["a", 2]), r"classes\[1\]: expected a string, got 2"),
        (lambda m: m.update(classes=[]), r"classes: expected a non-empty list"),
        (lambda m: m.update(models=[]), r"models: expected at least one model entry"),
        (lambda m: m["files"].pop("model.onnx"), r"models\[0\]\.file: 'model\.onnx' has no hash in 'files'"),
        (lambda m: m.pop("tools"), r"missing field\(s\) \['tools'\]"),
        (lambda m: m.update(schema_version="1"), r"schema_version: expected an integer, got '1'"),
        (lambda m: m.update(gate=[]), r"gate: expected a mapping, got list"),
    ],
)
def test_manifest_schema_errors_name_the_file_and_the_field(tiny_bundle: Path, edit, message: str) -> None:
    where = edit_manifest(tiny_bundle, edit)
    with pytest.raises(BundleError, match="^" + re.escape(where + ": ") + message):
        read_manifest(tiny_bundle, verify_hashes=False)


GATE = {"kind": "dct_svm", "score_output": "gate_score", "decision_output": "gate_fired", "threshold": 0.0}


def test_manifest_optional_fields_and_engine_metadata_are_accepted(tiny_bundle: Path) -> None:
    def edit(m: dict) -> None:
        m.update(gate=GATE, created="2024-01-01T00:00:00+00:00", source={"checkpoint": "x"},
                 extra={"graphs": "one"})
        m["models"][0].update(opset=17, parity={"n": 8, "max_abs_diff": 1e-6}, quantization={"method": "entropy"})
        m["models"][1].update(trt_version="8.6.1", gpu="Orin", cache_key="abc", flags=["FP16"], quantization="qdq",
                              profile={"input": "images", "min": [1, 3, 32, 32]}, built_from="model.onnx")

    edit_manifest(tiny_bundle, edit)
    m = read_manifest(tiny_bundle)
    assert m["gate"] == GATE and m["models"][1]["flags"] == ["FP16"]
    assert isinstance(m, dict) and m["input"]["range"] == [0, 1]  # the plain JSON, not coerced dataclasses


def test_write_manifest_refuses_an_invalid_manifest(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    m["models"][0]["precison"] = "fp32"
    with pytest.raises(BundleError, match=r"manifest\.json: models\[0\]: unknown field\(s\) \['precison'\]"):
        write_manifest(tiny_bundle, m)


def test_missing_manifest_and_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_manifest_names_that_disagree_with_the_graph(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m["output"].update(name="probs"))
    with pytest.raises(BundleError, match=r"model\.onnx: the manifest names output 'probs'"):
        load_bundle(tiny_bundle)


def test_input_shape_must_match_preprocess(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m["input"].update(shape=[-1, 3, 48, 48]))
    with pytest.raises(BundleError, match="disagrees with preprocess.input_size 32"):
        load_bundle(tiny_bundle)


def test_classify_rejects_wrong_inputs(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    with pytest.raises(SignguardError, match=r"\(N, 3, 32, 32\)"):
        b.classify(np.zeros((1, 3, 24, 24), np.float32))
    with pytest.raises(SignguardError, match="float32"):
        b.classify(np.zeros((1, 3, 32, 32), np.float64))


def test_corrupt_onnx_file_is_a_bundle_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(BundleError, match="bad.onnx: onnxruntime cannot load"):
        OrtBackend(p)


def test_backend_registry_errors(tiny_bundle: Path) -> None:
    with pytest.raises(SignguardError, match="unknown"):
        make_backend("openvino", tiny_bundle / "model.onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(SignguardError, match=r"pip install signguard\[jetson\]"):
            make_backend("tensorrt", tiny_bundle / "model.engine")
        with pytest.raises(BundleError, match="no engine model file"):
            load_bundle(tiny_bundle, backend="tensorrt")


def test_providers_fall_back_to_cpu() -> None:
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    have = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["cuda"], have) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_softmax_and_topk() -> None:
    logits = np.array([[1000.0, 0.0, 1000.0, -5.0], [0.0, 1.0, 2.0, 3.0]])
    p = softmax(logits)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1.0)
    idx, val = topk(p, 2)
    assert idx.tolist() == [[0, 2], [3, 2]]  # stable: ties keep the lower index first
    np.testing.assert_allclose(val[0], [0.5, 0.5], atol=1e-6)
    idx1, _ = topk(np.array([0.1, 0.7, 0.2]), 10)
    assert idx1.tolist() == [1, 2, 0]


def test_fp16_io_model_takes_and_returns_float32(tmp_path: Path) -> None:
    """An FP16 export with half-precision inputs/outputs is fed float16 and read back as float32."""
    nodes = [
        helper.make_node("Cast", ["images"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["x32"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Cast", ["f"], ["logits"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("images", TensorProto.FLOAT16,
                                                                            ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "half.onnx"
    path.write_bytes(model.SerializeToString())
    backend = OrtBackend(path)
    x = np.random.RandomState(0).rand(2, 3, 8, 8).astype(np.float32)
    y = backend.run(x)
    assert y.dtype == np.float32 and y.shape == (2, 3)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), atol=2e-3)
