"""ONNX graph formats of one model: simplified FP32, FP16 with FP32 I/O, INT8 Q/DQ (via :mod:`calib`).

Why maintained tools: graph simplification (onnxslim) and FP16 conversion
(onnxruntime's ``float16`` converter) are easy to get subtly wrong by hand --
constant folding across shape ops, FP16 overflow in reductions, I/O types the
device must then guess.  Every file is written atomically and checked with
``onnx.checker``; what each precision costs is measured against PyTorch with
the edge runtime's own comparison (:func:`edge.engine_check.compare_outputs`)
and recorded in the manifest (:mod:`export.bundle`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from edge.errors import SignguardError
from edge.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def _save(model, path: Path) -> Path:
    """Check the graph, then write it with the shared atomic writer (fsync + rename, umask permissions)."""
    import onnx

    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
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


def to_fp16(fp32_path: str | Path, out_path: str | Path, keep_fp32: Sequence[str] = ()) -> Path:
    """FP16 weights and activations, FP32 inputs and outputs (``keep_io_types``), so the device's
    preprocessing and the frame log do not change with the precision; nodes in ``keep_fp32`` (a gate's
    detector: log of small DCT coefficients, SVM sums over 1024 features) stay FP32."""
    import onnx
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                     node_block_list=list(keep_fp32) or None)
    # the converter appends its I/O Casts at the end of the node list; onnxslim re-sorts topologically
    return _save(onnxslim.slim(model), Path(out_path))
