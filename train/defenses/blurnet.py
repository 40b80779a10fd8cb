"""BlurNet (Raju & Lipasti): low-pass filtering of the first-layer feature maps.

Penalties on the conv1 feature maps F (N, K, H, W), each normalised by 1/(N*K)
exactly as Eqs. 4, 6 and 7 write it, plus the L-inf penalty on the depthwise
blur weights of Eq. 2.  The same functions serve the regulariser-aware
adaptive attacks (BlurNet Sec. V-B), which add the defense's term to the
attacker's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge.config import check_range
from edge.errors import ConfigError

from .base import Defense, Regularizer, classifier_of, register_defense


def linf_depthwise_penalty(model: nn.Module) -> torch.Tensor:
    """Eq. 2: sum over channels j of ||W_depthwise[:, :, j]||_inf."""
    w = classifier_of(model).blur.conv.weight  # (K, 1, k, k)
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


# ---------------------------------------------------------------------------- defenses


@dataclass
class BlurConfig:
    """Depthwise ``kernel_size`` blur after conv1; ``learnable`` under the L-inf penalty of Eq. 2 (weight
    ``alpha``), else the fixed box blur of Sec. III."""

    alpha: float = 0.0
    kernel_size: int = 5
    learnable: bool = True

    def __post_init__(self) -> None:
        check_range(self.alpha, "alpha", lo=0)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size: expected an odd positive integer, got {self.kernel_size}")


@register_defense("blur")
class DepthwiseBlurDefense(Defense):
    """BlurNet Sec. III: a depthwise low-pass layer on the first-layer maps, trained with the classifier."""

    Config = BlurConfig

    def describe(self) -> str:
        k = self.cfg.kernel_size
        return f"{k}x{k}, alpha={self.cfg.alpha:g}" + ("" if self.cfg.learnable else ", fixed")

    def model_options(self) -> dict:
        return {"blur_kernel": self.cfg.kernel_size, "blur_learnable": self.cfg.learnable}

    def loss(self, model, x, y, logits, aux):
        if self.cfg.alpha == 0 or not self.cfg.learnable:
            return None
        return self.cfg.alpha * linf_depthwise_penalty(model)


@dataclass
class FeatureRegConfig:
    """Weight ``alpha`` of a smoothness penalty on the conv1 feature maps."""

    alpha: float = 0.0

    def __post_init__(self) -> None:
        check_range(self.alpha, "alpha", lo=0)


@dataclass
class TikHFConfig(FeatureRegConfig):
    """``window``: width of the moving average L_avg in L_hf = I - L_avg (Eq. 6)."""

    window: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 2:
            raise ConfigError(f"window: expected >= 2, got {self.window}")


class FeatureMapRegularizer(Defense):
    """BlurNet Sec. IV: ``alpha * R(F)`` on the first-layer maps F, read through the model's
    ``features1``/``head`` split; the same ``R`` is what the regulariser-aware attacker adds (Eq. 9-11)."""

    Config = FeatureRegConfig

    def regularizer(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor):
        net = classifier_of(model)
        if not (hasattr(net, "features1") and hasattr(net, "head")):
            raise ConfigError(f"defense {self.kind}: the classifier needs features1/head (first-layer maps)")
        if net is not model:
            x = model.front_of(x)
        f1 = net.features1(x)
        return net.head(f1), {"features1": f1}

    def loss(self, model, x, y, logits, aux):
        return None if self.cfg.alpha == 0 else self.cfg.alpha * self.regularizer(aux["features1"])

    def attack_regularizer(self) -> Regularizer:
        return self.regularizer


@register_defense("tv")
class TotalVariation(FeatureMapRegularizer):
    """Eq. 4: total variation of the conv1 maps."""

    def regularizer(self, f):
        return total_variation(f)


@register_defense("tik_hf")
class TikhonovHF(FeatureMapRegularizer):
    """Eq. 6: high-frequency Tikhonov penalty ||(I - L_avg) F||_2."""

    Config = TikHFConfig

    def regularizer(self, f):
        return tikhonov_hf(f, self.cfg.window)


@register_defense("tik_pseudo")
class TikhonovPseudo(FeatureMapRegularizer):
    """Eq. 7: ||L_diff^+ (.) F||_2."""

    def regularizer(self, f):
        return tikhonov_pseudo(f)
