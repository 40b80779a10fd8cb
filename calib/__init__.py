"""Calibration sets and INT8 quantization: the data and the method behind every INT8 artifact.

Why a package of its own: an INT8 model is only as good as the images its
activation ranges were measured on.  ``calib`` owns both halves -- which
images (:mod:`calib.dataset`, always through THE device preprocessing
:func:`edge.preprocess.preprocess`) and how ranges become scales
(:mod:`calib.quantize`: onnxruntime's ``quantize_static`` to a symmetric Q/DQ
ONNX, the checks TensorRT needs, a TensorRT 8.x calibration cache, per-layer
sensitivity).

Dependency rule: ``calib`` imports ``edge`` and numpy/OpenCV/onnx/onnxruntime,
never ``train``, ``export`` or torch.  Importing this package imports neither
onnx nor onnxruntime; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CalibrationSet": "calib.dataset",
    "MIN_RECOMMENDED": "calib.dataset",
    "stratified_indices": "calib.dataset",
    "from_arrays": "calib.dataset",
    "from_image_folder": "calib.dataset",
    "from_video": "calib.dataset",
    "save_calibration_set": "calib.dataset",
    "load_calibration_set": "calib.dataset",
    "quantize_int8": "calib.quantize",
    "check_qdq": "calib.qdq",
    "trt_calibration_cache": "calib.qdq",
    "read_trt_calibration_cache": "calib.qdq",
    "sensitivity": "calib.sensitivity",
    "sensitivity_markdown": "calib.sensitivity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError("module 'calib' has no attribute %r" % name)
