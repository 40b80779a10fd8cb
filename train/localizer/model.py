"""The sign localizer: a small anchor-free one-stage detector (CenterNet-style heatmap + box regression).

Why this shape (measured, see ``reports/localizer``): the device budget is
~10 ms per 640x360 frame on one CPU core in INT8, so the net sees the frame
squashed to S x S (S = 256 by default) and predicts at stride 8 only -- one
(5, S/8, S/8) map: a sign-centre heatmap (sigmoid), the centre's offset in
its cell and the log box size.  The backbone is a single branch-free path
(stride-2 3x3 convs, then dilated 3x3 convs at stride 8 for a receptive
field that covers a 250 px sign) because onnxruntime's CPU INT8 kernels
fuse Q/DQ around a conv only when its input tensor has one consumer: an
FPN's lateral branches left half the convs in float and were slower in INT8
than in FP32.  Every op (Conv, BatchNorm folded, ReLU, Sigmoid, Concat) is
one that TensorRT 8.5-10 runs in INT8/FP16.

Reads top to bottom: block, model, builder.  Input: (N, 3, S, S) RGB in
[0, 1] from :func:`edge.preprocess.preprocess` with ``box=None``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from edge.localizer import CHANNELS

PRIOR = 0.05  # initial heat of every cell: the focal loss starts from "almost nothing is a sign centre"


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LocalizerNet(nn.Module):
    """Branch-free CenterNet-style detector with output stride 8.

    ``widths``: channels at strides 2, 4 and 8; ``dilations``: the dilated
    3x3 convs at stride 8 (receptive field ~ 40 + 16 * sum(dilations) input
    pixels).  :meth:`heads` gives the raw (logits) map for the loss;
    :meth:`forward` the deployable map with the heat through a sigmoid.
    """

    stride = 8

    def __init__(self, widths: Sequence[int] = (16, 32, 48), dilations: Sequence[int] = (2, 4, 8)) -> None:
        super().__init__()
        c2, c4, c8 = (int(w) for w in widths)
        layers = [conv_bn_relu(3, c2, 2), conv_bn_relu(c2, c4, 2), conv_bn_relu(c4, c4), conv_bn_relu(c4, c8, 2),
                  conv_bn_relu(c8, c8)]
        layers += [conv_bn_relu(c8, c8, dilation=int(d)) for d in dilations]
        layers.append(conv_bn_relu(c8, c8))
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(c8, len(CHANNELS), 1)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[0] = -math.log((1 - PRIOR) / PRIOR)
            self.out.weight.mul_(0.1)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 5, S/8, S/8): heat logits, dx, dy, log(w/8), log(h/8)."""
        return self.out(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.heads(x)
        return torch.cat([torch.sigmoid(o[:, :1]), o[:, 1:]], 1)


ARCHITECTURES = {"centernet_lite": LocalizerNet}


def build_localizer(name: str = "centernet_lite", **options) -> LocalizerNet:
    """The one builder: unknown names and options raise (no silently ignored settings)."""
    from edge.errors import ConfigError

    if name not in ARCHITECTURES:
        raise ConfigError("model.name: unknown localizer %r (known: %s)" % (name, sorted(ARCHITECTURES)))
    try:
        return ARCHITECTURES[name](**options)
    except TypeError as e:
        raise ConfigError("model: %s" % e) from None
