"""The adaptive attacker's view of each defended model: the right surrogate, and a gradient that reaches the input
where the deployed decision (vote, double masking, hard gate) has none."""

from __future__ import annotations

import torch

from train.attacks.adaptive_view import attacker_view, view_name
from train.attacks.gate_surrogate import SoftGate
from train.defenses import DefendedModel
from train.defenses.dct_svm import DCTSVMDetector
from train.defenses.patchcleanser import MaskedEOT, PatchCleanser
from train.defenses.prn import Rectifier
from train.defenses.smoothing import SmoothedClassifier, SoftVote
from train.models import create_model


def _input_grad(view: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(view(x)[:, 1].sum(), x)
    return g


def test_each_defense_gets_its_surrogate_and_the_gradient_reaches_the_input():
    torch.manual_seed(0)
    clf = create_model("lisa_cnn_tiny", num_classes=4).eval()
    rect = Rectifier(width=4, blocks=1)
    models = {
        "smoothing": (SmoothedClassifier(clf, width=32, band=4, fill=0.5).eval(), SoftVote, "vote"),
        "patchcleanser": (PatchCleanser(clf, image=32, patch=6, per_axis=3, fill=0.5).eval(), MaskedEOT,
                          "double masking"),
        "gate": (DefendedModel(clf, rectifier=rect, detector=DCTSVMDetector(rect, 32)).eval(), SoftGate, "hard gate"),
    }
    x = torch.rand(2, 3, 32, 32)
    for name, (model, surrogate, scored_on) in models.items():
        view = attacker_view(model)
        assert isinstance(view, surrogate), name
        assert scored_on in view_name(model), name
        assert _input_grad(view, x).abs().sum() > 0, name
    gate = models["gate"][0]
    assert attacker_view(gate, bpda=True).bpda and not attacker_view(gate).bpda
    assert "BPDA" in view_name(gate, bpda=True)
    assert attacker_view(clf) is clf and view_name(clf) == "white-box on the classifier"
