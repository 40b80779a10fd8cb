"""Write a deployment bundle: ONNX graphs per precision + ``verify.npz`` + ``manifest.json`` (what ``edge`` reads).

One bundle holds every precision of a model (``model.onnx`` simplified FP32,
``model.fp16.onnx``, ``model.int8.onnx`` symmetric Q/DQ with its TensorRT 8.x
calibration cache), so that the device, ``verify`` and ``bench`` compare
like with like.  A defended model with several parts (``{"rectifier": R,
"classifier": C}``) is exported as one graph (``graphs="one"``, part
``model``) or as one graph per part (``graphs="separate"``, files named by
part).  ``verify.npz`` carries held-out inputs and the onnxruntime outputs of
each precision, so an engine built on the device can be checked against
them (``signguard verify --engine``).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge.backends import OrtBackend
from edge.engine_check import VERIFY_NAME, compare_outputs
from edge.errors import SignguardError
from edge.fileio import atomic_write_bytes
from edge.manifest import PRECISIONS, model_entry, write_manifest
from edge.preprocess import PreprocessConfig

from .formats import FILES, slim, to_fp16
from .onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, torch_to_onnx

log = logging.getLogger(__name__)

GRAPHS = ("one", "separate")


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the artifact (recorded in the manifest)."""
    import importlib.metadata as md

    out = {}
    for name in ("signguard", "torch", "onnx", "onnxruntime", "onnxslim", "numpy", "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _file(part: str, precision: str, single: bool) -> str:
    if single:
        return FILES[precision]
    return f"{part}.onnx" if precision == "fp32" else f"{part}.{precision}.onnx"


def _torch_outputs(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module.eval().cpu()(torch.from_numpy(x[i : i + 256])).numpy()
                               for i in range(0, len(x), 256)]).astype(np.float32)


def export_bundle(
    model,
    out_dir: str | Path,
    classes: list[str],
    preprocess: PreprocessConfig,
    parity_inputs: np.ndarray,
    name: str = "model",
    source: dict[str, Any] | None = None,
    parity_tol: float = 1e-4,
    precisions: Sequence[str] = ("fp32",),
    calib_x: np.ndarray | None = None,
    calib_method: str = "entropy",
    exclude_nodes: Sequence[str] = (),
    graphs: str = "one",
    quantizer: str = "onnxruntime",
) -> Path:
    """Export ``model`` (a module, an ordered ``{part: module}`` mapping, or a defended model whose ``parts()``
    gives that mapping) to a bundle in ``out_dir``: ``graphs="one"`` fuses the parts, ``"separate"`` writes one
    graph per part.

    ``precisions`` from fp32/fp16/int8 (fp32 is always written: the others are measured against it);
    int8 needs ``calib_x`` (preprocessed images, see :mod:`calib.dataset`), quantized by ``quantizer``
    (onnxruntime, or NVIDIA Model Optimizer when installed).  The FP32 graph must match
    PyTorch within ``parity_tol`` on ``parity_inputs``; FP16/INT8 differences are recorded, not bounded
    (``signguard verify`` judges them by accuracy and attack success instead).
    """
    import torch

    precisions = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    for p in precisions:
        if p not in PRECISIONS:
            raise SignguardError(f"export: precision must be one of {PRECISIONS}, got {p!r}")
    if "int8" in precisions and (calib_x is None or len(calib_x) == 0):
        raise SignguardError("export: int8 needs a calibration set (calib_x); see calib.dataset")
    if graphs not in GRAPHS:
        raise SignguardError(f"export: graphs must be one of {GRAPHS}, got {graphs!r}")
    if hasattr(model, "parts"):  # a defended model: purifier / rectifier (+ detector) / classifier
        model = model.parts()
    parts: Mapping[str, Any] = dict(model) if isinstance(model, Mapping) else {"model": model}
    if graphs == "one" and len(parts) > 1:
        parts = {"model": torch.nn.Sequential(*parts.values())}
    single = list(parts) == ["model"]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = preprocess.input_size
    x_par = np.ascontiguousarray(parity_inputs, dtype=np.float32)
    x_cal = None if calib_x is None else np.ascontiguousarray(calib_x, dtype=np.float32)
    entries, extra_files, calibration = [], [], {}
    chain: dict[str, list[Path]] = {p: [] for p in precisions}
    excluded: set[str] = set()
    for i, (part, module) in enumerate(parts.items()):
        first = i == 0  # later parts see the previous part's outputs, not [0, 1] pixels
        ref = _torch_outputs(module, x_par)
        fp32 = torch_to_onnx(module, out_dir / _file(part, "fp32", single), input_size=s)
        slim(fp32)
        for prec in precisions:
            path = out_dir / _file(part, prec, single)
            extra: dict[str, Any] = {}
            if prec == "fp16":
                to_fp16(fp32, path)
            elif prec == "int8":
                from calib.qdq import trt_calibration_cache
                from calib.quantize import quantize_int8

                mine = [n for n in exclude_nodes if n in _node_names(fp32)]
                excluded.update(mine)
                report = quantize_int8(fp32, path, x_cal, method=calib_method, exclude_nodes=mine,
                                       input_range=(0.0, 1.0) if first else None, quantizer=quantizer)
                cache = path.with_suffix(".trt8.cache")
                trt_calibration_cache(path, cache)
                extra_files.append(cache.name)
                extra = {"quantization": report, "trt_calibration_cache": cache.name}
                calibration[part] = {"method": calib_method, "n_images": int(len(x_cal)), "quantizer": quantizer}
            got = OrtBackend(path).run(x_par)  # a rectifier's outputs are images: compare them flattened
            diff = compare_outputs(ref.reshape(len(ref), -1), got.reshape(len(got), -1))
            if prec == "fp32" and diff["max_abs_diff"] > parity_tol:
                raise SignguardError(f"{path}: ONNX parity failed, max |output diff| {diff['max_abs_diff']:.2e} > "
                                     f"{parity_tol:.0e}")
            log.info("%s: max |diff| vs PyTorch %.2e, argmax agreement %.4f", path.name, diff["max_abs_diff"],
                     diff["argmax_agreement"])
            entries.append(model_entry(path.name, prec, "onnx", part, opset=OPSET, parity=diff, **extra))
            chain[prec].append(path)
        if x_cal is not None and len(parts) > 1:
            x_cal = _torch_outputs(module, x_cal)  # the next part is calibrated on what it will receive
        x_par = ref

    unknown = sorted(set(exclude_nodes) - excluded) if "int8" in precisions else []
    if unknown:
        raise SignguardError(f"export: exclude_nodes {unknown} are not nodes of any exported graph "
                             "(see the node names in calib.sensitivity's report)")
    _write_verify_set(out_dir, parity_inputs, chain)
    extra_files.append(VERIFY_NAME)
    manifest = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(classes),
        "input": {"name": INPUT_NAME, "shape": [-1, 3, s, s], "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "color": "RGB"},
        "output": {"name": OUTPUT_NAME, "semantics": "logits", "num_classes": len(classes)},
        "preprocess": preprocess.to_dict(),
        "models": entries,
        "gate": None,
        "tools": tool_versions(),
        "source": source or {},
        "extra": {"graphs": graphs, "parts": list(parts), "calibration": calibration},
    }
    write_manifest(out_dir, manifest, extra_files=extra_files)
    return out_dir


def _node_names(onnx_path: Path) -> set[str]:
    import onnx

    return {n.name for n in onnx.load(str(onnx_path)).graph.node}


def _write_verify_set(out_dir: Path, inputs: np.ndarray, chain: dict[str, list[Path]], n: int = 256) -> None:
    """Held-out inputs and each precision's onnxruntime outputs (through every part in order)."""
    x = np.ascontiguousarray(inputs[:n], dtype=np.float32)
    arrays = {"inputs": x}
    for prec, paths in chain.items():
        y = x
        for p in paths:
            y = OrtBackend(p).run(y)
        arrays[f"ref_{prec}"] = y
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out_dir / VERIFY_NAME, buf.getvalue())
