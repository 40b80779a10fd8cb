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


def _view(model: nn.Module, bpda: bool) -> tuple[nn.Module, str]:
    """The one dispatch behind :func:`attacker_view` and :func:`view_name`: (surrogate, what it is)."""
    from ..defenses.patchcleanser import MaskedEOT, PatchCleanser
    from ..defenses.smoothing import SmoothedClassifier, SoftVote
    from .gate_surrogate import SoftGate

    if isinstance(model, SmoothedClassifier):
        return SoftVote(model).eval(), "EOT over all ablations (SoftVote), scored on the vote"
    if isinstance(model, PatchCleanser):
        return MaskedEOT(model).eval(), "EOT over the one-mask copies (MaskedEOT), scored on double masking"
    if getattr(model, "detector", None) is not None:
        how = "BPDA through the gate (hard forward, soft backward)" if bpda else "soft select through the gate"
        return SoftGate(model, bpda=bpda).eval(), how + ", scored on the hard gate"
    return model, "white-box on the classifier"


def attacker_view(model: nn.Module, bpda: bool = False) -> nn.Module:
    """The differentiable module an adaptive attack on ``model`` optimises through (see the module docstring)."""
    return _view(model, bpda)[0]


def view_name(model: nn.Module, bpda: bool = False) -> str:
    """One line saying what :func:`attacker_view` differentiates and what the attack is scored on."""
    return _view(model, bpda)[1]


def surrogate_name(model: nn.Module) -> str | None:
    """:func:`view_name` when :func:`attacker_view` differentiates something other than ``model`` itself (a
    defense whose deployed decision has no useful gradient), else None."""
    view, name = _view(model, False)
    return None if view is model else name
