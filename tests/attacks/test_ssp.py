"""SSP (NRP Algorithm 1) on a small VGG extractor, and MI-FGSM on a tiny CNN trained here."""

import numpy as np
import pytest
import torch

from edge.errors import SignguardError
from tests.colour_data import colour_data
from train.attacks.mifgsm import MIFGSM
from train.attacks.ssp import SSP, LayerFeatures, feature_distortion
from train.eval.metrics import accuracy
from train.models import create_model

EPS = 16 / 255


@pytest.fixture(scope="module")
def extractor():
    """A vgg_small at its seeded initialisation: SSP needs a feature space, not a trained classifier."""
    torch.manual_seed(0)
    return LayerFeatures(create_model("vgg_small", num_classes=3).eval(), "features.relu3_2")


@pytest.fixture(scope="module")
def scorer():
    """The classifier SSP's results are scored on (never used to craft them)."""
    torch.manual_seed(1)
    return create_model("lisa_cnn_tiny", num_classes=3).eval()


@pytest.fixture(scope="module")
def images():
    x, y = colour_data(24, seed=1)
    return x, y


def _distortion(feats, x, x_adv):
    with torch.no_grad():
        return feature_distortion(feats(x_adv), feats(x))


def test_ssp_raises_feature_distortion_far_beyond_random_noise_of_the_same_budget(extractor, scorer, images):
    x, y = images
    res = SSP(scorer, features=extractor, eps=EPS, alpha=4 / 255, steps=10)(x, y, seed=0)
    gen = torch.Generator().manual_seed(0)
    corners = (x + EPS * torch.randn(x.shape, generator=gen).sign()).clamp(0, 1)  # the largest random noise
    ssp, rand = _distortion(extractor, x, res.x_adv), _distortion(extractor, x, corners)
    assert np.allclose(res.info["feature_distortion"], ssp.numpy(), rtol=1e-4, atol=1e-6)
    # every image, not just on average: SSP climbs the distortion Algorithm 1 maximises
    assert bool((ssp > 2.0 * rand).all()), (ssp / rand).min()
    # more iterations climb further (Eq. 4 is maximised, not merely perturbed)
    one = SSP(scorer, features=extractor, eps=EPS, alpha=4 / 255, steps=1)(x, y, seed=0)
    assert float(ssp.mean()) > 1.2 * float(one.info["feature_distortion"].mean())


def test_ssp_respects_the_budget_and_the_box_and_ignores_labels(extractor, scorer, images):
    x, y = images
    x = x.clone()
    x[:, :, :4] = 1.0  # saturated pixels: the box clip and the ball projection interact
    atk = SSP(scorer, features=extractor, eps=EPS, alpha=0.01, steps=4)
    a, b = atk(x, y, seed=3), atk(x, (y + 1) % 3, seed=3)
    assert float((a.x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(a.x_adv.min()) >= 0.0 and float(a.x_adv.max()) <= 1.0
    assert torch.equal(a.x_adv, b.x_adv)  # label-free: the labels only score the result
    with torch.no_grad():  # ... scored on the classifier given as ``model``
        assert np.array_equal(a.info["pred_adv"], scorer(a.x_adv).argmax(1).numpy())
    c = atk(x, y, seed=4)
    assert not torch.equal(a.x_adv, c.x_adv)  # R, the random first step, is seeded


def test_ssp_refuses_targets_unknown_layers_and_a_missing_extractor(extractor, scorer, images):
    x, y = images
    with pytest.raises(SignguardError, match="targeted"):
        SSP(scorer, features=extractor)(x, y, target=y)
    with pytest.raises(SignguardError, match="relu3_9.*known.*features.relu3_2"):
        LayerFeatures(create_model("vgg_small"), "features.relu3_9")
    with pytest.raises(SignguardError, match="exactly one feature extractor"):
        SSP(torch.nn.Identity())
    with pytest.raises(SignguardError, match="steps"):
        SSP(torch.nn.Identity(), features=extractor, steps=0)


def test_layer_features_are_the_named_module_output_and_stay_frozen(extractor, images):
    x, _ = images
    vgg = extractor.model
    expected = vgg.features[:14](vgg.normalize(x))  # conv1_1 ... relu3_2
    assert torch.allclose(extractor(x), expected)
    extractor.train()
    assert not extractor.training and not vgg.training
    assert not any(p.requires_grad for p in vgg.parameters())


@pytest.fixture(scope="module")
def toy(fit_tiny):
    return fit_tiny(*colour_data(300, seed=0), num_classes=3)


def test_mifgsm_breaks_a_trained_model_within_budget(toy):
    model = toy
    x, y = colour_data(80, seed=2)
    res = MIFGSM(model, eps=8 / 255, steps=10)(x, y)
    assert float((res.x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert accuracy(res.info["pred_clean"], y.numpy()) >= 0.95
    assert accuracy(res.info["pred_adv"], y.numpy()) <= 0.1


def test_mifgsm_without_momentum_is_iterative_fgsm(toy):
    """decay = 0: each step is alpha * sign(grad) of the current iterate (I-FGSM, Kurakin et al.)."""
    from train.attacks.base import adv_loss

    model = toy
    x, y = colour_data(16, seed=3)
    got = MIFGSM(model, eps=8 / 255, steps=3, decay=0.0)(x, y).x_adv
    xa, a = x.clone(), 8 / 255 / 3
    for _ in range(3):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(adv_loss(model(xa), y, None).sum(), xa)
        xa = (x + (xa.detach() + a * g.sign() - x).clamp(-8 / 255, 8 / 255)).clamp(0, 1)
    assert torch.allclose(got, xa, atol=1e-6)
