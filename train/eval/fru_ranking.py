"""Does the filter L1 norm rank a layer's channels by their susceptibility to universal noise? (FRU Sec. 4.1)

Borkar et al. bound the noise a perturbation ``r`` of a conv layer's input causes in filter ``m``'s output:
``||e_m||_inf <= ||W_m||_1 ||r||_inf`` (Eq. 2; the bias cancels and zero padding adds no noise), and rank
filters by ``||W_m||_1``.  Two measurements check that the ranking holds on a trained model:

* :func:`ranking_study` -- per conv layer and channel, the observed ``||e_m||_inf`` under universal
  perturbations (mean over images and perturbations) against ``||W_m||_1``: Spearman's rank correlation
  (their Fig. 2b), and the fraction of (image, channel) pairs within the Eq. 2 bound (must be all).
* :func:`masking_study` -- their Fig. 3: accuracy on perturbed images when the noise of ``ratio`` of a
  layer's channels is removed (those outputs replaced by their clean values), for the top-ranked, the
  bottom-ranked and randomly chosen channels.  If the ranking is right, masking the top half restores most
  of the accuracy and masking the bottom half little.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..defenses.fru import CONV_LAYERS, lisa_forward, rank_filters, regenerated_count


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D arrays (ties get their average rank); NaN if either is constant."""
    def ranks(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for val in np.unique(v):  # ties: average rank
            tie = v == val
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def filter_l1(conv: nn.Conv2d) -> np.ndarray:
    """``||W_m||_1`` of every output channel m."""
    return conv.weight.detach().abs().flatten(1).sum(1).double().cpu().numpy()


@torch.no_grad()
def _conv_io(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each conv layer's input and output on ``x`` (forward hooks, removed afterwards)."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
               for n in CONV_LAYERS]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def ranking_study(net: nn.Module, x: torch.Tensor, perturbations: np.ndarray, batch_size: int = 256
                  ) -> dict[str, dict[str, Any]]:
    """Per conv layer: ``l1`` (C,), ``noise`` (C,) = mean over images and perturbations of
    ``max |phi_m(x + v) - phi_m(x)|``, ``spearman`` between them, ``bound_ok`` = fraction of (image,
    perturbation, channel) triples with noise <= ``||W_m||_1 ||r||_inf`` (Eq. 2), ``top_half_share`` = share
    of the total noise carried by the top 50% of channels by L1 norm."""
    net = net.eval()
    l1 = {n: filter_l1(getattr(net, n)) for n in CONV_LAYERS}
    noise = {n: np.zeros(len(l1[n])) for n in CONV_LAYERS}
    ok = {n: 0 for n in CONV_LAYERS}
    count = 0
    for v in perturbations:
        v = torch.as_tensor(v, dtype=x.dtype)
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            clean, adv = _conv_io(net, xb), _conv_io(net, (xb + v).clamp(0, 1))
            for n in CONV_LAYERS:
                e = (adv[n][1] - clean[n][1]).abs().flatten(2).amax(2).double()  # (B, C)
                r = (adv[n][0] - clean[n][0]).abs().flatten(1).amax(1).double()  # (B,)
                bound = r[:, None] * torch.from_numpy(l1[n])[None]
                noise[n] += e.sum(0).numpy()
                ok[n] += int((e <= bound * (1 + 1e-5) + 1e-6).sum())
            count += len(xb)
    out = {}
    for n in CONV_LAYERS:
        mean = noise[n] / count
        top = rank_filters(getattr(net, n).weight)[: len(mean) // 2].numpy()
        out[n] = {"l1": l1[n], "noise": mean, "spearman": spearman(l1[n], mean),
                  "bound_ok": ok[n] / (count * len(mean)), "top_half_share": float(mean[top].sum() / mean.sum())}
    return out


@torch.no_grad()
def masking_study(net: nn.Module, x: torch.Tensor, y: torch.Tensor, v: np.ndarray, ratio: float = 0.5,
                  layers: Sequence[str] = CONV_LAYERS, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy on ``x + v`` with the noise of ``ratio`` of one layer's channels masked (their outputs set to
    the clean ones), per layer, for the ``top`` (largest L1), ``bottom`` and ``random`` channels; plus
    ``clean`` and ``perturbed`` (nothing masked) accuracy."""
    net = net.eval()
    v = torch.as_tensor(v, dtype=x.dtype)
    gen = torch.Generator().manual_seed(seed)
    choice = {}
    for n in layers:
        w = getattr(net, n).weight
        k = regenerated_count(w.shape[0], ratio)
        order = rank_filters(w)
        choice[n] = {"top": order[:k], "bottom": order[-k:], "random": torch.randperm(w.shape[0], generator=gen)[:k]}

    def acc(fn) -> float:
        hits = 0
        for i in range(0, len(x), batch_size):
            hits += int((fn(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        return hits / len(x)

    def masked(layer: str, channels: torch.Tensor):
        def run(xb: torch.Tensor) -> torch.Tensor:
            clean = _conv_io(net, xb)[layer][1]

            def edit(name: str, f: torch.Tensor) -> torch.Tensor:
                if name != layer:
                    return f
                f = f.clone()
                f[:, channels] = clean[:, channels]
                return f

            return lisa_forward(net, (xb + v).clamp(0, 1), edit)
        return run

    out: dict[str, Any] = {"clean": acc(net), "perturbed": acc(lambda xb: net((xb + v).clamp(0, 1))), "ratio": ratio}
    for n in layers:
        out[n] = {which: acc(masked(n, ch)) for which, ch in choice[n].items()}
    return out
