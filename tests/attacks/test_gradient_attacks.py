"""FGSM, PGD and DeepFool on a tiny CNN trained here, and on linear models where DeepFool's answer is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError
from tests.colour_data import colour_data
from train.attacks.base import adv_loss, margin_loss
from train.attacks.deepfool import DeepFool
from train.attacks.fgsm import FGSM
from train.attacks.pgd import PGD
from train.eval.metrics import accuracy, rho_2


@pytest.fixture(scope="module")
def toy(fit_tiny):
    model = fit_tiny(*colour_data(300, seed=0), num_classes=3)
    xt, yt = colour_data(120, seed=1)
    return model, xt, yt


def _with_saturated_pixels(x):
    """Images touching both ends of the [0, 1] box, where clipping interacts with the ball projection."""
    x = x.clone()
    x[:, :, :3] = 1.0
    x[:, :, -3:] = 0.0
    return x


def _norms(d):
    f = d.flatten(1)
    return f.abs().amax(1), f.norm(dim=1)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_budget_and_box_are_respected(toy, attack, norm, eps):
    model, x, y = toy
    x = _with_saturated_pixels(x[:40])
    atk = FGSM(model, eps=eps, norm=norm) if attack == "fgsm" else PGD(model, eps=eps, alpha=eps / 3, norm=norm)
    res = atk(x, y[:40], seed=3)
    linf, l2 = _norms(res.x_adv - x)
    assert float((linf if norm == "linf" else l2).max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.info["linf"].shape == (40,) and np.allclose(res.info["linf"], linf.numpy())


def test_pgd_breaks_the_model_and_fgsm_is_weaker_or_equal(toy):
    model, x, y = toy
    clean = accuracy(model(x).argmax(1).numpy(), y.numpy())
    pgd = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)(x, y, seed=0)
    fgsm = FGSM(model, eps=8 / 255)(x, y)
    acc_pgd = accuracy(pgd.info["pred_adv"], y.numpy())
    acc_fgsm = accuracy(fgsm.info["pred_adv"], y.numpy())
    # measured: clean 1.00, FGSM 0.075, PGD 0.00 (PGD was 0.27 with a float32 loss: see PGD.perturb)
    assert clean >= 0.95
    assert acc_pgd <= 0.05
    assert acc_pgd <= acc_fgsm
    assert pgd.success_rate >= 0.95


def test_targeted_pgd_reaches_its_target(toy):
    model, x, y = toy
    target = (y + 1) % 3
    res = PGD(model, eps=16 / 255, alpha=2 / 255, steps=20)(x, y, target=target, seed=0)
    assert res.success_rate >= 0.9  # success = pred_adv == target here
    assert np.array_equal(res.info["success"], res.info["pred_adv"] == target.numpy())


def test_margin_loss_on_hand_made_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    y = torch.tensor([0, 0])
    # untargeted: best other logit minus the true one; positive exactly when misclassified
    assert torch.allclose(margin_loss(logits, y, None), torch.tensor([2.0, -5.0]))
    # targeted (ascended): target logit minus the best other
    assert torch.allclose(margin_loss(logits, y, torch.tensor([2, 1])), torch.tensor([-1.0, -5.0]))


def test_pgd_with_the_margin_loss_breaks_the_model_within_budget(toy):
    model, x, y = toy
    res = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, loss="margin")(x, y, seed=0)
    assert accuracy(res.info["pred_adv"], y.numpy()) <= 0.05
    assert res.info["linf"].max() <= 8 / 255 + 1e-6


class _Threshold(nn.Module):
    """Class 1 iff pixel (0, 0, 0) > 0.5: on images at 0.5 - 1e-4 only the random start can flip it."""

    def forward(self, x):
        d = (x[:, 0, 0, 0] - 0.5) * 1000.0
        return torch.stack([-d, d], dim=1)


def test_pgd_restarts_keep_any_restart_that_succeeds():
    x, y = torch.full((200, 3, 4, 4), 0.5 - 1e-4), torch.zeros(200, dtype=torch.long)
    # alpha = 0: the result is the random start, which breaks each sample with probability ~1/2
    one = PGD(_Threshold(), eps=0.01, alpha=0.0, steps=1)(x, y, seed=3)
    five = PGD(_Threshold(), eps=0.01, alpha=0.0, steps=1, restarts=5)(x, y, seed=3)
    assert 0.35 < one.success_rate < 0.65
    assert np.all(five.info["success"] >= one.info["success"])  # restart 1 is the single run
    assert five.success_rate > 0.9  # 1 - 2^-5 ~ 0.97 expected
    assert five.info["linf"].max() <= 0.01 + 1e-6


def test_pgd_is_deterministic_per_seed(toy):
    model, x, y = toy
    x, y = x[:16], y[:16]
    atk = PGD(model, steps=2)
    a, b, c = atk(x, y, seed=5).x_adv, atk(x, y, seed=5).x_adv, atk(x, y, seed=6).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    no_start = PGD(model, steps=2, random_start=False)
    assert torch.equal(no_start(x, y, seed=5).x_adv, no_start(x, y, seed=6).x_adv)
    small = PGD(model, steps=2, batch_size=5)  # several batches, each seeded: generate() makes the same images
    assert torch.equal(small.generate(x, y, seed=5), small(x, y, seed=5).x_adv)
    assert not torch.equal(small.generate(x, y, seed=5), a)  # batches are seeded separately


def test_pgd_inside_a_training_loop_keeps_train_mode_and_parameter_grads(toy):
    model, x, y = toy
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        res = PGD(model, eps=8 / 255, alpha=2 / 255, steps=7)(x[:8], y[:8], seed=1)
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        assert res.x_adv.shape == (8, 3, 32, 32) and not res.x_adv.requires_grad
    finally:
        model.eval()


def _linear(w, b):
    """A linear classifier on flattened pixels with the given (K, D) weights and (K,) biases."""
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_matches_the_linear_closed_form(norm):
    """Binary affine f = w.x + b: the minimal perturbation has norm |f(x)| / ||w||_q (q dual to the attack norm).

    DeepFool reaches it in one step; it adds 1e-4 to cross the boundary (no overshoot here).
    """
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3 * 8 * 8, generator=g)
    x = 0.4 + 0.2 * torch.rand(20, 3, 8, 8, generator=g)
    wd = w[1] - w[0]
    b = torch.tensor([0.0, -float(x.flatten(1).mean(0) @ wd)])  # boundary through the middle of the data
    model = _linear(w, b)
    res = DeepFool(model, overshoot=0.0, norm=norm)(x, torch.zeros(20, dtype=torch.long))
    f = x.flatten(1) @ wd + b[1]
    dual = wd.norm() if norm == "l2" else wd.abs().sum()
    expected = f.abs() / dual + 1e-4
    assert np.all(res.info["pred_adv"] != res.info["pred_clean"])
    assert np.all(res.info["iterations"] == 1)
    np.testing.assert_allclose(res.info["r_norm"], expected.numpy(), rtol=1e-3, atol=1e-6)


def test_deepfool_picks_the_nearest_of_several_linear_boundaries():
    """Multi-class affine: the answer is min_k |f_k - f_0| / ||w_k - w_0||_2 over the other classes."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(4, 3 * 8 * 8, generator=g) * 0.2, torch.zeros(4)
    x = 0.4 + 0.2 * torch.rand(10, 3, 8, 8, generator=g)
    model = _linear(w, b)
    logits = model(x).detach()
    res = DeepFool(model, overshoot=0.0)(x, logits.argmax(1))
    k0 = logits.argmax(1)
    gaps = (logits - logits.gather(1, k0[:, None])).abs()
    dist = gaps / (w[None] - w[k0][:, None]).norm(dim=2).clamp_min(1e-12)
    dist[torch.arange(10), k0] = float("inf")
    np.testing.assert_allclose(res.info["r_norm"], (dist.min(1).values + 1e-4).numpy(), rtol=1e-3)
    assert np.all(res.info["pred_adv"] != res.info["pred_clean"])


def test_deepfool_flips_the_toy_cnn_with_small_perturbations(toy):
    model, x, y = toy
    res = DeepFool(model)(x, y)
    assert np.mean(res.info["pred_adv"] != res.info["pred_clean"]) >= 0.98
    assert res.info["r_norm"].shape == (len(x),) and res.info["iterations"].max() <= 50
    np.testing.assert_allclose(res.info["r_norm"], (res.x_adv - x).flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    # measured rho_2 ~0.03: a few percent of the image norm flips a prediction
    assert rho_2(x.numpy(), res.info["r_norm"]) < 0.1


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda m: PGD(m, norm="l1"), "norm"),
        (lambda m: PGD(m, eps=-0.1), "eps"),
        (lambda m: PGD(m, steps=0), "steps"),
        (lambda m: PGD(m, loss="hinge"), "loss"),
        (lambda m: PGD(m, restarts=0), "restarts"),
        (lambda m: PGD(m, restarts=2, random_start=False), "random_start"),
        (lambda m: FGSM(m, eps=float("nan")), "eps"),
        (lambda m: DeepFool(m, num_candidates=1), "num_candidates"),
        (lambda m: DeepFool(m, max_iter=0), "max_iter"),
    ],
)
def test_bad_arguments_name_the_argument(toy, make, needle):
    with pytest.raises(SignguardError, match=needle):
        make(toy[0])


def test_deepfool_refuses_targets(toy):
    model, x, y = toy
    with pytest.raises(SignguardError, match="targeted"):
        DeepFool(model)(x[:2], y[:2], target=y[:2])


def test_adv_loss_is_the_log_of_the_cross_entropy_and_survives_saturation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y, t = torch.tensor([0, 2]), torch.tensor([1, 1])
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(adv_loss(logits, y, None), ce.log())
    torch.testing.assert_close(adv_loss(logits, y, t), -F.cross_entropy(logits, t, reduction="none").log())
    # a 150-nat margin: the cross-entropy's gradient has lost its true-class term, log CE's has not
    z = torch.tensor([[150.0, 0.0, -10.0]], requires_grad=True)
    (g,) = torch.autograd.grad(adv_loss(z, torch.tensor([0]), None).sum(), z)
    # ~ d/dz of (z_1 - z_0), the runner-up's margin (class 2 weighs e^-10)
    torch.testing.assert_close(g, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)


class _Scaled(nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_pgd_is_not_masked_by_overconfident_logits(toy):
    """Logits x 100 (margins of thousands of nats) change no prediction; PGD must break the model all the same."""
    model, x, y = toy
    scaled = _Scaled(model, 100.0)
    res = PGD(scaled, eps=8 / 255)(x, y, seed=0)
    assert np.array_equal(res.info["pred_clean"], model(x).argmax(1).numpy())
    assert accuracy(res.info["pred_adv"], y.numpy()) <= 0.05
