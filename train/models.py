"""Models: a timm-style registry of small classifiers that take [0, 1] RGB pixels.

Reads top to bottom: blocks, model, builders.  Every model normalises its
input inside the graph (so attacks, ONNX and the device all see [0, 1]
pixels) and splits into ``features1`` (conv1 + ReLU [+ BlurNet depthwise
blur]) and ``head`` so that BlurNet's feature-map regularisers and the
regulariser-aware adaptive attacks can reach the first-layer maps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **cfg) -> nn.Module:
    """Build a registered model; unknown names raise, unknown options raise (no silent kwargs)."""
    from edge.errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r} (known: {available_models()})")
    return _REGISTRY[name](**cfg)


# --------------------------------------------------------------------------- blocks


INPUT_NORMS = ("fixed", "image")


class Normalize(nn.Module):
    """Input normalisation as the first layer, so everything outside the model works in [0, 1].

    ``fixed``: (x - 0.5) / 0.25.  ``image``: per-image standardisation
    (x - mean(x)) / max(std(x), 0.02) over all pixels and channels, which
    removes the exposure and contrast differences of roadside photographs
    (dark GTSRB tracks) while keeping colour relations.
    """

    def __init__(self, mode: str = "fixed"):
        super().__init__()
        if mode not in INPUT_NORMS:
            from edge.errors import ConfigError

            raise ConfigError(f"model.input_norm: expected one of {INPUT_NORMS}, got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            return (x - 0.5) / 0.25
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)
        return (x - mean) / std


class DepthwiseBlur(nn.Module):
    """BlurNet's depthwise low-pass layer on the first-layer feature maps (paper Sec. III).

    Initialised to the k x k box ("standard blur") kernel in every channel.
    ``learnable=False`` keeps it fixed (the Sec. III black-box variant);
    ``learnable=True`` trains it under the L-inf penalty of Eq. 2
    (:func:`train.defenses.blurnet.linf_depthwise_penalty`).
    """

    def __init__(self, channels: int, kernel_size: int, learnable: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / (kernel_size * kernel_size))
        self.conv.weight.requires_grad_(learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# --------------------------------------------------------------------------- model


class LisaCNN(nn.Module):
    """The LISA-CNN of RP2 / BlurNet (Cleverhans basic CNN): 3 conv + FC on 32x32 inputs.

    conv1 64@8x8 s2 'SAME' -> ReLU -> [blur] -> conv2 128@6x6 s2 'VALID' -> ReLU
    -> conv3 128@5x5 s1 'VALID' -> ReLU -> flatten (2x2x128) -> FC num_classes.
    TF 'SAME' padding for an 8x8 stride-2 kernel on 32x32 is 3 pixels each side.
    """

    def __init__(
        self,
        num_classes: int = 18,
        width: int = 64,
        blur_kernel: int = 0,
        blur_learnable: bool = True,
        input_norm: str = "image",
    ):
        super().__init__()
        self.normalize = Normalize(input_norm)
        self.conv1 = nn.Conv2d(3, width, 8, stride=2, padding=3)
        self.blur = DepthwiseBlur(width, blur_kernel, blur_learnable) if blur_kernel else None
        self.conv2 = nn.Conv2d(width, 2 * width, 6, stride=2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 5, stride=1)
        self.fc = nn.Linear(2 * width * 2 * 2, num_classes)
        self.num_classes = num_classes

    def features1(self, x: torch.Tensor) -> torch.Tensor:
        """First-layer feature maps F (N, K, 16, 16), after the BlurNet blur when present."""
        f = torch.relu(self.conv1(self.normalize(x)))
        return self.blur(f) if self.blur is not None else f

    def head(self, f: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv2(f))
        f = torch.relu(self.conv3(f))
        return self.fc(torch.flatten(f, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features1(x))


class SmallVGG(nn.Module):
    """A VGG-style classifier for 32x32 inputs: three blocks of 3x3 conv + ReLU (2, 2, 3 convs, ``width``,
    ``2 width``, ``4 width`` channels), 2x2 max-pool after each, FC on the 4x4 maps.

    Why here: NRP's feature extractor and SSP's source are a VGG (Naseer et al. 2020, Sec. 3.3-3.4: VGG
    features give the most transferable feature-space adversaries).  At 32x32 an ImageNet VGG-16 does not
    apply, so this is VGG-16's first three blocks at 1/4 width (``width=16``), trained on signs.  Layers are
    named as in VGG (``features.conv3_2``, ``features.relu3_2``, ...) so an attack can name the one it hooks.
    """

    def __init__(self, num_classes: int = 18, width: int = 16, input_norm: str = "image"):
        super().__init__()
        self.normalize = Normalize(input_norm)
        layers: dict[str, nn.Module] = {}
        cin = 3
        for b, (n, cout) in enumerate(((2, width), (2, 2 * width), (3, 4 * width)), start=1):
            for i in range(1, n + 1):
                layers[f"conv{b}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1)
                layers[f"relu{b}_{i}"] = nn.ReLU()
                cin = cout
            layers[f"pool{b}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(OrderedDict(layers))
        self.fc = nn.Linear(cin * 4 * 4, num_classes)
        self.num_classes = num_classes

    def features1(self, x: torch.Tensor) -> torch.Tensor:
        """First-layer maps (conv1_1 + ReLU), the part BlurNet's regularisers read."""
        return self.features[:2](self.normalize(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features[2:](f), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features1(x))


# --------------------------------------------------------------------------- builders


@register_model("lisa_cnn")
def lisa_cnn(num_classes: int = 18, blur_kernel: int = 0, blur_learnable: bool = True, input_norm: str = "image"):
    return LisaCNN(num_classes, 64, blur_kernel, blur_learnable, input_norm)


@register_model("lisa_cnn_tiny")
def lisa_cnn_tiny(num_classes: int = 18, blur_kernel: int = 0, blur_learnable: bool = True, input_norm: str = "image"):
    """Same topology at 1/4 width: keeps tests fast."""
    return LisaCNN(num_classes, 16, blur_kernel, blur_learnable, input_norm)


@register_model("vgg_small")
def vgg_small(num_classes: int = 18, input_norm: str = "image"):
    """VGG-16's first three blocks at 1/4 width for 32x32 inputs: NRP's feature extractor (``SmallVGG``)."""
    return SmallVGG(num_classes, 16, input_norm)
