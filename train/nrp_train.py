"""NRP's purifier training (Naseer et al. 2020, Algorithm 2): label-free, purifier vs critic, on SSP examples.

Why its own loop and not ``signguard train`` with defense hooks: the
trainer's loop is supervised (cross-entropy on labels, one optimizer, the
classifier in the loop).  NRP has no classifier and no labels at all: each
batch is attacked with SSP on a *fixed* feature extractor, the purifier
takes a step on the hybrid loss (Eq. 8), then the critic takes its own step
on its own loss -- a min-max game with two optimizers, which the trainer's
one-loss hooks cannot express without branching on the defense.  It reuses
the project's pieces instead: the one config loader, the data loaders (only
the images of the training splits are read), the SSP attack and the
checkpoint conventions (safetensors + JSON sidecar, atomic writes, a
flushed JSON-lines log).

``signguard nrp train --config configs/nrp.yaml`` runs it; ``signguard nrp
attach`` then puts the purifier in front of any trained classifier.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.config import check_range, from_dict, to_dict
from edge.errors import ConfigError
from edge.fileio import atomic_write_text
from edge.preprocess import PreprocessConfig

from .attacks.ssp import SSP, feature_distortion, load_features
from .config import DataConfig, check_device
from .defenses.nrp import Critic, Purifier, PurifierConfig, save_part
from .distributed import resolve_device

# ---------------------------------------------------------------------------- recipe


@dataclass
class SSPConfig:
    """The training adversary (Algorithm 1): L-inf ``eps``, step ``alpha``, ``steps`` iterations."""

    eps: float = 16 / 255
    alpha: float = 4 / 255
    steps: int = 5

    def __post_init__(self) -> None:
        check_range(self.eps, "eps", lo=0, lo_open=True, hi=1)
        check_range(self.alpha, "alpha", lo=0, lo_open=True)
        check_range(self.steps, "steps", lo=1)


@dataclass
class LossConfig:
    """Eq. 8 weights: relativistic GAN ``alpha``, pixel L2 ``gamma``, feature MAE ``lam`` (0 ablates a term)."""

    alpha: float = 5e-3
    gamma: float = 1e-2
    lam: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "gamma", "lam"):
            check_range(getattr(self, name), name, lo=0)
        if self.gamma == 0 and self.lam == 0:
            raise ConfigError("gamma, lam: at least one reconstruction term (pixel or feature) must be on")


@dataclass
class NRPOptimConfig:
    """Adam for purifier and critic (the paper: both 1e-4, batch 16)."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-4
    critic_lr: float = 1e-4
    seed: int = 0
    num_threads: int = 0  # 0 = torch default
    device: str = "auto"  # auto = the GPU when there is one

    def __post_init__(self) -> None:
        check_range(self.epochs, "epochs", lo=1)
        check_device(self.device)
        check_range(self.batch_size, "batch_size", lo=2)  # the relativistic loss averages over the batch
        check_range(self.lr, "lr", lo=0, lo_open=True)
        check_range(self.critic_lr, "critic_lr", lo=0, lo_open=True)


@dataclass
class NRPRecipe:
    """A purifier recipe (``configs/nrp.yaml``).

    ``extractor``: checkpoint of the fixed feature extractor F_psi; ``layer``: its module SSP and the feature
    loss read.  ``data``: image sources -- only their *training* splits' images are used (labels are
    ignored), at most ``max_per_source`` from each; ``val_images`` from their validation splits monitor
    purification each epoch.
    """

    name: str = "nrp"
    extractor: str = "runs/nrp/extractor"
    layer: str = "features.relu3_3"
    data: List[DataConfig] = field(default_factory=lambda: [DataConfig()])
    max_per_source: int = 3000
    val_images: int = 256
    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    critic_width: int = 8
    ssp: SSPConfig = field(default_factory=SSPConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: NRPOptimConfig = field(default_factory=NRPOptimConfig)

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data: expected at least one image source")
        check_range(self.max_per_source, "max_per_source", lo=1)
        check_range(self.val_images, "val_images", lo=2)
        check_range(self.critic_width, "critic_width", lo=1)
        self.preprocess = PreprocessConfig.from_dict(self.preprocess, where="preprocess").to_dict()


def load_nrp_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> NRPRecipe:
    """Parse and validate a purifier recipe YAML; ``overrides`` maps dotted keys to values (``--set``)."""
    from .config import apply_overrides, read_yaml_mapping

    raw = apply_overrides(read_yaml_mapping(path, "a recipe mapping"), overrides)
    return from_dict(NRPRecipe, raw, str(Path(path)))


def load_images(recipe: NRPRecipe, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation images (N, 3, S, S) in [0, 1] from every source, ``max_per_source`` each,
    drawn with the recipe's seed; labels are dropped -- NRP is self-supervised."""
    from .data.datasets import load_data

    pp = PreprocessConfig.from_dict(recipe.preprocess, where="preprocess")
    rng = np.random.default_rng(recipe.optim.seed)
    xs, vs = [], []
    for src in recipe.data:
        d = load_data(src, pp, progress=progress)
        xs.append(d.train.x[rng.permutation(len(d.train))[: recipe.max_per_source]])
        vs.append(d.val.x[rng.permutation(len(d.val))[: math.ceil(recipe.val_images / len(recipe.data))]])
    return np.concatenate(xs), np.concatenate(vs)[: recipe.val_images]


# ---------------------------------------------------------------------------- losses (Eq. 5-8)


def relativistic_purifier_loss(c_real: torch.Tensor, c_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 7, relativistic average: ``-log sigmoid(C(P(x')) - E[C(x)])`` averaged over the batch -- the
    purifier wants its outputs judged *more real than the average clean image*."""
    return F.binary_cross_entropy_with_logits(c_fake - c_real.mean(), torch.ones_like(c_fake))


def relativistic_critic_loss(c_real: torch.Tensor, c_fake: torch.Tensor) -> torch.Tensor:
    """The critic's side of the relativistic average GAN (Jolicoeur-Martineau 2019): clean images more real
    than the average purified one, purified images less real than the average clean one."""
    return (F.binary_cross_entropy_with_logits(c_real - c_fake.mean(), torch.ones_like(c_real))
            + F.binary_cross_entropy_with_logits(c_fake - c_real.mean(), torch.zeros_like(c_fake)))


def pixel_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``||P(x') - x||_2`` per image, averaged over the batch."""
    return (out - x).flatten(1).norm(dim=1).mean()


def purifier_losses(purifier: nn.Module, critic: nn.Module, features: nn.Module, x: torch.Tensor,
                    x_adv: torch.Tensor, w: LossConfig) -> dict[str, torch.Tensor]:
    """Eq. 8 on one batch: the weighted total and each term (unweighted), from ``P(x_adv)`` against ``x``."""
    out = purifier(x_adv)
    with torch.no_grad():
        f_clean = features(x)
    terms = {"feat": feature_distortion(features(out), f_clean).mean(), "img": pixel_loss(out, x)}
    terms["adv"] = (relativistic_purifier_loss(critic(x), critic(out)) if w.alpha > 0
                    else torch.zeros((), device=x.device))
    terms["total"] = w.alpha * terms["adv"] + w.gamma * terms["img"] + w.lam * terms["feat"]
    terms["out"] = out
    return terms


# ---------------------------------------------------------------------------- loop


@torch.no_grad()
def purification_metrics(purifier: nn.Module, features: nn.Module, x: torch.Tensor,
                         x_adv: torch.Tensor) -> dict[str, float]:
    """What the purifier does on held-out images: feature distortion of the SSP examples before and after
    purification and of clean images passed through it, and the PSNR of both outputs to the clean image."""
    was = purifier.training
    purifier.eval()
    f = features(x)
    out_adv, out_clean = purifier(x_adv), purifier(x)
    purifier.train(was)

    def psnr(a: torch.Tensor) -> float:
        mse = ((a - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        return float((10 * torch.log10(1.0 / mse)).mean())

    return {"dist_adv": float(feature_distortion(features(x_adv), f).mean()),
            "dist_purified": float(feature_distortion(features(out_adv), f).mean()),
            "dist_clean_through": float(feature_distortion(features(out_clean), f).mean()),
            "psnr_adv": psnr(x_adv), "psnr_purified": psnr(out_adv), "psnr_clean_through": psnr(out_clean)}


def train_purifier(recipe: NRPRecipe, run_dir: str | Path, progress: bool = True,
                   images: tuple[np.ndarray, np.ndarray] | None = None,
                   features: nn.Module | None = None, log_every: int = 10) -> dict[str, Any]:
    """Algorithm 2 into ``run_dir``: ``purifier.{safetensors,json}``, ``critic.{safetensors,json}``,
    ``log.jsonl`` (one line per epoch, with held-out :func:`purification_metrics`), ``steps.jsonl`` (losses
    every ``log_every`` steps) and ``recipe.json``.  ``images`` (train, val) and ``features`` replace the
    recipe's sources and extractor (tests).  Returns the last epoch's record."""
    from .progress import progress as bar

    o = recipe.optim
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if o.num_threads:
        torch.set_num_threads(o.num_threads)
    torch.manual_seed(o.seed)
    device = resolve_device(o.device)
    feats = features if features is not None else load_features(recipe.extractor, recipe.layer)
    feats = feats.to(device)
    xtr, xval = images if images is not None else load_images(recipe, progress)
    xtr, xval = torch.as_tensor(xtr).to(device), torch.as_tensor(xval).to(device)
    p = recipe.purifier
    purifier, critic = Purifier(p.nf, p.gc, p.blocks).to(device), Critic(recipe.critic_width).to(device)
    opt_p = torch.optim.Adam(purifier.parameters(), lr=o.lr, betas=(0.9, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=o.critic_lr, betas=(0.9, 0.999))
    s = recipe.ssp
    ssp = SSP(nn.Identity(), features=feats, eps=s.eps, alpha=s.alpha, steps=s.steps, batch_size=o.batch_size)
    val_adv = ssp.generate(xval, torch.zeros(len(xval), dtype=torch.long), seed=o.seed + 1)  # fixed held-out SSP
    atomic_write_text(run_dir / "recipe.json", json.dumps(to_dict(recipe), indent=2))
    for name in ("log.jsonl", "steps.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    w, t0, step, rec = recipe.loss, time.time(), 0, {}
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as log, \
            open(run_dir / "steps.jsonl", "a", encoding="utf-8") as steps_log:
        _write(log, {"epoch": -1, **purification_metrics(purifier, feats, xval, val_adv)})
        for epoch in range(o.epochs):
            perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(o.seed * 100003 + epoch))
            sums: dict[str, float] = {}
            batches = range(0, len(perm) - o.batch_size + 1, o.batch_size)  # full batches: BN and E[C] need them
            for i in bar(batches, f"{recipe.name} epoch {epoch + 1}/{o.epochs}", progress, leave=False):
                x = xtr[perm[i : i + o.batch_size]]
                x_adv = ssp.generate(x, torch.zeros(len(x), dtype=torch.long), seed=o.seed * 7919 + step)  # Alg. 1
                purifier.train()
                critic.requires_grad_(False)  # the purifier's step must not move the critic
                terms = purifier_losses(purifier, critic, feats, x, x_adv, w)
                opt_p.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt_p.step()
                critic.requires_grad_(True)
                if w.alpha > 0:  # without the GAN term (ablation) the critic has no role
                    c_loss = relativistic_critic_loss(critic(x), critic(terms["out"].detach()))
                    opt_c.zero_grad(set_to_none=True)
                    c_loss.backward()
                    opt_c.step()
                    terms["critic"] = c_loss
                vals = {k: float(v.detach()) for k, v in terms.items() if k != "out"}
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                if step % log_every == 0:
                    _write(steps_log, {"step": step, "epoch": epoch, **vals})
                step += 1
            n = max(1, len(batches))
            rec = {"epoch": epoch, "steps": step, **{f"train_{k}": v / n for k, v in sums.items()},
                   **purification_metrics(purifier, feats, xval, val_adv), "elapsed_s": round(time.time() - t0, 1)}
            _write(log, rec)
            if progress:
                print(f"  {recipe.name} epoch {epoch + 1}/{o.epochs}: loss {rec['train_total']:.4f} feature "
                      f"distortion {rec['dist_adv']:.4f} -> {rec['dist_purified']:.4f} (clean through "
                      f"{rec['dist_clean_through']:.4f})", flush=True)
            meta = {"recipe": to_dict(recipe), "epoch": epoch, "metrics": rec}
            save_part(run_dir, purifier, to_dict(p), meta)
            save_part(run_dir, critic, {"width": recipe.critic_width}, meta, part="critic")
    return rec


def _write(f, rec: dict[str, Any]) -> None:
    f.write(json.dumps(rec) + "\n")
    f.flush()
