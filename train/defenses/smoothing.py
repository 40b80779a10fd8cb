"""De-randomized smoothing with column ablation (Levine & Feizi, "(De)Randomized smoothing for certifiable
defense against patch attacks", NeurIPS 2020, Sec. 3): a certified defense against a sticker.

The base classifier sees only a band of ``band`` adjacent columns of the image (wrapping around); every
other pixel is ablated to ``fill``.  It is trained that way (one random band per training image).  At
inference the classifier runs on all W bands, each band votes for its top class, and the prediction is the
class with most votes (the lowest index on a tie).

Certificate (their Eq. 6 for columns): an adversarial patch ``patch`` pixels wide intersects at most
``delta = patch + band - 1`` bands, so it moves at most ``delta`` votes away from the predicted class c and
``delta`` to any other class c'.  The prediction is certified when, for every c' != c,
``n_c - delta > n_c' + delta`` (or ``=`` with c < c', the tie-break).  The guarantee holds for any patch
content and position, whatever the attacker knows.

For the device, :class:`SmoothedClassifier` builds the W ablated copies inside the graph from a constant
mask, runs the classifier on them as one batch and counts the votes, so the whole defense exports,
quantizes and runs as one ONNX graph; its output is the (N, C) vote counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge.config import check_range
from edge.errors import ConfigError

from .base import Defense, classifier_of, register_defense


def column_masks(width: int, band: int) -> torch.Tensor:
    """(W, 1, 1, W) masks: mask ``s`` keeps columns s .. s+band-1 (mod W)."""
    cols = torch.arange(width)
    starts = torch.arange(width).view(-1, 1)
    keep = ((cols.view(1, -1) - starts) % width) < band
    return keep.float().view(width, 1, 1, width)


def ablate(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return x * mask + fill * (1.0 - mask)


class SmoothedClassifier(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> vote counts (N, C): the classifier on every column band, one vote each."""

    def __init__(self, classifier: nn.Module, width: int, band: int, fill: float):
        super().__init__()
        self.classifier, self.band, self.fill = classifier, band, fill
        self.register_buffer("masks", column_masks(width, band), persistent=False)

    def band_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, W, C) logits of every ablated copy."""
        n, c, h, w = x.shape
        copies = ablate(x.unsqueeze(1), self.masks, self.fill)  # (N, W, C, H, W)
        logits = self.classifier(copies.reshape(-1, c, h, w))
        return logits.reshape(n, self.masks.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.band_logits(x)
        votes = (logits == logits.amax(dim=2, keepdim=True)).to(logits.dtype)
        return votes.sum(dim=1)


def certified(counts: torch.Tensor, y: torch.Tensor, delta: int) -> torch.Tensor:
    """(N,) bool: the vote prediction equals ``y`` and no patch touching ``delta`` bands can change it."""
    n, k = counts.shape
    pred = counts.argmax(1)  # lowest index among ties, as the vote's tie-break
    top = counts.gather(1, pred[:, None])
    idx = torch.arange(k, device=counts.device).view(1, -1)
    margin = (top - delta) - (counts + delta)  # (N, K): > 0 needed; = 0 enough when the predicted index is lower
    ok = (margin > 0) | ((margin == 0) & (pred[:, None] < idx))
    ok = ok | (idx == pred[:, None])
    return ok.all(1) & (pred == y)


@dataclass
class SmoothingConfig:
    """``band`` columns kept per vote; ``patch``: the patch width the certificate is stated for (reports);
    ``fill``: the value of ablated pixels; ``input_size``: the model input width (number of bands)."""

    band: int = 4
    patch: int = 5
    fill: float = 0.5
    input_size: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.band <= self.input_size:
            raise ConfigError(f"band: expected 1 <= band <= input_size ({self.input_size}), got {self.band}")
        if self.patch < 1:
            raise ConfigError(f"patch: expected a positive integer, got {self.patch}")
        check_range(self.fill, "fill", lo=0, hi=1)

    @property
    def delta(self) -> int:
        """Bands a ``patch``-wide patch can intersect."""
        return self.patch + self.band - 1


@register_defense("column_smoothing")
class ColumnSmoothing(Defense):
    """Trains the classifier on single random bands; wraps it in the vote (:class:`SmoothedClassifier`)."""

    Config = SmoothingConfig

    def describe(self) -> str:
        c = self.cfg
        return f"band {c.band} of {c.input_size} columns, certified for {c.patch}-px patches"

    def wrap(self, model: nn.Module) -> nn.Module:
        c = self.cfg
        return SmoothedClassifier(model, c.input_size, c.band, c.fill)

    def transform(self, model, x, y, step):
        masks = column_masks(x.shape[3], self.cfg.band)
        pick = torch.randint(0, len(masks), (len(x),), generator=step.generator)
        return ablate(x, masks[pick], self.cfg.fill), y

    def forward(self, model, x):
        return classifier_of(model)(x), {}


class SoftVote(nn.Module):
    """The attacker's differentiable view of a smoothed classifier: log of the mean softmax over all bands.

    Why: the vote is piecewise constant (no gradient); an attacker who knows the defense optimises the
    expectation over its ablations (EOT, Athalye et al. 2018) and is then scored on the real vote.
    """

    def __init__(self, smoothed: SmoothedClassifier):
        super().__init__()
        self.smoothed = smoothed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.smoothed.band_logits(x)
        return torch.logsumexp(torch.log_softmax(logits, dim=2), dim=1) - torch.log(
            torch.tensor(float(logits.shape[1]), device=x.device))
