"""The PRN paper's evaluation (Akhtar, Liu & Mian, CVPR 2018, Sec. 5): Protocols A and B, four metrics.

Protocol A uses every test image, Protocol B only those the classifier gets right when clean; in both, each
image is perturbed with probability 0.5 by one of the held-out test perturbations (never seen in training).
With ``acc`` the target classifier's accuracy on a set:

* PRN-gain (%)        = (acc(R(I_rho)) - acc(I_rho)) / acc(R(I_rho)) * 100, all images perturbed;
* PRN-restoration (%) = acc(R(I_rho/c)) / acc(I_c) * 100, the 50/50 set, every image rectified;
* detection rate (%)  = accuracy of the detector on the 50/50 set;
* defense rate (%)    = acc(I*) / acc(I_c) * 100, I* = rectified only where the detector fires (the gate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks.base import batched_predict


@torch.no_grad()
def gate_decisions(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """The gated model's detector decisions (N,) bool."""
    out = [(model.detector(xb, model.rectifier(xb)) > 0) for xb in x.split(batch)]
    return torch.cat(out).numpy()


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((batched_predict(model, x) == y).float().mean()) if len(y) else float("nan")


def protocol_metrics(model: nn.Module, x: np.ndarray, y: np.ndarray, perturbations: np.ndarray,
                     protocol: str = "A", seed: int = 0) -> dict[str, Any]:
    """The four metrics (and the accuracies behind them) of a gated model on test images ``x``, ``y`` under
    held-out ``perturbations`` (K, 3, S, S), each image perturbed with probability 0.5 (seeded)."""
    clf = model.classifier.eval()
    rect = nn.Sequential(model.rectifier, clf).eval()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    if protocol == "B":
        keep = batched_predict(clf, xt) == yt
        xt, yt = xt[keep], yt[keep]
    elif protocol != "A":
        raise ValueError(f"protocol must be 'A' or 'B', got {protocol!r}")
    rng = np.random.default_rng(seed)
    which = torch.from_numpy(rng.integers(len(perturbations), size=len(xt)))
    on = torch.from_numpy(rng.random(len(xt)) < 0.5)
    p = torch.from_numpy(np.asarray(perturbations, dtype=np.float32))[which]
    x_rho = (xt + p).clamp(0, 1)
    x_mix = torch.where(on.view(-1, 1, 1, 1), x_rho, xt)
    acc_c = _acc(clf, xt, yt)
    acc_rho, acc_rho_hat = _acc(clf, x_rho, yt), _acc(rect, x_rho, yt)
    acc_mix_hat, acc_star = _acc(rect, x_mix, yt), _acc(model.eval(), x_mix, yt)
    fired = gate_decisions(model, x_mix)
    on_np = on.numpy()
    return {
        "protocol": protocol, "n": int(len(yt)),
        "acc_clean": acc_c, "acc_perturbed": acc_rho, "acc_rectified_perturbed": acc_rho_hat,
        "acc_gated_clean": _acc(model.eval(), xt, yt),
        "prn_gain": 100 * (acc_rho_hat - acc_rho) / acc_rho_hat,
        "prn_restoration": 100 * acc_mix_hat / acc_c,
        "detection_rate": 100 * float((fired == on_np).mean()),
        "detector_tpr": 100 * float(fired[on_np].mean()) if on_np.any() else float("nan"),
        "detector_fpr": 100 * float(fired[~on_np].mean()) if (~on_np).any() else float("nan"),
        "defense_rate": 100 * acc_star / acc_c,
    }
