"""What an attacker who knows the defense differentiates, for every defended model this package ships.

The deployed decisions of the certified wrappers and of the PRN gate are piecewise constant, so an attack on
them directly gets no gradient and would report a defense that only hides it.  The adaptive attacker instead
differentiates a surrogate and is scored on the real model:

* column smoothing: the mean softmax over all its ablations (:class:`~train.defenses.smoothing.SoftVote`, EOT);
* PatchCleanser: the mean softmax over its one-mask copies (:class:`~train.defenses.patchcleanser.MaskedEOT`);
* the PRN gate: the soft select over both branches (:class:`~train.attacks.gate_surrogate.SoftGate`), or BPDA
  (hard forward, soft backward) with ``bpda=True``;
* anything else (plain classifiers, BlurNet, DOA, Deep Defense): the model itself (white-box).
"""

from __future__ import annotations

from torch import nn


def attacker_view(model: nn.Module, bpda: bool = False) -> nn.Module:
    """The differentiable module an adaptive attack on ``model`` optimises through (see the module docstring)."""
    from ..defenses.patchcleanser import MaskedEOT, PatchCleanser
    from ..defenses.smoothing import SmoothedClassifier, SoftVote
    from .gate_surrogate import SoftGate

    if isinstance(model, SmoothedClassifier):
        return SoftVote(model).eval()
    if isinstance(model, PatchCleanser):
        return MaskedEOT(model).eval()
    if getattr(model, "detector", None) is not None:
        return SoftGate(model, bpda=bpda).eval()
    return model


def view_name(model: nn.Module, bpda: bool = False) -> str:
    """One line saying what :func:`attacker_view` differentiates and what the attack is scored on."""
    from ..defenses.patchcleanser import PatchCleanser
    from ..defenses.smoothing import SmoothedClassifier

    if isinstance(model, SmoothedClassifier):
        return "EOT over all ablations (SoftVote), scored on the vote"
    if isinstance(model, PatchCleanser):
        return "EOT over the one-mask copies (MaskedEOT), scored on double masking"
    if getattr(model, "detector", None) is not None:
        return ("BPDA through the gate (hard forward, soft backward)" if bpda
                else "soft select through the gate") + ", scored on the hard gate"
    return "white-box on the classifier"
