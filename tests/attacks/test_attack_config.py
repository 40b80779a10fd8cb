"""Every attack's ``config()`` names each hyper-parameter of its constructor with the value it runs with, so
reports print what ran; the constructor's signature is the only place a default is declared."""

import inspect

import pytest
from torch import nn

from train.attacks.base import hyperparameters
from train.attacks.deepfool import DeepFool
from train.attacks.fgsm import FGSM
from train.attacks.pgd import PGD
from train.attacks.rp2 import RP2
from train.attacks.uap import UAP, SPGDUniversal

CLASSES = [FGSM, PGD, DeepFool, UAP, SPGDUniversal, RP2]
# one non-default value per hyper-parameter, to see it come back from config()
CHANGED = {"eps": 0.05, "alpha": 0.02, "steps": 3, "norm": "l2", "random_start": False, "loss": "margin",
           "restarts": 1, "batch_size": 4, "overshoot": 0.05, "max_iter": 7, "num_candidates": 3, "xi": 0.1,
           "target_fooling": 0.5, "max_passes": 2, "deepfool_iter": 4, "loss_clip": 2.0, "mask": "sign", "res": 16,
           "lr": 0.1, "lam": 0.01, "nps_weight": 0.5, "snap": False, "noise": 0.0, "views_per_step": 2, "dct_dim": 8,
           "untargeted": True, "kappa": 2.0}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_config_reports_every_hyperparameter_default_included(cls):
    params = hyperparameters(cls)
    assert "model" not in params and "progress" not in params and "feature_penalty" not in params
    cfg = cls(nn.Identity()).config()
    assert set(params) <= set(cfg)
    for name, p in params.items():
        shown = "default" if (cls, name) == (RP2, "palette") else p.default
        assert cfg[name] == shown, name
    changed = {k: CHANGED[k] for k in params if k != "palette"}  # a palette file is tested in test_rp2
    assert cls(nn.Identity(), **changed).config() == {**cfg, **changed}


def test_hyperparameters_follow_the_signature_order():
    assert list(hyperparameters(PGD)) == [n for n in inspect.signature(PGD.__init__).parameters
                                          if n not in ("self", "model", "progress")]


def test_rp2_config_names_its_feature_penalty():
    class Split(nn.Module):
        features1 = head = nn.Identity()

    def total_variation(f):
        return f.sum()

    assert RP2(Split(), feature_penalty=total_variation).config()["feature_penalty"].endswith("total_variation")
    assert RP2(Split()).config()["feature_penalty"] is None
