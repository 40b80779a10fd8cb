"""Universal perturbations (UAP, sPGD) reach their fooling ratio inside the ball; their files round-trip or fail."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError
from train.attacks.uap import (
    UAP,
    SPGDUniversal,
    apply_universal,
    default_xi,
    load_perturbation,
    save_perturbation,
)
from train.eval.metrics import fooling_ratio


def _pattern_data(n, seed, classes=10):
    """Ten classes = ten fixed blocky colour patterns (amplitude 0.06) over uniform noise.

    With many classes a single perturbation can push most images towards one class,
    which is what a universal perturbation exploits; the images of that class stay unfooled,
    so the fooling ratio tops out near 0.85-0.93 here (three colour classes cap it near 2/3).
    Over five training seeds UAP (24/255) reached 0.80-0.92 and sPGD (16/255) 0.82-0.93.
    """
    patterns = torch.randint(0, 2, (classes, 3, 4, 4), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    patterns = F.interpolate(patterns, size=32, mode="nearest")
    g = torch.Generator().manual_seed(100 + seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.5 + 0.06 * patterns[y] + 0.4 * (torch.rand(n, 3, 32, 32, generator=g) - 0.5)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def toy(fit_tiny):
    model = fit_tiny(*_pattern_data(300, seed=0), num_classes=10)
    xt, yt = _pattern_data(100, seed=1)
    assert (model(xt).argmax(1) == yt).float().mean() >= 0.95
    return model, xt, yt


def _check_universal(res, x, xi, norm, target):
    v = res.info["perturbation"]
    assert v.shape == (3, 32, 32) and v.dtype == np.float32
    size = np.abs(v).max() if norm == "linf" else np.linalg.norm(v)
    assert size <= xi + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert torch.allclose(res.x_adv, (x + torch.from_numpy(v)).clamp(0, 1))
    assert res.info["fooling_ratio"] == fooling_ratio(res.info["pred_clean"], res.info["pred_adv"])
    assert res.info["fooling_ratio"] >= target


def test_uap_algorithm_1_on_a_linear_model_stops_at_its_target():
    """Binary linear model, one image at a time (batch_size=1 = Algorithm 1 exactly).

    All images sit on the class-0 side at distances 0.05..0.5 (l2) from the boundary, so a
    shared v of l2 norm xi = 0.4 can fool ~80% of them but not all: the algorithm must stop
    at the first pass that reaches the 0.7 target, with v inside the ball.
    """
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3 * 32 * 32, generator=g)
    w = w / w.norm()
    lin = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    base = 0.5 + 0.1 * (torch.rand(40, 3, 32, 32, generator=g) - 0.5)
    base -= (base.flatten(1) @ w).view(-1, 1, 1, 1) * w.view(1, 3, 32, 32)  # onto the boundary
    dist = torch.linspace(0.05, 0.5, 40)
    x = (base - dist.view(-1, 1, 1, 1) * w.view(1, 3, 32, 32)).clamp(0, 1)
    y = torch.zeros(40, dtype=torch.long)
    res = UAP(model, xi=0.4, norm="l2", target_fooling=0.7, batch_size=1)(x, y, seed=0)
    _check_universal(res, x, 0.4, "l2", 0.7)
    assert res.info["fooling_ratio"] <= 0.85


def test_uap_reaches_its_target_on_the_toy_cnn(toy):
    # measured fooling ratios on this model: 0.88 at xi = 24/255 (batch 8, 0.5 s); 0.80 at 16/255 with
    # batch_size=1 (3.4 s); 0.26 at the papers' 10/255 after 10 passes
    model, x, y = toy
    res = UAP(model, xi=24 / 255, norm="linf", target_fooling=0.8, max_passes=10, batch_size=8)(x, y, seed=0)
    _check_universal(res, x, 24 / 255, "linf", 0.8)


def test_spgd_reaches_the_target_with_a_smaller_budget(toy):
    # measured: fooling ratio 0.93 at xi = 16/255 after 40 steps, seeds 0-2 (0.71 at 10/255); UAP needs ~24/255 here
    model, x, y = toy
    res = SPGDUniversal(model, xi=16 / 255, norm="linf", steps=40, batch_size=32)(x, y, seed=0)
    _check_universal(res, x, 16 / 255, "linf", 0.8)


def test_spgd_l2_stays_in_the_ball_and_is_deterministic(toy):
    model, x, y = toy
    atk = SPGDUniversal(model, xi=1.0, norm="l2", steps=3)
    a, b, c = atk(x, y, seed=1), atk(x, y, seed=1), atk(x, y, seed=2)
    _check_universal(a, x, 1.0, "l2", 0.0)
    assert np.array_equal(a.info["perturbation"], b.info["perturbation"])
    assert not np.array_equal(a.info["perturbation"], c.info["perturbation"])


def test_apply_universal_scores_a_given_perturbation(toy):
    model, x, y = toy
    res = apply_universal(model, x, y, np.zeros((3, 32, 32), np.float32))
    assert res.info["fooling_ratio"] == 0.0 and torch.equal(res.x_adv, x)
    with pytest.raises(SignguardError, match=r"shape \(3, 32, 32\)"):
        apply_universal(model, x, y, np.zeros((3, 16, 16), np.float32))


def test_default_budget_matches_the_papers_per_pixel_scale():
    assert default_xi("linf", 3 * 32 * 32) == pytest.approx(10 / 255)
    assert default_xi("l2", 224 * 224 * 3) == pytest.approx(2000 / 255)
    assert default_xi("l2", 3 * 32 * 32) == pytest.approx(1.12, abs=0.01)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda m: UAP(m, norm="l1"), "norm"),
        (lambda m: UAP(m, xi=0.0), "xi"),
        (lambda m: UAP(m, target_fooling=1.5), "target_fooling"),
        (lambda m: UAP(m, deepfool_iter=0), "deepfool_iter"),
        (lambda m: SPGDUniversal(m, alpha=-1.0), "alpha"),
        (lambda m: SPGDUniversal(m, steps=0), "steps"),
    ],
)
def test_bad_arguments_name_the_argument(make, needle):
    with pytest.raises(SignguardError, match=needle):
        make(nn.Identity())


def test_universal_attacks_refuse_targets(toy):
    model, x, y = toy
    for atk in (UAP(model), SPGDUniversal(model, steps=1)):
        with pytest.raises(SignguardError, match="targeted"):
            atk(x[:2], y[:2], target=y[:2])


# --------------------------------------------------------------------------- files

META = {"norm": "linf", "xi": 10 / 255, "fooling_ratio": 0.83, "model_hash": "abc123"}


def _v(seed=0):
    g = np.random.default_rng(seed)
    return g.uniform(-10 / 255, 10 / 255, (3, 32, 32)).astype(np.float32)


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "uap" / "v.npy"
    save_perturbation(path, _v(), META)
    v, meta = load_perturbation(path)
    assert np.array_equal(v, _v()) and v.dtype == np.float32
    assert {k: meta[k] for k in META} == META and meta["shape"] == [3, 32, 32]
    assert json.loads((tmp_path / "uap" / "v.npy.json").read_text())["model_hash"] == "abc123"
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.npy", "v.npy.json"]  # no temp files left


@pytest.mark.parametrize(
    "v,meta,needle",
    [
        (np.zeros((32, 32, 3), np.float32), META, "shape"),
        (_v(), {k: META[k] for k in ("norm", "xi")}, "missing"),
        (_v() * 2, META, "exceeds"),
        (_v(), {**META, "norm": "l1"}, "norm"),
    ],
)
def test_save_rejects_inconsistent_input(tmp_path, v, meta, needle):
    with pytest.raises(SignguardError, match=needle):
        save_perturbation(tmp_path / "v.npy", v, meta)


def _single_line_error(path, needle):
    with pytest.raises(SignguardError) as err:
        load_perturbation(path)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    return msg


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "v.npy"
    assert str(path) in _single_line_error(path, "not found")

    save_perturbation(path, _v(), META)
    side = tmp_path / "v.npy.json"
    side_text = side.read_text()

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated array
    assert str(path) in _single_line_error(path, "SHA-256")
    path.write_bytes(data)

    side.write_text(side_text[:20])  # truncated sidecar
    assert str(side) in _single_line_error(path, "not valid JSON")

    side.unlink()
    assert str(side) in _single_line_error(path, "sidecar not found")


def test_load_rejects_a_valid_npy_of_the_wrong_dtype(tmp_path):
    path = tmp_path / "v.npy"
    save_perturbation(path, _v(), META)
    np.save(path, _v().astype(np.float64), allow_pickle=False)
    side = tmp_path / "v.npy.json"
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))
    assert str(path) in _single_line_error(path, "float32")
