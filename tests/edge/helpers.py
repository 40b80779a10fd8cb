"""Torch-free test helpers: tiny real ONNX classifiers (onnx.helper), a numpy reference forward, bundles, videos.

The model is Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, input
"images" [N, 3, S, S] with a dynamic batch, output "logits" [N, C].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge.manifest import DIGEST_KEY, manifest_digest, model_entry, write_manifest  # noqa: E402
from edge.preprocess import PreprocessConfig  # noqa: E402

Weights = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
COLOUR_CLASSES = ["red", "green", "blue"]


def build_classifier(weights: Weights, input_size: int = 32) -> onnx.ModelProto:
    """ONNX graph of conv(k x k, same padding) -> relu -> global average pool -> flatten -> gemm."""
    conv_w, conv_b, fc_w, fc_b = weights
    k = conv_w.shape[-1]
    p = k // 2
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for a, n in ((conv_w, "conv_w"), (conv_b, "conv_b"), (fc_w, "fc_w"), (fc_b, "fc_b"))]
    nodes = [
        helper.make_node("Conv", ["images", "conv_w", "conv_b"], ["c"], kernel_shape=[k, k], pads=[p, p, p, p]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", fc_w.shape[0]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="signguard-tests")
    model.ir_version = 8  # readable by every onnxruntime a Jetson may have (>= 1.10)
    onnx.checker.check_model(model)
    return model


def numpy_forward(x: np.ndarray, weights: Weights) -> np.ndarray:
    """The same network in plain numpy (float64), as an independent reference."""
    conv_w, conv_b, fc_w, fc_b = (a.astype(np.float64) for a in weights)
    k = conv_w.shape[-1]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    h, w = x.shape[2], x.shape[3]
    out = np.zeros((x.shape[0], conv_w.shape[0], h, w))
    for di in range(k):
        for dj in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, di:di + h, dj:dj + w], conv_w[:, :, di, dj])
    out = np.maximum(out + conv_b[None, :, None, None], 0.0)
    return out.mean(axis=(2, 3)) @ fc_w.T + fc_b


def random_weights(seed: int, classes: int = 5, hidden: int = 4) -> Weights:
    rng = np.random.RandomState(seed)
    return (
        rng.randn(hidden, 3, 3, 3).astype(np.float32) * 0.5,
        rng.randn(hidden).astype(np.float32) * 0.1,
        rng.randn(classes, hidden).astype(np.float32),
        rng.randn(classes).astype(np.float32) * 0.1,
    )


def colour_weights() -> Weights:
    """Logit c = mean of RGB channel c: the prediction IS the dominant colour, so a BGR/RGB swap shows."""
    eye = np.eye(3, dtype=np.float32)
    return eye.reshape(3, 3, 1, 1), np.zeros(3, np.float32), eye, np.zeros(3, np.float32)


def write_bundle(
    folder: Path,
    models: Sequence[Tuple[str, str, Weights]],
    classes: List[str],
    input_size: int = 32,
    preprocess: Optional[Dict[str, Any]] = None,
) -> Path:
    """A bundle folder with one ONNX file per (file, precision, weights) and a hashed manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, precision, weights in models:
        (folder / name).write_bytes(build_classifier(weights, input_size).SerializeToString())
        entries.append(model_entry(name, precision))
    manifest = {
        "name": "tiny-test",
        "classes": list(classes),
        "input": {"name": "images", "shape": [-1, 3, input_size, input_size], "dtype": "float32",
                  "range": [0, 1], "color": "RGB", "layout": "NCHW"},
        "output": {"name": "logits", "semantics": "logits", "num_classes": len(classes)},
        "preprocess": preprocess or PreprocessConfig(input_size=input_size).to_dict(),
        "models": entries,
        "tools": {"onnx": onnx.__version__, "generator": "tests/edge/conftest.py"},
    }
    write_manifest(folder, manifest)
    return folder


def edit_manifest(bundle: Path, edit: Callable[[Dict[str, Any]], None], reseal: bool = True) -> str:
    """Apply ``edit`` to the bundle's manifest.json and, with ``reseal``, recompute its digest as an exporter
    would (so a test reaches the check it is about); returns the path that errors name."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    if reseal:
        m[DIGEST_KEY] = manifest_digest(m)
    path.write_text(json.dumps(m))
    return str(path)


def colour_frame(colour: str, box: Tuple[int, int, int, int], size: Tuple[int, int] = (96, 64)) -> np.ndarray:
    """Grey BGR frame of ``size`` (w, h) with a saturated square of ``colour`` at ``box``."""
    bgr = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}[colour]
    frame = np.full((size[1], size[0], 3), 128, np.uint8)
    x, y, w, h = box
    frame[y:y + h, x:x + w] = bgr
    return frame


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write frames with MJPG (.avi): available in every OpenCV wheel and near-lossless for flat colours."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "cv2.VideoWriter(MJPG) could not open %s" % path
    for f in frames:
        writer.write(f)
    writer.release()
    return path
