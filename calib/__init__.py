"""Calibration sets and INT8 quantization: the data and the method behind every INT8 artifact.

Why a package of its own: an INT8 model is only as good as the images its
activation ranges were measured on.  ``calib`` owns both halves -- which
images (:mod:`calib.dataset`, always through THE device preprocessing
:func:`edge.preprocess.preprocess`) and how ranges become scales
(:mod:`calib.quantize`: onnxruntime's ``quantize_static`` to a symmetric Q/DQ
ONNX, the checks TensorRT needs, a TensorRT 8.x calibration cache, per-layer
sensitivity).

Dependency rule: ``calib`` imports ``edge`` and numpy/OpenCV/onnx/onnxruntime,
never ``train``, ``export`` or torch; onnx and onnxruntime are imported where a
function first needs them, so importing this package loads neither.
"""

from __future__ import annotations

from .dataset import (
    MIN_RECOMMENDED,
    CalibrationSet,
    from_arrays,
    from_image_folder,
    from_video,
    load_calibration_set,
    save_calibration_set,
    stratified_indices,
)
from .qdq import check_qdq, read_trt_calibration_cache, trt_calibration_cache
from .quantize import quantize_int8
from .sensitivity import sensitivity, sensitivity_markdown

__all__ = ["MIN_RECOMMENDED", "CalibrationSet", "check_qdq", "from_arrays", "from_image_folder", "from_video",
           "load_calibration_set", "quantize_int8", "read_trt_calibration_cache", "save_calibration_set",
           "sensitivity", "sensitivity_markdown", "stratified_indices", "trt_calibration_cache"]
