"""Model selection for the defenses against universal perturbations (PRN, FRU): score a checkpoint on what it is
for, not on clean accuracy alone -- clean accuracy would pick the identity rectifier, or units that learned
nothing."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def restoration_score(model: nn.Module, split: Any, perturbations: torch.Tensor, device: torch.device) -> float:
    """Mean of ``model``'s accuracy on the split's clean images and on the same images, each under one of
    ``perturbations`` (K, C, H, W) drawn with a fixed seed -- Borkar et al.'s restoration accuracy up to the
    base's clean accuracy, which is constant while the base is frozen."""
    from ..attacks.base import batched_predict

    x, y = torch.as_tensor(split.x), torch.as_tensor(split.y)
    gen = torch.Generator().manual_seed(0)
    pert = (x + perturbations[torch.randint(len(perturbations), (len(x),), generator=gen)]).clamp(0, 1)
    model.eval()
    accs = [float((batched_predict(model, v.to(device)).cpu() == y).float().mean()) for v in (x, pert)]
    return sum(accs) / 2
