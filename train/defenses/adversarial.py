"""Adversarial training: a fraction of every batch replaced by attack examples made on the model in training.

:class:`AdversarialTraining` is the shared mechanism (Madry et al. 2018); a
defense names the attack.  Each batch's attack is seeded from (seed, epoch,
batch), so a resumed run makes the same examples.  Registered here: PGD
adversarial training (BlurNet's Adv-train baseline); DOA's rectangular
occlusion training lives in :mod:`train.defenses.doa`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge.config import check_range
from edge.errors import ConfigError

from ..attacks.base import Attack
from .base import Defense, register_defense


class AdversarialTraining(Defense):
    """Replaces the first ``cfg.adv_fraction`` of each batch by :meth:`make_attack`'s examples."""

    def make_attack(self, model: torch.nn.Module) -> Attack:
        raise NotImplementedError

    def setup(self, model, device):
        self.attack = self.make_attack(model)

    def transform(self, model, x, y, step):
        k = max(1, int(round(self.cfg.adv_fraction * len(x))))
        self.attack.batch_size = k  # one attack batch: its random start is seeded by the seed alone
        seed = step.seed * 1_000_003 + step.epoch * 10_007 + step.index
        adv = self.attack.generate(x[:k].to(step.device), y[:k].to(step.device), seed=seed).cpu()
        return torch.cat([adv, x[k:]]), y


@dataclass
class PGDTrainingConfig:
    """``adv_fraction`` of each batch becomes PGD examples: ``attack_steps`` steps of ``step_size`` in the
    L-inf ball of radius ``eps``."""

    eps: float = 8 / 255
    attack_steps: int = 7
    step_size: float = 2 / 255
    adv_fraction: float = 0.5

    def __post_init__(self) -> None:
        check_range(self.eps, "eps", lo=0, hi=1, lo_open=True)
        check_range(self.step_size, "step_size", lo=0, hi=1, lo_open=True)
        if self.attack_steps < 1:
            raise ConfigError(f"attack_steps: expected >= 1, got {self.attack_steps}")
        check_range(self.adv_fraction, "adv_fraction", lo=0, hi=1, lo_open=True)


@register_defense("pgd_at")
class PGDAdversarialTraining(AdversarialTraining):
    Config = PGDTrainingConfig

    def describe(self) -> str:
        return f"eps={self.cfg.eps * 255:.0f}/255, {self.cfg.attack_steps} steps"

    def make_attack(self, model):
        from ..attacks.pgd import PGD

        c = self.cfg
        return PGD(model, eps=c.eps, alpha=c.step_size, steps=c.attack_steps)
