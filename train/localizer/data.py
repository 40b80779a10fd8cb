"""Localizer training data: frames through THE device preprocessing, boxes in input pixels, batches with flips.

Why preprocess once: every frame goes through :func:`edge.preprocess.preprocess`
with ``box=None`` -- exactly what the device and the INT8 calibration run --
and is kept as uint8 (the function's output is uint8 / 255, so nothing is
lost), 196 kB per frame at S = 256 instead of decoding a JPEG per step.
Batches add a horizontal flip and a mild per-image gain/contrast jitter
(the renderer already varies lighting; this only decorrelates epochs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from edge.preprocess import PreprocessConfig, preprocess
from train.data.detection import DetectionSet

from .loss import make_targets


@dataclass
class InputSet:
    """Model inputs (N, 3, S, S) uint8 RGB and per-image boxes in input pixels (and in frame pixels)."""

    x: np.ndarray
    boxes: List[np.ndarray]
    frame_boxes: List[np.ndarray]
    frame_sizes: List[Tuple[int, int]]

    def __len__(self) -> int:
        return len(self.x)


def frame_input(frame: np.ndarray, input_size: int) -> np.ndarray:
    """(3, S, S) float32 RGB in [0, 1]: the whole BGR frame through THE preprocessing (squashed to S x S)."""
    return preprocess(frame, None, PreprocessConfig(input_size=input_size, color_order="BGR"))


def to_input_boxes(boxes: np.ndarray, frame_size: Tuple[int, int], input_size: int) -> np.ndarray:
    """Frame-pixel boxes (x, y, w, h) -> input-pixel boxes (pixel-edge coordinates scale linearly)."""
    k = np.array([input_size / frame_size[0], input_size / frame_size[1]] * 2)
    return np.asarray(boxes, np.float64).reshape(-1, 4) * k


def load_inputs(ds: DetectionSet, input_size: int, progress: bool = False) -> InputSet:
    """Decode and preprocess every frame of ``ds`` (kept as uint8)."""
    n = len(ds)
    x = np.empty((n, 3, input_size, input_size), np.uint8)
    boxes, sizes = [], []
    from train.progress import progress as bar

    for i in bar(range(n), desc="preprocess", enabled=progress, leave=False):
        frame = ds.image(i)
        x[i] = np.round(frame_input(frame, input_size) * 255.0).astype(np.uint8)
        size = (frame.shape[1], frame.shape[0])
        sizes.append(size)
        boxes.append(to_input_boxes(ds.boxes[i], size, input_size))
    return InputSet(x, boxes, [np.asarray(b, np.float64).reshape(-1, 4) for b in ds.boxes], sizes)


def crop_boxes(boxes: np.ndarray, x0: int, y0: int, size: int, min_visible: float = 0.6) -> np.ndarray:
    """Boxes seen through a ``size`` window at (x0, y0), clipped to it; a box less than ``min_visible``
    inside is dropped (its visible part then counts as background: too little of it to call a sign)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1 = np.clip(b[:, 0] - x0, 0, size)
    y1 = np.clip(b[:, 1] - y0, 0, size)
    x2 = np.clip(b[:, 0] + b[:, 2] - x0, 0, size)
    y2 = np.clip(b[:, 1] + b[:, 3] - y0, 0, size)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], 1)
    visible = out[:, 2] * out[:, 3] / np.maximum(b[:, 2] * b[:, 3], 1e-9)
    return out[visible >= min_visible]


def batches(data: InputSet, batch_size: int, stride: int, rng: Optional[np.random.Generator] = None,
            crop: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches (x, heat, reg, weight); with ``rng``: shuffled, flipped, jittered and (``crop`` > 0) cut to
    random ``crop`` x ``crop`` windows; ``rng=None`` = in order, whole inputs, no augmentation."""
    n, full = len(data), data.x.shape[-1]
    s = crop if (rng is not None and crop) else full
    grid = s // stride
    order = rng.permutation(n) if rng is not None else np.arange(n)
    last = n - batch_size + 1 if rng is not None else n  # training drops the ragged last batch
    for start in range(0, max(last, 0), batch_size):
        idx = order[start:start + batch_size]
        x = np.empty((len(idx), 3, s, s), np.float32)
        targets = []
        for k, i in enumerate(idx):
            b = data.boxes[i].copy()
            x0, y0 = (int(v) for v in rng.integers(0, full - s + 1, 2)) if s < full else (0, 0)
            x[k] = data.x[i, :, y0:y0 + s, x0:x0 + s] * np.float32(1.0 / 255.0)
            if s < full:
                b = crop_boxes(b, x0, y0, s)
            if rng is not None:
                if rng.random() < 0.5:
                    x[k] = x[k, :, :, ::-1]
                    b[:, 0] = s - b[:, 0] - b[:, 2]
                gain, contrast = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
                mean = x[k].mean()
                x[k] = np.clip((x[k] - mean) * contrast + mean * gain, 0.0, 1.0)
            targets.append(make_targets(b, grid, stride))
        heat, reg, weight = (torch.from_numpy(np.stack([t[j] for t in targets])) for j in range(3))
        yield torch.from_numpy(np.ascontiguousarray(x)), heat, reg, weight
