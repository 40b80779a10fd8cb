"""Per-layer INT8 sensitivity: which layer, kept FP32, buys back the most accuracy.

Why: when INT8 loses accuracy the usual fix is to keep one or two layers in
FP32 (``exclude_nodes`` of :func:`calib.quantize.quantize_int8`), and the
right ones are found by measurement, not by guessing.  For every
quantizable node (Conv, Gemm, MatMul) the model is quantized with *only that
node* left FP32 and evaluated; rows are sorted by the accuracy it gains over
the fully quantized model.  Accuracy on small evaluation sets moves in
coarse steps, so each row also carries the mean |logit error| against FP32,
a finer signal used to break ties.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge.backends import OrtBackend
from edge.errors import SignguardError
from edge.fileio import PathLike

from .qdq import QUANTIZABLE_OPS, load_model
from .quantize import BATCH, check_calib, model_input, quantize_int8, static_dims

log = logging.getLogger(__name__)


def _score(logits: np.ndarray, ref: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    return {
        "accuracy": float((logits.argmax(1) == y).mean()),
        "agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
        "logit_err": float(np.abs(logits - ref).mean()),
    }


def sensitivity(fp32_onnx: PathLike, calib_x: np.ndarray, eval_x: np.ndarray, eval_y: Sequence[int],
                method: str = "entropy", percentile: float = 99.999, batch: int = BATCH,
                input_range: Optional[Tuple[float, float]] = (0.0, 1.0)) -> List[Dict[str, Any]]:
    """One row per quantizable node: accuracy with only that node FP32, vs. FP32 and fully INT8.

    Each row: ``node``, ``op_type``, ``accuracy``, ``gain`` (accuracy minus
    the fully quantized accuracy), ``agreement`` (top-1 equal to FP32's),
    ``logit_err`` (mean |logits - FP32 logits|), and the reference
    ``fp32_accuracy`` / ``int8_accuracy`` / ``int8_logit_err``.  Sorted by
    gain, then by lower logit error.  Costs one quantization (with
    calibration) per node plus one; evaluation uses onnxruntime on CPU.
    ``method``, ``percentile``, ``batch`` and ``input_range`` are passed to
    :func:`calib.quantize.quantize_int8`.
    """
    model = load_model(fp32_onnx)
    inp = model_input(model)
    x_eval = check_calib(eval_x, inp.name, static_dims(inp), input_range)
    y = np.asarray(eval_y)
    if y.shape != (len(x_eval),):
        raise SignguardError("eval_y: expected %d labels (one per eval image), got shape %s" % (len(x_eval), y.shape))
    nodes = [(n.name, n.op_type) for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    if not nodes:
        raise SignguardError("%s: no Conv/Gemm/MatMul node to test" % fp32_onnx)
    if any(not name for name, _ in nodes):
        raise SignguardError("%s: a Conv/Gemm/MatMul node has no name; name every node to test it" % fp32_onnx)
    ref = OrtBackend(fp32_onnx).run(x_eval)
    fp32 = _score(ref, ref, y)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="calib-sens.") as tmp:
        full = Path(tmp) / "int8.onnx"
        kw = {"method": method, "percentile": percentile, "batch": batch, "input_range": input_range}
        quantize_int8(fp32_onnx, full, calib_x, **kw)
        int8 = _score(OrtBackend(full).run(x_eval), ref, y)
        for i, (name, op) in enumerate(nodes):
            out = Path(tmp) / ("keep%d.onnx" % i)
            quantize_int8(fp32_onnx, out, calib_x, exclude_nodes=[name], **kw)
            s = _score(OrtBackend(out).run(x_eval), ref, y)
            rows.append({
                "node": name, "op_type": op, "accuracy": s["accuracy"], "gain": s["accuracy"] - int8["accuracy"],
                "agreement": s["agreement"], "logit_err": s["logit_err"], "fp32_accuracy": fp32["accuracy"],
                "int8_accuracy": int8["accuracy"], "int8_logit_err": int8["logit_err"], "method": method,
            })
            log.info("sensitivity %s (%s) FP32: accuracy %.4f (int8 %.4f), logit error %.4g",
                     name, op, s["accuracy"], int8["accuracy"], s["logit_err"])
    rows.sort(key=lambda r: (-r["gain"], r["logit_err"]))
    return rows


def sensitivity_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of :func:`sensitivity` rows, with the FP32 and full-INT8 references as a header line."""
    if not rows:
        return "_no quantizable layer_\n"
    r0 = rows[0]
    head = ("FP32 accuracy %.4f; INT8 (all layers, %s) accuracy %.4f, mean |logit error| %.4g.\n\n"
            % (r0["fp32_accuracy"], r0.get("method", "?"), r0["int8_accuracy"], r0["int8_logit_err"]))
    lines = ["| layer kept FP32 | op | accuracy | gain | agreement with FP32 | mean abs logit error |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| `%s` | %s | %.4f | %+.4f | %.4f | %.4g |"
                     % (r["node"], r["op_type"], r["accuracy"], r["gain"], r["agreement"], r["logit_err"]))
    return head + "\n".join(lines) + "\n"
