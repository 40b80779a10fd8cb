"""FRU: selective feature regeneration units (Borkar, Heide & Karam, CVPR 2020).

Why this defense: a universal perturbation moves the output of a conv filter by at most
``||W_m||_1 * ||r||_inf`` (their Eq. 2), so the filters with the largest weight L1 norm carry most of
the adversarial noise.  FRU ranks each conv layer's filters by that norm (Sec. 4.1), and regenerates only
the top ``ratio`` (q, 50% in the paper) of that layer's outputs with a small trained residual block
(1x1 -> 3x3 -> 3x3 -> 1x1 plus a skip, Sec. 4.2, Fig. 4); every other channel passes through untouched, in
its original position.  The base classifier is frozen; the units are trained with the classifier's own
cross-entropy on clean and universally perturbed images in every batch (Eq. 7), the perturbations drawn
from a set V of real UAPs grown by the paper's synthetic mixing (Sec. 4.3, Algorithm 1).

Where the units act on LISA-CNN: on the outputs of its first ``layers`` conv layers (up to all three; the
paper uses up to six on deeper networks), before each ReLU -- the filter outputs phi_m that Eq. 2 bounds.
A unit's last 1x1 conv starts at zero, so an untrained FRU model computes exactly the base classifier.
In the graph the channel selection is a constant permutation (ONNX Gather), a split (Slice) and a Concat,
then the inverse permutation (Gather): the deployed model is one plain graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edge.config import check_range
from edge.errors import ConfigError, SignguardError

from ..attacks.bank import perturbations_digest
from ..attacks.uap import load_perturbation_set
from .base import Defense, register_defense
from .restoration import restoration_score

log = logging.getLogger(__name__)

#: LisaCNN's conv layers in data order: the places a unit can regenerate.
CONV_LAYERS = ("conv1", "conv2", "conv3")

Edit = Callable[[str, torch.Tensor], torch.Tensor]


def rank_filters(weight: torch.Tensor) -> torch.Tensor:
    """Output channels of a conv weight (C_out, C_in, kh, kw), most susceptible first: descending
    ``||W_m||_1`` (Sec. 4.1); equal norms keep their index order."""
    l1 = weight.detach().abs().flatten(1).sum(1)
    return torch.sort(l1, descending=True, stable=True).indices


def regenerated_count(channels: int, ratio: float) -> int:
    """Channels a unit regenerates in a layer of ``channels``: ``ratio`` of them, at least one."""
    return max(1, min(channels, int(round(ratio * channels))))


class FeatureRegenerationUnit(nn.Module):
    """The residual block D_l of Fig. 4: x + 1x1(relu(3x3(relu(3x3(relu(1x1(x))))))), the inner convs ``width``
    times as wide as its input (the paper leaves the width open; its public CaffeNet units use 0.75), with
    batch normalisation after the inner convs as in the residual blocks of He et al. that the paper builds
    on.  Why BN: LisaCNN's conv outputs reach |50| (conv3) and the base's loss on perturbed images exceeds 10
    nats at the start, and without it the first Adam steps knocked clean accuracy from 99% to 82% (measured
    on 600 test images); with it clean accuracy stayed at 99% while the units learned.  In the graph it folds
    into the convs.

    The last 1x1 conv is zero-initialised, so the unit starts as the identity (the regenerated model then
    equals the base classifier) and training only has to learn the correction.
    """

    def __init__(self, channels: int, width: float = 1.0):
        super().__init__()
        c, h = channels, max(1, int(round(width * channels)))
        self.body = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, c, 1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SelectiveRegeneration(nn.Module):
    """One layer's regeneration: the ``count`` top-ranked channels through a unit, the rest untouched.

    ``order`` is the ranking (a persistent buffer, so a loaded checkpoint keeps the ranking it was trained
    with whatever weights the model was built with); ``restore`` is its inverse permutation.  The
    untouched channels are only gathered and concatenated, so they come out bit-identical.
    """

    def __init__(self, order: torch.Tensor, count: int, width: float = 1.0):
        super().__init__()
        order = order.long()
        if sorted(order.tolist()) != list(range(len(order))):
            raise SignguardError(f"fru: channel order must be a permutation of 0..{len(order) - 1}")
        self.count = int(count)
        self.register_buffer("order", order.clone())
        self.register_buffer("restore", torch.argsort(order))
        self.unit = FeatureRegenerationUnit(self.count, width)

    @property
    def regenerated(self) -> torch.Tensor:
        """Indices of the regenerated channels (S_l,reg in the paper)."""
        return self.order[: self.count]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        ranked = f.index_select(1, self.order)
        out = torch.cat([self.unit(ranked[:, : self.count]), ranked[:, self.count:]], dim=1)
        return out.index_select(1, self.restore)


# ---------------------------------------------------------------------------- LisaCNN with units


def _check_lisa(net: nn.Module) -> None:
    missing = [n for n in (*CONV_LAYERS, "normalize", "fc") if not isinstance(getattr(net, n, None), nn.Module)]
    if missing:
        raise ConfigError(f"defense fru: the classifier ({type(net).__name__}) needs LisaCNN's layers "
                          f"{list(CONV_LAYERS)} + normalize + fc; missing {missing} (put fru first in a stack)")


def lisa_features1(net: nn.Module, x: torch.Tensor, edit: Edit) -> torch.Tensor:
    """LisaCNN's first-layer maps with ``edit(name, conv output)`` applied before the ReLU (and blur)."""
    f = torch.relu(edit("conv1", net.conv1(net.normalize(x))))
    return net.blur(f) if getattr(net, "blur", None) is not None else f


def lisa_head(net: nn.Module, f: torch.Tensor, edit: Edit) -> torch.Tensor:
    """The rest of LisaCNN from the first-layer maps, with ``edit`` on conv2's and conv3's outputs."""
    f = torch.relu(edit("conv2", net.conv2(f)))
    f = torch.relu(edit("conv3", net.conv3(f)))
    return net.fc(torch.flatten(f, 1))


def _unchanged(name: str, f: torch.Tensor) -> torch.Tensor:
    return f


def lisa_forward(net: nn.Module, x: torch.Tensor, edit: Edit = _unchanged) -> torch.Tensor:
    """LisaCNN's forward pass with a hook on every conv output: equals ``net(x)`` when ``edit`` changes nothing
    (tested), and lets the units, the ranking analysis and its noise masking reach each layer."""
    return lisa_head(net, lisa_features1(net, x, edit), edit)


class RegeneratedClassifier(nn.Module):
    """The frozen ``base`` LisaCNN with a :class:`SelectiveRegeneration` on the outputs of its first ``layers``
    conv layers (Eq. 6).  Keeps LisaCNN's ``features1``/``head`` split (first-layer maps after conv1's unit)."""

    def __init__(self, base: nn.Module, ratio: float = 0.5, layers: int = 3, width: float = 1.0):
        super().__init__()
        _check_lisa(base)
        self.base = base
        regen = {}
        for name in CONV_LAYERS[:layers]:
            w = getattr(base, name).weight
            regen[name] = SelectiveRegeneration(rank_filters(w), regenerated_count(w.shape[0], ratio), width)
        self.regen = nn.ModuleDict(regen)
        self.num_classes = getattr(base, "num_classes", None)

    def train(self, mode: bool = True) -> RegeneratedClassifier:
        """The base keeps its inference behaviour while the units train (its parameters are left unchanged)."""
        super().train(mode)
        self.base.train(False)
        return self

    def _edit(self, name: str, f: torch.Tensor) -> torch.Tensor:
        return self.regen[name](f) if name in self.regen else f

    def features1(self, x: torch.Tensor) -> torch.Tensor:
        return lisa_features1(self.base, x, self._edit)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return lisa_head(self.base, f, self._edit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features1(x))

    @property
    def int8_fp32_prefixes(self) -> tuple[str, ...]:
        """ONNX node-name prefixes the INT8 export keeps in FP32 (read by :mod:`export.bundle`): the units.

        Why: quantized, they lose what they were trained for.  A held-out sPGD UAP's success on the synthetic
        LISA-18 FRU went from 5.6% (FP32) to 15.7% with every node quantized (GTSRB-32: 38.3% -> 68.3%), and to
        6.0% with the units kept FP32 (conv1 alone FP32: 15.8%; conv1's unit alone: 10.2%), measured with
        ``signguard verify --uap``.  The units are the small part of the graph; the frozen convs stay INT8."""
        return tuple(f"/{name}/unit/" for name in self.regen)


def regenerated_of(model: nn.Module) -> RegeneratedClassifier:
    """The :class:`RegeneratedClassifier` inside ``model`` (FRU may sit in a defense stack)."""
    regen = next((m for m in model.modules() if isinstance(m, RegeneratedClassifier)), None)
    if regen is None:
        raise ConfigError("defense fru: the model holds no regenerated classifier (put fru first in a list)")
    return regen


def start_units(model: nn.Module, run: str) -> None:
    """Load the units of the FRU checkpoint ``run`` into ``model``'s: refused unless both regenerate the same
    channels of the same base (a unit trained on other features would restore the wrong ones)."""
    from ..checkpoint import load_checkpoint

    mine, theirs = regenerated_of(model), regenerated_of(load_checkpoint(run)[0])
    base, other = mine.base.state_dict(), theirs.base.state_dict()
    if base.keys() != other.keys() or not all(torch.equal(base[k], other[k].to(base[k].device)) for k in base):
        raise ConfigError(f"units: {run} was trained on another base classifier than model.init")
    try:
        mine.regen.load_state_dict(theirs.regen.state_dict(), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"units: {run}'s units do not fit this recipe's (ratio, layers and width must match): "
                          f"{str(e).splitlines()[0]}") from None


@dataclass
class FRUConfig:
    """Regenerate the top ``ratio`` of filters (by weight L1 norm) in the first ``layers`` conv layers.

    Training perturbations: the real universal perturbations under ``perturbations`` (a folder of
    ``signguard attack uap`` outputs, made on the frozen base) plus ``n_synthetic`` of Borkar et al.'s
    synthetic mixtures of them (seed ``seed``); ``adv_fraction`` of every batch gets one of the pool, drawn
    uniformly, the rest stays clean (the paper trains on both in every mini-batch).  ``max_scale`` > 1
    multiplies each drawn perturbation by a factor uniform in [1, max_scale]: the units then also see
    budgets above the one the pool was made at, since the attacker's budget is not known at deploy time.
    ``width`` scales the units' inner convs: GTSRB-32's units underfit the training perturbations at 1.0, and
    twice as wide they restore more of the held-out ones (reports/fru/report.md).

    ``units`` and ``secondary`` are the paper's further round (Sec. 5.1: "iterate through the training of our
    defense with additional adversarial perturbations computed against our defense"): the units start from
    the trained FRU run ``units`` (same base, q, layers and width), and the universal perturbations under
    ``secondary``, made against that defended model, join V (and so the synthetic mixtures).  Why: the
    units trained on base-made perturbations alone leave an attacker who knows them a fooling ratio of ~0.9.
    """

    ratio: float = 0.5
    layers: int = 3
    perturbations: str = ""
    n_synthetic: int = 2000
    adv_fraction: float = 0.5
    max_scale: float = 1.0
    width: float = 1.0
    units: str = ""
    secondary: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self.ratio, "ratio", lo=0, hi=1, lo_open=True)
        if not 1 <= self.layers <= len(CONV_LAYERS):
            raise ConfigError(f"layers: expected 1..{len(CONV_LAYERS)} (LisaCNN's conv layers), got {self.layers}")
        if not self.perturbations:
            raise ConfigError("perturbations: required: a folder of universal perturbations (.npy + sidecar) "
                              "made on the base classifier")
        if self.n_synthetic < 0:
            raise ConfigError(f"n_synthetic: expected >= 0, got {self.n_synthetic}")
        check_range(self.adv_fraction, "adv_fraction", lo=0, hi=1, lo_open=True)
        check_range(self.max_scale, "max_scale", lo=1, hi=4)
        check_range(self.width, "width", lo=0, hi=4, lo_open=True)


@register_defense("fru")
class FRU(Defense):
    """Wraps the classifier in :class:`RegeneratedClassifier`, trains only the units on clean + perturbed
    batches.  Start the classifier from a trained checkpoint (``model.init``): the ranking is computed on
    the weights it wraps."""

    Config = FRUConfig

    def describe(self) -> str:
        c = self.cfg  # width and max_scale only where set: two runs differing in them must not read alike in a sweep
        wide = f", units {c.width:g}x wide" if c.width != 1 else ""
        scaled = f" scaled by U[1, {c.max_scale:g}]" if c.max_scale > 1 else ""
        again = ", a further round on UAPs made against the units" if c.secondary else ""
        return f"q={100 * c.ratio:g}%, {c.layers} layer(s){wide}, {c.n_synthetic} synthetic UAPs{scaled}{again}"

    def wrap(self, model: nn.Module) -> nn.Module:
        return RegeneratedClassifier(model, self.cfg.ratio, self.cfg.layers, self.cfg.width)

    def trainable(self, model: nn.Module):
        """The units only; the base classifier's parameters stop requiring gradients (Sec. 5.1)."""
        regen = regenerated_of(model)
        for p in regen.base.parameters():
            p.requires_grad_(False)
        return regen.regen.parameters()

    def setup(self, model: nn.Module, device: torch.device) -> None:
        from ..attacks.synthetic_uap import borkar_synthetic

        real, metas = load_perturbation_set(self.cfg.perturbations)
        if self.cfg.secondary:
            more, more_metas = load_perturbation_set(self.cfg.secondary)
            if more.shape[1:] != real.shape[1:]:
                raise SignguardError(f"fru: secondary perturbations {self.cfg.secondary} have shape "
                                     f"{more.shape[1:]}, those in {self.cfg.perturbations} {real.shape[1:]}")
            real, metas = np.concatenate([real, more]), metas + more_metas
        if self.cfg.units:
            start_units(model, self.cfg.units)
        parts = [real]
        if self.cfg.n_synthetic:
            parts.append(borkar_synthetic(self.cfg.n_synthetic, real, seed=self.cfg.seed))
        self.pool = torch.from_numpy(np.concatenate(parts))
        log.info("fru: %d real + %d synthetic training perturbations from %s (max |v| %.4f)", len(real),
                 self.cfg.n_synthetic, self.cfg.perturbations, float(self.pool.abs().max()))
        self.sources = metas

    def validation_key(self) -> str | None:
        return perturbations_digest(self.pool)

    def validate(self, model: nn.Module, split, device: torch.device) -> float | None:
        """Restoration on validation images under the training pool (clean accuracy alone would favour units
        that leave the base untouched)."""
        return restoration_score(model, split, self.pool, device) if len(split) else None

    def transform(self, model, x, y, step):
        if self.pool.shape[1:] != x.shape[1:]:
            raise SignguardError(f"fru: training perturbations have shape {tuple(self.pool.shape[1:])}, the "
                                 f"images {tuple(x.shape[1:])}")
        k = max(1, int(round(self.cfg.adv_fraction * len(x))))
        which = torch.randperm(len(x), generator=step.generator)[:k]
        pick = torch.randint(len(self.pool), (k,), generator=step.generator)
        v = self.pool[pick]
        if self.cfg.max_scale > 1:
            u = torch.rand((k, 1, 1, 1), generator=step.generator)
            v = v * (1 + (self.cfg.max_scale - 1) * u)
        x = x.clone()
        x[which] = (x[which] + v).clamp(0.0, 1.0)
        return x, y
