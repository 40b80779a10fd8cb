"""Orthonormal 2-D DCT-II as matrix products, so low-frequency attacks stay differentiable.

BlurNet's adaptive attack on the depthwise-blur models (Eq. 8, after Sharma
et al. 2019) keeps only the ``k x k`` lowest DCT frequencies of the masked
perturbation: IDCT(M_dim . DCT(M_x . delta)).
"""

from __future__ import annotations

import math

import torch

from edge.errors import SignguardError


def dct_matrix(n: int) -> torch.Tensor:
    """(n, n) orthonormal DCT-II basis C: DCT(x) = C @ x, IDCT(y) = C.T @ y."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.float()


def lowpass_dct(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k x k`` lowest 2-D DCT frequencies of each (H, W) map of ``x`` (..., H, W), H == W."""
    n = x.shape[-1]
    if x.shape[-2] != n:
        raise SignguardError(f"lowpass_dct: expected square maps, got {tuple(x.shape[-2:])}")
    if not 1 <= k <= n:
        raise SignguardError(f"lowpass_dct: k must be in [1, {n}], got {k}")
    c = dct_matrix(n).to(x)
    y = c @ x @ c.T
    m = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    m[:k, :k] = 1.0
    return c.T @ (y * m) @ c
