"""FGSM: the one-step attack that adversarial training and the Deep Defense tables start from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import Attack, adv_loss, check_norm, normalized_step


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial
    examples", ICLR 2015, Sec. 4): one steepest-ascent step of the attacker's loss.

    Threat model: white-box, per-image perturbation with ``||x_adv - x||_norm <= eps``.

    ``x_adv = clip(x + eps * normalized_step(grad_x L, norm), 0, 1)`` where ``L`` is the
    cross-entropy to ``y`` (or minus the cross-entropy to ``target`` when targeted),
    differentiated through its log (:func:`~train.attacks.base.adv_loss`: same step).  ``norm="linf"`` is the paper's
    sign step; ``"l2"`` is the fast gradient method's ``grad / ||grad||_2``.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        eps: budget in [0, 1] pixel units (default 8/255).
        norm: ``"linf"`` (default) or ``"l2"``.
        batch_size, progress: see :class:`~train.attacks.base.Attack`.
    """

    name = "fgsm"

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, norm: str = "linf", batch_size: int = 256,
                 progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        if not eps >= 0:
            raise SignguardError(f"fgsm: eps must be >= 0, got {eps!r}")
        self.eps = float(eps)
        self.norm = check_norm(norm)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        xg = x.detach().clone().requires_grad_(True)
        # log CE: the same step as CE's gradient, without its underflow on confident samples
        (grad,) = torch.autograd.grad(adv_loss(self.model(xg), y, target).sum(), xg)
        return (x + self.eps * normalized_step(grad, self.norm)).clamp(0.0, 1.0), {}
