"""torch -> ONNX at the opset TensorRT 8.5/8.6 parse (parity is checked in :mod:`export.bundle`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from calib.qdq import MAX_OPSET

log = logging.getLogger(__name__)

OPSET = MAX_OPSET  # the highest TensorRT 8.5/8.6 parse (17)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def torch_to_onnx(model, path: str | Path, input_size: int = 32, opset: int = OPSET,
                  output_names: Sequence[str] = (OUTPUT_NAME,)) -> Path:
    """Export ``model`` (images (N,3,S,S) in [0,1] -> logits, or a tuple named by ``output_names``) to ONNX
    with a dynamic batch axis.

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
        output_names=list(output_names),
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
        do_constant_folding=True,
        dynamo=False,
    )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return path
