"""BlurNet regularisers: exact values on hand-made maps, and their effect when trained."""

import numpy as np
import pytest
import torch

from train.defenses import DefenseStack
from train.defenses.blurnet import (
    difference_pinv,
    linf_depthwise_penalty,
    moving_average_matrix,
    tikhonov_hf,
    tikhonov_pseudo,
    total_variation,
)
from train.models import create_model


def test_total_variation_matches_eq3_by_hand():
    f = torch.tensor([[1.0, 3.0], [4.0, 0.0]]).view(1, 1, 2, 2)
    # vertical |4-1| + |0-3| = 6, horizontal |3-1| + |0-4| = 6
    assert total_variation(f).item() == pytest.approx(12.0)
    # the 1/(N*K) normalisation of Eq. 4
    f2 = torch.cat([f, torch.zeros_like(f)], dim=1)
    assert total_variation(f2).item() == pytest.approx(6.0)
    assert total_variation(torch.full((3, 4, 8, 8), 5.0)).item() == 0.0


def test_tikhonov_hf_kills_constants_and_matches_matrix_form():
    const = torch.full((2, 3, 16, 16), 2.0)
    assert tikhonov_hf(const).item() == pytest.approx(0.0, abs=1e-5)
    f = torch.randn(2, 3, 16, 16)
    l_hf = torch.eye(16) - moving_average_matrix(16, 3)
    manual = sum(torch.linalg.norm(l_hf @ f[i, k]) for i in range(2) for k in range(3)) / 6
    assert tikhonov_hf(f).item() == pytest.approx(manual.item(), rel=1e-5)
    # a high-frequency (alternating rows) map is penalised more than a smooth ramp of the same energy
    rows = torch.arange(16.0).view(16, 1).expand(16, 16)
    alt = ((-1.0) ** rows).view(1, 1, 16, 16)
    ramp = (rows / rows.norm() * alt.norm()).view(1, 1, 16, 16)
    assert tikhonov_hf(alt) > 5 * tikhonov_hf(ramp)


def test_moving_average_rows_sum_to_one():
    m = moving_average_matrix(16, 5)
    assert torch.allclose(m.sum(1), torch.ones(16))


def test_difference_pinv_is_a_pseudo_inverse():
    n = 16
    d = -torch.eye(n, dtype=torch.float64) + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
    d[-1] = 0
    p = difference_pinv(n).double()
    assert torch.allclose(d @ p @ d, d, atol=1e-5)
    assert torch.allclose(p @ d @ p, p, atol=1e-5)
    f = torch.randn(2, 4, n, n)
    manual = sum(torch.linalg.norm(p.float() * f[i, k]) for i in range(2) for k in range(4)) / 8
    assert tikhonov_pseudo(f).item() == pytest.approx(manual.item(), rel=1e-5)


def test_linf_penalty_is_sum_of_channel_maxima():
    model = create_model("lisa_cnn_tiny", blur_kernel=3)
    with torch.no_grad():
        model.blur.conv.weight.zero_()
        model.blur.conv.weight[0, 0, 1, 1] = -2.0
        model.blur.conv.weight[1, 0, 0, 0] = 0.5
    assert linf_depthwise_penalty(model).item() == pytest.approx(2.5)


def _loss(defense: dict, model, x):
    """The defense's extra training loss on ``x`` through the registry, as the trainer computes it."""
    stack = DefenseStack.from_config(defense)
    logits, aux = stack.forward(model, x)
    return stack.loss(model, x, None, logits, aux)


def test_registry_selects_the_term():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    plain = create_model("lisa_cnn_tiny", num_classes=4)
    assert _loss({"kind": "none"}, plain, x) is None
    assert _loss({"kind": "gaussian", "sigma": 0.1}, plain, x) is None
    fixed = create_model("lisa_cnn_tiny", num_classes=4, blur_kernel=3, blur_learnable=False)
    assert _loss({"kind": "blur", "kernel_size": 3, "learnable": False, "alpha": 0.1}, fixed, x) is None
    assert _loss({"kind": "tv", "alpha": 0.0}, plain, x) is None
    expected = 0.5 * total_variation(plain.features1(x)).item()
    assert _loss({"kind": "tv", "alpha": 0.5}, plain, x).item() == pytest.approx(expected)
    learn = create_model("lisa_cnn_tiny", num_classes=4, blur_kernel=3)
    assert _loss({"kind": "blur", "kernel_size": 3, "alpha": 0.1}, learn, x).item() == pytest.approx(
        0.1 * linf_depthwise_penalty(learn).item())
    assert DefenseStack.from_config({"kind": "tik_hf", "alpha": 1e-4}).attack_regularizer() is not None
    assert DefenseStack.from_config({"kind": "blur"}).attack_regularizer() is None


def test_tv_training_lowers_feature_map_tv():
    """The defense does its job on the feature maps: TV-regularised conv1 maps are smoother."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 4, (64,))

    def fit(alpha: float) -> float:
        torch.manual_seed(1)
        model = create_model("lisa_cnn_tiny", num_classes=4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        stack = DefenseStack.from_config({"kind": "tv", "alpha": alpha})
        for _ in range(40):
            logits, aux = stack.forward(model, x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            reg = stack.loss(model, x, y, logits, aux)
            if reg is not None:
                loss = loss + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return total_variation(model.features1(x)).item()

    assert fit(1e-2) < 0.5 * fit(0.0)


def test_fixed_blur_is_a_box_filter_and_frozen():
    model = create_model("lisa_cnn_tiny", blur_kernel=5, blur_learnable=False)
    w = model.blur.conv.weight
    assert not w.requires_grad
    assert np.allclose(w.detach().numpy(), 1 / 25)
