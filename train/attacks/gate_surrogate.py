"""What an attacker who knows the PRN gate differentiates through: the gated pipeline is differentiable except
its select (classify R(x) where the detector fires, x elsewhere), so the select is replaced.

* :class:`SoftGate` -- the soft select over **both branches**: the output is the log of the mixture
  ``p * softmax(C(R(x))) + (1 - p) * softmax(C(x))`` with ``p = sigmoid(score / T)``.  Maximising the target's
  log-probability lets the optimiser either fool the rectified branch while the gate fires, or fool the bare
  classifier while pushing the detector's score below its threshold -- whichever is easier.
* ``bpda=True`` -- straight-through (BPDA, Athalye et al. 2018): the forward pass is the real hard select
  (so the loss is the deployed pipeline's), the backward pass is the soft one's.

Both return log-probabilities, which every attack here treats as logits (cross-entropy of log-softmax of
log-probabilities is the same cross-entropy).
"""

from __future__ import annotations

import torch
from torch import nn


class SoftGate(nn.Module):
    """Images -> log-probabilities of a gated :class:`~train.defenses.base.DefendedModel`, differentiably."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, bpda: bool = False):
        super().__init__()
        if getattr(model, "detector", None) is None:
            raise ValueError("SoftGate: the model has no detector gate")
        self.model, self.temperature, self.bpda = model, float(temperature), bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        r = m.rectifier(x)
        score = m.detector(x, r).reshape(-1, 1)
        p_rect = torch.softmax(m.classifier(r), dim=1)
        p_bare = torch.softmax(m.classifier(x), dim=1)
        w = torch.sigmoid(score / self.temperature)
        soft = torch.log(w * p_rect + (1 - w) * p_bare + 1e-12)
        if not self.bpda:
            return soft
        hard = torch.log(torch.where(score > 0, p_rect, p_bare) + 1e-12)
        return hard.detach() + soft - soft.detach()
