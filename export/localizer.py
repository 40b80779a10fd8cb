"""Export the sign localizer to its own deployment bundle: ONNX FP32/FP16/INT8 + manifest + parity checks.

The bundle follows the classifier bundle's contract (``manifest.json`` with
SHA-256 of every file, ``verify.npz`` for engine checks on the device, a
TensorRT 8.x calibration cache beside the INT8 graph) with three
differences the device keys on: model entries have part ``detector``,
``output.semantics`` is ``centernet``, and ``extra.localizer`` holds the
decode config (stride, operating score threshold, NMS IoU) that
:class:`edge.localizer.Localizer` applies in numpy -- NMS is not in the graph.

Parity is measured twice per precision on held-out frames: the raw output
map against PyTorch (max |diff|; FP32 must be within ``parity_tol``) and the
decoded detections against PyTorch's (recall of PyTorch's boxes at IoU 0.5,
and extra boxes per frame), because a map difference only matters where it
moves a box across the threshold.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from edge.backends import OrtBackend
from edge.engine_check import VERIFY_NAME
from edge.errors import SignguardError
from edge.localizer import CHANNELS, PART, SEMANTICS, DecodeConfig, box_iou, decode
from edge.manifest import PRECISIONS, model_entry, write_manifest
from edge.preprocess import PreprocessConfig

from .bundle import _write_verify_set, tool_versions
from .formats import slim, to_fp16
from .onnx_export import INPUT_NAME, OPSET

log = logging.getLogger(__name__)

OUTPUT_NAME = "detections"
FILES = {"fp32": "localizer.onnx", "fp16": "localizer.fp16.onnx", "int8": "localizer.int8.onnx"}


def localizer_to_onnx(model, path: Path, input_size: int) -> Path:
    """(N, 3, S, S) [0, 1] -> (N, 5, S/8, S/8) map, dynamic batch, opset 17, checked by ``onnx.checker``."""
    import onnx
    import torch

    model = model.eval().cpu()
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (torch.rand(1, 3, input_size, input_size),), str(tmp), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=OPSET, do_constant_folding=True, dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path


def detection_agreement(ref: np.ndarray, got: np.ndarray, cfg: DecodeConfig, input_size: int,
                        frame_size: Sequence[int] = (640, 360)) -> Dict[str, float]:
    """How the decoded boxes of output maps ``got`` agree with those of ``ref`` (N, 5, G, G) at ``cfg``'s
    threshold: recall of the reference boxes at IoU >= 0.5, extra boxes per frame, max |heat| diff."""
    n_ref = hit = extra = 0
    for r, g in zip(ref, got):
        rb, _ = decode(r, cfg, input_size, tuple(frame_size))
        gb, _ = decode(g, cfg, input_size, tuple(frame_size))
        n_ref += len(rb)
        if len(rb) and len(gb):
            iou = box_iou(rb, gb)
            matched = (iou >= 0.5).any(1)
            hit += int(matched.sum())
            extra += int((~(iou >= 0.5).any(0)).sum())
        else:
            extra += len(gb)
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    return {"n": int(len(ref)), "max_abs_diff": float(diff.max()), "max_heat_diff": float(diff[:, 0].max()),
            # no reference box: vacuously all kept (the manifest is strict JSON, no NaN); extra boxes still count
            "box_recall": hit / n_ref if n_ref else 1.0, "extra_boxes_per_frame": extra / max(len(ref), 1),
            "reference_boxes": int(n_ref)}


def head_nodes(onnx_path: Path) -> List[str]:
    """Names of the output head: the last Conv (the 1x1 that makes the 5 maps) and every node after it.

    Why they stay float in the INT8 graph: quantized, the head shares one scale between the heat logits and
    the box regression, and the heat reaches the threshold in steps of ~0.05 -- on held-out scenes a threshold
    of 0.56 kept 96.5% of the signs >= 24 px and 0.57 kept 94.9%, with nothing in between.  The head is one
    1x1 conv over a 32x32 map (0.1% of the multiply-adds); the backbone stays INT8."""
    import onnx

    nodes = list(onnx.load(str(onnx_path)).graph.node)
    last = max(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    return [n.name for n in nodes[last:]]


def _finite(v: Any) -> Any:
    """``v`` with NaN/inf floats as None: metrics use NaN for "no sample", the manifest is strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return None if isinstance(v, float) and not np.isfinite(v) else v


def export_localizer(model, out_dir: str | Path, input_size: int, decode_cfg: DecodeConfig,
                     parity_inputs: np.ndarray, precisions: Sequence[str] = ("fp32",),
                     calib_x: np.ndarray | None = None, calib_method: str = "entropy", calib_meta: dict | None = None,
                     name: str = "localizer", source: Dict[str, Any] | None = None,
                     parity_tol: float = 1e-4, reduce_range: bool = True) -> Path:
    """Write a localizer bundle to ``out_dir`` (fp32 always; fp16/int8 on request, int8 calibrated on
    ``calib_x`` = whole frames through :func:`edge.preprocess.preprocess`, see :mod:`calib.dataset`).

    ``reduce_range`` (7-bit INT8 weights) is on by default: with full-range weights onnxruntime's x86 AVX2
    (non-VNNI) INT8 convs saturate on whole frames -- measured here, half of the FP32 boxes were lost --
    while the same Q/DQ graph run unfused was right (see :func:`calib.quantize.quantize_int8`)."""
    import torch

    precisions = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            raise SignguardError("export: precision must be one of %s, got %r" % (PRECISIONS, p))
    if "int8" in precisions and (calib_x is None or len(calib_x) == 0):
        raise SignguardError("export: int8 needs calibration frames (calib_x); see calib.dataset.from_image_folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_par = np.ascontiguousarray(parity_inputs, dtype=np.float32)
    if x_par.ndim != 4 or x_par.shape[1:] != (3, input_size, input_size):
        raise SignguardError("export: parity inputs must be (N, 3, %d, %d), got %s"
                             % (input_size, input_size, x_par.shape))
    with torch.no_grad():
        model = model.eval()
        ref = np.concatenate([model(torch.from_numpy(x_par[i:i + 32])).numpy() for i in range(0, len(x_par), 32)])
    fp32 = localizer_to_onnx(model, out / FILES["fp32"], input_size)
    slim(fp32)
    entries, extra_files, chain, calibration = [], [], {}, {}
    for prec in precisions:
        path = out / FILES[prec]
        extra: Dict[str, Any] = {}
        if prec == "fp16":
            to_fp16(fp32, path)
        elif prec == "int8":
            from calib.qdq import trt_calibration_cache
            from calib.quantize import quantize_int8

            report = quantize_int8(fp32, path, calib_x, method=calib_method, input_range=(0.0, 1.0),
                                   reduce_range=reduce_range, exclude_nodes=head_nodes(fp32))
            cache = path.with_suffix(".trt8.cache")
            trt_calibration_cache(path, cache)
            extra_files.append(cache.name)
            extra = {"quantization": report, "trt_calibration_cache": cache.name}
            calibration = {"method": calib_method, "n_images": int(len(calib_x)), **(calib_meta or {})}
        got = OrtBackend(path).run(x_par)
        parity = detection_agreement(ref, got, decode_cfg, input_size)
        if prec == "fp32" and parity["max_abs_diff"] > parity_tol:
            raise SignguardError("%s: ONNX parity failed, max |output diff| %.2e > %.0e"
                                 % (path, parity["max_abs_diff"], parity_tol))
        log.info("%s: max |diff| vs PyTorch %.2e, box recall %.4f", path.name, parity["max_abs_diff"],
                 parity["box_recall"])
        entries.append(model_entry(path.name, prec, "onnx", PART, opset=OPSET, parity=parity, **extra))
        chain[prec] = [path]
    _write_verify_set(out, x_par, chain)
    extra_files.append(VERIFY_NAME)
    cfg = PreprocessConfig(input_size=input_size, color_order="BGR")
    manifest = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": ["sign"],
        "input": {"name": INPUT_NAME, "shape": [-1, 3, input_size, input_size], "dtype": "float32",
                  "layout": "NCHW", "range": [0.0, 1.0], "color": "RGB"},
        "output": {"name": OUTPUT_NAME, "semantics": SEMANTICS, "num_classes": 1},
        "preprocess": cfg.to_dict(),
        "models": entries,
        "gate": None,
        "tools": tool_versions(),
        "source": _finite(source or {}),
        "extra": {"localizer": {"decode": {"stride": decode_cfg.stride, "score_threshold": decode_cfg.score_threshold,
                                           "nms_iou": decode_cfg.nms_iou, "max_detections": decode_cfg.max_detections},
                                "channels": list(CHANNELS), "nms": "numpy on the host (edge.localizer.decode)",
                                "input": "whole frame through edge.preprocess.preprocess(frame, None, preprocess)"},
                  "calibration": calibration},
    }
    write_manifest(out, manifest, extra_files=extra_files)
    return out
