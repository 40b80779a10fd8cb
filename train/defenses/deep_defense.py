"""Deep Defense (Yan, Guo & Zhang, NeurIPS 2018): a DeepFool-perturbation-norm regulariser in the loss.

The training objective is Eq. 3 with Eq. 6 as its second term:

    L = (1/N) sum_k CE(y_k, f(x_k))
        + (lam/N) [ sum_{k in T} exp(-c ||Delta_k||_2 / ||x_k||_2) + sum_{k in F} exp(d ||Delta_k||_2 / ||x_k||_2) ]

with ``T`` the samples the network classifies correctly and ``F`` the rest.  ``Delta_k`` is DeepFool's
perturbation, computed by :func:`train.attacks.deepfool_unrolled.unrolled_deepfool` so that the gradient
flows through every attack iteration (the paper's recursive "reverse" network): for a correct sample,
minimising ``exp(-c rho)`` pushes its decision boundary away; a misclassified sample is "fooled" toward its
ground truth and ``exp(d rho)`` pulls that boundary closer.  The ``1/N`` on both sums is the reference
implementation's normalisation (``ZiangYan/deepdefense.pytorch``: cross-entropy averaged over the batch,
the regulariser summed and divided by the batch size), which is what ``lam = 15`` is calibrated against.

As in the paper the classifier is fine-tuned from a trained model (``model.init``); what ships is the
plain classifier, so export and the device need nothing new.

Which epoch is kept: with ``select_max_drop`` set, the one with the highest validation rho_2 among the epochs
within that much validation accuracy of the starting model -- the issue's criterion, on validation data.  Plain
validation accuracy (the trainer's default) favours the least regularised epochs: on the GPU c sweep it kept
GTSRB-32's c = 50 run at its second epoch of sixteen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from edge.config import check_range
from edge.errors import ConfigError

from ..attacks.deepfool import DeepFool
from ..attacks.deepfool_unrolled import unrolled_deepfool
from ..eval.metrics import rho_2
from .base import Defense, register_defense


def perturbation_ratio(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``||Delta_k||_2 / ||x_k||_2`` per sample (N,): the quantity Eq. 6 and rho_2 (Eq. 7) are built on."""
    return delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)


def deep_defense_terms(rho_correct: torch.Tensor, rho_wrong: torch.Tensor, c: float, d: float) -> torch.Tensor:
    """Eq. 6 without ``lam``: ``sum_T exp(-c rho) + sum_F exp(d rho)`` (a scalar).  Decreasing in the correct
    samples' ratios (their perturbations are pushed up), increasing in the misclassified ones'.  In float64:
    ``exp(d rho)`` overflows float32 from rho = 88 / d (17.6 at d = 5), which a misclassified image whose
    targeted DeepFool runs to the edge of the pixel box can reach."""
    return (torch.exp(-c * rho_correct.double()).sum() + torch.exp(d * rho_wrong.double()).sum()).float()


@dataclass
class DeepDefenseConfig:
    """Eq. 6's weight ``lam`` (lambda) and scales ``c`` (correct samples) and ``d`` (misclassified); the paper's
    MNIST/CIFAR-10 values are lam = 15, c = 25, d = 5.

    The unrolled DeepFool: ``max_iter`` iterations (the unroll depth; the reference code trains with 5),
    ``num_candidates`` classes (the top-k clean logits, the predicted one included; the reference code uses
    all 10 of MNIST/CIFAR-10), ``overshoot`` 0.02 as in DeepFool.  ``reg_samples``: the regulariser is computed
    on the first ``reg_samples`` images of each (shuffled) batch, 0 = all of them -- an unbiased estimate of
    the batch term for when the unrolled attack is too slow on the whole batch.

    ``min_rms``: images whose RMS pixel value ``||x||_2 / sqrt(dim)`` is below it are left out of the regulariser
    (they keep their cross-entropy).  The ratio divides by ``||x||_2``, so a near-black image -- which the
    photometric jitter of real-data training makes out of dark GTSRB photographs, down to all zeros -- turns a
    finite perturbation into rho ~ 1e9 and Eq. 6's ``exp(d rho)`` into inf.  Real images of both datasets are
    above 0.03.

    ``select_max_drop``: None keeps the epoch with the best validation accuracy; a number keeps the one with the
    highest validation rho_2 (the project's DeepFool on ``select_images`` validation images, seed 0) among the
    epochs whose validation accuracy is within ``select_max_drop`` of the starting model's.
    """

    lam: float = 15.0
    c: float = 25.0
    d: float = 5.0
    max_iter: int = 3
    num_candidates: int = 4
    overshoot: float = 0.02
    reg_samples: int = 0
    min_rms: float = 0.02
    select_max_drop: Optional[float] = None
    select_images: int = 300

    def __post_init__(self) -> None:
        check_range(self.lam, "lam", lo=0)
        check_range(self.c, "c", lo=0, lo_open=True)
        check_range(self.d, "d", lo=0, lo_open=True)
        check_range(self.overshoot, "overshoot", lo=0)
        check_range(self.min_rms, "min_rms", lo=0, hi=1)
        if self.max_iter < 1:
            raise ConfigError(f"max_iter: expected an integer >= 1 (the DeepFool unroll depth), got {self.max_iter}")
        if self.num_candidates < 2:
            raise ConfigError(f"num_candidates: expected an integer >= 2, got {self.num_candidates}")
        if self.select_max_drop is not None:
            check_range(self.select_max_drop, "select_max_drop", lo=0, hi=1)
        if self.select_images < 1:
            raise ConfigError(f"select_images: expected a positive integer, got {self.select_images}")
        if self.reg_samples < 0:
            raise ConfigError(f"reg_samples: expected >= 0 (0 = the whole batch), got {self.reg_samples}")


@register_defense("deep_defense")
class DeepDefense(Defense):
    """Eq. 6 on the unrolled DeepFool perturbation, added to the cross-entropy of every batch."""

    Config = DeepDefenseConfig
    start_acc: float | None = None  # the starting model's validation accuracy (prepare), for the selection

    def describe(self) -> str:
        c = self.cfg
        return (f"lambda={c.lam:g}, c={c.c:g}, d={c.d:g}, DeepFool unrolled {c.max_iter} it., "
                f"top-{c.num_candidates}")

    def prepare(self, model, data, run_dir, device) -> None:
        """The starting model's validation accuracy (the trainer calls this before a resume loads its weights,
        so it is always ``model.init``'s), which the selection's accuracy budget is measured from."""
        if self.cfg.select_max_drop is not None:
            from ..trainer import accuracy

            self.start_acc = accuracy(model, data.val, device)

    def validation_key(self) -> str | None:
        c = self.cfg
        return None if c.select_max_drop is None else f"rho_2:{c.select_max_drop}:{c.select_images}:{self.start_acc}"

    def validate(self, model, split, device) -> float | None:
        """Validation rho_2 for an epoch within the accuracy budget; below every such epoch (accuracy - 1, so
        still ordered by accuracy) for one outside it."""
        c = self.cfg
        if c.select_max_drop is None or not len(split):
            return None
        from ..trainer import accuracy

        acc = accuracy(model, split, device)
        if acc < self.start_acc - c.select_max_drop:
            return acc - 1.0
        sub = split.sample(c.select_images, 0)
        x, y = torch.from_numpy(sub.x).to(device), torch.from_numpy(sub.y).long().to(device)
        return rho_2(sub.x, DeepFool(model)(x, y, seed=0).info["r_norm"])

    def loss(self, model, x, y, logits, aux):
        c = self.cfg
        if c.lam == 0:
            return None
        m = len(x) if c.reg_samples == 0 else min(c.reg_samples, len(x))
        x, y, pred = x[:m], y[:m], logits[:m].detach().argmax(1)
        keep = x.flatten(1).norm(dim=1) >= c.min_rms * x[0].numel() ** 0.5
        return c.lam * self.regularizer(model, x[keep], y[keep], pred[keep] == y[keep]) / m

    def regularizer(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor
                    ) -> torch.Tensor:
        """``sum_T exp(-c rho) + sum_F exp(d rho)`` on ``x`` with the unrolled DeepFool: untargeted from the
        (correct) prediction for ``T``, toward the label ``y`` for ``F``."""
        c = self.cfg
        xt, xf = x[correct], x[~correct]
        dt, _ = unrolled_deepfool(model, xt, max_iter=c.max_iter, overshoot=c.overshoot,
                                  num_candidates=c.num_candidates)
        df, _ = unrolled_deepfool(model, xf, max_iter=c.max_iter, overshoot=c.overshoot, target=y[~correct])
        return deep_defense_terms(perturbation_ratio(dt, xt), perturbation_ratio(df, xf), c.c, c.d)
