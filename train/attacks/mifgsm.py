"""MI-FGSM: iterative FGSM with momentum, the transfer attack NRP is evaluated against (Dong et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import Attack, adv_loss, project


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al., "Boosting adversarial attacks with momentum", CVPR 2018,
    Algorithm 1): ``g <- mu * g + grad / ||grad||_1``, ``x' <- clip_{x, eps}(x' + alpha * sign(g))``,
    ``alpha = eps / steps``, from ``x' = x``.

    Why it is here: accumulating the gradient's direction across iterations keeps the examples from
    over-fitting the source model, so they transfer better than I-FGSM's -- the black-box attack of NRP's
    Table 1 and the reason NRP looks at feature distortion at all (its Fig. 3).

    Threat model: white-box on ``model``, per-image L-inf ``||x' - x||_inf <= eps``; used as a transfer attack
    by scoring its examples on another model.  Targeted when ``target`` is given.  The gradient is that of the
    log cross-entropy (:func:`~train.attacks.base.adv_loss`): per sample a positive multiple of the
    cross-entropy's, which the L1 normalisation removes.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        eps: L-inf budget in [0, 1] pixel units (default 16/255, the paper's).
        steps: iterations T (default 10, the paper's); the step is ``eps / steps``.
        decay: momentum mu (default 1.0, the paper's).
        batch_size, progress: see :class:`~train.attacks.base.Attack`.
    """

    name = "mifgsm"

    def __init__(self, model: nn.Module, *, eps: float = 16 / 255, steps: int = 10, decay: float = 1.0,
                 batch_size: int = 256, progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        if not eps >= 0:
            raise SignguardError(f"mifgsm: eps must be >= 0, got {eps!r}")
        if int(steps) != steps or steps < 1:
            raise SignguardError(f"mifgsm: steps must be an integer >= 1, got {steps!r}")
        if not decay >= 0:
            raise SignguardError(f"mifgsm: decay must be >= 0, got {decay!r}")
        self.eps, self.steps, self.decay = float(eps), int(steps), float(decay)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x = x.detach()
        alpha = self.eps / self.steps
        g = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(adv_loss(self.model(x_adv), y, target).sum(), x_adv)
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            g = self.decay * g + grad / l1
            x_adv = (x + project(x_adv.detach() + alpha * g.sign() - x, self.eps, "linf")).clamp(0.0, 1.0)
        return x_adv, {}
