"""The training loop: one recipe -> one run folder with a checkpoint, a log and metrics.

Deterministic under the recipe's seed (per-epoch shuffles come from a
generator seeded by (seed, epoch), the LR follows a closed-form cosine of the
epoch), so ``--resume`` after an interruption continues exactly where the
last completed epoch left off.  Every epoch writes the checkpoint and the
training state atomically and appends one flushed JSON line to ``log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError
from edge.fileio import atomic_write_text

from .attacks.base import batched_predict
from .checkpoint import load_checkpoint, load_train_state, save_checkpoint, save_train_state
from .config import Recipe
from .data.datasets import DataBundle, Split, load_data
from .defenses.blurnet import make_penalty, model_options
from .models import create_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SignguardError(f"optim.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


@torch.no_grad()
def predict(
    model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class predictions (N,) as numpy for inputs (N, 3, S, S) in [0, 1]: eval mode, no autograd graph
    (:func:`~train.attacks.base.batched_predict` on ``device``)."""
    return batched_predict(model, torch.as_tensor(x).to(device), batch_size).cpu().numpy()


def accuracy(model: nn.Module, split: Split, device: str | torch.device = "cpu") -> float:
    return float((predict(model, split.x, device=device) == split.y).mean()) if len(split) else float("nan")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Jitter for real data, per image: small affine (rotation +-10 deg, scale 0.9-1.1, shift +-2 px,
    edges replicated) and photometric (gamma, contrast, brightness), the nuisances of roadside photos."""
    n, _, h, w = x.shape
    ang = (torch.rand(n, generator=gen) - 0.5) * (20.0 * math.pi / 180.0)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * (4.0 / h)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.8)
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    bias = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x.clamp(1e-6, 1) ** gamma - mean) * contrast + mean + bias).clamp(0, 1)


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    return create_model(recipe.model.name, **model_arch_options(recipe, num_classes))


def model_arch_options(recipe: Recipe, num_classes: int) -> dict[str, Any]:
    """Builder options of a recipe's model (recorded in the checkpoint sidecar)."""
    return {"num_classes": num_classes, "input_norm": recipe.model.input_norm, **model_options(recipe.defense)}


def _cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def train(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; returns the final metrics (also in ``model.json``)."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    o = recipe.optim
    if o.num_threads:
        torch.set_num_threads(o.num_threads)
    device = resolve_device(o.device)
    torch.manual_seed(o.seed)
    pp = recipe.preprocess_cfg()
    data = data or load_data(recipe.data, pp, progress=progress)

    model = build_model(recipe, len(data.classes)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    betas, eps = (0.9, 0.999), 1e-8  # BlurNet Sec. II-C
    opt = (
        torch.optim.AdamW(params, lr=o.lr, betas=betas, eps=eps, weight_decay=o.weight_decay)
        if o.weight_decay > 0
        else torch.optim.Adam(params, lr=o.lr, betas=betas, eps=eps)
    )
    penalty = make_penalty(recipe.defense)
    attack = None
    if recipe.defense.kind == "pgd_at":
        from .attacks.pgd import PGD

        d = recipe.defense
        attack = PGD(model, eps=d.eps, alpha=d.step_size, steps=d.attack_steps, batch_size=len(data.train.y))
    start, best, prior_s = 0, -1.0, 0.0  # prior_s: training seconds spent before a resume
    if resume and (run_dir / "train_state.json").is_file():
        state_model, _ = load_checkpoint(run_dir / "last.json", device=device)
        model.load_state_dict(state_model.state_dict())
        st = load_train_state(run_dir, opt)
        start, best, prior_s = st["epoch"] + 1, st["best_val"], float(st.get("train_time_s", 0.0))
        log.info("resuming %s at epoch %d", run_dir, start)
    elif resume:
        log.warning("--resume: no training state in %s, starting from scratch", run_dir)
    atomic_write_text(run_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))

    meta = {
        "architecture": {
            "name": recipe.model.name,
            "options": model_arch_options(recipe, len(data.classes)),
        },
        "defense": recipe.to_dict()["defense"],
        "classes": data.classes,
        "preprocess": pp.to_dict(),
        "recipe": recipe.to_dict(),
        "data_hash": data.data_hash,
    }
    xtr = torch.as_tensor(data.train.x)
    ytr = torch.as_tensor(data.train.y)
    real = recipe.data.kind != "synthetic" and recipe.data.augment
    t0 = time.time() - prior_s  # so elapsed times count the whole training across resumes
    for epoch in range(start, o.epochs):
        model.train()
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(o.lr, epoch, o.epochs)
        gen = torch.Generator().manual_seed(o.seed * 100003 + epoch)
        perm = torch.randperm(len(ytr), generator=gen)
        tot = {"loss": 0.0, "reg": 0.0, "correct": 0, "n": 0}
        bar = tqdm(range(0, len(perm), o.batch_size), desc=f"{recipe.name} epoch {epoch + 1}/{o.epochs}",
                   disable=not progress, leave=False)
        for i in bar:
            idx = perm[i : i + o.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if real:
                xb = augment(xb, gen)
            if recipe.defense.kind == "gaussian":
                xb = xb + recipe.defense.sigma * torch.randn(xb.shape, generator=gen)
            elif attack is not None:
                k = max(1, int(round(recipe.defense.adv_fraction * len(xb))))
                seed = o.seed * 1_000_003 + epoch * 10_007 + i
                xb = torch.cat([attack.generate(xb[:k].to(device), yb[:k].to(device), seed=seed).cpu(), xb[k:]])
            xb, yb = xb.to(device), yb.to(device)
            f1 = model.features1(xb)
            logits = model.head(f1)
            loss = F.cross_entropy(logits, yb, label_smoothing=o.label_smoothing)
            reg = penalty(model, f1) if penalty is not None else torch.zeros((), device=device)
            opt.zero_grad(set_to_none=True)
            (loss + reg).backward()
            opt.step()
            tot["loss"] += float(loss.detach()) * len(yb)
            tot["reg"] += float(reg.detach()) * len(yb)
            tot["correct"] += int((logits.argmax(1) == yb).sum())
            tot["n"] += len(yb)
            bar.set_postfix(loss=f"{tot['loss'] / tot['n']:.3f}", acc=f"{tot['correct'] / tot['n']:.3f}")
        val_acc = accuracy(model, data.val, device)
        rec = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": tot["loss"] / tot["n"],
            "train_reg": tot["reg"] / tot["n"],
            "train_acc": tot["correct"] / tot["n"],
            "val_acc": val_acc,
            "elapsed_s": round(time.time() - t0, 2),
        }
        with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        log.info("%s epoch %d: %s", recipe.name, epoch + 1, rec)
        if progress:
            print(f"  {recipe.name} epoch {epoch + 1}/{o.epochs}: loss {rec['train_loss']:.3f} "
                  f"train acc {rec['train_acc']:.3f} val acc {val_acc:.3f}", flush=True)
        if val_acc >= best:
            best = val_acc
            save_checkpoint(run_dir / "model", model, {**meta, "epoch": epoch, "metrics": {"val_acc": val_acc}})
        save_checkpoint(run_dir / "last", model, {**meta, "epoch": epoch, "metrics": {"val_acc": val_acc}})
        save_train_state(run_dir, opt, epoch, {"best_val": best, "train_time_s": time.time() - t0})

    model, final_meta = load_checkpoint(run_dir / "model.json", device=device)
    metrics = {
        "val_acc": accuracy(model, data.val, device),
        "test_acc": accuracy(model, data.test, device),
        "n_test": len(data.test),
        "train_time_s": round(time.time() - t0, 1),
        "best_epoch": final_meta["epoch"],
    }
    save_checkpoint(run_dir / "model", model, {**meta, "epoch": final_meta["epoch"], "metrics": metrics})
    return metrics
