"""Find the signs in a frame: the localizer bundle's graph, then peak decoding and NMS in numpy.

Why NMS here and not in the graph: the graph holds only Conv/Relu/Sigmoid/
Concat (plus Q/DQ in INT8), which onnxruntime and every TensorRT version run
as-is; ONNX ``NonMaxSuppression`` would tie the export to TensorRT >= 8.6's
INMSLayer and to a fixed box layout.  Decoding a (5, S/8, S/8) map -- 3x3
max-pool peaks, threshold, top-k, box NMS -- costs well under a millisecond
in numpy on the device, for onnxruntime and TensorRT alike.

Contract (what :mod:`export.localizer` writes and this module checks): a
bundle whose ``output.semantics`` is ``centernet`` and whose model entries
have part ``detector``.  The input is THE preprocessing of the whole frame,
:func:`edge.preprocess.preprocess` with ``box=None`` (the frame squashed to
S x S, RGB, [0, 1]); the output channels are ``heat`` (sigmoid score that a
sign centre lies in the cell), ``dx, dy`` (centre offset inside the cell, in
cells) and ``log(w / stride), log(h / stride)`` (box size in input pixels).
Boxes are continuous pixel-edge coordinates ``(x, y, w, h)`` in the frame.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from .backends import BACKEND_FORMAT, BACKENDS, make_backend
from .config import check_range, from_dict
from .errors import BundleError, ConfigError, SignguardError
from .fileio import PathLike
from .manifest import read_manifest
from .preprocess import PreprocessConfig, preprocess

log = logging.getLogger(__name__)

PART = "detector"
SEMANTICS = "centernet"
CHANNELS = ("heat", "dx", "dy", "log_w", "log_h")


@dataclass(frozen=True)
class DecodeConfig:
    """How a (5, h, w) output map becomes boxes: the map's ``stride`` (input pixels per cell), the score a
    peak needs, the IoU above which NMS drops the weaker of two boxes, and at most ``max_detections``."""

    stride: int = 8
    score_threshold: float = 0.35
    nms_iou: float = 0.45
    max_detections: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError("stride: expected a positive integer, got %r" % (self.stride,))
        check_range(self.score_threshold, "score_threshold", 0.0, 1.0)
        check_range(self.nms_iou, "nms_iou", 0.0, 1.0)
        if isinstance(self.max_detections, bool) or not isinstance(self.max_detections, int) or \
                self.max_detections < 1:
            raise ConfigError("max_detections: expected a positive integer, got %r" % (self.max_detections,))

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "decode") -> DecodeConfig:
        return from_dict(cls, data, where)


class Detection(NamedTuple):
    """One sign found in a frame: tight box ``(x, y, w, h)`` in frame pixels and its score in [0, 1]."""

    box: Tuple[float, float, float, float]
    score: float


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of ``(x, y, w, h)`` boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first (ties: lower index)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: List[int] = []
    while len(order):
        i = int(order[0])
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] <= iou]
    return np.array(keep, np.int64)


def decode(out: np.ndarray, cfg: DecodeConfig, input_size: int, frame_size: Tuple[int, int],
           score_threshold: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One output map (5, h, w) -> boxes (k, 4) ``(x, y, w, h)`` in frame pixels and scores (k,), best first.

    ``frame_size`` is (width, height) of the frame the input was squashed
    from; ``score_threshold`` overrides ``cfg``'s (e.g. 0 for AP curves).
    """
    out = np.asarray(out, np.float32)
    if out.ndim != 3 or out.shape[0] != len(CHANNELS):
        raise SignguardError("decode: expected a (%d, h, w) output map, got shape %s" % (len(CHANNELS), out.shape))
    thr = cfg.score_threshold if score_threshold is None else float(score_threshold)
    heat = np.ascontiguousarray(out[0])
    peaks = (heat >= cv2.dilate(heat, np.ones((3, 3), np.uint8))) & (heat >= thr)
    ys, xs = np.nonzero(peaks)
    scores = heat[ys, xs]
    top = np.argsort(-scores, kind="stable")[: 4 * cfg.max_detections]
    ys, xs, scores = ys[top], xs[top], scores[top]
    s = float(cfg.stride)
    cx = (xs + out[1, ys, xs]) * s
    cy = (ys + out[2, ys, xs]) * s
    bw = np.exp(np.clip(out[3, ys, xs], -8.0, 8.0)) * s
    bh = np.exp(np.clip(out[4, ys, xs], -8.0, 8.0)) * s
    kx, ky = frame_size[0] / float(input_size), frame_size[1] / float(input_size)
    boxes = np.stack([(cx - bw / 2) * kx, (cy - bh / 2) * ky, bw * kx, bh * ky], 1).astype(np.float64)
    keep = nms(boxes, scores, cfg.nms_iou)[: cfg.max_detections]
    return boxes[keep].reshape(-1, 4), scores[keep].astype(np.float64)


def localizer_entry(manifest: Dict[str, Any], precision: Optional[str], fmt: str, where: str) -> Dict[str, Any]:
    """The manifest's ``detector`` entry of format ``fmt`` at ``precision`` (default fp32, else the first)."""
    entries = [e for e in manifest["models"] if e["part"] == PART and e["format"] == fmt]
    if not entries:
        raise BundleError("%s: no %s model with part %r; is this a localizer bundle? (it has %s)"
                          % (where, fmt, PART, [(e["file"], e["part"]) for e in manifest["models"]]))
    if precision is None:
        return next((e for e in entries if e["precision"] == "fp32"), entries[0])
    for e in entries:
        if e["precision"] == precision:
            return e
    raise BundleError("%s: precision %r is not in the bundle; it has %s"
                      % (where, precision, [e["precision"] for e in entries]))


class Localizer:
    """A verified localizer bundle: ``detect(frame)`` -> list of :class:`Detection`, best first.

    ``precision``/``backend``/``providers`` as for :func:`edge.bundle.load_bundle`;
    ``score_threshold`` overrides the bundle's operating point; ``threads``: onnxruntime intra-op threads
    (default: one per physical core).
    """

    def __init__(self, path: PathLike, precision: Optional[str] = None, backend: str = "onnxruntime",
                 providers: Optional[Sequence[str]] = None, verify_hashes: bool = True,
                 score_threshold: Optional[float] = None, threads: Optional[int] = None) -> None:
        if backend not in BACKENDS:
            raise SignguardError("backend %r is unknown; choose one of %s" % (backend, list(BACKENDS)))
        self.path = Path(path)
        where = str(self.path / "manifest.json")
        self.manifest = read_manifest(self.path, verify_hashes=verify_hashes)
        semantics = self.manifest["output"].get("semantics")
        if semantics != SEMANTICS:
            raise BundleError("%s: output.semantics is %r; a localizer bundle has %r" % (where, semantics, SEMANTICS))
        self.entry = localizer_entry(self.manifest, precision, BACKEND_FORMAT[backend], where)
        self.precision: str = self.entry["precision"]
        cfg = PreprocessConfig.from_dict(self.manifest["preprocess"], where="%s: preprocess" % where)
        self.preprocess_cfg = cfg.with_color_order("BGR")  # device frames are BGR
        self.input_size = cfg.input_size
        extra = self.manifest.get("extra", {}).get("localizer")
        if not isinstance(extra, dict) or "decode" not in extra:
            raise BundleError("%s: extra.localizer.decode is missing" % where)
        self.decode_cfg = DecodeConfig.from_dict(extra["decode"], where="%s: extra.localizer.decode" % where)
        if score_threshold is not None:
            check_range(score_threshold, "score_threshold", 0.0, 1.0)
        self.score_threshold = score_threshold
        kwargs: Dict[str, Any] = {"input_name": self.manifest["input"]["name"],
                                  "output_name": self.manifest["output"]["name"]}
        if backend == "onnxruntime":
            kwargs.update(providers=providers, threads=threads)
        self.backend = make_backend(backend, self.path / self.entry["file"], **kwargs)
        self.grid = int(math.ceil(self.input_size / float(self.decode_cfg.stride)))

    def raw(self, frame: np.ndarray) -> np.ndarray:
        """The graph's output map (5, h, w) for one BGR frame."""
        x = preprocess(frame, None, self.preprocess_cfg)[None]
        out = self.backend.run(x)
        if out.shape != (1, len(CHANNELS), self.grid, self.grid):
            raise BundleError("%s: output shape %s, expected (1, %d, %d, %d)"
                              % (self.path / self.entry["file"], out.shape, len(CHANNELS), self.grid, self.grid))
        return out[0]

    def detect(self, frame: np.ndarray) -> List[Detection]:
        boxes, scores = decode(self.raw(frame), self.decode_cfg, self.input_size, (frame.shape[1], frame.shape[0]),
                               self.score_threshold)
        return [Detection(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores)]

    def __repr__(self) -> str:
        return "Localizer(%r, %s, %s)" % (str(self.path), self.entry["file"], self.precision)
