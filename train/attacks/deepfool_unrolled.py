"""DeepFool as a differentiable function of the model's weights: the attack module of Deep Defense.

Deep Defense (Yan, Guo & Zhang, NeurIPS 2018, Sec. 3.3) regularises the norm of the DeepFool
perturbation ``Delta_x = g(x; W)``.  To train on it, ``g`` must be differentiable in the weights
``W``: the paper builds a "reverse" network that replays the backward pass of the classifier as a
forward pass (deconvolution for convolution, shared ReLU masks), one copy per DeepFool iteration,
so the whole attack becomes a recursive network that SGD differentiates through.  Autograd gives
the same thing directly: every input gradient is taken with ``create_graph=True``, so it is itself
a function of ``W`` (the ReLU masks enter as constants, exactly the paper's "index-sharing"), and
every iterate ``x_i = clip(x + (1 + overshoot) * sum_j r_j)`` stays in the graph.  Nothing is
detached except the discrete choices (which class is nearest, which samples have flipped), which
the paper's network also treats as constants.

The steps are those of :class:`train.attacks.deepfool.DeepFool` (``l2``), so with the same
settings this returns the same perturbation (tested); it only keeps the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.errors import SignguardError

from .base import eval_mode


def unrolled_deepfool(model: nn.Module, x: torch.Tensor, *, max_iter: int = 3, overshoot: float = 0.02,
                      num_candidates: int = 10, target: torch.Tensor | None = None,
                      create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The l2 DeepFool perturbation of ``x`` (N, C, H, W) in [0, 1], differentiable in the model's weights.

    Untargeted (``target=None``): as :class:`~train.attacks.deepfool.DeepFool`, away from the clean
    predicted class toward the nearest linearised boundary among the top ``num_candidates`` clean
    logits.  Targeted: toward ``target`` (N,), linearising the two-class problem (current predicted
    class vs. target) at each iterate; Deep Defense uses it on misclassified samples, "fooled" toward
    their ground truth (Sec. 3.4; the reference code's ``forward_wrong``).

    Each iteration, for the samples that have not flipped yet:
        f'_j = f_{c_j}(x_i) - f_{c_0}(x_i),   w'_j = grad_x f'_j(x_i)         (kept in the graph)
        l = argmin_j |f'_j| / ||w'_j||_2,   r_i = (|f'_l| / ||w'_l||_2 + 1e-4) * w'_l / ||w'_l||_2
        x_{i+1} = clip(x + (1 + overshoot) * sum r, 0, 1)
    The ``num_candidates - 1`` input gradients come from one backward pass over a batch that repeats
    each sample once per candidate.  ``max_iter`` is the unroll depth; a sample not flipped by then
    keeps the perturbation reached.

    Returns ``(delta, iterations)``: ``delta = x_adv - x`` (N, C, H, W), a function of the weights when
    ``create_graph`` (else detached), and the iterations each sample took (N,).  Runs the model in eval
    mode (the deployed behaviour; samples do not interact), restoring its training flag.
    """
    if int(max_iter) != max_iter or max_iter < 1:
        raise SignguardError(f"unrolled_deepfool: max_iter must be an integer >= 1, got {max_iter!r}")
    if not overshoot >= 0:
        raise SignguardError(f"unrolled_deepfool: overshoot must be >= 0, got {overshoot!r}")
    if target is None and (int(num_candidates) != num_candidates or num_candidates < 2):
        raise SignguardError(f"unrolled_deepfool: num_candidates must be an integer >= 2, got {num_candidates!r}")
    x = x.detach()
    n = len(x)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    if n == 0:
        return torch.zeros_like(x), iterations
    with eval_mode(model):
        with torch.no_grad():
            logits0 = model(x)
        if logits0.shape[1] < 2:
            raise SignguardError(f"unrolled_deepfool: the model must have >= 2 classes, got {logits0.shape[1]}")
        cand = None if target is not None else logits0.topk(min(int(num_candidates), logits0.shape[1]), 1).indices
        r_tot = torch.zeros_like(x)
        x_adv = x
        active = torch.arange(n, device=x.device)
        for _ in range(int(max_iter)):
            with torch.no_grad():
                pred = model(x_adv[active].detach()).argmax(1)
            if target is None:
                still = pred == cand[active, 0]
                c = cand[active]
            else:
                still = pred != target[active]
                c = torch.stack([pred, target[active]], 1)
            if not bool(still.any()):
                break
            active, c = active[still], c[still]
            w, fd = _linearise(model, x_adv[active], c, create_graph)
            r_tot = r_tot.index_put((active,), r_tot[active] + _l2_step(fd, w))
            iterations[active] += 1
            x_adv = x_adv.index_put((active,), (x[active] + (1 + overshoot) * r_tot[active]).clamp(0.0, 1.0))
    delta = x_adv - x
    return (delta if create_graph else delta.detach()), iterations


def _linearise(model: nn.Module, xi: torch.Tensor, c: torch.Tensor, create_graph: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit gaps ``f_{c_j} - f_{c_0}`` (m, k-1) at ``xi`` (m, C, H, W) and their input gradients (m, k-1, C, H, W).

    Replica j of each sample carries only gap j, so one backward pass of their sum gives every gap's
    gradient (samples and replicas do not interact in eval mode)."""
    m, k = c.shape
    shape = xi.shape[1:]
    xr = xi.unsqueeze(1).expand(m, k - 1, *shape).reshape(m * (k - 1), *shape)
    if not xr.requires_grad:  # first iteration: x itself, not yet a function of the weights
        xr = xr.detach().requires_grad_(True)
    out = model(xr).view(m, k - 1, -1)
    f0 = out.gather(2, c[:, :1, None].expand(m, k - 1, 1))[..., 0]
    fj = out.gather(2, c[:, 1:, None])[..., 0]
    fd = fj - f0
    (g,) = torch.autograd.grad(fd.sum(), xr, create_graph=create_graph)
    if not create_graph:
        fd = fd.detach()
    return g.view(m, k - 1, *shape), fd


def _l2_step(fd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """DeepFool's l2 step to the nearest linearised boundary (as :meth:`DeepFool._step`), differentiable."""
    wn = w.flatten(2).norm(dim=2).clamp_min(1e-12)
    pert = fd.abs() / wn
    best = pert.detach().argmin(1)
    rows = torch.arange(len(best), device=best.device)
    pl = (pert[rows, best] + 1e-4).view(-1, *([1] * (w.dim() - 2)))
    return pl * w[rows, best] / wn[rows, best].view_as(pl)
