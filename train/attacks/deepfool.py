"""DeepFool: the (approximately) minimal perturbation that changes a prediction.

Used as an attack, as the robustness measure rho_2 (:func:`train.eval.metrics.rho_2`)
and as the inner step of the universal perturbation algorithm (:mod:`train.attacks.uap`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import Attack, check_norm, flat_norm


class DeepFool(Attack):
    """Multi-class DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, Algorithm 2; Sec. 3.3 for l-inf).

    Threat model: white-box, untargeted, unbounded: it searches for the smallest perturbation
    (in ``norm``) that moves each image off its *clean predicted* class ``k(x0)``.  At each
    iteration the classifier is linearised at the current point ``x_i`` and the step goes to the
    nearest linearised boundary among the candidate classes (the top ``num_candidates`` classes
    of the clean logits, as in the reference implementation):

        l = argmin_k |f'_k| / ||w'_k||_q,   f'_k = f_k(x_i) - f_k0(x_i),  w'_k = grad f_k - grad f_k0
        r_i = (|f'_l| / ||w'_l||_q + 1e-4) * (w'_l / ||w'_l||_2  for l2,  sign(w'_l)  for l-inf)

    with q the dual norm (2 for l2, 1 for l-inf).  The accumulated ``r`` is applied with
    ``(1 + overshoot)`` and the iterate is clipped to the [0, 1] image box, so the perturbation
    whose norm is reported is the one actually returned.  Iteration stops per sample once its label
    changes, or after ``max_iter`` iterations (then ``success`` may be False and ``r_norm`` is what
    was reached).

    Vectorised over the batch: one forward pass, and one backward pass per candidate class, for all
    still-unflipped samples together (the samples do not interact in eval mode).

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        overshoot: factor applied as ``1 + overshoot`` to cross the boundary (default 0.02).
        max_iter: iteration cap per sample (default 50).
        num_candidates: classes considered, top-k of the clean logits incl. the predicted one (default 10).
        norm: ``"l2"`` (default) or ``"linf"``.
        batch_size, progress: see :class:`~train.attacks.base.Attack`.

    Extra info: ``r_norm`` (N,) the ``norm`` of ``x_adv - x`` (after overshoot and clipping),
    ``iterations`` (N,) the linearisation steps taken.
    """

    name = "deepfool"
    targeted_ok = False

    def __init__(self, model: nn.Module, *, overshoot: float = 0.02, max_iter: int = 50, num_candidates: int = 10,
                 norm: str = "l2", batch_size: int = 256, progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        if not overshoot >= 0:
            raise SignguardError(f"deepfool: overshoot must be >= 0, got {overshoot!r}")
        if int(max_iter) != max_iter or max_iter < 1:
            raise SignguardError(f"deepfool: max_iter must be an integer >= 1, got {max_iter!r}")
        if int(num_candidates) != num_candidates or num_candidates < 2:
            raise SignguardError(f"deepfool: num_candidates must be an integer >= 2, got {num_candidates!r}")
        self.overshoot, self.max_iter, self.num_candidates = float(overshoot), int(max_iter), int(num_candidates)
        self.norm = check_norm(norm)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x = x.detach()
        with torch.no_grad():
            logits = self.model(x)
        if logits.shape[1] < 2:
            raise SignguardError(f"deepfool: the model must have >= 2 classes, got {logits.shape[1]}")
        cand = logits.topk(min(self.num_candidates, logits.shape[1]), dim=1).indices  # column 0 = k(x0)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        iterations = torch.zeros(len(x), dtype=torch.long)
        active = torch.arange(len(x), device=x.device)
        for _ in range(self.max_iter):
            xi = x_adv[active].requires_grad_(True)
            logits = self.model(xi)
            still = logits.argmax(1) == cand[active, 0]
            if not bool(still.any()):
                break
            f = logits.gather(1, cand[active])  # (m, k)
            k = f.shape[1]
            grads = torch.stack([torch.autograd.grad(f[:, j].sum(), xi, retain_graph=j < k - 1)[0]
                                 for j in range(k)], 1)[still]  # (m', k, C, H, W)
            active, f = active[still], f.detach()[still]
            r_tot[active] += self._step(f[:, 1:] - f[:, :1], grads[:, 1:] - grads[:, :1])
            iterations[active.cpu()] += 1
            x_adv[active] = (x[active] + (1 + self.overshoot) * r_tot[active]).clamp(0.0, 1.0)
        return x_adv, {"r_norm": flat_norm(x_adv - x, self.norm), "iterations": iterations}

    def _step(self, fd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Step to the nearest linearised boundary; ``fd`` (m, k-1) logit gaps, ``w`` (m, k-1, C, H, W) their grads."""
        wf = w.flatten(2)
        dual = wf.norm(dim=2) if self.norm == "l2" else wf.abs().sum(2)
        pert = fd.abs() / dual.clamp_min(1e-12)
        best = pert.argmin(1)
        rows = torch.arange(len(best), device=best.device)
        wl, pl = w[rows, best], pert[rows, best] + 1e-4
        shape = (-1,) + (1,) * (w.dim() - 2)
        if self.norm == "l2":
            return pl.view(shape) * wl / flat_norm(wl, "l2").clamp_min(1e-12).view(shape)
        return pl.view(shape) * wl.sign()
