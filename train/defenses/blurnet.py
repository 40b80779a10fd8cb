"""BlurNet (Raju & Lipasti): low-pass filtering of the first-layer feature maps.

Penalties on the conv1 feature maps F (N, K, H, W), each normalised by 1/(N*K)
exactly as Eqs. 4, 6 and 7 write it, plus the L-inf penalty on the depthwise
blur weights of Eq. 2.  The same functions serve the regulariser-aware
adaptive attacks (BlurNet Sec. V-B), which add the defense's term to the
attacker's loss.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..config import DefenseConfig


def linf_depthwise_penalty(model: nn.Module) -> torch.Tensor:
    """Eq. 2: sum over channels j of ||W_depthwise[:, :, j]||_inf."""
    w = model.blur.conv.weight  # (K, 1, k, k)
    return w.abs().flatten(1).amax(dim=1).sum()


def total_variation(f: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4: (1/(N*K)) sum_{i,k} sum |F[x+1,y]-F[x,y]| + |F[x,y+1]-F[x,y]|."""
    n, k = f.shape[:2]
    tv = (f[:, :, 1:, :] - f[:, :, :-1, :]).abs().sum() + (f[:, :, :, 1:] - f[:, :, :, :-1]).abs().sum()
    return tv / (n * k)


def moving_average_matrix(n: int, window: int) -> torch.Tensor:
    """L_avg: row r averages entries r - window//2 .. r + (window-1)//2 (renormalised at the borders).

    Rows sum to one, so L_hf = I - L_avg maps constant signals to zero and
    keeps only the high-frequency part.
    """
    m = torch.zeros(n, n)
    lo, hi = window // 2, (window - 1) // 2
    for r in range(n):
        a, b = max(0, r - lo), min(n, r + hi + 1)
        m[r, a:b] = 1.0 / (b - a)
    return m


def tikhonov_hf(f: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Eq. 6: (1/(N*K)) sum_{i,k} ||L_hf . F[i,k]||_2 with L_hf = I - L_avg (matrix product on rows)."""
    n, k, h, _ = f.shape
    l_hf = torch.eye(h, device=f.device, dtype=f.dtype) - moving_average_matrix(h, window).to(f)
    hf = torch.matmul(l_hf, f)  # (H,H) @ (N,K,H,W): applies L_hf to every map
    return torch.linalg.matrix_norm(hf, ord="fro").sum() / (n * k)


def difference_pinv(n: int) -> torch.Tensor:
    """L_diff^+: pseudo-inverse of the n x n forward-difference matrix (last row zero, rank n-1).

    The difference matrix approximates a derivative, so its pseudo-inverse
    approximates integration, a smoothing operator (Hansen's regularisation
    tools, BlurNet ref. [24]).
    """
    d = -torch.eye(n, dtype=torch.float64) + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
    d[-1] = 0.0
    return torch.linalg.pinv(d).float()


def tikhonov_pseudo(f: torch.Tensor) -> torch.Tensor:
    """Eq. 7: (1/(N*K)) sum_{i,k} ||L_diff^+ (.) F[i,k]||_2 with the paper's elementwise product.

    The paper applies the pseudo-inverse "by elementwise multiplication"; the
    square n x n difference matrix keeps the shapes equal (H = W for conv1 maps).
    """
    n, k, h, w = f.shape
    if h != w:
        raise ValueError(f"tik_pseudo needs square feature maps, got {h}x{w}")
    weighted = difference_pinv(h).to(f) * f
    return torch.linalg.matrix_norm(weighted, ord="fro").sum() / (n * k)


Penalty = Callable[[nn.Module, torch.Tensor], torch.Tensor]
FeatureRegularizer = Callable[[torch.Tensor], torch.Tensor]


def feature_regularizer(cfg: DefenseConfig) -> Optional[FeatureRegularizer]:
    """The defense's smoothness term on the first-layer maps, ``R(F)`` (TV Eq. 4, Tikhonov Eq. 6-7), or None:
    what training adds (times alpha) and what the regulariser-aware attack adds to its loss (Eq. 9-11)."""
    if cfg.kind == "tv":
        return total_variation
    if cfg.kind == "tik_hf":
        return lambda f: tikhonov_hf(f, cfg.window)
    if cfg.kind == "tik_pseudo":
        return tikhonov_pseudo
    return None


def make_penalty(cfg: DefenseConfig) -> Optional[Penalty]:
    """The defense's training-loss term as ``penalty(model, F) -> alpha * R``, or None."""
    if cfg.alpha == 0:
        return None
    if cfg.kind == "blur":
        return (lambda model, f: cfg.alpha * linf_depthwise_penalty(model)) if cfg.learnable else None
    reg = feature_regularizer(cfg)
    return None if reg is None else (lambda model, f: cfg.alpha * reg(f))


def model_options(cfg: DefenseConfig) -> dict:
    """Architecture options a defense implies (only ``blur`` adds a layer)."""
    if cfg.kind == "blur":
        return {"blur_kernel": cfg.kernel_size, "blur_learnable": cfg.learnable}
    return {}
