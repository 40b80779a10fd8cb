"""Printable colours and the non-printability score (NPS) of a sticker.

RP2 (Eykholt et al. 2018, after Sharif et al. 2016) adds NPS to the sticker
loss so that the optimised colours are ones a printer can actually produce:
NPS = sum over sticker pixels p of prod over palette colours c of ||p - c||_2
(BlurNet Eq. 1's NPS term).  A pixel that matches any palette colour scores
zero.  We average over the sticker pixels instead of summing so the weight
does not depend on the sticker's resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.errors import SignguardError

DEFAULT_PALETTE = Path(__file__).with_name("printable_colors.txt")


def load_palette(path: str | Path | None = None) -> np.ndarray:
    """(P, 3) float32 RGB in [0, 1] from a text file of one triple per line (``#`` comments).

    Values may be in [0, 1] or 0..255 (detected per file).  ``None`` loads the
    shipped nominal palette; pass the colours measured from your printer.
    """
    path = Path(path) if path is not None else DEFAULT_PALETTE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SignguardError(f"palette {path}: cannot read ({e.strerror or e})") from None
    rows = []
    for no, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise SignguardError(f"palette {path}:{no}: expected three numbers, got {line!r}") from None
        if len(vals) != 3 or not all(np.isfinite(vals)):
            raise SignguardError(f"palette {path}:{no}: expected three finite numbers, got {line!r}")
        rows.append(vals)
    if not rows:
        raise SignguardError(f"palette {path}: no colours")
    pal = np.asarray(rows, dtype=np.float32)
    if pal.max() > 1.0:
        pal = pal / 255.0
    if pal.min() < 0.0 or pal.max() > 1.0:
        raise SignguardError(f"palette {path}: colours must be in [0, 1] or 0..255")
    return pal


def non_printability(colors: torch.Tensor, palette: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """NPS of ``colors`` (..., 3, H, W) against ``palette`` (P, 3): mean over pixels of prod_c ||p - c||_2.

    ``weight`` (H, W), e.g. the sticker mask, restricts and weights the mean;
    the result has the leading shape of ``colors`` (one score per sticker).
    """
    px = colors.movedim(-3, -1).unsqueeze(-2)  # (..., H, W, 1, 3)
    d = (px - palette.to(colors)).norm(dim=-1)  # (..., H, W, P)
    score = d.prod(dim=-1)  # (..., H, W)
    if weight is None:
        return score.mean(dim=(-2, -1))
    w = weight.to(colors)
    return (score * w).sum(dim=(-2, -1)) / w.sum().clamp_min(1e-12)


def nearest_palette(colors: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Snap each RGB pixel of ``colors`` (..., 3) to its nearest palette colour (what a printer would do)."""
    d = np.linalg.norm(colors[..., None, :] - palette, axis=-1)
    return palette[d.argmin(-1)]
