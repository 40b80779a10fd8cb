"""ONNX graph formats of one model: simplified FP32, FP16 with FP32 I/O, INT8 Q/DQ (via :mod:`calib`).

Why maintained tools: graph simplification (onnxslim) and FP16 conversion
(onnxruntime's ``float16`` converter) are easy to get subtly wrong by hand --
constant folding across shape ops, FP16 overflow in reductions, I/O types the
device must then guess.  Every file is written atomically and checked with
``onnx.checker``; what each precision costs in accuracy is measured by
:func:`output_diff` against the FP32 graph, and recorded in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.errors import SignguardError

log = logging.getLogger(__name__)

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def _save(model, path: Path) -> Path:
    import onnx

    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path


def slim(path: str | Path) -> Path:
    """Simplify an ONNX file in place with onnxslim (constant folding, dead-node and shape-op removal).

    The LISA-CNN graph goes from 27 to 17 nodes (the per-image standardisation's shape arithmetic folds
    away); the opset and the dynamic batch axis are kept, which TensorRT 8.5/8.6 need.
    """
    import onnx
    import onnxslim

    path = Path(path)
    before = onnx.load(str(path))
    after = onnxslim.slim(before)
    if [o.version for o in after.opset_import] != [o.version for o in before.opset_import]:
        raise SignguardError(f"{path}: onnxslim changed the opset; refusing the simplified graph")
    log.info("onnxslim %s: %d -> %d nodes", path.name, len(before.graph.node), len(after.graph.node))
    return _save(after, path)


def to_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """FP16 weights and activations, FP32 inputs and outputs (``keep_io_types``), so the device's
    preprocessing and the frame log do not change with the precision."""
    import onnx
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    # the converter appends its I/O Casts at the end of the node list; onnxslim re-sorts topologically
    return _save(onnxslim.slim(model), Path(out_path))


def run_onnx(path: str | Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """onnxruntime (CPU) outputs of the graph's first output for inputs ``x``, batched."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]).astype(
        np.float32)


def output_diff(ref: np.ndarray, got: np.ndarray) -> dict:
    """Max / median |difference| and argmax agreement of two (N, C) output arrays."""
    d = np.abs(np.asarray(ref, np.float64) - np.asarray(got, np.float64))
    return {"n": int(len(ref)), "max_abs_diff": float(d.max()), "median_abs_diff": float(np.median(d)),
            "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}
