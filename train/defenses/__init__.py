"""Defenses behind one interface (:mod:`train.defenses.base`).

Registering a defense is one import line below: each module registers its
classes with ``@register_defense``.
"""

from __future__ import annotations

from typing import Any, Optional

from . import (  # noqa: F401  (registration)
    adversarial,
    augmentation,
    blurnet,
    deep_defense,
    doa,
    fru,
    input_filter,
    none,
    nrp,
    patchcleanser,
    prn,
    smoothing,
    sticker_training,
)
from .base import (
    DefendedModel,
    Defense,
    DefenseStack,
    Regularizer,
    Step,
    available_defenses,
    classifier_of,
    defense_from_dict,
    register_defense,
)

__all__ = ["DefendedModel", "Defense", "DefenseStack", "Regularizer", "Step", "attack_regularizer",
           "available_defenses", "classifier_of", "defense_from_dict", "register_defense"]


def attack_regularizer(defense: Any) -> Optional[Regularizer]:
    """The first-layer term a defense-aware attacker adds to its loss (BlurNet Eq. 9-11) for a checkpoint's
    recorded ``defense`` (a mapping or a list), or None when the defense has none."""
    return DefenseStack.from_config(defense, "defense", ignore=LEGACY_FIELDS).attack_regularizer()


# Fields of the single flat DefenseConfig that checkpoints written before the registry recorded for every
# defense kind; reading such a sidecar drops the ones its kind does not use.
LEGACY_FIELDS = ("alpha", "kernel_size", "learnable", "window", "sigma", "eps", "attack_steps", "step_size",
                 "adv_fraction")
