"""signguard edge runtime: runs on the device with numpy + OpenCV + onnxruntime (or TensorRT).

Never imports torch (the device has none); supports Python 3.8 (JetPack 5) to 3.12.
"""

from .errors import BundleError, ConfigError, SignguardError, SourceError
from .preprocess import PreprocessConfig, expand_box, preprocess, preprocess_batch

__all__ = [
    "BundleError",
    "ConfigError",
    "PreprocessConfig",
    "SignguardError",
    "SourceError",
    "expand_box",
    "preprocess",
    "preprocess_batch",
]
