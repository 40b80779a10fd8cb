"""Restoration accuracy of a defended classifier against held-out universal perturbations (FRU Sec. 5).

Restoration accuracy (Borkar et al. Eq. 9; Akhtar et al.'s PRN-restoration) is the defended model's
accuracy on a set holding the clean images and their perturbed copies in equal numbers, over the
undefended model's clean accuracy: ``(acc_def(x) + acc_def(x + v)) / (2 acc_base(x))`` when every test
image appears once clean and once perturbed.  It charges the defense for what it costs on clean images
as well as for what it restores on perturbed ones.  The fooling ratio (UAP Eq. 1) is the fraction of
images whose prediction the perturbation changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import SignguardError

from ..attacks.base import batched_predict
from . import metrics


def _pred(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return batched_predict(model, x, 256).cpu().numpy()


def restoration_row(base: nn.Module, defended: nn.Module, x: torch.Tensor, y: np.ndarray,
                    v: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Clean / perturbed accuracy, fooling ratio and restoration accuracy of ``base`` and ``defended`` for one
    universal perturbation ``v`` (3, H, W) on images ``x`` (N, 3, H, W) in [0, 1] with labels ``y``."""
    xv = (x + torch.as_tensor(v, dtype=x.dtype)).clamp(0, 1)
    pb, pbv, pd, pdv = _pred(base, x), _pred(base, xv), _pred(defended, x), _pred(defended, xv)
    acc = {k: metrics.accuracy(p, y) for k, p in (("base_clean", pb), ("base_adv", pbv), ("def_clean", pd),
                                                   ("def_adv", pdv))}
    return {
        **{f"acc_{k}": v for k, v in acc.items()},
        "fooling_base": metrics.fooling_ratio(pb, pbv),
        "fooling_def": metrics.fooling_ratio(pd, pdv),
        "restoration_base": metrics.restoration_accuracy((acc["base_clean"] + acc["base_adv"]) / 2,
                                                         acc["base_clean"]),
        "restoration_def": metrics.restoration_accuracy((acc["def_clean"] + acc["def_adv"]) / 2, acc["base_clean"]),
        "n": int(len(y)),
    }


def heldout_set(folder: str | Path, akhtar_n: int = 0, xi: float | None = None, seed: int = 0
                ) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """The held-out perturbations under ``folder`` (``<method>_s<seed>/uap.npy``), named by their folder, plus
    ``akhtar_n`` of Akhtar et al.'s synthetic perturbations grown from them -- a generation method the defense
    never saw -- inside the same L-inf budget ``xi``.

    Which variant of their Algorithm 1: the l-inf walk stops on the first coordinate to reach ``xi`` and keeps a
    sample only if its l2 norm reaches the set's mean; perturbations that saturate most pixels at +-xi (sPGD
    and UAP at 32/255 saturate 40-70% of them) leave no walk that can (0 of 500 on LISA-18).  So the l2 walk
    (their supplementary variant) runs to the set's mean l2 norm, and the result is projected onto the L-inf
    ball of ``xi`` (clipped), the threat model every other perturbation here obeys.
    """
    from ..attacks.synthetic_uap import akhtar_synthetic
    from ..attacks.uap import load_perturbation_set

    real, metas = load_perturbation_set(folder)
    out = [(Path(m["file"]).parent.name, v, m) for v, m in zip(real, metas)]
    if akhtar_n:
        if xi is None:
            raise SignguardError("heldout_set: akhtar synthetic perturbations need the budget xi")
        l2 = float(np.linalg.norm(real.reshape(len(real), -1), axis=1).mean())
        syn = np.clip(akhtar_synthetic(akhtar_n, real, norm="l2", xi=l2, seed=seed), -xi, xi)
        meta = {"method": "akhtar_synthetic (l2 walk, clipped to L-inf xi)", "xi": xi, "l2": l2, "seed": seed}
        out += [(f"akhtar_{i}", v, meta) for i, v in enumerate(syn)]
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric column over perturbations, and the worst (lowest) defended restoration."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["min_restoration_def"] = float(min(r["restoration_def"] for r in rows))
    return out
