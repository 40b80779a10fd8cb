"""Check a deployed engine against the ONNX Runtime outputs that export recorded (Polygraphy-style, torch-free).

Why: an engine is built on the device, after export has proven the ONNX
graphs; this is the proof that the engine computes what the verified ONNX
computes.  Export writes ``verify.npz`` into the bundle: ``inputs`` (N, 3,
S, S) float32 in [0, 1] and ``ref_<precision>`` (N, C) onnxruntime outputs
of that precision's ONNX.  When ``verify.npz`` is listed in the manifest's
``files``, :func:`~edge.manifest.read_manifest` has verified its hash.

The backend is injectable (anything with ``run(batch) -> (N, C)``), so the
comparison logic is tested with onnxruntime standing in for the engine.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .backends import make_backend
from .errors import BundleError, SignguardError
from .fileio import PathLike
from .manifest import PRECISIONS, read_manifest

log = logging.getLogger(__name__)

VERIFY_NAME = "verify.npz"
# Starting points for max |output diff| against the onnxruntime reference of the same precision (logits):
# fp32 is built without TF32; fp16/int8 kernels differ from onnxruntime's in accumulation order and rounding.
DEFAULT_TOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 2.5e-1}
_REL_EPS = 1e-6


def compare_outputs(reference: np.ndarray, got: np.ndarray) -> Dict[str, float]:
    """Differences between two (N, C) output arrays.

    ``max_rel_diff`` is ``max |got - ref| / max(|ref|, 1e-6)`` (large where
    reference logits are near zero: read it with ``max_abs_diff``).
    ``argmax_agreement`` is the fraction of rows with the same top class.
    NaN or inf in ``got`` make the differences NaN/inf, so any tolerance fails.
    """
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(got, dtype=np.float64)
    if ref.ndim != 2 or out.ndim != 2:
        raise SignguardError("compare_outputs: expected (N, C) arrays, got %s and %s" % (ref.shape, out.shape))
    if ref.shape != out.shape:
        raise SignguardError("compare_outputs: reference has shape %s but the output has %s" % (ref.shape, out.shape))
    if ref.shape[0] == 0 or ref.shape[1] == 0:
        raise SignguardError("compare_outputs: empty arrays %s" % (ref.shape,))
    with np.errstate(invalid="ignore"):
        diff = np.abs(out - ref)
        rel = diff / np.maximum(np.abs(ref), _REL_EPS)
        return {
            "n": int(ref.shape[0]),
            "max_abs_diff": float(np.max(diff)),
            "median_abs_diff": float(np.median(diff)),
            "max_rel_diff": float(np.max(rel)),
            "argmax_agreement": float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1))),
        }


@dataclass
class VerifySet:
    """``verify.npz`` of a bundle: model inputs and onnxruntime reference outputs per precision."""

    path: Path
    inputs: np.ndarray
    refs: Dict[str, np.ndarray]
    manifest: Dict[str, Any]


def load_verify_set(bundle_dir: PathLike, verify_hashes: bool = True) -> VerifySet:
    """Read and validate ``verify.npz`` (shapes against the manifest's input shape and classes)."""
    root = Path(bundle_dir)
    manifest = read_manifest(root, verify_hashes=verify_hashes)
    path = root / VERIFY_NAME
    if not path.is_file():
        raise BundleError("%s: no %s in the bundle; re-export it with verification data" % (path, VERIFY_NAME))
    if VERIFY_NAME not in manifest["files"]:
        log.warning("%s is not listed in the manifest, so its hash was not verified", path)
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError("%s: not a readable .npz file (%s)" % (path, e)) from None
    if "inputs" not in arrays:
        raise BundleError("%s: array 'inputs' is missing (has %s)" % (path, sorted(arrays)))
    x = arrays["inputs"]
    shape = manifest["input"]["shape"]
    want = tuple(int(d) for d in shape[1:]) if isinstance(shape, list) and len(shape) == 4 else None
    if x.ndim != 4 or (want is not None and tuple(x.shape[1:]) != want) or len(x) == 0:
        raise BundleError("%s: 'inputs' must be (N, %s) with N > 0, got %s"
                          % (path, ", ".join(map(str, want or ("C", "H", "W"))), x.shape))
    if not np.issubdtype(x.dtype, np.floating):
        raise BundleError("%s: 'inputs' must be float32 pixels in [0, 1], got %s" % (path, x.dtype))
    refs = {}
    for key, arr in arrays.items():
        if not key.startswith("ref_"):
            continue
        precision = key[len("ref_"):]
        if precision not in PRECISIONS:
            raise BundleError("%s: array %r names an unknown precision (expected ref_%s)"
                              % (path, key, "/ref_".join(PRECISIONS)))
        if arr.shape != (len(x), len(manifest["classes"])):
            raise BundleError("%s: %r must be (%d, %d) (inputs x classes), got %s"
                              % (path, key, len(x), len(manifest["classes"]), arr.shape))
        refs[precision] = arr.astype(np.float32, copy=False)
    if not refs:
        raise BundleError("%s: no reference outputs (ref_fp32 / ref_fp16 / ref_int8)" % path)
    return VerifySet(path, np.ascontiguousarray(x, dtype=np.float32), refs, manifest)


def reference_for(vs: VerifySet, precision: str) -> Tuple[str, np.ndarray]:
    """The reference of ``precision``, else fp32 (with a warning): ``(array name, outputs)``."""
    if precision in vs.refs:
        return "ref_" + precision, vs.refs[precision]
    if "fp32" in vs.refs:
        log.warning("%s has no ref_%s; comparing the %s engine with the fp32 reference", vs.path, precision, precision)
        return "ref_fp32", vs.refs["fp32"]
    raise BundleError("%s: no ref_%s or ref_fp32 to compare a %s engine with (has %s)"
                      % (vs.path, precision, precision, ", ".join("ref_" + p for p in sorted(vs.refs))))


def check_engine(
    bundle_dir: PathLike,
    engine_path: PathLike,
    precision: str,
    tol: Optional[float] = None,
    backend: Optional[Any] = None,
) -> Dict[str, Any]:
    """Run the engine on ``verify.npz`` inputs and compare with the onnxruntime reference of ``precision``.

    ``tol`` bounds the max absolute output difference (default
    :data:`DEFAULT_TOL`); ``backend`` replaces the TensorRT backend (any
    object with ``run``).  Returns the comparison plus ``engine``,
    ``precision``, ``reference``, ``tol`` and ``passed``; raises
    :class:`SignguardError` when the difference exceeds ``tol``.
    """
    if precision not in PRECISIONS:
        raise SignguardError("precision must be one of %s, got %r" % (PRECISIONS, precision))
    tol = DEFAULT_TOL[precision] if tol is None else float(tol)
    vs = load_verify_set(bundle_dir)
    ref_name, ref = reference_for(vs, precision)
    if backend is None:
        backend = make_backend("tensorrt", engine_path, input_name=vs.manifest["input"]["name"],
                               output_name=vs.manifest["output"]["name"])
    got = backend.run(vs.inputs)
    result: Dict[str, Any] = compare_outputs(ref, got)
    result.update(engine=str(engine_path), precision=precision, reference=ref_name, tol=tol)
    result["passed"] = bool(result["max_abs_diff"] <= tol)  # NaN compares False
    if not result["passed"]:
        raise SignguardError(
            "%s: engine output differs from %s by max |diff| %.3g > tol %.3g (median %.3g, argmax agreement %.1f%%)"
            % (engine_path, ref_name, result["max_abs_diff"], tol, result["median_abs_diff"],
               100.0 * result["argmax_agreement"]))
    log.info("%s matches %s: max |diff| %.3g <= %.3g, argmax agreement %.1f%% on %d inputs", engine_path, ref_name,
             result["max_abs_diff"], tol, 100.0 * result["argmax_agreement"], result["n"])
    return result
