"""The adaptive attacker's view of each defended model: the right surrogate, and a gradient that reaches the input
where the deployed decision (vote, double masking, hard gate) has none."""

from __future__ import annotations

import torch

from train.attacks.adaptive_view import attacker_view, surrogate_name, view_name
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
        assert surrogate_name(model) == view_name(model), name
    gate = models["gate"][0]
    assert attacker_view(gate, bpda=True).bpda and not attacker_view(gate).bpda
    assert "BPDA" in view_name(gate, bpda=True)
    assert attacker_view(clf) is clf and view_name(clf) == "white-box on the classifier"
    assert surrogate_name(clf) is None


def test_signguard_attack_crafts_through_the_view_and_scores_the_real_model(tmp_path):
    """``signguard attack pgd`` on a PatchCleanser checkpoint: the attack differentiates MaskedEOT (the wrapper's
    own output is piecewise constant), the sidecar says so, and the stored predictions are double masking's."""
    import json

    import numpy as np

    from train.checkpoint import load_checkpoint
    from train.config import DataConfig, ModelConfig, OptimConfig, Recipe
    from train.eval.attack_artifacts import pgd_examples
    from train.trainer import predict, train

    recipe = Recipe(name="pc", data=DataConfig(train_per_class=4, test_per_class=2),
                    model=ModelConfig(name="lisa_cnn_tiny"), defense={"kind": "patchcleanser", "patch": 6},
                    optim=OptimConfig(epochs=1, batch_size=32, seed=0))
    train(recipe, tmp_path / "pc", progress=False)
    # no random start: x_adv moves only where the attack got a gradient (double masking itself gives none)
    art = pgd_examples(tmp_path / "pc", tmp_path / "pgd", views=3, eps=16 / 255, steps=3, random_start=False)
    side = json.loads((tmp_path / "pgd" / "pgd.json").read_text())
    assert "double masking" in side["attacker_view"]
    model, _ = load_checkpoint(tmp_path / "pc")
    z = np.load(tmp_path / "pgd" / "pgd.npz")
    assert np.array_equal(z["pred_adv"], predict(model, z["x_adv"]))
    assert np.abs(z["x_adv"] - z["x"]).max() > 0  # the gradient reached the input through the view
    assert art.metrics["success_rate"] == float(np.mean(z["pred_adv"] != z["y"]))
