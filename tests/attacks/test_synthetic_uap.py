"""Synthetic UAP generators: the properties Akhtar et al. (CVPR 2018) and Borkar et al. (CVPR 2020) state.

Why these: a rectifier trained on synthetic perturbations is only as good as
their fidelity to the real ones -- inside the cone / convex hull of the real
perturbations (the shared vulnerable directions), at the attack budget, and
diverse.  Each assertion below fails for a plausible wrong implementation
(element-wise step sizes, a missing line-8 rejection, walks that keep going
after crossing the threshold, outputs that overshoot the budget).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import SignguardError
from train.attacks.synthetic_uap import akhtar_synthetic, borkar_synthetic

XI = 0.1
SHAPE = (3, 4, 4)
D = int(np.prod(SHAPE))


def linf_base(seed: int = 0) -> np.ndarray:
    """Six l-inf 'UAPs' sharing a sign pattern, three nearly saturated at +-XI and three mostly small.

    Their l2 norms differ a lot, so only walks that mostly follow the
    saturated ones pass line 8 of Algorithm 1 (about 30% of walks here).
    """
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=D)
    saturated = np.array([1.0, 1.0, 0.9, 0.1, 0.1, 0.1])[:, None]
    mags = np.where(rng.random((6, D)) < saturated, 1.0, rng.uniform(0.05, 0.5, (6, D)))
    return (XI * signs * mags).reshape((6,) + SHAPE)


def l2_base(seed: int = 0, radius: float = 2.0) -> np.ndarray:
    """Five l2 'UAPs' with norms in [radius / 2, radius]."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((5, D))
    p *= np.linspace(radius / 2, radius, 5)[:, None] / np.linalg.norm(p, axis=1, keepdims=True)
    return p.reshape((5,) + SHAPE)


def flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)


def coefficients(samples: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of each sample in the span of ``base`` (rows) and the worst relative residual."""
    b = flat(base)
    s = flat(samples)
    c, *_ = np.linalg.lstsq(b.T, s.T, rcond=None)
    resid = np.linalg.norm(s - c.T @ b, axis=1) / np.linalg.norm(s, axis=1)
    return c.T, float(resid.max())


def test_akhtar_linf_ends_on_the_xi_sphere_and_passes_the_l2_threshold() -> None:
    base = linf_base()
    out = akhtar_synthetic(64, base, norm="linf", xi=XI, seed=1)
    assert out.shape == (64,) + SHAPE and out.dtype == np.float32
    linf = np.abs(out).reshape(64, -1).max(axis=1)
    assert (linf <= np.float32(XI)).all()  # Eq. (1): ||rho||_inf <= xi, exactly
    assert (linf >= np.float32(XI) * (1 - 1e-6)).all()  # line 4 stops only at xi: (c3) with equality
    threshold = np.linalg.norm(flat(base), axis=1).mean()  # line 1: E[||rho||_2]
    assert (np.linalg.norm(flat(out), axis=1) >= threshold * (1 - 1e-6)).all()  # line 8


def test_akhtar_linf_literal_walk_overshoots_by_less_than_one_step() -> None:
    base = linf_base()
    p_n = flat(base) / np.linalg.norm(flat(base), axis=1, keepdims=True)
    out = akhtar_synthetic(64, base, norm="linf", xi=XI, seed=1, stop_on_boundary=False)
    linf = np.abs(out).reshape(64, -1).max(axis=1)
    assert (linf >= np.float32(XI)).all()  # the while loop exits only once ||rho_s||_inf >= xi
    assert (linf < XI + XI * np.abs(p_n).max()).all()  # ...after one step of at most z * ||p||_inf < xi ||p||_inf
    assert (linf > XI * (1 + 1e-4)).mean() > 0.5  # and really overshoots (the literal Algorithm 1)
    threshold = np.linalg.norm(flat(base), axis=1).mean()
    assert (np.linalg.norm(flat(out), axis=1) >= threshold * (1 - 1e-6)).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("stop_on_boundary", [True, False])
def test_akhtar_samples_lie_in_the_positive_orthant_spanned_by_p(norm: str, stop_on_boundary: bool) -> None:
    """(c1): rho_s = sum_k c_k p_k / ||p_k||_2 with every c_k >= 0 (steps along P_n with lengths z >= 0)."""
    base = linf_base() if norm == "linf" else l2_base()
    out = akhtar_synthetic(48, base, norm=norm, seed=2, stop_on_boundary=stop_on_boundary)
    c, resid = coefficients(out, base / np.linalg.norm(flat(base), axis=1)[:, None, None, None])
    assert resid < 1e-5  # in the span (element-wise random step sizes would leave it)
    assert (c >= -1e-5).all()  # in its positive orthant
    assert (c > 1e-3).sum(axis=1).max() > 1  # mixtures, not copies of single directions


def test_akhtar_l2_variant_stops_at_xi_and_keeps_every_walk() -> None:
    base = l2_base(radius=2.0)
    out = akhtar_synthetic(64, base, norm="l2", seed=3, max_walks_per_sample=1)  # no rejection: n walks suffice
    assert np.allclose(np.linalg.norm(flat(out), axis=1), 2.0, rtol=1e-6)  # default xi = max ||rho||_2 in P
    literal = akhtar_synthetic(64, base, norm="l2", xi=1.5, seed=3, stop_on_boundary=False)
    l2 = np.linalg.norm(flat(literal), axis=1)
    assert (l2 >= 1.5 * (1 - 1e-6)).all() and (l2 < 3.0).all()  # last step z * unit vector, z < xi
    assert (l2 > 1.5 * (1 + 1e-3)).mean() > 0.5


def test_akhtar_linf_rejects_walks_below_the_l2_threshold() -> None:
    """Line 8: with this P most walks fail the threshold, so n walks cannot give n samples."""
    with pytest.raises(SignguardError, match="max_walks_per_sample"):
        akhtar_synthetic(32, linf_base(), norm="linf", xi=XI, seed=4, max_walks_per_sample=1)


def test_akhtar_default_xi_is_the_budget_of_p() -> None:
    base = linf_base() * 0.5
    out = akhtar_synthetic(16, base, seed=5)
    assert np.isclose(np.abs(out).max(), 0.5 * XI, rtol=1e-6)


def test_akhtar_walk_that_cannot_reach_xi_is_an_error() -> None:
    with pytest.raises(SignguardError, match="max_steps"):
        akhtar_synthetic(4, linf_base(), xi=XI, max_steps=1)  # one step moves ||.||_inf by < xi ||p_n||_inf


@pytest.mark.parametrize("generate, min_distinct", [
    (lambda seed: akhtar_synthetic(32, linf_base(), xi=XI, seed=seed), 32),
    # A 2-3 step l2 walk that follows one direction only ends exactly at xi * p_n: rare repeats with |P| = 5.
    (lambda seed: akhtar_synthetic(32, l2_base(), norm="l2", seed=seed), 28),
    (lambda seed: borkar_synthetic(32, linf_base(), seed=seed), 32),
], ids=["akhtar-linf", "akhtar-l2", "borkar"])
def test_deterministic_under_seed_and_diverse(generate, min_distinct: int) -> None:
    a, b, c = generate(7), generate(7), generate(8)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    f = flat(a)
    assert len(np.unique(f, axis=0)) >= min_distinct
    assert np.linalg.matrix_rank(f, tol=1e-4 * np.abs(f).max()) >= 3  # not one direction rescaled


def test_borkar_outputs_are_convex_mixtures_just_above_eta() -> None:
    base = linf_base()
    l2 = np.linalg.norm(flat(base), axis=1)
    out = borkar_synthetic(200, base, seed=9)
    c, resid = coefficients(out, base)
    assert resid < 1e-5
    # Eq. (8) from v_syn = 0: weights alpha_t prod(1 - alpha_s) >= 0 on V and prod(1 - alpha_t) > 0 on 0.
    assert (c >= -1e-5).all() and (c.sum(axis=1) <= 1 + 1e-5).all()
    out_l2 = np.linalg.norm(flat(out), axis=1)
    assert (out_l2 > l2.min() * (1 - 1e-6)).all()  # default eta = min ||v||_2 (Sec. 4.3), stopped once above it
    assert (out_l2 < l2.mean()).any()  # ...and not a larger threshold
    assert np.abs(out).max() <= np.abs(base).max()  # l-inf budget kept with no clipping (Sec. 4.3)


def test_borkar_stops_at_the_first_crossing() -> None:
    """With V = {v}: v_syn = (1 - prod(1 - alpha_t)) v, returned the first time that factor exceeds eta/||v||."""
    v = np.ones((1,) + SHAPE)
    out = flat(borkar_synthetic(300, v, eta=0.5 * np.linalg.norm(v), seed=10))
    s = out[:, 0]
    assert np.allclose(out, s[:, None] * flat(v), rtol=1e-6)
    assert (s > 0.5 * (1 - 1e-6)).all() and (s < 1).all()
    # First crossing: E[s] ~ 0.75; one extra mixing step would give ~0.875, running to a common stop ~1.
    assert s.mean() < 0.8 and s.min() < 0.52


def test_borkar_equal_norm_base_needs_eta_below_the_norm() -> None:
    base = l2_base() / np.linalg.norm(flat(l2_base()), axis=1)[:, None, None, None]  # all on the unit sphere
    with pytest.raises(SignguardError, match="eta"):
        borkar_synthetic(8, base)  # default eta = min = max norm: a mixture can never exceed it
    out = borkar_synthetic(8, base, eta=0.95, seed=11)
    l2 = np.linalg.norm(flat(out), axis=1)
    assert (l2 > 0.95 * (1 - 1e-6)).all() and (l2 <= 1 + 1e-6).all()


def test_borkar_unreachable_eta_within_max_iter_is_an_error() -> None:
    base = np.stack([np.ones(SHAPE), -np.ones(SHAPE) * 0.5])
    with pytest.raises(SignguardError, match="max_iter"):
        borkar_synthetic(64, base, eta=0.999 * np.linalg.norm(np.ones(SHAPE)), max_iter=2)


@pytest.mark.parametrize("call, name", [
    (lambda: akhtar_synthetic(0, linf_base()), "n"),
    (lambda: akhtar_synthetic(2.5, linf_base()), "n"),
    (lambda: akhtar_synthetic(4, linf_base(), norm="l1"), "norm"),
    (lambda: akhtar_synthetic(4, linf_base(), xi=0.0), "xi"),
    (lambda: akhtar_synthetic(4, linf_base(), xi=float("nan")), "xi"),
    (lambda: akhtar_synthetic(4, np.zeros(D)), "base_perturbations"),
    (lambda: akhtar_synthetic(4, np.full((2,) + SHAPE, np.nan)), "base_perturbations"),
    (lambda: akhtar_synthetic(4, np.concatenate([linf_base(), np.zeros((1,) + SHAPE)])), "base_perturbations"),
    (lambda: akhtar_synthetic(4, linf_base(), max_steps=0), "max_steps"),
    (lambda: akhtar_synthetic(4, linf_base(), max_walks_per_sample=0), "max_walks_per_sample"),
    (lambda: akhtar_synthetic(4, linf_base(), seed=-1), "seed"),
    (lambda: borkar_synthetic(0, linf_base()), "n"),
    (lambda: borkar_synthetic(4, linf_base(), seed=1.5), "seed"),
    (lambda: borkar_synthetic(4, linf_base(), eta=-1.0), "eta"),
    (lambda: borkar_synthetic(4, linf_base(), eta=100.0), "eta"),
    (lambda: borkar_synthetic(4, np.zeros((0,) + SHAPE)), "base_perturbations"),
    (lambda: borkar_synthetic(4, linf_base(), max_iter=0), "max_iter"),
])
def test_bad_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(SignguardError, match=rf"\b{name}\b"):
        call()
