"""PatchCleanser double masking (Xiang, Mahloujifar & Mittal, "PatchCleanser: Certifiably robust defense
against adversarial patches for any image classifier", USENIX Security 2022): a certified sticker defense
whose clean prediction is the classifier's own whenever every one-mask prediction agrees.

**Mask set** (their Sec. 4.1, "R-covering"): for a ``patch`` x ``patch`` adversarial patch in an ``image``
x ``image`` input and a budget of ``k`` mask positions per axis, the stride is
``s = ceil((image - patch + 1) / k)`` and the mask side ``m = patch + s - 1``; masks start at 0, s, 2s, ...
and a last one flush with the far edge.  Every patch position then lies wholly inside at least one mask.

**Double masking** (their Algorithm 1), on the K = k * k masks:

1. first round: the classifier on the image with each one mask; unanimous -> that label (Case I);
2. otherwise, for every mask whose label is not the majority's (a "disagreer", in mask order): the classifier
   on the image with that mask *and* each mask of the set; if all those two-mask labels equal the
   disagreer's label -> that label (Case II);
3. otherwise the majority label (Case III).

Tie-breaks (the paper leaves them open): the majority is the class with most one-mask votes, the lowest
class index on a tie; disagreers are tried in mask order.

**Certificate** (their Theorem 1): if all K x K two-mask labels (one-mask ones on the diagonal) equal y,
double masking returns y for *any* patch content at *any* position of a ``patch`` x ``patch`` patch.

For the device, :class:`PatchCleanser` builds all K (K + 1) / 2 masked copies (each unordered pair of
masks; a mask with itself is the one-mask copy) inside the graph from constant masks, runs the classifier
on them as one batch and decides with tensor operations only, so the defense exports, quantizes and runs as
one ONNX graph.  Its output (N, C) is the one-mask votes plus K on the double-masking label: the argmax is
the label, and the votes stay readable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edge.config import check_range
from edge.errors import ConfigError

from .base import Defense, classifier_of, register_defense


def mask_geometry(image: int, patch: int, per_axis: int) -> tuple[int, int, list[int]]:
    """(mask side, stride, mask start offsets along one axis) of the paper's R-covering mask set."""
    if not 1 <= patch <= image or per_axis < 1:
        raise ConfigError(f"mask set: need 1 <= patch ({patch}) <= image ({image}) and masks_per_axis >= 1, "
                          f"got masks_per_axis={per_axis}")
    stride = math.ceil((image - patch + 1) / per_axis)
    size = min(patch + stride - 1, image)
    starts = list(range(0, image - size + 1, stride))
    if (image - size) % stride:
        starts.append(image - size)
    return size, stride, starts


def mask_set(image: int, patch: int, per_axis: int) -> torch.Tensor:
    """(K, 1, image, image) float masks, 1 = pixel kept, 0 = masked; row-major over mask positions."""
    size, _, starts = mask_geometry(image, patch, per_axis)
    masks = torch.ones(len(starts) ** 2, 1, image, image)
    for i, (r, c) in enumerate((r, c) for r in starts for c in starts):
        masks[i, :, r:r + size, c:c + size] = 0.0
    return masks


def pair_table(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The unordered mask pairs (i <= j) as an (M, 2) list, M = K (K + 1) / 2, and the (K, K) table of each
    ordered pair's row in that list -- so the classifier runs once per distinct two-mask image."""
    pairs = torch.tensor([(i, j) for i in range(k) for j in range(i, k)], dtype=torch.long)
    table = torch.empty(k, k, dtype=torch.long)
    for n, (i, j) in enumerate(pairs.tolist()):
        table[i, j] = table[j, i] = n
    return pairs, table


def masked(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return x * mask + fill * (1.0 - mask)


def double_masking(pred_map: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on two-mask labels (N, K, K) (one-mask labels on the diagonal): (labels (N,), one-mask
    votes (N, num_classes) float).  Tensor operations only, no data-dependent control flow, so it traces.

    Case I is the special case of Case III with no disagreer, so one select covers all three cases."""
    k = pred_map.shape[1]
    one = pred_map.flatten(1)[:, :: k + 1]  # (N, K) the diagonal (a strided slice: exports as one Slice)
    classes = torch.arange(num_classes, device=pred_map.device)
    votes = (one.unsqueeze(2) == classes).to(torch.float32).sum(1)  # (N, C)
    majority = votes.argmax(1)  # first maximum: the lowest class index on a tie
    disagreer = one != majority.unsqueeze(1)
    agrees = (pred_map == one.unsqueeze(2)).to(torch.float32).sum(2) == k  # every two-mask label = its own
    winner = (disagreer & agrees).to(torch.float32)  # (N, K)
    first = winner.argmax(1, keepdim=True)  # the first passing disagreer in mask order
    label = torch.where(winner.amax(1) > 0, one.gather(1, first).squeeze(1), majority)
    return label, votes


def certified(pred_map: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every two-mask label equals ``y`` -- Theorem 1, robust to any patch the mask set covers."""
    return (pred_map == y.view(-1, 1, 1)).flatten(1).all(1)


class PatchCleanser(nn.Module):
    """Images (N, 3, S, S) in [0, 1] -> (N, C) scores whose argmax is the double-masking label: one-mask
    votes plus K on the label.  ``classifier`` is any image classifier trained (or fine-tuned) on masked
    images (:class:`DoubleMasking` does that)."""

    def __init__(self, classifier: nn.Module, image: int, patch: int, per_axis: int, fill: float):
        super().__init__()
        self.classifier, self.patch, self.fill = classifier, patch, fill
        masks = mask_set(image, patch, per_axis)
        pairs, table = pair_table(len(masks))
        self.register_buffer("masks", masks, persistent=False)
        self.register_buffer("pair_masks", masks[pairs[:, 0]] * masks[pairs[:, 1]], persistent=False)
        self.register_buffer("table", table, persistent=False)
        self.num_masks = len(masks)  # K, a plain int: a constant of the graph

    def _logits(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(N, len(masks), C): the classifier on every masked copy, as one batch."""
        n, c, h, w = x.shape
        copies = masked(x.unsqueeze(1), masks, self.fill)
        return self.classifier(copies.reshape(-1, c, h, w)).reshape(n, masks.shape[0], -1)

    def one_mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, C) logits of the first-round copies (what an EOT attacker differentiates)."""
        return self._logits(x, self.masks)

    def pair_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, M, C) logits of every distinct two-mask copy (M = K (K + 1) / 2, diagonal pairs included)."""
        return self._logits(x, self.pair_masks)

    def _label_map(self, pair_logits: torch.Tensor) -> torch.Tensor:
        k = self.num_masks
        return pair_logits.argmax(2)[:, self.table.flatten()].reshape(-1, k, k)

    def prediction_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, K) two-mask labels, the one-mask labels on the diagonal (the certificate's input)."""
        return self._label_map(self.pair_logits(x))

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels (N,), one-mask votes (N, C), two-mask labels (N, K, K)) from one classifier call."""
        logits = self.pair_logits(x)
        labels = self._label_map(logits)
        label, votes = double_masking(labels, logits.shape[2])
        return label, votes, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label, votes, _ = self.decide(x)
        onehot = (label.unsqueeze(1) == torch.arange(votes.shape[1], device=x.device)).to(votes.dtype)
        return votes + float(self.num_masks) * onehot


class MaskedEOT(nn.Module):
    """The attacker's differentiable view of :class:`PatchCleanser`: log of the mean softmax over the K
    one-mask copies (expectation over the first round's masks, EOT, Athalye et al. 2018).

    Why: double masking's label is piecewise constant (no gradient).  An attacker wins outright by making
    every one-mask copy say the target (Case I), or by carrying the majority (Case III); raising the mean
    one-mask probability of the target serves both.  Each attack is then scored on the real double masking.
    """

    def __init__(self, cleanser: PatchCleanser):
        super().__init__()
        self.cleanser = cleanser

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.cleanser.one_mask_logits(x)
        return torch.logsumexp(torch.log_softmax(logits, dim=2), dim=1) - math.log(logits.shape[1])


@dataclass
class PatchCleanserConfig:
    """``patch``: side of the square patch the certificate is for; ``masks_per_axis``: the paper's
    computation budget k (K = k * k masks, K (K + 1) / 2 classifier calls per image); ``fill``: the value of
    masked pixels; ``input_size``: the model input side.  Training draws two masks of the set per image."""

    patch: int = 6
    masks_per_axis: int = 3
    fill: float = 0.5
    input_size: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.patch < self.input_size:
            raise ConfigError(f"patch: expected 1 <= patch < input_size ({self.input_size}), got {self.patch!r}")
        if not 2 <= self.masks_per_axis <= self.input_size - self.patch + 1:
            raise ConfigError(f"masks_per_axis: expected 2 .. {self.input_size - self.patch + 1} (input_size - "
                              f"patch + 1), got {self.masks_per_axis!r}")
        check_range(self.fill, "fill", lo=0, hi=1)

    def geometry(self) -> tuple[int, int, list[int]]:
        return mask_geometry(self.input_size, self.patch, self.masks_per_axis)


@register_defense("patchcleanser")
class DoubleMasking(Defense):
    """Fine-tunes the classifier on images with two random masks of the set (the paper's masked training,
    Cutout-like: every copy double masking evaluates is drawn with equal chance); wraps it in
    :class:`PatchCleanser`."""

    Config = PatchCleanserConfig

    def describe(self) -> str:
        c = self.cfg
        size, stride, starts = c.geometry()
        return (f"{len(starts) ** 2} masks {size}x{size} (stride {stride}), certified for {c.patch}x{c.patch} "
                "patches")

    def wrap(self, model: nn.Module) -> nn.Module:
        c = self.cfg
        return PatchCleanser(model, c.input_size, c.patch, c.masks_per_axis, c.fill)

    def transform(self, model, x, y, step):
        c = self.cfg
        if x.shape[2:] != (c.input_size, c.input_size):
            raise ConfigError(f"defense.input_size: {c.input_size}, but the training images are "
                              f"{tuple(x.shape[2:])}")
        masks = mask_set(c.input_size, c.patch, c.masks_per_axis)
        pick = torch.randint(0, len(masks), (2, len(x)), generator=step.generator)
        return masked(x, masks[pick[0]] * masks[pick[1]], self.cfg.fill), y

    def forward(self, model, x):
        return classifier_of(model)(x), {}

    def finish(self, model, data, run_dir, device):
        """Certified accuracy on the test split for ``patch`` (Theorem 1), recorded beside the clean one."""
        if not isinstance(model, PatchCleanser) or not len(data.test):
            return None
        x, y = torch.as_tensor(data.test.x), torch.as_tensor(data.test.y)
        with torch.no_grad():
            ok = torch.cat([certified(model.prediction_map(x[i:i + 256].to(device)), y[i:i + 256].to(device)).cpu()
                            for i in range(0, len(x), 256)])
        return {"certified_test_acc": float(ok.float().mean()), "certified_patch": self.cfg.patch}
