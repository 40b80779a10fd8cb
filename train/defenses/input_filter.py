"""A fixed k x k box blur on the input, in front of the classifier: BlurNet Table I's "input filter".

BlurNet compares filtering the input image with filtering the first-layer
feature maps (Table I): the input blur costs clean accuracy for the same
attenuation of a sticker's high frequencies.  As a defense in the registry it
is the simplest *purifier* part -- an image-to-image module in front of any
classifier, exported as its own graph or fused with the classifier -- so it
also serves as the reference composition of a front part with a trained
classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge.errors import ConfigError

from .base import DefendedModel, Defense, register_defense


class BoxBlur(nn.Module):
    """Depthwise k x k mean filter on [0, 1] RGB images, edges replicated (size-preserving)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.k = int(kernel_size)
        self.register_buffer("weight", torch.full((3, 1, self.k, self.k), 1.0 / (self.k * self.k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.k // 2
        return nn.functional.conv2d(nn.functional.pad(x, (p, p, p, p), mode="replicate"), self.weight, groups=3)


@dataclass
class InputBlurConfig:
    kernel_size: int = 3

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size: expected an odd positive integer, got {self.kernel_size}")


@register_defense("input_blur")
class InputBlur(Defense):
    Config = InputBlurConfig

    def wrap(self, model: nn.Module) -> nn.Module:
        return DefendedModel(model, purifier=BoxBlur(self.cfg.kernel_size))
