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


def _torch_outputs(module, x: np.ndarray) -> list[np.ndarray]:
    """Every output of ``module`` on ``x`` (one array per graph output), float32."""
    import torch

    with torch.no_grad():
        chunks = []
        for i in range(0, len(x), 256):
            y = module.eval().cpu()(torch.from_numpy(x[i : i + 256]))
            chunks.append([t.float().numpy() for t in (y if isinstance(y, tuple) else (y,))])
    return [np.concatenate(c).astype(np.float32) for c in zip(*chunks)]


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
    PyTorch within ``parity_tol`` (or float32 rounding at the outputs' scale, :func:`fp32_parity_bound`) on
    ``parity_inputs``; FP16/INT8 differences are recorded, not bounded
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
    defended = model if hasattr(model, "parts") else None
    if defended is not None:  # a defended model: purifier / rectifier (+ detector) / classifier
        model = defended.parts()
    parts: Mapping[str, Any] = dict(model) if isinstance(model, Mapping) else {"model": model}
    gated = graphs == "one" and getattr(defended, "detector", None) is not None
    if gated:  # one graph: rectifier, detector, select, classifier -> logits, gate score, gate decision
        from train.defenses.base import GatedGraph

        parts = {"model": GatedGraph(defended)}
    elif graphs == "one" and len(parts) > 1:
        parts = {"model": torch.nn.Sequential(*parts.values())}
    single = list(parts) == ["model"]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = preprocess.input_size
    x_par = np.ascontiguousarray(parity_inputs, dtype=np.float32)
    x_cal = None if calib_x is None else np.ascontiguousarray(calib_x, dtype=np.float32)
    job = _Job(out_dir, s, precisions, x_cal, calib_method, exclude_nodes, quantizer, parity_tol)
    chain: dict[str, list[Path]] = {p: [] for p in precisions}
    for i, (part, module) in enumerate(parts.items()):
        ref = job.graph(part, module, x_par, job.x_cal, first=i == 0, name=None if not single else "model", chain=chain)
        if job.x_cal is not None and len(parts) > 1:
            job.x_cal = _torch_outputs(module, job.x_cal)[0]  # the next part is calibrated on what it will receive
        x_par = ref
    if gated:  # the bare classifier beside it, for --no-gate and the gate-off benchmark
        job.graph("classifier", defended.classifier, np.ascontiguousarray(parity_inputs, dtype=np.float32),
                  None if calib_x is None else np.ascontiguousarray(calib_x, dtype=np.float32), first=True,
                  name="classifier", chain=None)
    entries, extra_files, calibration, excluded = job.entries, job.extra_files, job.calibration, job.excluded

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
        "gate": gate_block(defended.detector) if gated else None,
        "tools": tool_versions(),
        "source": source or {},
        "extra": {"graphs": graphs, "parts": list(parts) + (["classifier"] if gated else []),
                  "calibration": calibration},
    }
    write_manifest(out_dir, manifest, extra_files=extra_files)
    return out_dir


GATE_OUTPUTS = (OUTPUT_NAME, "gate_score", "gate_fired")


class _Job:
    """One bundle's export state: writes each graph at every precision and collects manifest entries."""

    def __init__(self, out_dir: Path, size: int, precisions: Sequence[str], x_cal: np.ndarray | None,
                 calib_method: str, exclude_nodes: Sequence[str], quantizer: str, parity_tol: float):
        self.out_dir, self.size, self.precisions, self.x_cal = out_dir, size, precisions, x_cal
        self.calib_method, self.exclude_nodes, self.quantizer = calib_method, exclude_nodes, quantizer
        self.parity_tol = parity_tol
        self.entries: list[dict[str, Any]] = []
        self.extra_files: list[str] = []
        self.calibration: dict[str, Any] = {}
        self.excluded: set[str] = set()

    def graph(self, part: str, module: Any, x_par: np.ndarray, x_cal: np.ndarray | None, first: bool,
              name: str | None, chain: dict[str, list[Path]] | None) -> np.ndarray:
        """Export ``module`` as ``part`` at every precision; returns its PyTorch outputs on ``x_par`` (first
        output).  A gated graph (three outputs) keeps its detector path in FP32 at INT8."""
        refs = _torch_outputs(module, x_par)
        names = list(GATE_OUTPUTS[: len(refs)])
        single = name == "model"
        fp32 = torch_to_onnx(module, self.out_dir / _file(name or part, "fp32", single), input_size=self.size,
                             output_names=names)
        slim(fp32)
        keep = (gate_nodes(fp32) if len(refs) == 3 else []) + flagged_nodes(module, fp32)
        for prec in self.precisions:
            path = self.out_dir / _file(name or part, prec, single)
            extra: dict[str, Any] = {}
            if prec == "fp16":
                to_fp16(fp32, path, keep_fp32=keep)
            elif prec == "int8":
                from calib.qdq import trt_calibration_cache
                from calib.quantize import quantize_int8

                nodes = _node_names(fp32)
                mine = [n for n in self.exclude_nodes if n in nodes]
                self.excluded.update(mine)
                report = quantize_int8(fp32, path, x_cal, method=self.calib_method,
                                       exclude_nodes=mine + keep, input_range=(0.0, 1.0) if first
                                       else None, quantizer=self.quantizer)
                cache = path.with_suffix(".trt8.cache")
                trt_calibration_cache(path, cache)
                self.extra_files.append(cache.name)
                extra = {"quantization": report, "trt_calibration_cache": cache.name}
                self.calibration[part] = {"method": self.calib_method, "n_images": int(len(x_cal)),
                                          "quantizer": self.quantizer}
            got = OrtBackend(path).run_outputs(x_par, names)
            diff = compare_outputs(refs[0].reshape(len(refs[0]), -1), got[names[0]].reshape(len(refs[0]), -1))
            if len(refs) == 3:  # gate score and decision, and the final class
                diff.update(gate_parity(refs, got, names))
            if prec == "fp32":
                bound = fp32_parity_bound(refs[0], self.parity_tol)
                diff["bound"] = bound
                if diff["max_abs_diff"] > bound:
                    raise SignguardError(f"{path}: ONNX parity failed, max |output diff| {diff['max_abs_diff']:.2e} > "
                                         f"{bound:.2e}")
            log.info("%s: max |diff| vs PyTorch %.2e, argmax agreement %.4f", path.name, diff["max_abs_diff"],
                     diff["argmax_agreement"])
            self.entries.append(model_entry(path.name, prec, "onnx", part, opset=OPSET, parity=diff, **extra))
            if chain is not None:
                chain[prec].append(path)
        return refs[0]


# float32 rounding relative to the output's scale: tens of ulps (1.19e-7) accumulated over a graph's sums.  Measured
# worst: GTSRB-32's FRU (q = 1, twelve unit convs on LISA-CNN's three) runs 1.06e-4 from a float64 forward in
# onnxruntime at max |logit| 42 (2.5e-6 of it; PyTorch float32: 1.7e-5), whether or not ORT optimises the graph
FP32_REL_TOL = 4e-6


def fp32_parity_bound(ref: np.ndarray, tol: float) -> float:
    """The FP32 parity bound: ``tol``, or float32 rounding at the outputs' scale when that is larger.

    Why relative: onnxruntime and PyTorch differ by rounding, which grows with the values summed.  A model whose
    training inflates its logits (Deep Defense: max |z| 104-279 against the baseline's 61) crosses an absolute
    1e-4 from rounding alone while both runtimes stay as close to a float64 forward as to each other."""
    return max(tol, FP32_REL_TOL * float(np.abs(ref).max()))


def flagged_nodes(module: Any, onnx_path: Path) -> list[str]:
    """Nodes of ``onnx_path`` under the name prefixes ``module.int8_fp32_prefixes`` asks to keep in FP32 at INT8
    (a defense whose quantized part measurably loses its robustness, e.g. FRU's units).  A prefix that matches
    no node is an error: a renamed graph must not silently drop the protection."""
    prefixes = tuple(getattr(module, "int8_fp32_prefixes", ()))
    names = _node_names(onnx_path)
    dead = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if dead:
        raise SignguardError(f"{onnx_path}: int8_fp32_prefixes {dead} match no node of the exported graph")
    return sorted(n for n in names if prefixes and n.startswith(prefixes))


def gate_parity(refs: list[np.ndarray], got: dict[str, np.ndarray], names: list[str]) -> dict[str, float]:
    """Gate score difference, decision agreement and final-class agreement of a gated graph vs PyTorch."""
    return {"gate_score_max_abs_diff": float(np.abs(refs[1] - got[names[1]]).max()),
            "gate_decision_agreement": float((refs[2] == got[names[2]]).mean())}


def gate_nodes(onnx_path: Path) -> list[str]:
    """Nodes of a gated graph (:class:`~train.defenses.base.GatedGraph`) that stay FP32: all but the rectifier's
    and the classifier's -- the detector (difference, DCT MatMuls, log-abs, SVM) and the select."""
    return sorted(n for n in _node_names(onnx_path)
                  if not n.startswith(("/rectifier/", "/classifier/")) or n in RECTIFIER_FP32_NODES)


# Rectifier nodes kept FP32 in the INT8 graph.  Its residual sum and clip: in FP32, I - R(I) is exactly minus its
# last conv's output; quantized, R(I) would land on an 8-bit grid (steps of 1/127) whose error swamps the small
# corrections on clean images.  Its stem, the first conv on the raw image: with the stem quantized, a held-out
# UAP's success on the gated INT8 bundle rose from 15.3% (FP32) to 25.9%, with it kept FP32 15.2% -- the image
# content sets the 8-bit range of the stem's output, and the perturbation's fine structure falls below its step
# (measured by `signguard verify --uap`, reports/prn/synthetic/device/; the stem is ~3% of the rectifier's MACs).
RECTIFIER_FP32_NODES = ("/rectifier/stem/Conv", "/rectifier/Add", "/rectifier/Clip")


def gate_block(detector: Any) -> dict[str, Any]:
    """The manifest's ``gate`` block for a DCT-SVM detector: where its outputs are and what they mean."""
    return {"kind": "dct_svm", "score_output": GATE_OUTPUTS[1], "decision_output": GATE_OUTPUTS[2],
            "threshold": float(detector.threshold), "kernel": detector.kernel,
            "support_vectors": int(detector.support.shape[0]),
            "features": "log|DCT-II(gray(I - R(I)))|", "no_gate_part": "classifier"}


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
