"""THE preprocessing function: training, calibration and the device all call this one.

It does geometry and colour order only -- crop a region of interest around a
sign box (with a GTSRB-like border), resize to the model input, convert to RGB,
scale to [0, 1] float32 CHW.  Mean/std normalisation is a layer inside the
model, so attacks, ONNX graphs and the device all work in [0, 1] pixels.

Conventions (tested, not assumed):
- ``color_order`` names the channel order of the *incoming* array: OpenCV
  frames are ``"BGR"``; arrays from PIL, npz files or matplotlib are ``"RGB"``.
  The output is always RGB.
- A box is ``(x, y, w, h)`` in frame pixels, the *tight* box around the sign.
  :func:`crop_rect` expands it by ``roi_margin`` of its side on each side and
  makes it square; parts outside the frame are filled by edge replication so
  a sign at the border keeps its aspect ratio.
- Resizing uses ``INTER_AREA`` when shrinking (anti-aliased) and
  ``INTER_LINEAR`` when enlarging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from .config import check_choice, check_range, from_dict, to_dict
from .errors import ConfigError, SignguardError

Box = Tuple[float, float, float, float]

COLOR_ORDERS = ("BGR", "RGB")


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess`; recorded in checkpoints and bundle manifests."""

    input_size: int = 32
    color_order: str = "BGR"
    roi_margin: float = 0.1
    square: bool = True

    def __post_init__(self) -> None:
        # from_dict has checked the types; these checks also cover direct construction (PreprocessConfig(**d)).
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 8:
            raise ConfigError("input_size: expected an integer >= 8, got %r" % (self.input_size,))
        check_choice(self.color_order, COLOR_ORDERS, "color_order")
        if not isinstance(self.roi_margin, (int, float)) or isinstance(self.roi_margin, bool):
            raise ConfigError("roi_margin: expected a number in [0, 1), got %r" % (self.roi_margin,))
        check_range(self.roi_margin, "roi_margin", 0.0, 1.0, hi_open=True)
        if not isinstance(self.square, bool):
            raise ConfigError("square: expected true or false, got %r" % (self.square,))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "preprocess") -> PreprocessConfig:
        """Build from a mapping (a manifest's or checkpoint's ``preprocess``); errors name ``where.field``."""
        return from_dict(cls, data, where)

    def with_color_order(self, color_order: str) -> PreprocessConfig:
        return PreprocessConfig(self.input_size, color_order, self.roi_margin, self.square)


def crop_rect(box: Box, cfg: PreprocessConfig) -> Tuple[int, int, int, int]:
    """Integer crop rectangle ``(x0, y0, x1, y1)`` (exclusive ends) for a tight sign box.

    The rectangle may extend beyond the frame; :func:`preprocess` pads it.
    """
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise SignguardError("box %r: width and height must be positive" % (tuple(box),))
    cx, cy = x + w / 2.0, y + h / 2.0
    if cfg.square:
        w = h = max(w, h)
    w *= 1.0 + 2.0 * cfg.roi_margin
    h *= 1.0 + 2.0 * cfg.roi_margin
    x0, y0 = int(round(cx - w / 2.0)), int(round(cy - h / 2.0))
    return x0, y0, x0 + max(1, int(round(w))), y0 + max(1, int(round(h)))


def expand_box(box: Box, cfg: PreprocessConfig) -> Tuple[int, int, int, int]:
    """The crop rectangle of :func:`crop_rect` as an ``(x, y, w, h)`` box (for drawing/logging)."""
    x0, y0, x1, y1 = crop_rect(box, cfg)
    return x0, y0, x1 - x0, y1 - y0


def input_transform(box: Optional[Box], frame_shape: Sequence[int], cfg: PreprocessConfig) -> np.ndarray:
    """3x3 matrix mapping frame pixel coordinates to model-input pixel coordinates.

    Composed with a renderer's sign-to-frame homography it places a sticker
    (defined in sign coordinates) onto the model input, which RP2/EOT needs.
    Pixel centres follow OpenCV's resize convention: ``u = (x - x0 + 0.5) * s - 0.5``.
    """
    if box is None:
        x0, y0, x1, y1 = 0, 0, int(frame_shape[1]), int(frame_shape[0])
    else:
        x0, y0, x1, y1 = crop_rect(box, cfg)
    sx = cfg.input_size / float(x1 - x0)
    sy = cfg.input_size / float(y1 - y0)
    return np.array(
        [[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray):
        raise SignguardError("frame: expected a numpy array, got %s" % type(frame).__name__)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise SignguardError("frame: expected shape (H, W, 3), got %s" % (frame.shape,))
    if frame.dtype != np.uint8:
        raise SignguardError("frame: expected dtype uint8 (0..255), got %s" % frame.dtype)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise SignguardError("frame: empty image %s" % (frame.shape,))


def _crop_padded(frame: np.ndarray, rect: Tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rect
    h, w = frame.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise SignguardError("crop %r lies outside the %dx%d frame" % (rect, w, h))
    crop = frame[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)
    if any(pads):
        crop = cv2.copyMakeBorder(crop, pads[0], pads[1], pads[2], pads[3], cv2.BORDER_REPLICATE)
    return crop


def preprocess(frame: np.ndarray, box: Optional[Box] = None, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Frame (H, W, 3) uint8 in ``cfg.color_order`` -> model input (3, S, S) float32 RGB in [0, 1].

    ``box`` is the tight sign box; ``None`` uses the whole frame (an image
    that is already a sign crop, e.g. GTSRB).
    """
    _check_frame(frame)
    crop = frame if box is None else _crop_padded(frame, crop_rect(box, cfg))
    s = cfg.input_size
    if crop.shape[0] != s or crop.shape[1] != s:
        shrink = crop.shape[0] > s or crop.shape[1] > s
        crop = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if cfg.color_order == "BGR":
        crop = crop[:, :, ::-1]
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


def preprocess_batch(
    frames: Sequence[np.ndarray],
    boxes: Optional[Sequence[Optional[Box]]] = None,
    cfg: PreprocessConfig = PreprocessConfig(),
) -> np.ndarray:
    """Batch version of :func:`preprocess`: returns (N, 3, S, S) float32."""
    if boxes is None:
        boxes = [None] * len(frames)
    if len(boxes) != len(frames):
        raise SignguardError("preprocess_batch: %d frames but %d boxes" % (len(frames), len(boxes)))
    out = np.empty((len(frames), 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    for i, (f, b) in enumerate(zip(frames, boxes)):
        out[i] = preprocess(f, b, cfg)
    return out
