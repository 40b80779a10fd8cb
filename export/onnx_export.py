"""torch -> ONNX, and the parity check that proves the graph computes what the model does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import SignguardError

log = logging.getLogger(__name__)

OPSET = 17  # TensorRT 8.5/8.6 parse up to opset 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def torch_to_onnx(model, path: str | Path, input_size: int = 32, opset: int = OPSET) -> Path:
    """Export ``model`` (images (N,3,S,S) in [0,1] -> logits) to ONNX with a dynamic batch axis.

    Uses the TorchScript-based exporter, which emits the requested opset
    directly (the dynamo exporter targets opset 18+ and down-converts);
    the result is checked with ``onnx.checker``.
    """
    try:
        import onnx
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"ONNX export needs torch and onnx: pip install 'signguard[train]' ({e})") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.rand(1, 3, input_size, input_size)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (dummy,),
        str(tmp),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
        dynamo=False,
    )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path


@dataclass
class Parity:
    """onnxruntime vs PyTorch logits on the same inputs."""

    n: int
    max_abs_diff: float
    median_abs_diff: float
    argmax_agreement: float

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "max_abs_diff": self.max_abs_diff,
            "median_abs_diff": self.median_abs_diff,
            "argmax_agreement": self.argmax_agreement,
        }


def check_parity(model, onnx_path: str | Path, inputs: np.ndarray, tol: float | None = 1e-4) -> Parity:
    """Compare onnxruntime (CPU) logits with PyTorch logits; raise when max |diff| > ``tol``."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    with torch.no_grad():
        ref = model.eval().cpu()(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    diff = np.abs(ref - got)
    p = Parity(
        n=len(x),
        max_abs_diff=float(diff.max()),
        median_abs_diff=float(np.median(diff)),
        argmax_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
    )
    if tol is not None and p.max_abs_diff > tol:
        raise SignguardError(f"{onnx_path}: ONNX parity failed, max |logit diff| {p.max_abs_diff:.2e} > {tol:.0e}")
    return p
