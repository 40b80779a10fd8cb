"""Training targets and loss of the localizer: Gaussian centre heatmaps, focal loss, L1 box regression.

Targets follow CenterNet (Zhou et al. 2019, "Objects as Points") with
TTFNet's refinements (Liu et al. 2020): each sign splats an elliptical
Gaussian (sigma = alpha * size / 6, alpha = 0.54, at least half a cell) into
the heatmap with a peak of exactly 1 at the cell holding its centre; the
heatmap is trained with CenterNet's penalty-reduced focal loss (alpha 2,
beta 4, normalised by the number of signs).  Box regression (centre offset
in cells, log size in strides) is trained not only at the peak cell but at
every cell of the Gaussian above ``reg_floor``, weighted by the Gaussian --
TTFNet's way to get more regression samples per sign, which is what makes a
from-scratch training on a few thousand frames converge on one CPU core.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

ALPHA = 0.54
MIN_SIGMA = 0.5
REG_FLOOR = 0.3


def make_targets(boxes: np.ndarray, grid: int, stride: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of one image: heat (1, G, G), regression (4, G, G), regression weight (1, G, G), float32.

    ``boxes``: (k, 4) ``(x, y, w, h)`` in input pixels (pixel-edge
    coordinates); a box whose centre falls outside the grid is skipped.
    """
    heat = np.zeros((grid, grid), np.float32)
    reg = np.zeros((4, grid, grid), np.float32)
    owner = np.zeros((grid, grid), np.float32)  # gaussian value of the object that owns each cell's regression
    centres = np.arange(grid, dtype=np.float32) + 0.5
    # large boxes first, so a small sign in front of a large one owns the cells it shares with it
    for x, y, w, h in sorted(np.asarray(boxes, np.float64).reshape(-1, 4), key=lambda b: -b[2] * b[3]):
        cx, cy = (x + w / 2) / stride, (y + h / 2) / stride
        if not (0 <= cx < grid and 0 <= cy < grid) or w <= 0 or h <= 0:
            continue
        sx = max(ALPHA * w / stride / 6.0, MIN_SIGMA)
        sy = max(ALPHA * h / stride / 6.0, MIN_SIGMA)
        g = np.exp(-((centres[None, :] - cx) ** 2) / (2 * sx * sx) - ((centres[:, None] - cy) ** 2) / (2 * sy * sy))
        i, j = int(cy), int(cx)
        g[i, j] = 1.0
        heat = np.maximum(heat, g)
        mine = (g >= REG_FLOOR) & (g >= owner)
        owner = np.where(mine, g, owner)
        ii, jj = np.nonzero(mine)
        reg[0, ii, jj] = cx - jj
        reg[1, ii, jj] = cy - ii
        reg[2, ii, jj] = np.log(w / stride)
        reg[3, ii, jj] = np.log(h / stride)
    return heat[None], reg, owner[None]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss on heat logits, normalised by the number of peaks."""
    p = torch.sigmoid(logits)
    pos = target.eq(1.0).float()
    log_p = F.logsigmoid(logits)
    log_1p = F.logsigmoid(-logits)
    pos_loss = -((1 - p) ** alpha) * log_p * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * log_1p * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def localizer_loss(heads: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, weight: torch.Tensor,
                   reg_weight: float = 1.0) -> Tuple[torch.Tensor, dict]:
    """Total loss and its parts for raw heads (N, 5, G, G) against :func:`make_targets` batches."""
    lh = focal_loss(heads[:, :1], heat)
    lr = (F.l1_loss(heads[:, 1:], reg, reduction="none") * weight).sum() / weight.sum().clamp(min=1.0)
    total = lh + reg_weight * lr
    return total, {"heat": float(lh.detach()), "reg": float(lr.detach())}
