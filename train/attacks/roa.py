"""ROA: the rectangular occlusion attack of DOA (Wu, Tong & Vorobeychik, "Defending against physically
realizable attacks on image classification", ICLR 2020, Sec. 3).

Threat model: white-box, physically realisable -- an opaque rectangle of ``height x width`` pixels placed
anywhere on the image, its content unbounded in [0, 1].  Two stages per image:

1. **Position**: a grey (0.5) rectangle is placed at every position on a ``stride`` grid and the position
   with the highest loss wins (``search="exhaustive"``), or only the ``candidates`` positions whose window
   holds the most input-gradient energy ``sum (dL/dx)^2`` are tried (``search="gradient"``, the paper's
   faster variant).
2. **Content**: ``steps`` signed-gradient ascent steps of ``alpha`` on the rectangle's pixels only,
   starting from grey, clipped to [0, 1] (PGD with an unbounded budget inside the mask).

Positions cover every valid grid offset (the reference code's ``(size - width) // stride`` range misses the
last row and column of positions).  The loss is :func:`~train.attacks.base.adv_loss`: untargeted ascends
the cross-entropy to the true label, targeted descends that to the target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import Attack, adv_loss

SEARCHES = ("exhaustive", "gradient")


def positions(size: tuple[int, int], rect: tuple[int, int], stride: int) -> torch.Tensor:
    """Top-left corners (P, 2) as (row, col) of every ``rect`` window on a ``stride`` grid inside ``size``."""
    (h, w), (rh, rw) = size, rect
    rows = list(range(0, h - rh + 1, stride))
    cols = list(range(0, w - rw + 1, stride))
    if rows[-1] != h - rh:
        rows.append(h - rh)
    if cols[-1] != w - rw:
        cols.append(w - rw)
    return torch.tensor([(r, c) for r in rows for c in cols], dtype=torch.long)


def rect_masks(size: tuple[int, int], rect: tuple[int, int], corners: torch.Tensor) -> torch.Tensor:
    """(K, 1, H, W) float masks, 1 inside the rectangle at each corner."""
    (h, w), (rh, rw) = size, rect
    rr = torch.arange(h).view(1, h, 1)
    cc = torch.arange(w).view(1, 1, w)
    r0, c0 = corners[:, 0].view(-1, 1, 1), corners[:, 1].view(-1, 1, 1)
    inside = (rr >= r0) & (rr < r0 + rh) & (cc >= c0) & (cc < c0 + rw)
    return inside.unsqueeze(1).float()


class ROA(Attack):
    """Rectangular occlusion attack.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        height, width: rectangle size in input pixels (the paper's 7x7 and 10x5 on 32x32 LISA-CNN inputs).
        stride: grid step of the position search (2 in the paper).
        search: ``"exhaustive"`` or ``"gradient"`` (top ``candidates`` windows by gradient energy).
        candidates: positions tried by the gradient search (5 in the paper).
        steps, alpha: signed-gradient steps inside the rectangle (the paper runs 30-50) and their size.
        batch_size, progress: see :class:`~train.attacks.base.Attack`.
    """

    name = "roa"

    def __init__(self, model: nn.Module, *, height: int = 7, width: int = 7, stride: int = 2,
                 search: str = "exhaustive", candidates: int = 5, steps: int = 30, alpha: float = 4 / 255,
                 batch_size: int = 256, progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        for arg, value in (("height", height), ("width", width), ("stride", stride), ("candidates", candidates),
                           ("steps", steps)):
            if int(value) != value or value < 1:
                raise SignguardError(f"roa: {arg} must be an integer >= 1, got {value!r}")
        if search not in SEARCHES:
            raise SignguardError(f"roa: search must be one of {SEARCHES}, got {search!r}")
        if not alpha > 0:
            raise SignguardError(f"roa: alpha must be > 0, got {alpha!r}")
        self.height, self.width, self.stride = int(height), int(width), int(stride)
        self.search, self.candidates, self.steps, self.alpha = search, int(candidates), int(steps), float(alpha)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return adv_loss(self.model(x), y, target)

    @torch.no_grad()
    def _best_of(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                 masks: torch.Tensor) -> torch.Tensor:
        """Index into ``masks`` (N, K, 1, H, W) of the grey rectangle with the highest loss, per image."""
        best = torch.full((len(x),), float("-inf"), device=x.device)
        idx = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for k in range(masks.shape[1]):
            m = masks[:, k]
            loss = self._loss(x * (1 - m) + 0.5 * m, y, target)
            better = loss > best
            best = torch.where(better, loss, best)
            idx = torch.where(better, torch.full_like(idx, k), idx)
        return idx

    def place(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """The rectangle mask (N, 1, H, W) the position search chooses for each image."""
        size = (x.shape[2], x.shape[3])
        rect = (self.height, self.width)
        if rect[0] > size[0] or rect[1] > size[1]:
            raise SignguardError(f"roa: a {rect[0]}x{rect[1]} rectangle does not fit {size[0]}x{size[1]} inputs")
        corners = positions(size, rect, self.stride).to(x.device)
        grid = rect_masks(size, rect, corners).to(x)  # (P, 1, H, W)
        if self.search == "exhaustive" or self.candidates >= len(corners):
            masks = grid.unsqueeze(0).expand(len(x), -1, -1, -1, -1)
        else:
            xg = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self._loss(xg, y, target).sum(), xg)
            energy = torch.einsum("nchw,phw->np", g.pow(2), grid[:, 0])
            top = energy.topk(self.candidates, dim=1).indices  # (N, candidates)
            masks = grid[top]  # (N, candidates, 1, H, W)
        idx = self._best_of(x, y, target, masks)
        return masks[torch.arange(len(x), device=x.device), idx]

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x = x.detach()
        m = self.place(x, y, target)
        adv = x * (1 - m) + 0.5 * m
        for _ in range(self.steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(self._loss(adv, y, target).sum(), adv)
            adv = (adv.detach() + self.alpha * grad.sign() * m).clamp(0.0, 1.0)
        return adv, {"mask": m[:, 0]}
