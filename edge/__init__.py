"""signguard edge runtime: runs on the device with numpy + OpenCV + onnxruntime (or TensorRT).

Never imports torch (the device has none); supports Python 3.8 (JetPack 5) to 3.12.
Importing this package does not import onnxruntime or TensorRT: backends
import their runtime when a bundle is loaded.
"""

from .bundle import Bundle, load_bundle
from .errors import BundleError, ConfigError, SignguardError, SourceError
from .loop import Summary, run_loop
from .preprocess import PreprocessConfig, expand_box, preprocess, preprocess_batch
from .rois import parse_roi
from .sources import open_sink, open_source

__all__ = [
    "Bundle",
    "BundleError",
    "ConfigError",
    "PreprocessConfig",
    "SignguardError",
    "SourceError",
    "Summary",
    "expand_box",
    "load_bundle",
    "open_sink",
    "open_source",
    "parse_roi",
    "preprocess",
    "preprocess_batch",
    "run_loop",
]
