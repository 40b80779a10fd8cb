"""Synthetic universal perturbations: many cheap UAP-like training perturbations from a few real ones.

Why: perturbation rectifiers and feature-regeneration units overfit to the
handful of universal perturbations one can afford to compute (each UAP takes
several passes over the training set).  Both papers below grow that set
without a model, by walking inside the cone / convex hull spanned by the real
perturbations -- i.e. along the shared directions in which the decision
boundary is vulnerable (Moosavi-Dezfooli et al., "Analysis of universal
adversarial perturbations", 2017).

* :func:`akhtar_synthetic` -- Akhtar, Liu & Mian, "Defense against Universal
  Adversarial Perturbations", CVPR 2018, Sec. 4.2, Algorithm 1 (l-inf) and the
  l2 variant described after it.
* :func:`borkar_synthetic` -- Borkar, Heide & Karam, "Defending against
  Universal Attacks through Selective Feature Regeneration", CVPR 2020,
  Sec. 4.3, Algorithm 1 / Eq. (8).

Both take the real perturbations as an (m, *shape) array and return
(n, *shape) float32 (computed in float64), deterministic under ``seed`` and
vectorised over the n walks.
"""

from __future__ import annotations

import math

import numpy as np

from edge.errors import SignguardError

from .base import check_norm

# Walks advanced together: bounds the (walks, d) float64 work arrays to ~128 MB each.
_CHUNK_ELEMENTS = 1 << 24


def _check_count(value: object, name: str, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SignguardError(f"{fn}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _rng(seed: object, fn: str) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SignguardError(f"{fn}: seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_positive(value: object, name: str, fn: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            math.isfinite(float(value)) and float(value) > 0):
        raise SignguardError(f"{fn}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _flat_base(base: np.ndarray, fn: str) -> np.ndarray:
    """(m, *shape) real perturbations -> (m, d) float64, rejecting what would make a walk meaningless."""
    arr = np.asarray(base)
    if arr.ndim < 2 or arr.shape[0] < 1 or arr[0].size < 1 or not np.issubdtype(arr.dtype, np.number):
        raise SignguardError(f"{fn}: base_perturbations must be a numeric (m, *shape) array with m >= 1, "
                             f"got shape {arr.shape} dtype {arr.dtype}")
    flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
    if not np.isfinite(flat).all():
        raise SignguardError(f"{fn}: base_perturbations must be finite (found NaN/inf)")
    return flat


def _row_norms(x: np.ndarray, norm: str) -> np.ndarray:
    return np.abs(x).max(axis=1) if norm == "linf" else np.sqrt(np.einsum("ij,ij->i", x, x))


def _to_boundary(a: np.ndarray, b: np.ndarray, xi: float, norm: str) -> np.ndarray:
    """``a + t*b`` with the largest t in (0, 1] keeping ||.||_norm <= xi, given ||a|| < xi <= ||a + b||.

    Shortens the step that crosses the xi-sphere so the walk stops *on* it:
    t is a non-negative step length, so condition (c1) still holds exactly.
    """
    if norm == "linf":
        # Per coordinate, the t where a_i + t b_i first reaches +xi (b_i > 0) or -xi (b_i < 0).
        lim = np.where(b > 0, xi - a, np.where(b < 0, -xi - a, np.inf))
        t = (lim / np.where(b != 0, b, 1.0)).min(axis=1)
        return np.clip(a + np.minimum(t, 1.0)[:, None] * b, -xi, xi)  # clip: float rounding only
    # Positive root of ||a + t b||^2 = xi^2 (exists and is > 0 because ||a|| < xi).
    ab, bb, aa = np.einsum("ij,ij->i", a, b), np.einsum("ij,ij->i", b, b), np.einsum("ij,ij->i", a, a)
    t = (-ab + np.sqrt(ab * ab - bb * (aa - xi * xi))) / bb
    out = a + np.minimum(t, 1.0)[:, None] * b
    return out * np.minimum(1.0, xi / _row_norms(out, "l2"))[:, None]  # float rounding only


def _random_walks(p_n: np.ndarray, count: int, norm: str, xi: float, stop_on_boundary: bool, max_steps: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Lines 3-7 of Akhtar et al.'s Algorithm 1 for ``count`` walks at once (finished walks leave the batch)."""
    out = np.empty((count, p_n.shape[1]))
    ids = np.arange(count)
    rho = np.zeros_like(out)  # line 3: rho_s = 0
    for _ in range(max_steps):  # line 4: while ||rho_s||_p < xi
        z = rng.random(ids.size) * xi  # line 5: z ~ unif(0, 1) * xi  (a step length, one per walk)
        step = z[:, None] * p_n[rng.integers(p_n.shape[0], size=ids.size)]  # line 6: z * (rand ~ P_n)
        new = rho + step
        done = _row_norms(new, norm) >= xi
        if stop_on_boundary and done.any():
            new[done] = _to_boundary(rho[done], step[done], xi, norm)
        out[ids[done]] = new[done]
        ids, rho = ids[~done], new[~done]
        if ids.size == 0:
            return out
    raise SignguardError(f"akhtar_synthetic: {ids.size} of {count} random walks did not reach ||rho_s||_{norm[1:]} "
                         f">= xi = {xi:g} within max_steps = {max_steps}; raise max_steps or check that the base "
                         "perturbations do not cancel out (their positive cone must not contain a line)")


def akhtar_synthetic(n: int, base_perturbations: np.ndarray, *, norm: str = "linf", xi: float | None = None,
                     seed: int = 0, stop_on_boundary: bool = True, max_steps: int = 100_000,
                     max_walks_per_sample: int = 100) -> np.ndarray:
    """Akhtar et al. (CVPR 2018) Algorithm 1: random walks in the positive orthant spanned by real UAPs.

    Paper symbols: P = ``base_perturbations`` (real universal perturbations),
    eta = ``n`` (number of new samples), xi = the perturbation budget of
    Eq. (1), P_n = P with l2-normalised elements, P_s = the returned set.

    l-inf (Algorithm 1): starting from rho_s = 0, repeatedly add z * p with
    z ~ unif(0, 1) * xi and p drawn uniformly from P_n, while
    ||rho_s||_inf < xi; keep rho_s only if ||rho_s||_2 >= E[||rho||_2 : rho in P]
    (line 8, condition (c2)); repeat until eta samples are kept.  l2 (the
    variant in the supplementary material, as described in Sec. 4.2): the walk
    stops on ||rho_s||_2 >= xi instead and every walk is kept (footnote 4).
    Every sample is a non-negative combination of P_n (condition (c1)).

    Args:
        n: number of synthetic perturbations (the paper's eta).
        base_perturbations: (m, *shape) real perturbations P; none may be zero.
        norm: ``"linf"`` (Algorithm 1) or ``"l2"``.
        xi: budget; default: the largest ||rho||_p in P, i.e. the budget P was
            computed under (the paper uses the same xi for both).
        seed: seed of ``np.random.default_rng``.
        stop_on_boundary: Algorithm 1 as written stops *after* the step that
            crosses ||rho_s||_p = xi, so its samples exceed the budget of Eq. (1)
            by up to one step (up to ``xi * max ||p||_inf`` for l-inf, xi for l2).
            True (default) shortens that last step so ||rho_s||_p = xi exactly
            ((c3) with equality; (c1) still exact); False keeps the literal
            overshoot.  (An l2 walk that only ever drew one direction p then
            ends exactly at xi * p, so a small P gives occasional repeats.)
        max_steps: steps after which a walk that has not reached xi is an error.
        max_walks_per_sample: l-inf only: at most ``n * max_walks_per_sample``
            walks are tried before rejection by line 8 is an error.

    Returns:
        (n, *shape) float32.
    """
    fn = "akhtar_synthetic"
    n = _check_count(n, "n", fn)
    norm = check_norm(norm)
    max_steps = _check_count(max_steps, "max_steps", fn)
    budget = n * _check_count(max_walks_per_sample, "max_walks_per_sample", fn)
    flat = _flat_base(base_perturbations, fn)
    l2 = _row_norms(flat, "l2")
    if not (l2 > 0).all():
        raise SignguardError(f"{fn}: base_perturbations must not contain an all-zero perturbation "
                             f"(index {int(np.argmin(l2))}): P_n needs unit-l2 directions")
    xi = float(_row_norms(flat, norm).max()) if xi is None else _check_positive(xi, "xi", fn)
    p_n = flat / l2[:, None]  # line 1: P_n
    threshold = float(l2.mean())  # line 1: l2-threshold = E[||rho||_2, rho in P]
    rng = _rng(seed, fn)
    chunk = max(1, _CHUNK_ELEMENTS // flat.shape[1])
    kept: list[np.ndarray] = []
    got = walks = 0
    while got < n:  # line 2: while |P_s| < eta
        if walks >= budget:
            raise SignguardError(f"{fn}: only {got} of {n} walks reached ||rho_s||_2 >= E||rho||_2 = {threshold:.4g} "
                                 f"in {walks} walks (max_walks_per_sample = {budget // n}); the base perturbations "
                                 "are too dissimilar for this threshold, or try stop_on_boundary=False")
        rate = max(got, 1) / walks if walks else 1.0  # acceptance so far: size the next batch to finish in one go
        batch = int(min(budget - walks, chunk, math.ceil((n - got) / rate)))
        rho = _random_walks(p_n, batch, norm, xi, stop_on_boundary, max_steps, rng)
        walks += batch
        if norm == "linf":
            rho = rho[_row_norms(rho, "l2") >= threshold]  # lines 8-10: keep if ||rho_s||_2 >= l2-threshold
        kept.append(rho[: n - got])
        got += len(kept[-1])
    return np.concatenate(kept).reshape((n,) + np.shape(base_perturbations)[1:]).astype(np.float32)


def borkar_synthetic(n: int, base_perturbations: np.ndarray, *, eta: float | None = None, seed: int = 0,
                     max_iter: int = 10_000) -> np.ndarray:
    """Borkar et al. (CVPR 2020) Algorithm 1: convex mixing of real UAPs until ||v_syn||_2 > eta.

    Paper symbols: V = ``base_perturbations``, v_syn = one returned sample,
    eta = the l2 threshold.  Starting from v_syn = 0, repeat
    v_syn <- alpha * v_new + (1 - alpha) * v_syn (Eq. (8)) with
    alpha ~ uniform(0, 1) and v_new drawn uniformly from V, while
    ||v_syn||_2 <= eta.  The paper applies no scaling or clipping afterwards:
    v_syn is a convex combination of V and 0 (weight prod(1 - alpha) on 0),
    so ||v_syn||_inf <= max ||v||_inf <= xi holds by construction for an
    l-inf attack and the same algorithm serves every norm (Sec. 4.3).

    Args:
        n: number of synthetic perturbations.
        base_perturbations: (m, *shape) real perturbations V.
        eta: l2 threshold; default the minimum ||v||_2 over V, as in the
            paper.  Must be below the maximum ||v||_2 (v_syn can never reach
            it otherwise); when all of V has the same l2 norm (an l2 attack
            projected onto its xi-sphere) pass a value slightly below it.
        seed: seed of ``np.random.default_rng``.
        max_iter: mixing steps after which a sample still at ||v_syn||_2 <= eta
            is an error.

    Returns:
        (n, *shape) float32.
    """
    fn = "borkar_synthetic"
    n = _check_count(n, "n", fn)
    max_iter = _check_count(max_iter, "max_iter", fn)
    flat = _flat_base(base_perturbations, fn)
    l2 = _row_norms(flat, "l2")
    if eta is None:
        eta = float(l2.min())
    elif isinstance(eta, bool) or not isinstance(eta, (int, float, np.number)) or not (
            math.isfinite(float(eta)) and float(eta) >= 0):
        raise SignguardError(f"{fn}: eta must be a finite number >= 0, got {eta!r}")
    eta = float(eta)
    if eta >= l2.max():
        raise SignguardError(f"{fn}: eta must be below the largest ||v||_2 in base_perturbations "
                             f"({l2.max():.6g}): a convex mixture can never exceed it, got {eta!r}")
    rng = _rng(seed, fn)
    out = np.empty((n, flat.shape[1]))
    chunk = max(1, _CHUNK_ELEMENTS // flat.shape[1])
    for start in range(0, n, chunk):
        ids = np.arange(start, min(n, start + chunk))
        v_syn = np.zeros((ids.size, flat.shape[1]))  # line 1
        for _ in range(max_iter):  # line 2: while ||v_syn||_2 <= eta
            alpha = rng.random(ids.size)[:, None]  # line 3: alpha ~ uniform(0, 1)
            v_new = flat[rng.integers(flat.shape[0], size=ids.size)]  # line 4: v_new ~ V
            v_syn = alpha * v_new + (1.0 - alpha) * v_syn  # line 5, Eq. (8)
            done = _row_norms(v_syn, "l2") > eta
            out[ids[done]] = v_syn[done]
            ids, v_syn = ids[~done], v_syn[~done]
            if ids.size == 0:
                break
        else:
            raise SignguardError(f"{fn}: {ids.size} samples still had ||v_syn||_2 <= eta = {eta:.6g} after "
                                 f"max_iter = {max_iter} mixing steps; lower eta or raise max_iter")
    return out.reshape((n,) + np.shape(base_perturbations)[1:]).astype(np.float32)
