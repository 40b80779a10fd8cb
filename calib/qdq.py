"""Checks on a Q/DQ ONNX model, and the TensorRT 8.x calibration cache derived from it.

Why a checker: onnxruntime runs almost any Q/DQ graph, TensorRT does not.
TensorRT's explicit quantization wants symmetric int8 (zero point 0),
per-channel weight scales on the output-channel axis, float biases and an
opset its ONNX parser knows (<= 17 for TensorRT 8.5/8.6).  A model that
breaks one of these fails on the device, far from where it was built, so
:func:`check_qdq` refuses it here, naming the node.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge.errors import SignguardError, require
from edge.fileio import PathLike, atomic_write_text

log = logging.getLogger(__name__)

MAX_OPSET = 17  # TensorRT 8.5/8.6's ONNX parser
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _onnx() -> Any:
    return require("onnx", "calib needs onnx: pip install onnx onnxruntime")


def load_model(path: PathLike) -> Any:
    """``onnx.load`` with a SignguardError naming a missing or unreadable file."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise SignguardError("%s: ONNX model not found" % path)
    try:
        return onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError / RuntimeError variants
        raise SignguardError("%s: not a readable ONNX model (%s)" % (path, e)) from None


def opset_of(model: Any) -> int:
    """The default-domain (``ai.onnx``) opset the model declares."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    raise SignguardError("model declares no ai.onnx opset")


def weight_axis(consumer: Any) -> int:
    """The output-channel axis of the weight (input 1) of a Conv/ConvTranspose/Gemm/MatMul.

    This is the axis onnxruntime's per-channel quantizer uses and the one
    TensorRT accepts: Conv weights are (out, in, kh, kw) -> 0; ConvTranspose
    (in, out, ...) -> 1; Gemm with ``transB=1`` (what torch's Linear
    exports) is (out, in) -> 0, without it (in, out) -> 1; MatMul B is
    (in, out) -> 1.
    """
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def _attr_int(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def check_qdq(path: PathLike) -> Dict[str, Any]:
    """Check that a Q/DQ model is what TensorRT's explicit INT8 mode consumes; raise naming the first violation.

    Rules: ``onnx.checker`` passes; opset <= 17; every QuantizeLinear /
    DequantizeLinear has an int8 zero point that is 0 (symmetric); every
    weight (an initializer feeding input 1 of Conv/ConvTranspose/Gemm/MatMul
    through a DequantizeLinear) has a 1-D per-channel scale whose length is
    the output-channel count on the axis of :func:`weight_axis`; no
    DequantizeLinear reads int32 (biases stay float).  Returns counts.
    """
    onnx = _onnx()
    from onnx import numpy_helper

    path = Path(path)
    model = load_model(path)
    opset = opset_of(model)
    if opset > MAX_OPSET:
        raise SignguardError("%s: opset %d, expected <= %d (TensorRT 8.5/8.6 parse up to %d)"
                             % (path, opset, MAX_OPSET, MAX_OPSET))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise SignguardError("%s: onnx.checker failed: %s" % (path, str(e).splitlines()[0])) from None
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    counts = {"quantize_linear": 0, "dequantize_linear": 0, "per_channel_weights": 0, "activation_qdq": 0}
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        where = "%s: node %r (%s)" % (path, node.name, node.op_type)
        counts["quantize_linear" if node.op_type == "QuantizeLinear" else "dequantize_linear"] += 1
        if len(node.input) < 3 or not node.input[2]:
            raise SignguardError("%s: no zero point (defaults to uint8); expected an int8 zero point 0" % where)
        zp_name, scale_name = node.input[2], node.input[1]
        if zp_name not in inits or scale_name not in inits:
            raise SignguardError("%s: scale/zero point are not initializers; expected constant quantization "
                                 "parameters" % where)
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype != np.int8 or np.any(zp != 0):
            raise SignguardError("%s: zero point %s %s, expected int8 0 (symmetric quantization)"
                                 % (where, zp.dtype, np.unique(zp)[:4].tolist()))
        if node.op_type == "QuantizeLinear":
            if node.input[0] not in inits:
                counts["activation_qdq"] += 1
            continue
        x_name = node.input[0]
        if x_name in inits and inits[x_name].data_type == onnx.TensorProto.INT32:
            raise SignguardError("%s: dequantizes int32 %r; expected float biases (QuantizeBias=False)"
                                 % (where, x_name))
        weight_uses = [(c, i) for c, i in consumers.get(node.output[0], []) if c.op_type in QUANTIZABLE_OPS and i == 1]
        if x_name not in inits or not weight_uses:
            continue
        w = inits[x_name]
        scale = numpy_helper.to_array(inits[scale_name])
        axis = _attr_int(node, "axis", 1) % len(w.dims)
        for consumer, _ in weight_uses:
            want = weight_axis(consumer)
            if scale.ndim != 1 or axis != want or scale.shape[0] != w.dims[want]:
                raise SignguardError(
                    "%s: weight %r of %s %r has scale shape %s on axis %d; expected per-channel scales of length %d "
                    "on axis %d" % (where, x_name, consumer.op_type, consumer.name, scale.shape, axis, w.dims[want],
                                    want))
        counts["per_channel_weights"] += 1
    return dict(counts, opset=opset, ok=True)


def _tensor_name_map(model: Any) -> Dict[str, str]:
    """QuantizeLinear input name -> the FP32 graph's name of that tensor.

    onnxruntime keeps activation names, except for a graph output: there the
    producer's output is renamed ``<name>_QuantizeLinear_Input`` and the
    DequantizeLinear after it takes the original name.
    """
    outputs = {o.name for o in model.graph.output}
    dq_by_input = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    names: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dq = dq_by_input.get(node.output[0])
        if dq is not None and dq.output[0] in outputs:
            names[node.input[0]] = dq.output[0]
        else:
            names[node.input[0]] = node.input[0]
    return names


def activation_scales(path: PathLike) -> Dict[str, float]:
    """Per-tensor scales of every quantized activation, keyed by the FP32 graph's tensor name."""
    from onnx import numpy_helper

    model = load_model(path)
    inits = {t.name: t for t in model.graph.initializer}
    rename = _tensor_name_map(model)
    scales: Dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            s = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
            if s is None or s.size != 1:
                raise SignguardError("%s: node %r: activation scale must be one constant, got %s"
                                     % (path, node.name, None if s is None else s.shape))
            scales[rename[node.input[0]]] = float(s.reshape(()))
    return scales


def trt_calibration_cache(qdq_path: PathLike, out_path: PathLike, calibrator: str = "EntropyCalibration2",
                          trt_tag: str = "TRT-8601", input_scale: Optional[float] = None) -> Dict[str, float]:
    """Write a TensorRT 8.x implicit-quantization calibration cache from the scales of a Q/DQ model.

    Why: TensorRT 8.x can also build INT8 engines from the FP32 ONNX plus a
    calibration cache (implicit quantization, ``IInt8Calibrator`` returning
    this file from ``read_calibration_cache``); deriving the cache from the
    Q/DQ model gives both routes the same ranges without calibrating twice.

    Format (text, one tensor per line)::

        TRT-8601-EntropyCalibration2
        images: 3c010204
        /conv1/Conv_output_0: 3d2573d1

    The first line is ``<trt_tag>-<calibrator>``; TensorRT checks it and
    skips a cache it finds incompatible (then calibrates from data, if the
    calibrator has any), so pass the tag of the TensorRT that will read it
    (``TRT-8601`` = 8.6.1, ``TRT-8502`` = 8.5.2) and the calibrator class it
    uses.  Each other line is ``<tensor name>: <hex>``
    where hex is the big-endian IEEE-754 float32 bit pattern of the scale
    (``struct.pack('>f', scale).hex()``), scale = amax / 127.  Names are the
    FP32 graph's tensor names (the ones TensorRT's ONNX parser gives network
    tensors): onnxruntime's Q/DQ model quantizes tensors under their FP32
    names, and a renamed graph output is mapped back (tested).
    The graph input is always included: from its QuantizeLinear when it has
    one, else ``input_scale``, else 1/127 (amax 1.0: the [0, 1] pixel
    contract of :func:`edge.preprocess.preprocess`).  TensorRT treats tensors
    missing from the cache as unquantized or errors out, depending on the layer.
    Returns the ``{name: scale}`` written (float32 values).
    """
    if not calibrator or not trt_tag or "\n" in calibrator + trt_tag:
        raise SignguardError("calibrator/trt_tag: expected one-line non-empty strings, got %r / %r"
                             % (calibrator, trt_tag))
    model = load_model(qdq_path)
    inits = {t.name for t in model.graph.initializer}
    scales = activation_scales(qdq_path)
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    for name in inputs:
        if name not in scales:
            scales[name] = float(input_scale) if input_scale is not None else 1.0 / 127.0
    ordered = {k: scales[k] for k in inputs}
    ordered.update((k, v) for k, v in scales.items() if k not in ordered)
    lines = ["%s-%s" % (trt_tag, calibrator)]
    for name, scale in ordered.items():
        if not (math.isfinite(scale) and scale > 0):
            raise SignguardError("%s: tensor %r has scale %r; expected a positive finite scale"
                                 % (qdq_path, name, scale))
        packed = struct.pack(">f", scale)
        ordered[name] = struct.unpack(">f", packed)[0]  # report what was written: float32
        lines.append("%s: %s" % (name, packed.hex()))
    atomic_write_text(out_path, "\n".join(lines) + "\n")
    log.info("wrote TensorRT calibration cache %s (%d tensors)", out_path, len(ordered))
    return ordered


def read_trt_calibration_cache(path: PathLike) -> Tuple[str, Dict[str, float]]:
    """Parse a TensorRT calibration cache into ``(header, {tensor name: scale})`` (to check or diff one)."""
    path = Path(path)
    if not path.is_file():
        raise SignguardError("%s: calibration cache not found" % path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise SignguardError("%s: line 1: expected a header like TRT-8601-EntropyCalibration2" % path)
    scales: Dict[str, float] = {}
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, hexv = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError
            scales[name] = struct.unpack(">f", bytes.fromhex(hexv.strip()))[0]
        except (ValueError, struct.error):
            raise SignguardError("%s: line %d: expected '<tensor>: <8 hex digits>', got %r"
                                 % (path, no, line)) from None
    return lines[0], scales
