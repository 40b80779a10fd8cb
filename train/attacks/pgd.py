"""PGD: the first-order adversary used both to evaluate and to adversarially train (Madry et al.)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import LOSSES, Attack, check_norm, normalized_step, project


def random_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A perturbation drawn uniformly from the ``norm`` ball of radius ``eps``, shape of ``x``.

    L-inf: each coordinate uniform in [-eps, eps].  L2: a Gaussian direction
    (uniform on the sphere) times radius ``eps * U**(1/d)``, which is uniform in
    the d-dimensional ball.  Drawn on the CPU from ``gen`` so that a seed
    reproduces the start on any device.
    """
    shape = x.shape
    if norm == "linf":
        d = (torch.rand(shape, generator=gen) * 2 - 1) * eps
    else:
        g = torch.randn(shape, generator=gen)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))
        r = torch.rand(shape[0], generator=gen) ** (1.0 / x[0].numel())
        d = g * (eps * r).view(-1, *([1] * (len(shape) - 1)))
    return d.to(device=x.device, dtype=x.dtype)


class PGD(Attack):
    """Projected gradient descent (Madry et al., "Towards deep learning models resistant to adversarial
    attacks", ICLR 2018, Sec. 2.1): ``steps`` normalised ascent steps on the cross-entropy (to ``y``;
    minus the cross-entropy to ``target`` when targeted), each followed by projection onto the ``eps``
    ball around ``x`` and onto the [0, 1] image box.  The gradient is taken through the loss's log
    (:func:`~train.attacks.base.adv_loss`): the same steps, without the cross-entropy's underflow on confident samples.

    Threat model: white-box, per-image, ``||x_adv - x||_norm <= eps`` (exactly: every iterate is
    projected, so the returned images respect the budget up to float rounding, < 1e-6).

    Targeted when ``target`` is given (descends cross-entropy to the target).  Usable inside a training
    loop: the base class switches the model to eval mode for the attack and restores the caller's
    mode, and gradients are taken with respect to the input only, so no ``.grad`` of the model's
    parameters is touched.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        eps: budget in [0, 1] pixel units (default 8/255).
        alpha: step size per iteration, same units (default 2/255).
        steps: number of iterations (default 10).
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: start from a uniform draw in the ball (default True), seeded per batch.
        loss: ``"ce"`` (default; the log cross-entropy above) or ``"margin"`` (Carlini-Wagner,
            :func:`~train.attacks.base.margin_loss`) -- a different loss that reaching the same accuracy
            shows the attack has converged rather than stalled on one objective.
        restarts: independent random starts (default 1); a sample counts as broken if any restart
            breaks it (Madry et al.'s evaluation protocol), and its image is taken from that restart.
        batch_size, progress: see :class:`~train.attacks.base.Attack`.
    """

    name = "pgd"

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 norm: str = "linf", random_start: bool = True, loss: str = "ce", restarts: int = 1,
                 batch_size: int = 256, progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        for arg, value in (("eps", eps), ("alpha", alpha)):
            if not value >= 0:
                raise SignguardError(f"pgd: {arg} must be >= 0, got {value!r}")
        if int(steps) != steps or steps < 1:
            raise SignguardError(f"pgd: steps must be an integer >= 1, got {steps!r}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.norm = check_norm(norm)
        self.random_start = bool(random_start)
        if loss not in LOSSES:
            raise SignguardError(f"pgd: loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.loss, self.loss_name = LOSSES[loss], loss
        if int(restarts) != restarts or restarts < 1:
            raise SignguardError(f"pgd: restarts must be an integer >= 1, got {restarts!r}")
        if restarts > 1 and not random_start:
            raise SignguardError("pgd: restarts > 1 needs random_start=True (every restart would be the same)")
        self.restarts = int(restarts)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "loss": self.loss_name}

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x = x.detach()
        best = self._one_run(x, y, target, gen)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                pred = self.model(best).argmax(1)
            done = pred == target if target is not None else pred != y
            if bool(done.all()):
                break
            cand = self._one_run(x, y, target, gen)
            best = torch.where(done.view(-1, 1, 1, 1), best, cand)
        return best, {}

    def _one_run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                 gen: torch.Generator) -> torch.Tensor:
        delta = random_start(x, self.eps, self.norm, gen) if self.random_start else torch.zeros_like(x)
        delta = (x + delta).clamp(0.0, 1.0) - x
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = self.loss(self.model(x + delta), y, target)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta = project(delta.detach() + self.alpha * normalized_step(grad, self.norm), self.eps, self.norm)
            # Clipping to the box after the ball projection only shrinks |delta| coordinate-wise,
            # so the iterate stays inside both sets.
            delta = (x + delta).clamp(0.0, 1.0) - x
        return x + delta
