"""BPDA: non-differentiable preprocessing masks gradients; BPDA restores the attack through it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError
from tests.colour_data import colour_data
from train.attacks.bpda import BPDA, jpeg, median, quantize, with_preprocessing
from train.attacks.pgd import PGD
from train.eval.metrics import accuracy


class _Plain(nn.Module):
    """The preprocessing as an ordinary layer: what a naive attacker differentiates through."""

    def __init__(self, g):
        super().__init__()
        self.g = g

    def forward(self, x):
        return self.g(x)


@pytest.fixture(scope="module")
def defended(fit_tiny):
    """A tiny CNN trained on quantised inputs, i.e. the defended pipeline model(quantize(x))."""
    g = quantize(5)
    x, y = colour_data(300, seed=0, lift=0.08)  # a lift of 0.08 survives 5-bit quantisation (steps of 1/31)
    model = fit_tiny(g(x), y, num_classes=3)
    xt, yt = colour_data(100, seed=1, lift=0.08)
    return model, g, xt, yt


def test_identity_bpda_gradient_is_the_models_gradient_at_the_preprocessed_input(defended):
    model, g, x, y = defended
    x = x[:8]
    xg = g(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(model(xg), y[:8]), xg)
    xx = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(F.cross_entropy(with_preprocessing(model, g)(xx), y[:8]), xx)
    assert torch.equal(got, expected)
    naive = x.clone().requires_grad_(True)
    (zero,) = torch.autograd.grad(F.cross_entropy(model(_Plain(g)(naive)), y[:8]), naive)
    assert float(zero.abs().max()) == 0.0  # rounding: the naive gradient is exactly zero


def test_bpda_uses_the_approximation_on_the_backward_pass():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    (ident,) = torch.autograd.grad(BPDA(quantize(3))(x).sum(), x)
    (doubled,) = torch.autograd.grad(BPDA(quantize(3), h=lambda t: 2 * t)(x).sum(), x)
    assert torch.equal(ident, torch.ones_like(x)) and torch.equal(doubled, 2 * torch.ones_like(x))
    assert torch.equal(BPDA(quantize(3))(x), quantize(3)(x))  # forward is the real preprocessing


def test_pgd_with_bpda_breaks_a_defense_that_masks_gradients(defended):
    model, g, x, y = defended
    pipeline = nn.Sequential(_Plain(g), model).eval()
    clean = accuracy(pipeline(x).argmax(1).numpy(), y.numpy())
    naive = PGD(pipeline, eps=16 / 255, alpha=2 / 255, steps=20)(x, y, seed=0)
    adaptive = PGD(with_preprocessing(model, g), eps=16 / 255, alpha=2 / 255, steps=20)(x, y, seed=0)
    acc_naive = accuracy(naive.info["pred_adv"], y.numpy())
    acc_bpda = accuracy(adaptive.info["pred_adv"], y.numpy())
    # measured: clean 1.00, naive PGD (zero gradient, only the random start) 1.00, PGD + BPDA 0.00
    assert clean >= 0.95
    assert acc_naive >= 0.9  # the defense "looks" robust
    assert acc_bpda <= 0.1  # and is not
    assert adaptive.info["linf"].max() <= 16 / 255 + 1e-6


def test_opencv_transforms_keep_shape_range_and_act():
    x = torch.rand(3, 3, 32, 32)
    for g in (jpeg(50), median(3), quantize(2)):
        out = g(x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert float((out - x).abs().mean()) > 0.01  # noise images change visibly
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(median(5)(flat), flat, atol=1 / 255)  # a median of a constant is the constant
    assert np.allclose(quantize(1)(torch.tensor([0.2, 0.7])).numpy(), [0.0, 1.0])


@pytest.mark.parametrize("make,needle", [(lambda: jpeg(0), "quality"), (lambda: quantize(9), "bits"),
                                         (lambda: median(4), "k")])
def test_bad_arguments_name_the_argument(make, needle):
    with pytest.raises(SignguardError, match=needle):
        make()


def test_shape_changing_preprocessing_is_rejected():
    with pytest.raises(SignguardError, match="shape"):
        BPDA(lambda t: t[:, :, :16])(torch.rand(1, 3, 32, 32))
