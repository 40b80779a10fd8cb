"""DOA: defense against occlusion attacks (Wu, Tong & Vorobeychik, ICLR 2020, Sec. 4).

Adversarial training on rectangular occlusion attack (ROA) examples: each
batch's images get the loss-maximising grey rectangle, whose content is then
optimised by signed-gradient steps (:class:`train.attacks.roa.ROA`).  The
paper fine-tunes a trained classifier this way (start from it with
``model.init``); it is the only published defense measured on RP2's
stop-sign setting with LISA-CNN at 32x32.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import check_choice, check_positive_ints, check_range

from ..attacks.roa import SEARCHES
from .adversarial import AdversarialTraining
from .base import register_defense


@dataclass
class DOAConfig:
    """ROA of ``height`` x ``width`` pixels (7x7 or 10x5 in the paper), position by ``search`` on a ``stride``
    grid (``candidates`` for the gradient search), ``steps`` signed steps of ``alpha`` inside it, on
    ``adv_fraction`` of each batch (the paper trains on ROA examples only)."""

    height: int = 7
    width: int = 7
    stride: int = 2
    search: str = "gradient"
    candidates: int = 5
    steps: int = 30
    alpha: float = 4 / 255
    adv_fraction: float = 1.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "height", "width", "stride", "candidates", "steps")
        check_choice(self.search, SEARCHES, "search")
        check_range(self.alpha, "alpha", lo=0, hi=1, lo_open=True)
        check_range(self.adv_fraction, "adv_fraction", lo=0, hi=1, lo_open=True)


@register_defense("doa")
class DOA(AdversarialTraining):
    Config = DOAConfig

    def describe(self) -> str:
        c = self.cfg
        return f"ROA {c.height}x{c.width}, {c.search} search, {c.steps} steps"

    def make_attack(self, model):
        from ..attacks.roa import ROA

        c = self.cfg
        return ROA(model, height=c.height, width=c.width, stride=c.stride, search=c.search,
                   candidates=c.candidates, steps=c.steps, alpha=c.alpha)
