"""Gaussian data augmentation: train on x + N(0, sigma^2), BlurNet's noise-augmentation baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge.config import check_range

from .base import Defense, register_defense


@dataclass
class GaussianConfig:
    """``sigma``: standard deviation of the pixel noise (images in [0, 1])."""

    sigma: float = 0.1

    def __post_init__(self) -> None:
        check_range(self.sigma, "sigma", lo=0, lo_open=True)


@register_defense("gaussian")
class GaussianAugmentation(Defense):
    """Every training image gets fresh noise, drawn from the epoch's generator (reproducible on resume)."""

    Config = GaussianConfig

    def transform(self, model, x, y, step):
        return x + self.cfg.sigma * torch.randn(x.shape, generator=step.generator), y
