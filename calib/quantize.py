"""INT8 explicit quantization: FP32 ONNX + calibration images -> symmetric Q/DQ ONNX.

Why onnxruntime's ``quantize_static`` and not hand-written range code: it is
maintained, its Q/DQ output runs on onnxruntime (CPU, tests) and on
TensorRT 8.5-10.x (explicit quantization), and it implements the three
calibration methods we choose between:

- ``entropy``: KL-divergence threshold per tensor (TensorRT's own default,
  robust to rare outliers);
- ``percentile``: clip at the ``percentile`` of |activation| (default 99.999);
- ``minmax``: the full observed range (no clipping; one outlier image
  inflates the scale of every image).

The settings are the ones TensorRT wants: QDQ format, int8 activations and
weights, symmetric (zero point 0), per-channel weights on the output-channel
axis, float biases (``QuantizeBias=False``), the model's own opset.
Every result is checked with :func:`calib.qdq.check_qdq` before it replaces
``out_path``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from edge.errors import SignguardError, require
from edge.fileio import PathLike, atomic_write_bytes

from .dataset import warn_if_small
from .qdq import MAX_OPSET, QDQ_OPS, QUANTIZABLE_OPS, check_qdq, load_model, opset_of

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "minmax")
QUANTIZERS = ("onnxruntime", "modelopt")
BATCH = 32


def _ort_quant() -> Any:
    return require("onnxruntime.quantization", "INT8 quantization needs onnxruntime: pip install onnxruntime")


def model_input(model: Any) -> Any:
    """The model's one non-initializer graph input (the image tensor)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise SignguardError("model has %d graph inputs %s; expected exactly one image input"
                             % (len(inputs), [i.name for i in inputs]))
    return inputs[0]


def static_dims(value_info: Any) -> List[Optional[int]]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


class ArrayReader:
    """A ``CalibrationDataReader`` over an (N, 3, S, S) array, in batches of ``batch``.

    A plain class that duck-types onnxruntime's reader (``get_next``,
    ``rewind``, ``__len__``) so importing this module does not import
    onnxruntime.
    """

    def __init__(self, x: np.ndarray, input_name: str, batch: int = BATCH) -> None:
        # Equal batches only: onnxruntime's histogram collectors (entropy, percentile) stack the per-batch
        # outputs and fail on a ragged last batch, so use the largest divisor of N that is <= batch.
        batch = max(1, min(int(batch), len(x)))
        self.x, self.input_name = x, input_name
        self.batch = max(d for d in range(1, batch + 1) if len(x) % d == 0)
        self.pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.pos >= len(self.x):
            return None
        b = np.ascontiguousarray(self.x[self.pos:self.pos + self.batch], dtype=np.float32)
        self.pos += self.batch
        return {self.input_name: b}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Any:
        self.rewind()
        return iter(self.get_next, None)


def check_calib(x: Any, input_name: str, dims: List[Optional[int]],
                input_range: Optional[Tuple[float, float]]) -> np.ndarray:
    """``x`` as float32 if it fits the model input ``dims`` and ``input_range``, else a SignguardError naming why."""
    x = np.asarray(x)
    if (x.ndim != len(dims) or len(x) == 0
            or any(d is not None and d != s for d, s in zip(dims[1:], x.shape[1:]))):
        raise SignguardError("calib_x: shape %s does not fit model input %r %s (N > 0 expected)"
                             % (x.shape, input_name, dims))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SignguardError("calib_x: holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if input_range is not None and (lo < input_range[0] or hi > input_range[1]):
        raise SignguardError("calib_x: values in [%g, %g], expected [%g, %g] (the output of edge.preprocess; "
                             "input_range=None for a graph fed by another graph)" % (lo, hi, *input_range))
    return x


def _resolve_exclusions(model: Any, exclude_nodes: Iterable[str], exclude_op_types: Iterable[str],
                        where: str) -> List[str]:
    names = [n.name for n in model.graph.node]
    known = set(names)
    if "" in known:
        log.warning("%s: some nodes have no name; they cannot be excluded by name", where)
    out: List[str] = []
    for name in exclude_nodes:
        if name not in known:
            raise SignguardError("%s: exclude_nodes: no node named %r (quantizable nodes: %s)"
                                 % (where, name, [n.name for n in model.graph.node
                                                  if n.op_type in QUANTIZABLE_OPS][:20]))
        out.append(name)
    present = {n.op_type for n in model.graph.node}
    for op in exclude_op_types:
        if op not in present:
            log.warning("%s: exclude_op_types: no %r node in this model (op types: %s)", where, op, sorted(present))
        out.extend(n.name for n in model.graph.node if n.op_type == op and n.name)
    return list(dict.fromkeys(out))


def _float_inputs_for(model: Any, excluded: Sequence[str]) -> int:
    """Feed each excluded node the float tensors, not their Q/DQ round trip; drop the pairs left unused.

    Why: onnxruntime leaves an excluded node's *input* quantized when the
    producer was quantized (e.g. Relu -> Q -> DQ -> excluded Conv), so the
    node would still see int8 rounding.  Keeping a layer FP32 means no Q/DQ
    around it at all.  Returns the number of rewired inputs.
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    wanted = set(excluded)
    rewired = 0
    for node in nodes:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            qn = producer.get(dq.input[0])
            if qn is None or qn.op_type != "QuantizeLinear" or qn.input[0] in inits:
                continue
            node.input[i] = qn.input[0]
            rewired += 1
    outputs = {o.name for o in model.graph.output}
    orphans = set()
    changed = True
    while changed:  # a DQ with no consumer goes, then the Q that fed only it, then their scales
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        for n in dead:
            orphans.update(n.input)
            model.graph.node.remove(n)
        changed = bool(dead)
    used = {i for n in model.graph.node for i in n.input}
    for t in [t for t in model.graph.initializer if t.name in orphans and t.name not in used]:
        model.graph.initializer.remove(t)
    return rewired


@contextlib.contextmanager
def _ort_prints_to_debug() -> Any:
    """onnxruntime's calibrators ``print`` progress; library code logs instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    for line in buf.getvalue().splitlines():
        log.debug("onnxruntime: %s", line)


def _modelopt_quantize(src: Path, dst: Path, x: np.ndarray, method: str, excluded: List[str]) -> None:
    """NVIDIA Model Optimizer's ONNX INT8 PTQ (``modelopt.onnx.quantization.quantize``), on the CPU provider."""
    quantize = require("modelopt.onnx.quantization", "quantizer 'modelopt' needs NVIDIA Model Optimizer: "
                       "pip install 'nvidia-modelopt[onnx]'").quantize
    quantize(str(src), quantize_mode="int8", calibration_data=x,
             calibration_method={"entropy": "entropy", "minmax": "max"}[method], calibration_eps=["cpu"],
             nodes_to_exclude=excluded or None, output_path=str(dst))


def quantize_int8(fp32_onnx: PathLike, out_path: PathLike, calib_x: np.ndarray, method: str = "entropy",
                  exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
                  percentile: float = 99.999, batch: int = BATCH,
                  input_range: Optional[Tuple[float, float]] = (0.0, 1.0),
                  quantizer: str = "onnxruntime", reduce_range: bool = False) -> Dict[str, Any]:
    """Quantize ``fp32_onnx`` to a symmetric int8 Q/DQ ONNX at ``out_path``, calibrated on ``calib_x``.

    ``calib_x``: (N, 3, S, S) float32 in [0, 1], preprocessed by
    :func:`edge.preprocess.preprocess` (see :mod:`calib.dataset`); its shape
    must fit the model input, and values outside ``input_range`` are refused
    (0..255 pixels are the classic silent INT8 bug) -- pass ``None`` for a
    graph whose input is another graph's output (a classifier behind a
    purifier).  Fewer than 512 images logs a warning.  ``method``: entropy |
    percentile | minmax (``percentile`` applies to the percentile method).  ``exclude_nodes``
    (node names) and ``exclude_op_types`` (op types, mapped onto the names of
    the nodes of that type) stay FP32 -- the fix for a layer that
    :func:`calib.sensitivity.sensitivity` shows INT8 breaks.

    The opset is kept (<= 17 for TensorRT 8.5/8.6); a result whose opset was
    raised, or that fails :func:`calib.qdq.check_qdq`, never replaces
    ``out_path``.  Returns a report: method, n_calibration, qdq_nodes,
    excluded_nodes, check.  ``quantizer="modelopt"`` uses NVIDIA Model
    Optimizer's ONNX PTQ instead when it is installed (entropy or minmax);
    its output must pass the same checks.  ``reduce_range`` quantizes the weights to 7 bits: onnxruntime's
    x86 AVX2 kernels without VNNI add pairs of u8 x s8 products in int16 and saturate with full-range
    weights and large activations (a whole-frame detector's first conv showed errors of 6.7 on outputs of
    0..14); 7-bit weights cannot overflow.  TensorRT does not need it; its Q/DQ graph is valid either way.
    """
    q = _ort_quant()
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise SignguardError("method: expected one of %s, got %r" % (METHODS, method))
    if quantizer not in QUANTIZERS:
        raise SignguardError("quantizer: expected one of %s, got %r" % (QUANTIZERS, quantizer))
    if quantizer == "modelopt" and method == "percentile":
        raise SignguardError("method: Model Optimizer calibrates with entropy or minmax, not percentile")
    if method == "percentile" and not 0.0 < float(percentile) <= 100.0:
        raise SignguardError("percentile: expected a number in (0, 100], got %r" % (percentile,))
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    model = load_model(fp32_onnx)
    opset = opset_of(model)
    if opset > MAX_OPSET:
        raise SignguardError("%s: opset %d, expected <= %d for TensorRT 8.5/8.6; re-export with opset %d"
                             % (fp32_onnx, opset, MAX_OPSET, MAX_OPSET))
    inp = model_input(model)
    dims = static_dims(inp)
    x = check_calib(calib_x, inp.name, dims, input_range)
    if dims[0] is not None:
        batch = dims[0]  # a fixed-batch model can only take batches of that size
        x = x[: len(x) // batch * batch]
        if len(x) == 0:
            raise SignguardError("calib_x: fewer images than the model's fixed batch %d" % batch)
    warn_if_small(len(x), str(fp32_onnx))
    excluded = _resolve_exclusions(model, exclude_nodes, exclude_op_types, str(fp32_onnx))
    calibrate_method = {"entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile,
                        "minmax": q.CalibrationMethod.MinMax}[method]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".calib.", dir=str(out_path.parent)) as tmp:
        pre = Path(tmp) / "pre.onnx"
        qdq = Path(tmp) / "qdq.onnx"
        # shape inference only: graph optimisation would rename tensors, and the TensorRT
        # calibration cache relies on the Q/DQ model carrying the FP32 tensor names.
        quant_pre_process(str(fp32_onnx), str(pre), skip_optimization=True)
        if quantizer == "modelopt":
            _modelopt_quantize(pre, qdq, x, method, excluded)
        else:
            with _ort_prints_to_debug():
                q.quantize_static(
                    str(pre), str(qdq), ArrayReader(x, inp.name, batch), quant_format=q.QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=calibrate_method,
                    extra_options=extra,
                )
        qmodel = load_model(qdq)
        if excluded and _float_inputs_for(qmodel, excluded):
            onnx.save(qmodel, str(qdq))
        new_opset = opset_of(qmodel)
        if new_opset != opset:
            raise SignguardError("%s: quantization changed the opset from %d to %d; expected it kept (<= %d)"
                                 % (fp32_onnx, opset, new_opset, MAX_OPSET))
        check = check_qdq(qdq)
        atomic_write_bytes(out_path, qdq.read_bytes())
    report = {
        "fp32_model": Path(fp32_onnx).name, "int8_model": out_path.name, "method": method,
        "percentile": float(percentile) if method == "percentile" else None, "n_calibration": int(len(x)),
        "qdq_nodes": sum(1 for n in qmodel.graph.node if n.op_type in QDQ_OPS), "excluded_nodes": excluded,
        "opset": new_opset, "check": check, "reduce_range": bool(reduce_range),
    }
    log.info("INT8 %s: %s calibration on %d images, %d Q/DQ nodes, %d node(s) kept FP32",
             out_path, method, len(x), report["qdq_nodes"], len(excluded))
    return report
