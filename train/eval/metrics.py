"""The papers' robustness metrics, as small pure numpy functions.

Each function follows one paper's definition and quotes it, so that a number
in a report means what the paper's table means.  Rates are fractions in
[0, 1] (the papers print them x 100).  Rates over zero samples, and ratios
whose denominator is zero, are NaN rather than an exception, so that a sweep
with an empty cell still writes its report.

Where papers name the same quantity differently (fooling ratio vs. attack
success rate) or build the same ratio on differently drawn test sets (PRN vs.
FRU restoration accuracy), both are recorded here and the difference is
spelled out.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edge.errors import SignguardError

#: How the half-clean, half-perturbed test set behind restoration accuracy is drawn (see :func:`mixed_set_mask`).
MIX_PROTOCOLS = ("prn", "fru")


def _same_length(**arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays.values()]
    lengths = {len(a) for a in out}
    if len(lengths) > 1:
        desc = ", ".join(f"{k} {len(a)}" for k, a in zip(arrays, out))
        raise SignguardError(f"metrics: inputs must have the same length, got {desc}")
    return out


def _rate(hits: np.ndarray) -> float:
    return float(np.mean(hits)) if hits.size else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy ``mean(pred == y)``: the ``acc(.)`` of the PRN and FRU definitions."""
    pred, y = _same_length(pred=pred, y=y)
    return _rate(pred == y)


def attack_success_rate(pred_clean: np.ndarray, pred_adv: np.ndarray) -> float:
    """Untargeted attack success rate, BlurNet (Raju & Lipasti) Sec. II-A.

    "The attack success rate is defined as the number of predictions altered by an attack, that is,
    (1/N) sum_n 1[F(x_n) != F(x_n^adv)]" -- measured against the clean *prediction*, not the label.
    """
    pred_clean, pred_adv = _same_length(pred_clean=pred_clean, pred_adv=pred_adv)
    return _rate(pred_clean != pred_adv)


def fooling_ratio(pred_clean: np.ndarray, pred_adv: np.ndarray) -> float:
    """Fooling ratio of a universal perturbation (Moosavi-Dezfooli et al. CVPR 2017, Eq. 1; PRN Eq. 1).

    ``P(k(x + v) != k(x))``: "the fraction of samples that change labels when perturbed" (FRU Sec. 3).
    The same number as :func:`attack_success_rate`; the universal-perturbation papers call it this.
    """
    return attack_success_rate(pred_clean, pred_adv)


def targeted_success_rate(pred_adv: np.ndarray, target: np.ndarray) -> float:
    """Targeted attack success rate ``mean(pred_adv == target)`` (BlurNet Table II, RP2)."""
    pred_adv, target = _same_length(pred_adv=pred_adv, target=target)
    return _rate(pred_adv == target)


def targeted_summary(per_target: Mapping[int, float]) -> dict[str, float | int]:
    """BlurNet Table II's summary of a sweep over attack targets ``{target class: success rate}``.

    ``average``: "the attack success rate averaged across all other classes (excluding the true
    label)" -- the caller leaves the true class out of ``per_target``.  ``worst``: "the best case
    scenario for the attacker", i.e. the maximum success rate over targets, reached at
    ``worst_target``.
    """
    if not per_target:
        raise SignguardError("targeted_summary: per_target is empty (expected {target class: success rate})")
    worst_target = max(per_target, key=lambda t: per_target[t])
    return {
        "average": float(np.mean(list(per_target.values()))),
        "worst": float(per_target[worst_target]),
        "worst_target": int(worst_target),
    }


def l2_dissimilarity(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """Per-sample ``||x - x_adv||_2 / ||x||_2`` over all pixels and channels (BlurNet Sec. II-A; Table II
    reports the mean).  Shapes (N, ...) -> (N,)."""
    x, x_adv = _same_length(x=x, x_adv=x_adv)
    if x.shape != x_adv.shape:
        raise SignguardError(f"l2_dissimilarity: x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    x = x.reshape(len(x), -1).astype(np.float64)
    d = x - x_adv.reshape(len(x_adv), -1)
    return np.linalg.norm(d, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)


def rho_2(x: np.ndarray, r_norms: np.ndarray) -> float:
    """Robustness rho_2 (Deep Defense, Yan, Guo & Zhang, NeurIPS 2018, Eq. 7, "as suggested in" DeepFool):

        rho_2 = (1 / |D|) sum_{k in D} ||Delta_{x_k}||_2 / ||x_k||_2

    with ``Delta_x`` the (DeepFool) minimal perturbation of ``x``; ``r_norms`` (N,) are its l2 norms,
    e.g. DeepFool's ``info["r_norm"]``, ``x`` the (N, ...) clean images.  Higher is more robust.
    """
    x, r_norms = _same_length(x=x, r_norms=r_norms)
    xn = np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)
    return _rate(r_norms.astype(np.float64) / np.maximum(xn, 1e-12))


def prn_gain(acc_rectified_adv: float, acc_adv: float) -> float:
    """PRN-gain (Akhtar, Liu & Mian, CVPR 2018, Sec. 5, metric 1), as a fraction:

        PRN-gain = (acc(I^_rho) - acc(I_rho)) / acc(I^_rho)

    ``acc_rectified_adv`` = acc(I^_rho): accuracy on the perturbed test images after the PRN;
    ``acc_adv`` = acc(I_rho): on the same perturbed images without it.  Note the denominator is the
    *rectified* accuracy, as printed in the paper.
    """
    return _ratio(acc_rectified_adv - acc_adv, acc_rectified_adv)


def restoration_accuracy(acc_defended_mixed: float, acc_clean: float) -> float:
    """Restoration accuracy: accuracy on a half-clean, half-perturbed set, defended, over clean accuracy.

    PRN (Akhtar et al. CVPR 2018, Sec. 5, metric 2), "PRN-restoration":
        acc(I^_{rho/c}) / acc(I_c)
    where every test image is perturbed with probability 0.5 and then *all* are passed through the
    PRN (so the cost of rectifying clean images counts), and acc(I_c) is the undefended network on
    the clean images.

    FRU (Borkar, Heide & Karam, CVPR 2020, Eq. 9), "restoration accuracy":
        acc(I_{p/c}) / acc(I_c)
    where I_{p/c} holds clean and perturbed images "in equal numbers", classified by the defended
    network.

    The ratio is the same; the papers differ only in how the mixed set is drawn (a coin per image
    vs. exactly half), which :func:`mixed_set_mask` reproduces for either.
    """
    return _ratio(acc_defended_mixed, acc_clean)


def mixed_set_mask(n: int, protocol: str = "prn", seed: int = 0) -> np.ndarray:
    """Which of ``n`` test images get perturbed for restoration accuracy / defense rate: bool (n,).

    ``"prn"``: each image independently with probability 0.5 (PRN Sec. 5, Protocol-A/B: "randomly
    corrupted ... with a 0.5 probability").  ``"fru"``: exactly ``n // 2`` images, at random
    positions (FRU Sec. 5: clean and perturbed images "in equal numbers").
    """
    if protocol not in MIX_PROTOCOLS:
        raise SignguardError(f"mixed_set_mask: protocol must be one of {MIX_PROTOCOLS}, got {protocol!r}")
    rng = np.random.default_rng(seed)
    if protocol == "prn":
        return rng.random(n) < 0.5
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: n // 2]] = True
    return mask


def detection_rate(flagged: np.ndarray, is_perturbed: np.ndarray) -> float:
    """PRN detection rate (Akhtar et al. CVPR 2018, Sec. 5, metric 3): "Accuracy of D", the perturbation
    detector, on the mixed test set: ``mean(flagged == is_perturbed)`` (clean images count too)."""
    flagged, is_perturbed = _same_length(flagged=flagged, is_perturbed=is_perturbed)
    return _rate(flagged.astype(bool) == is_perturbed.astype(bool))


def defense_rate(pred_raw: np.ndarray, pred_rectified: np.ndarray, flagged: np.ndarray, y: np.ndarray,
                 acc_clean: float) -> float:
    """PRN defense rate (Akhtar et al. CVPR 2018, Sec. 5, metric 4):

        Defense rate = acc(I*) / acc(I_c)

    where I* is the mixed test set with "each image rectified by the PRN only if it were classified
    as perturbed by the detector D".  Per image of the mixed set: ``pred_raw`` the network's prediction
    on the image as is, ``pred_rectified`` on its PRN output, ``flagged`` the detector's verdict, ``y``
    the label; ``acc_clean`` = acc(I_c) of the undefended network on the clean images.
    """
    pred_raw, pred_rectified, flagged, y = _same_length(pred_raw=pred_raw, pred_rectified=pred_rectified,
                                                        flagged=flagged, y=y)
    pred_star = np.where(flagged.astype(bool), pred_rectified, pred_raw)
    return _ratio(_rate(pred_star == y), acc_clean)
