"""RP2 + EOT: the sticker stays in its mask, hits its target on an easy model, is deterministic and printable."""

import numpy as np
import pytest
import torch
from torch import nn

from edge.errors import SignguardError
from train.attacks.dct import dct_matrix, lowpass_dct
from train.attacks.palette import load_palette, nearest_palette, non_printability
from train.attacks.rp2 import RP2, evaluate_stickers
from train.attacks.views import apply_perturbation, render_views, sticker_region
from train.data.classes import STOP


def colour_model() -> nn.Module:
    """Predicts the dominant mean colour channel: 0 = red, 1 = green, 2 = blue (a stop sign is 'red')."""
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(40.0 * torch.eye(3))
        lin.bias.zero_()
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin).eval()


@pytest.fixture(scope="module")
def views():
    return render_views(STOP, 8, seed=1)


@pytest.fixture(scope="module")
def heldout():
    return render_views(STOP, 8, seed=2)


def test_views_grid_maps_the_sign_face_onto_the_input(views):
    """Warping the canonical face with the view's grid reproduces the rendered sign (the homography is exact)."""
    from train.attacks.views import template_face

    face = torch.from_numpy(template_face(STOP, 64))[None].expand(len(views), -1, -1, -1)
    warped = torch.nn.functional.grid_sample(face, views.grid, align_corners=False)
    sign = torch.from_numpy(sticker_region("sign", STOP, 64))[None, None].expand(len(views), -1, -1, -1)
    inside = torch.nn.functional.grid_sample(sign, views.grid, align_corners=False)[:, 0] > 0.99
    # rendered pixels ~ gain * face + offset on the sign: the exact warp correlates better than one 2 px off
    true, off = [], []
    for i in range(len(views)):
        b = views.x[i, 1][inside[i]].numpy()  # green: white legend vs red field
        assert inside[i].sum() > 50
        true.append(np.corrcoef(warped[i, 1][inside[i]].numpy(), b)[0, 1])
        off.append(np.corrcoef(warped[i, 1].roll(2, dims=-1)[inside[i]].numpy(), b)[0, 1])
    assert np.median(true) > 0.85
    assert all(t > o + 0.05 for t, o in zip(true, off))


def test_perturbation_stays_inside_the_warped_mask(views):
    region = torch.from_numpy(sticker_region("bars", STOP, 32))
    delta = torch.ones(2, 3, 32, 32) * torch.tensor([-1.0, 1.0])[:, None, None, None]
    xa = apply_perturbation(views, delta, region)
    warped = torch.nn.functional.grid_sample(region[None, None].expand(len(views), -1, -1, -1), views.grid,
                                             align_corners=False)[:, 0]
    outside = warped == 0
    for k in range(2):
        assert torch.equal(xa[k][:, :, :][outside[:, None].expand(-1, 3, -1, -1)],
                           views.x[outside[:, None].expand(-1, 3, -1, -1)])
        assert (xa[k] != views.x).any()
    assert xa.min() >= 0 and xa.max() <= 1


def test_rp2_hits_target_on_easy_model_and_respects_mask(views, heldout):
    model = colour_model()
    assert (model(views.x).argmax(1) == 0).all()  # red
    res = RP2(model, mask="sign", steps=60, lr=0.1, noise=0.0, views_per_step=4, snap=False)(views, [2], seed=0)
    assert res.train_success[0] >= 0.85  # from 0: every clean view is 'red'
    ev = evaluate_stickers(model, heldout, res)
    assert ev["per_target"][0]["targeted_success"] >= 0.75  # held-out poses, full renderer (sign may be small)
    # outside the sticker region the sticker equals the face (nothing is printed there)
    from train.attacks.views import template_face

    face = template_face(STOP, 32)
    out = res.region == 0
    assert np.allclose(res.stickers[0][:, out], face[:, out])


def test_rp2_bars_mask_is_respected_and_snapped_colours_are_printable(views):
    pal = load_palette()
    res = RP2(colour_model(), steps=5, views_per_step=3)(views, [1, 2], seed=0)
    region = sticker_region("bars", STOP, 32) > 0
    assert np.array_equal(res.region > 0, region)
    inside = res.stickers[:, :, region].transpose(0, 2, 1).reshape(-1, 3)
    d = np.linalg.norm(inside[:, None, :] - pal[None], axis=-1).min(1)
    assert d.max() < 1e-6  # every printed pixel is a palette colour


def test_rp2_is_deterministic_under_a_seed(views):
    m = colour_model()
    a = RP2(m, steps=4, views_per_step=3)(views, [1], seed=3)
    b = RP2(m, steps=4, views_per_step=3)(views, [1], seed=3)
    c = RP2(m, steps=4, views_per_step=3, snap=False)(views, [1], seed=4)
    assert np.array_equal(a.stickers, b.stickers)
    assert not np.array_equal(a.stickers, c.stickers)


def test_rp2_leaves_the_models_parameters_as_it_found_them(views):
    """Neither gradients nor requires_grad flags change: a frozen layer (a fixed blur) stays frozen."""
    m = colour_model()
    frozen, trainable = m[2].weight, m[2].bias
    frozen.requires_grad_(False)
    before = [p.detach().clone() for p in m.parameters()]
    RP2(m, steps=3, views_per_step=3)(views, [1], seed=0)
    assert frozen.requires_grad is False and trainable.requires_grad is True
    assert frozen.grad is None and trainable.grad is None
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_lowfreq_variant_has_only_low_dct_frequencies(views):
    res = RP2(colour_model(), mask="sign", steps=5, dct_dim=4, snap=False, views_per_step=3)(views, [2], seed=0)
    from train.attacks.views import template_face

    d = res.stickers[0] - template_face(STOP, 32)
    sign = sticker_region("sign", STOP, 32) > 0
    assert np.abs(d[:, ~sign]).max() == 0  # never on the background
    assert np.abs(d).max() > 1e-3


def test_regularizer_aware_attack_needs_first_layer_maps(views):
    with pytest.raises(SignguardError, match="features1"):
        RP2(colour_model(), feature_penalty=lambda f: f.sum())


def test_dct_is_orthonormal_and_lowpass_keeps_what_it_should():
    c = dct_matrix(8)
    assert torch.allclose(c @ c.T, torch.eye(8), atol=1e-5)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(lowpass_dct(x, 8), x, atol=1e-5)
    dc = lowpass_dct(x, 1)
    assert torch.allclose(dc, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-5)
    with pytest.raises(SignguardError):
        lowpass_dct(x, 9)


def test_nps_is_zero_on_palette_colours_and_positive_off_it(tmp_path):
    pal = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    on = pal[:, :, None, None].expand(-1, -1, 2, 2)  # two 2x2 stickers, each a palette colour
    assert torch.allclose(non_printability(on, pal), torch.zeros(2))
    grey = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 * 3**0.5) ** 2  # distance to black times distance to white
    assert non_printability(grey, pal).item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(nearest_palette(np.array([[0.1, 0.2, 0.1]]), pal.numpy()), [[0, 0, 0]])
    f = tmp_path / "pal.txt"
    f.write_text("# measured\n255 0 0\n0, 255, 0\n")
    assert np.allclose(load_palette(f), [[1, 0, 0], [0, 1, 0]])
    f.write_text("1 2\n")
    with pytest.raises(SignguardError, match="pal.txt:1"):
        load_palette(f)
    with pytest.raises(SignguardError, match="cannot read"):
        load_palette(tmp_path / "missing.txt")


def test_untargeted_rp2_moves_views_off_their_label_and_stops_pushing_at_kappa(views, heldout):
    """Untargeted: the 'target' is the label to leave.  On the colour model a red sign can go green or blue;
    the attack must find one of them on its own, and with kappa = 0 it stops at the boundary (a smaller
    perturbation than kappa = 20, which keeps pushing past it)."""
    model = colour_model()
    red = 0
    near = RP2(model, mask="sign", steps=60, lr=0.1, noise=0.0, views_per_step=4, snap=False, untargeted=True,
               kappa=0.0, lam=0.0, nps_weight=0.0)(views, [red], seed=0)
    far = RP2(model, mask="sign", steps=60, lr=0.1, noise=0.0, views_per_step=4, snap=False, untargeted=True,
              kappa=20.0, lam=0.0, nps_weight=0.0)(views, [red], seed=0)
    assert far.train_success[0] >= 0.85 and near.train_success[0] > 0  # success = read as anything but red
    ev = evaluate_stickers(model, heldout, far)
    assert ev["per_target"][0]["untargeted_success"] >= 0.75  # held-out poses, the clean ones all read red
    assert far.config["untargeted"] and far.history[-1]["objective"] < near.history[-1]["objective"]
    assert near.history[-1]["l2"] < far.history[-1]["l2"]
    with pytest.raises(SignguardError, match="kappa"):
        RP2(model, kappa=-1.0)
