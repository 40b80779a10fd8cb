"""RP2: Robust Physical Perturbations -- a printable sticker, optimised over many views (EOT).

Eykholt et al., "Robust Physical-World Attacks on Deep Learning Visual
Classification", CVPR 2018, in the form BlurNet uses (Eq. 1):

    argmin_delta  lambda ||M . delta||_2 + NPS + mean_i J(f(x_i + T_i(M . delta)), y*)

Threat model: white-box, the perturbation lives only inside the sticker
mask M in *sign* coordinates; ``T_i`` places it on view ``i`` (the
renderer's exact homography, composed with the crop, and the view's
lighting gain -- see :mod:`train.attacks.views`).  The sticker is the
absolute colour ``face + delta`` clipped to [0, 1]; NPS pulls it toward
printable colours and, with ``snap``, the final sticker is snapped to the
palette, so what is evaluated is what a printer produces.

Adaptive variants (BlurNet Sec. V), same class:

* ``dct_dim = k``: low-frequency RP2, Eq. 8 -- the masked perturbation is
  passed through IDCT(M_dim . DCT(.)), keeping the k x k lowest frequencies
  (the paper's default is 16 for 32 x 32 inputs).  The result spreads over
  the sign face (never the background), as the equation implies.
* ``feature_penalty``: regulariser-aware RP2, Eq. 9-11 -- the defense's own
  first-layer penalty (TV, Tik_hf, Tik_pseudo) on the attacked views'
  feature maps is added to the attacker's loss, so the attack looks for
  perturbations the regularised filters pass.

Untargeted RP2 (``untargeted=True``, as DOA evaluates its defense): each
"target" is the label the sticker must move the prediction *away* from,
and J is the Carlini-Wagner margin ``z_y - max_{j != y} z_j`` clipped at
``-kappa`` -- the sticker stops pushing a view once it is misread by
``kappa`` logits, so EOT spends its effort on the views still read right.

All targets are optimised together as one (K, 3, R, R) tensor -- the K
independent problems share each forward pass, so the 17 targets of BlurNet
Table II cost about one attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError

from .base import eval_mode, margin_loss
from .dct import lowpass_dct
from .palette import load_palette, nearest_palette, non_printability
from .views import SignViews, apply_perturbation, render_with_sticker, sticker_region, template_face

FeaturePenalty = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RP2Result:
    """Stickers for each target (absolute RGB colours in template coordinates) and the optimisation record."""

    targets: np.ndarray  # (K,)
    stickers: np.ndarray  # (K, 3, R, R) in [0, 1]; face colour outside the region
    region: np.ndarray  # (R, R) {0, 1}: where the perturbation may be
    train_success: np.ndarray  # (K,) targeted success on the optimisation views (differentiable composite)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    delta: np.ndarray | None = None  # (K, 3, R, R) the optimised variable, to warm-start a later call from


class RP2:
    """Batched-target RP2 with EOT over rendered views (see module docstring for the paper and threat model).

    Args (defaults in brackets): ``mask`` ["bars": RP2's two bars; "sign";
    or a PNG path]; ``res`` [32] sticker resolution across the sign
    template; ``steps`` [300] Adam steps over all views (the paper's
    epochs); ``lr`` [0.03]; ``lam`` [0.002] weight of ||M . delta||_2 (the
    paper's lambda, measured at ``res`` pixels across the sign);
    ``nps_weight`` [1.0]; ``palette`` [shipped nominal palette] path;
    ``snap`` [True] snap the final sticker to the palette; ``noise`` [0.02]
    per-step Gaussian pixel noise and +-10% gain jitter (EOT over sensor
    noise and exposure); ``views_per_step`` [10] views drawn at random each
    step (stochastic EOT: the expectation is estimated on a fresh sample of
    transformations every step, at a fraction of the cost of all views);
    ``dct_dim`` [0 = off]; ``untargeted`` [False]: move each view away from the label given as its
    "target" (module docstring); ``kappa`` [5.0] the untargeted margin's clip; ``feature_penalty`` [None].
    """

    #: constructor arguments that are not hyper-parameters (see :func:`~train.attacks.base.hyperparameters`)
    runtime_args = ("feature_penalty",)

    def __init__(self, model: nn.Module, *, mask: str | Path = "bars", res: int = 32, steps: int = 300,
                 lr: float = 0.03, lam: float = 0.002, nps_weight: float = 1.0, palette: str | Path | None = None,
                 snap: bool = True, noise: float = 0.02, views_per_step: int = 10, dct_dim: int = 0,
                 untargeted: bool = False, kappa: float = 5.0, feature_penalty: FeaturePenalty | None = None,
                 progress: bool = False):
        if steps < 1 or lr <= 0 or lam < 0 or nps_weight < 0 or res < 4 or views_per_step < 1 or kappa < 0:
            raise SignguardError("rp2: need steps >= 1, lr > 0, lam >= 0, nps_weight >= 0, res >= 4, "
                                 "views_per_step >= 1, kappa >= 0")
        if not 0 <= dct_dim <= res:
            raise SignguardError(f"rp2: dct_dim must be in [0, res={res}], got {dct_dim}")
        if feature_penalty is not None and not (hasattr(model, "features1") and hasattr(model, "head")):
            raise SignguardError("rp2: feature_penalty needs a model with features1/head (first-layer maps)")
        self.model, self.mask, self.res, self.steps, self.lr = model, mask, res, steps, lr
        self.lam, self.nps_weight, self.snap, self.noise = lam, nps_weight, snap, noise
        self.views_per_step = views_per_step
        self.dct_dim, self.feature_penalty, self.progress = dct_dim, feature_penalty, progress
        self.untargeted, self.kappa = bool(untargeted), float(kappa)
        self.palette_path = palette
        self.palette = torch.from_numpy(load_palette(palette))

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter this attack runs with, keyed by its constructor argument, defaults included
        (``palette`` "default" = the shipped palette), plus the name of the ``feature_penalty`` (None if off)."""
        fp = self.feature_penalty
        return {"mask": str(self.mask), "res": self.res, "steps": self.steps, "lr": self.lr, "lam": self.lam,
                "nps_weight": self.nps_weight, "palette": str(self.palette_path) if self.palette_path else "default",
                "snap": self.snap, "noise": self.noise, "views_per_step": self.views_per_step, "dct_dim": self.dct_dim,
                "untargeted": self.untargeted, "kappa": self.kappa,
                "feature_penalty": None if fp is None else getattr(fp, "__qualname__", type(fp).__qualname__)}

    def _effective(self, delta: torch.Tensor, face: torch.Tensor, sticker: torch.Tensor,
                   sign: torch.Tensor) -> torch.Tensor:
        """The perturbation actually applied: masked (Eq. 1) or low-passed (Eq. 8), kept printable in [0, 1]."""
        d = delta * sticker
        if self.dct_dim:
            d = lowpass_dct(d, self.dct_dim) * sign
        return (face + d).clamp(0.0, 1.0) - face

    def _hit(self, pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return pred != tgt if self.untargeted else pred == tgt

    def __call__(self, views: SignViews, targets: Sequence[int], seed: int = 0,
                 init: torch.Tensor | None = None) -> RP2Result:
        """Stickers for ``targets`` on ``views`` (untargeted: the labels to move away from); ``init`` (K, 3, R, R)
        warm-starts the optimised variable from an earlier result's ``delta`` (a persistent attacker across
        calls), else it starts near zero.  ``train_success``: share of the views read as the target (untargeted:
        read as anything but the label)."""
        from ..progress import progress as bar

        targets_t = torch.as_tensor(list(targets), dtype=torch.long)
        if targets_t.numel() == 0:
            raise SignguardError("rp2: no targets")
        k, n_views = len(targets_t), len(views)
        v = min(self.views_per_step, n_views)
        gen = torch.Generator().manual_seed(int(seed))
        face = torch.from_numpy(template_face(views.class_id, self.res))
        sticker = torch.from_numpy(sticker_region(self.mask, views.class_id, self.res))
        sign = torch.from_numpy(sticker_region("sign", views.class_id, self.res))
        region = sign if self.dct_dim else sticker
        start = 0.01 * torch.randn(k, 3, self.res, self.res, generator=gen)
        if init is not None:
            if init.shape != start.shape:
                raise SignguardError(f"rp2: init must have shape {tuple(start.shape)}, got {tuple(init.shape)}")
            start = init.detach().clone().float()
        delta = start.requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        tgt = targets_t.repeat_interleave(v)
        s = views.x.shape[1:]
        history: list[dict[str, Any]] = []
        with eval_mode(self.model):
            for step in bar(range(self.steps), "rp2", self.progress, leave=False):
                d = self._effective(delta, face, sticker, sign)
                idx = torch.randperm(n_views, generator=gen)[:v]
                xa = apply_perturbation(views, d, region, idx).reshape(k * v, *s)
                if self.noise > 0:
                    jit = 1.0 + 0.1 * (2 * torch.rand(k * v, 1, 1, 1, generator=gen) - 1)
                    xa = (xa * jit + self.noise * torch.randn(xa.shape, generator=gen)).clamp(0.0, 1.0)
                reg = torch.zeros(())
                if self.feature_penalty is not None:
                    f1 = self.model.features1(xa)
                    logits = self.model.head(f1)
                    reg = self.feature_penalty(f1) * k  # per-target mean, summed over targets
                else:
                    logits = self.model(xa)
                if self.untargeted:  # z_y - max_{j != y} z_j, no lower than -kappa
                    j = (-margin_loss(logits, tgt, None)).clamp_min(-self.kappa)
                else:
                    j = F.cross_entropy(logits, tgt, reduction="none")
                objective = j.view(k, v).mean(1)
                l2 = (d * region).flatten(1).norm(dim=1)
                nps = non_printability(face + d, self.palette, region)
                loss = (objective + self.lam * l2 + self.nps_weight * nps).sum() + reg
                # the gradient w.r.t. delta only: the model's parameters are neither touched nor toggled
                (delta.grad,) = torch.autograd.grad(loss, delta)
                opt.step()
                if step % 25 == 0 or step == self.steps - 1:
                    succ = self._hit(logits.argmax(1), tgt).view(k, v).float().mean(1)
                    history.append({"step": step, "objective": objective.detach().mean().item(), "l2": l2.mean().item(),
                                    "nps": nps.mean().item(), "reg": float(reg.detach()) / k,
                                    "success": succ.mean().item()})
            with torch.no_grad():
                colors = (face + self._effective(delta, face, sticker, sign)).numpy()
                if self.snap:
                    snapped = nearest_palette(colors.transpose(0, 2, 3, 1), self.palette.numpy()).transpose(0, 3, 1, 2)
                    colors = np.where(region.numpy() > 0, snapped, colors)
                d = torch.from_numpy(colors) - face
                xa = apply_perturbation(views, d, region).reshape(k * n_views, *s)
                succ = self._hit(self.model(xa).argmax(1), targets_t.repeat_interleave(n_views))
                succ = succ.view(k, n_views).float().mean(1).numpy()
        return RP2Result(targets_t.numpy(), colors.astype(np.float32), region.numpy(), succ, history, self.config(),
                         delta.detach().numpy().copy())


@torch.no_grad()
def evaluate_stickers(model: nn.Module, views: SignViews, result: RP2Result, batch_size: int = 512,
                      label: int | None = None) -> dict[str, Any]:
    """Physical-style evaluation on (held-out) ``views``: re-render each pose with each target's sticker.

    Per target: targeted success (prediction == target), untargeted success
    (prediction altered, BlurNet Sec. II-A), mean L2 dissimilarity of the
    stickered input to the clean one.  Also the clean accuracy on the views, against ``label`` (the model's
    index of the rendered sign; default its LISA-18 index ``views.class_id``).
    """
    from ..eval.metrics import accuracy, attack_success_rate, l2_dissimilarity, targeted_success_rate
    from ..trainer import predict

    clean = predict(model, views.x, batch_size)
    x0 = views.x.numpy()
    per = []
    for t, colors in zip(result.targets, result.stickers):
        xs = render_with_sticker(views, colors, result.region)
        pred = predict(model, xs, batch_size)
        per.append({"target": int(t), "targeted_success": targeted_success_rate(pred, np.full(len(pred), t)),
                    "untargeted_success": attack_success_rate(clean, pred),
                    "l2_dissimilarity": float(l2_dissimilarity(x0, xs).mean()),
                    "predictions": np.bincount(pred, minlength=int(max(pred.max(), t)) + 1).tolist()})
    true = views.class_id if label is None else label
    return {"n_views": len(views), "clean_accuracy": accuracy(clean, np.full(len(clean), true)),
            "per_target": per}


def save_rp2_sticker(out_dir: str | Path, model: nn.Module, heldout: SignViews, result: RP2Result,
                     evaluation: dict[str, Any], index: int, sign_width_mm: float, dpi: int,
                     meta: dict[str, Any]) -> dict[str, Path]:
    """Target ``index``'s sticker as a printable artifact (PNG + PDF at ``sign_width_mm``/``dpi``, mask,
    sidecar) and a preview of it on the first 16 held-out views with the model's predictions.

    One writer for ``signguard attack rp2`` and ``signguard eval``, so every sticker's sidecar names its
    sign, target and held-out score the same way (``verify`` re-prints it onto fresh poses of that sign).
    """
    from ..data.classes import LISA_CLASSES
    from ..trainer import predict
    from .sticker_io import preview_grid, save_sticker

    per = evaluation["per_target"][index]
    colors = result.stickers[index]
    paths = save_sticker(out_dir, colors.transpose(1, 2, 0), result.region > 0, sign_width_mm, dpi, {
        **meta, "sign": LISA_CLASSES[heldout.class_id], "target": LISA_CLASSES[int(result.targets[index])],
        "heldout_targeted_success": per["targeted_success"], "heldout_views": evaluation["n_views"],
        "clean_view_accuracy": evaluation["clean_accuracy"], "config": result.config})
    xs = render_with_sticker(heldout, colors, result.region)[:16]
    preview_grid(Path(out_dir) / "preview.png", xs, [LISA_CLASSES[p] for p in predict(model, xs)])
    return paths
