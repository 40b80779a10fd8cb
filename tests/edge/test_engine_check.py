"""Engine check: output comparison numbers, verify.npz loading, and check_engine with onnxruntime as the engine."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import engine_check as ec
from edge.backends import OrtBackend
from edge.errors import BundleError, SignguardError
from edge.manifest import read_manifest, write_manifest

# ---------------------------------------------------------------- compare_outputs


def test_compare_outputs_numbers() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [0.5, 5.0, 1.0]], np.float32)
    got = np.array([[1.0, 2.5, 3.0], [0.5, 4.0, 6.0]], np.float32)
    r = ec.compare_outputs(ref, got)
    # |diff| = [[0, .5, 0], [0, 1, 5]]; rel = [[0, .25, 0], [0, .2, 5]]; argmax rows: 2 vs 2, 1 vs 2
    assert r == {"n": 2, "max_abs_diff": 5.0, "median_abs_diff": 0.25, "max_rel_diff": 5.0, "argmax_agreement": 0.5}
    same = ec.compare_outputs(ref, ref.copy())
    assert same["max_abs_diff"] == 0.0 and same["max_rel_diff"] == 0.0 and same["argmax_agreement"] == 1.0


def test_compare_outputs_near_zero_reference_and_nan() -> None:
    r = ec.compare_outputs(np.array([[0.0, 1.0]]), np.array([[1e-3, 1.0]]))
    assert r["max_abs_diff"] == pytest.approx(1e-3) and r["max_rel_diff"] == pytest.approx(1e3)
    bad = ec.compare_outputs(np.array([[0.0, 1.0]]), np.array([[np.nan, 1.0]]))
    assert np.isnan(bad["max_abs_diff"])


@pytest.mark.parametrize("ref,got,msg", [
    (np.zeros((2, 3)), np.zeros((2, 4)), r"reference has shape \(2, 3\) but the output has \(2, 4\)"),
    (np.zeros((2, 3)), np.zeros((3, 3)), "reference has shape"),
    (np.zeros(3), np.zeros(3), r"expected \(N, C\) arrays"),
    (np.zeros((0, 3)), np.zeros((0, 3)), "empty arrays"),
])
def test_compare_outputs_shape_checks(ref, got, msg: str) -> None:
    with pytest.raises(SignguardError, match=msg):
        ec.compare_outputs(ref, got)


# ---------------------------------------------------------------- verify.npz in a real bundle


def _ort(bundle: Path, name: str) -> OrtBackend:
    return OrtBackend(bundle / name, input_name="images", output_name="logits")


def _add_verify(bundle: Path, listed: bool = True, **override) -> np.ndarray:
    """verify.npz as export writes it: inputs and onnxruntime outputs of each precision's ONNX."""
    x = np.random.RandomState(5).rand(6, 3, 32, 32).astype(np.float32)
    arrays = {"inputs": x, "ref_fp32": _ort(bundle, "model.onnx").run(x),
              "ref_fp16": _ort(bundle, "model.fp16.onnx").run(x)}
    arrays.update(override)
    np.savez(str(bundle / "verify.npz"), **{k: v for k, v in arrays.items() if v is not None})
    if listed:
        write_manifest(bundle, read_manifest(bundle, verify_hashes=False), extra_files=["verify.npz"])
    return x


def test_load_verify_set(tiny_bundle: Path) -> None:
    x = _add_verify(tiny_bundle)
    vs = ec.load_verify_set(tiny_bundle)
    assert vs.path == tiny_bundle / "verify.npz" and sorted(vs.refs) == ["fp16", "fp32"]
    np.testing.assert_array_equal(vs.inputs, x)
    assert vs.refs["fp32"].shape == (6, 5) and vs.refs["fp32"].dtype == np.float32
    assert vs.manifest["files"]["verify.npz"]


def test_verify_set_hash_is_checked(tiny_bundle: Path) -> None:
    _add_verify(tiny_bundle)
    _add_verify(tiny_bundle, listed=False, ref_fp32=np.zeros((6, 5), np.float32))  # changed after the manifest
    with pytest.raises(BundleError, match="verify.npz: SHA-256 mismatch"):
        ec.load_verify_set(tiny_bundle)


def test_unlisted_verify_set_loads_with_a_warning(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    _add_verify(tiny_bundle, listed=False)
    with caplog.at_level(logging.WARNING, logger="edge.engine_check"):
        ec.load_verify_set(tiny_bundle)
    assert "not listed in the manifest" in caplog.text


@pytest.mark.parametrize("override,msg", [
    ({"inputs": None}, "array 'inputs' is missing"),
    ({"inputs": np.zeros((6, 3, 16, 16), np.float32)}, r"'inputs' must be \(N, 3, 32, 32\)"),
    ({"inputs": np.zeros((6, 3, 32, 32), np.uint8)}, "float32 pixels"),
    ({"ref_fp32": np.zeros((6, 4), np.float32)}, r"'ref_fp32' must be \(6, 5\)"),
    ({"ref_bf16": np.zeros((6, 5), np.float32)}, "'ref_bf16' names an unknown precision"),
    ({"ref_fp32": None, "ref_fp16": None}, "no reference outputs"),
])
def test_bad_verify_sets(tiny_bundle: Path, override, msg: str) -> None:
    _add_verify(tiny_bundle, **override)
    with pytest.raises(BundleError, match=msg):
        ec.load_verify_set(tiny_bundle)


def test_missing_or_unreadable_verify_set(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no verify.npz in the bundle"):
        ec.load_verify_set(tiny_bundle)
    (tiny_bundle / "verify.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="verify.npz: not a readable .npz"):
        ec.load_verify_set(tiny_bundle)


# ---------------------------------------------------------------- check_engine with onnxruntime as the engine


def test_check_engine_passes_for_the_matching_graph(tiny_bundle: Path) -> None:
    _add_verify(tiny_bundle)
    r = ec.check_engine(tiny_bundle, "model.fp16.engine", "fp16", tol=1e-4,
                        backend=_ort(tiny_bundle, "model.fp16.onnx"))
    assert r["passed"] is True and r["reference"] == "ref_fp16" and r["n"] == 6
    assert r["max_abs_diff"] <= 1e-5 and r["argmax_agreement"] == 1.0
    assert r["engine"] == "model.fp16.engine" and r["tol"] == 1e-4 and r["precision"] == "fp16"


def test_check_engine_fails_for_another_graph(tiny_bundle: Path) -> None:
    _add_verify(tiny_bundle)
    with pytest.raises(SignguardError, match=r"model.fp16.engine: engine output differs from ref_fp16 by max \|diff\|"):
        ec.check_engine(tiny_bundle, "model.fp16.engine", "fp16", tol=1e-2, backend=_ort(tiny_bundle, "model.onnx"))


class _Noisy:
    """The fp32 graph plus a fixed output offset: a stand-in for an engine with small numeric drift."""

    def __init__(self, inner: OrtBackend, offset: float) -> None:
        self.inner, self.offset = inner, offset

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run(x) + np.float32(self.offset)


def test_check_engine_tolerance_boundary_and_defaults(tiny_bundle: Path) -> None:
    _add_verify(tiny_bundle)
    noisy = _Noisy(_ort(tiny_bundle, "model.onnx"), 2e-3)
    r = ec.check_engine(tiny_bundle, "e", "fp32", tol=5e-3, backend=noisy)
    assert r["max_abs_diff"] == pytest.approx(2e-3, rel=1e-2) and r["median_abs_diff"] == pytest.approx(2e-3, rel=1e-2)
    with pytest.raises(SignguardError, match="> tol 0.001"):
        ec.check_engine(tiny_bundle, "e", "fp32", backend=noisy)  # default fp32 tol 1e-3
    assert ec.check_engine(tiny_bundle, "e", "fp16", backend=_Noisy(_ort(tiny_bundle, "model.fp16.onnx"), 2e-3))[
        "tol"] == ec.DEFAULT_TOL["fp16"]
    nan = _Noisy(_ort(tiny_bundle, "model.onnx"), float("nan"))
    with pytest.raises(SignguardError, match="max \\|diff\\| nan"):
        ec.check_engine(tiny_bundle, "e", "fp32", tol=1e9, backend=nan)


def test_check_engine_falls_back_to_the_fp32_reference(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    _add_verify(tiny_bundle, ref_fp16=None)
    with caplog.at_level(logging.WARNING, logger="edge.engine_check"):
        r = ec.check_engine(tiny_bundle, "e", "int8", tol=1e-4, backend=_ort(tiny_bundle, "model.onnx"))
    assert r["reference"] == "ref_fp32" and "no ref_int8" in caplog.text
    _add_verify(tiny_bundle, ref_fp32=None)
    with pytest.raises(BundleError, match="no ref_int8 or ref_fp32"):
        ec.check_engine(tiny_bundle, "e", "int8", backend=_ort(tiny_bundle, "model.onnx"))
    with pytest.raises(SignguardError, match="precision must be one of"):
        ec.check_engine(tiny_bundle, "e", "fp64")


def test_check_engine_without_tensorrt(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _add_verify(tiny_bundle)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SignguardError, match=r"pip install signguard\[jetson\]"):
        ec.check_engine(tiny_bundle, tiny_bundle / "model.fp16.engine", "fp16")
