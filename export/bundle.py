"""Write a deployment bundle: ``model.onnx`` + ``manifest.json`` (the contract ``edge`` reads)."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import model_entry, write_manifest
from edge.preprocess import PreprocessConfig

from .onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity, torch_to_onnx

log = logging.getLogger(__name__)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the artifact (recorded in the manifest)."""
    import importlib.metadata as md

    out = {}
    for name in ("signguard", "torch", "onnx", "onnxruntime", "numpy", "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def export_bundle(
    model,
    out_dir: str | Path,
    classes: list[str],
    preprocess: PreprocessConfig,
    parity_inputs: np.ndarray,
    name: str = "model",
    source: dict[str, Any] | None = None,
    parity_tol: float = 1e-4,
) -> Path:
    """Export ``model`` to ONNX in ``out_dir``, check parity on ``parity_inputs``, write the manifest.

    Returns the bundle folder.  Parity (max/median |logit diff|, argmax
    agreement) is recorded in the manifest so the device side can see what
    was proven at export time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = torch_to_onnx(model, out_dir / "model.onnx", input_size=preprocess.input_size)
    parity = check_parity(model, onnx_path, parity_inputs, tol=parity_tol)
    log.info("ONNX parity on %d inputs: max |diff| %.2e", parity.n, parity.max_abs_diff)
    s = preprocess.input_size
    manifest = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "classes": list(classes),
        "input": {"name": INPUT_NAME, "shape": [-1, 3, s, s], "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "color": "RGB"},
        "output": {"name": OUTPUT_NAME, "semantics": "logits", "num_classes": len(classes)},
        "preprocess": preprocess.to_dict(),
        "models": [model_entry("model.onnx", "fp32", "onnx", "model", opset=17, parity=parity.to_dict())],
        "gate": None,
        "tools": tool_versions(),
        "source": source or {},
    }
    write_manifest(out_dir, manifest)
    return out_dir
