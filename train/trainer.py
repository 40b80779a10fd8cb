"""The training loop: one recipe -> one run folder with a checkpoint, a log and metrics.

Deterministic under the recipe's seed (per-epoch shuffles come from a
generator seeded by (seed, epoch), the LR follows a closed-form cosine of the
epoch), so ``--resume`` after an interruption continues exactly where the
last completed epoch left off, and resuming a finished run returns its
recorded metrics.  Every epoch appends one flushed JSON line to ``log.jsonl``
and writes the checkpoint and the training state, each tensors + JSON pair
as one unit (:mod:`train.checkpoint`); the training state, written last,
holds the epoch's weights too, so a kill anywhere leaves a state to resume
from, and the log lines of epochs after it are dropped on resume.  A folder
that already holds a run is refused unless the caller resumes or overwrites it.

The loop knows no defense by name: the recipe's defenses
(:class:`train.defenses.DefenseStack`) shape the model, choose what trains,
transform each batch and add loss terms.  Under ``torchrun`` the same loop
runs with DistributedDataParallel (:mod:`train.distributed`).
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

from . import distributed as D
from .attacks.base import batched_predict
from .checkpoint import (
    PENDING,
    load_checkpoint,
    load_train_state,
    read_sidecar,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from .config import Recipe
from .data.datasets import DataBundle, Split, load_checkpoint_data, load_data
from .defenses import DefenseStack, Step, classifier_of
from .models import create_model
from .progress import progress as progress_bar

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class predictions (N,) as numpy for inputs (N, 3, S, S) in [0, 1]: eval mode, no autograd graph
    (:func:`~train.attacks.base.batched_predict` on ``device``)."""
    return batched_predict(model, torch.as_tensor(x).to(device), batch_size).cpu().numpy()


def accuracy(model: nn.Module, split: Split, device: str | torch.device = "cpu") -> float:
    return float((predict(model, split.x, device=device) == split.y).mean()) if len(split) else float("nan")


def test_accuracy(model: nn.Module, meta: dict[str, Any], data: DataBundle | None = None) -> float:
    """A checkpoint's recorded test accuracy, or measured on its own test split (rebuilt from its recipe, or
    ``data`` when the caller has it) when it recorded none (a run's ``last.json``) or when ``data`` is not the
    data the record was measured on (``data_hash``: a run trained on a copy of the dataset)."""
    acc = meta.get("metrics", {}).get("test_acc")
    if acc is None or (data is not None and data.data_hash != meta.get("data_hash")):
        acc = accuracy(model, (data or load_checkpoint_data(meta, progress=False)).test)
    return float(acc)


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


def build_model(recipe: Recipe, num_classes: int, stack: DefenseStack | None = None) -> nn.Module:
    """The recipe's classifier (with the options its defenses add), started from ``model.init`` when given, and
    wrapped in the parts its defenses put in front of it."""
    stack = stack or recipe.defenses()
    model = create_model(recipe.model.name, **model_arch_options(recipe, num_classes, stack))
    if recipe.model.init:
        init, meta = load_checkpoint(recipe.model.init)
        try:
            model.load_state_dict(classifier_of(init).state_dict(), strict=True)
        except RuntimeError as e:
            raise SignguardError(f"model.init: {recipe.model.init} ({meta['architecture']['name']}) does not fit "
                                 f"{recipe.model.name}: {str(e).splitlines()[0]}") from None
    return stack.wrap(model)


def model_arch_options(recipe: Recipe, num_classes: int, stack: DefenseStack | None = None) -> dict[str, Any]:
    """Builder options of a recipe's classifier (recorded in the checkpoint sidecar)."""
    stack = stack or recipe.defenses()
    return {"num_classes": num_classes, "input_norm": recipe.model.input_norm, **stack.model_options()}


# What a training run writes into its folder (an existing one is refused without --resume/--overwrite).
RUN_FILES = ("model.json", "model.safetensors", "last.json", "last.safetensors", "train_state.json",
             "train_state.safetensors", "log.jsonl", "recipe.json")


def _run_files(run_dir: Path) -> list[str]:
    """The files of a previous run in ``run_dir`` (pending tensors of a killed write included)."""
    names = RUN_FILES + tuple(n + PENDING for n in RUN_FILES if n.endswith(".safetensors"))
    return [n for n in names if (run_dir / n).exists()]


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """The one rule of every trainer's output folder: a folder holding a run is refused unless the caller
    resumes it or overwrites it (never both)."""
    if resume and overwrite:
        raise SignguardError("--resume and --overwrite exclude each other: continue the run or start it again")
    found = _run_files(run_dir)
    if found and not (resume or overwrite):
        raise SignguardError(f"{run_dir}: already holds a training run ({', '.join(found)}); pass --resume to "
                             "continue it or --overwrite to replace it")


def clear_run_dir(run_dir: Path) -> None:
    """Delete a previous run's files (``--overwrite``); other files in the folder are kept."""
    for name in _run_files(run_dir):
        (run_dir / name).unlink()


def trim_log(path: Path, last_epoch: int) -> None:
    """Keep the complete records of epochs up to ``last_epoch`` (the state a resume starts from): a kill
    between an epoch's log line and its training state would otherwise log that epoch twice."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:  # a line torn by a kill
            continue
        if line.endswith("\n") and isinstance(rec, dict) and rec.get("epoch", last_epoch + 1) <= last_epoch:
            keep.append(line)
    atomic_write_text(path, "".join(keep))


def _cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def finished_metrics(run_dir: Path, epochs: int, final_key: str = "test_acc") -> dict[str, Any] | None:
    """The recorded final metrics of a run that completed every epoch and wrote its checkpoint (its metrics
    hold ``final_key``, written only at the end), or None -- what ``--resume`` returns for a finished run."""
    try:
        state = json.loads((run_dir / "train_state.json").read_text(encoding="utf-8"))
        _, meta = read_sidecar(run_dir / "model.json")
    except (OSError, ValueError, SignguardError):
        return None
    metrics = meta.get("metrics", {})
    if state.get("epoch", -1) + 1 >= epochs and final_key in metrics:
        return metrics
    return None


def train(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: DataBundle | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; returns the final metrics (also in ``model.json``).

    With ``resume``, a run that finished returns its recorded metrics without touching the folder.  A folder
    holding a previous run is refused unless ``resume`` (continue it) or ``overwrite`` (delete its files first).
    """
    run_dir = Path(run_dir)
    o = recipe.optim
    check_run_dir(run_dir, resume, overwrite)
    if resume:
        done = finished_metrics(run_dir, o.epochs)
        if done is not None:
            log.info("%s: already finished; returning its recorded metrics", run_dir)
            return done
        if (run_dir / "train_state.json").is_file():
            read_train_state(run_dir)  # a damaged state fails now, not after loading the data
    world, device = D.init_world(o.device)
    try:
        return _train(recipe, run_dir, resume, overwrite, progress and world.is_main, data, world, device)
    finally:
        D.close(world)


def _train(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, progress: bool, data: DataBundle | None,
           world: D.World, device: torch.device) -> dict[str, Any]:
    o = recipe.optim
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            clear_run_dir(run_dir)
    if o.num_threads:
        torch.set_num_threads(o.num_threads)
    torch.manual_seed(o.seed)
    pp = recipe.preprocess_cfg()
    data = data or load_data(recipe.data, pp, progress=progress)

    stack = recipe.defenses()
    model = build_model(recipe, len(data.classes), stack).to(device)
    params = stack.trainable(model)
    betas, eps = (0.9, 0.999), 1e-8  # BlurNet Sec. II-C
    opt = (
        torch.optim.AdamW(params, lr=o.lr, betas=betas, eps=eps, weight_decay=o.weight_decay)
        if o.weight_decay > 0
        else torch.optim.Adam(params, lr=o.lr, betas=betas, eps=eps)
    )
    stack.setup(model, device)
    stack.prepare(model, data, run_dir, device)
    val_key = stack.validation_key()  # what the recorded best score was measured with
    start, best, prior_s = 0, -1.0, 0.0  # prior_s: training seconds spent before a resume
    if resume and (run_dir / "train_state.json").is_file():
        st, weights = load_train_state(run_dir, opt)
        if weights is None:  # a state from before the weights were part of it
            last, last_meta = load_checkpoint(run_dir / "last.json", device=device)
            if last_meta.get("epoch") != st["epoch"]:
                raise SignguardError(f"{run_dir}: last.json (epoch {last_meta.get('epoch')}) and train_state.json "
                                     f"(epoch {st['epoch']}) disagree; start the run again with --overwrite")
            weights = last.state_dict()
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise SignguardError(f"{run_dir / 'train_state.json'}: its weights do not fit this recipe's model "
                                 f"({str(e).splitlines()[0]}); resume with the run's recipe.json") from None
        start, best, prior_s = st["epoch"] + 1, st["best_val"], float(st.get("train_time_s", 0.0))
        log.info("resuming %s at epoch %d", run_dir, start)
        if val_key is not None and st.get("val_key") != val_key:
            log.warning("%s: the validation score now depends on something else (e.g. a grown perturbation "
                        "bank): model selection restarts at epoch %d", run_dir, start)
            best = -1.0
    elif resume:
        log.warning("--resume: no training state in %s, starting from scratch", run_dir)
    if resume and world.is_main:
        trim_log(run_dir / "log.jsonl", start - 1)
    if world.is_main:
        atomic_write_text(run_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))

    meta = {
        "architecture": {"name": recipe.model.name, "options": model_arch_options(recipe, len(data.classes), stack)},
        "defense": recipe.defense,
        "classes": data.classes,
        "preprocess": pp.to_dict(),
        "recipe": recipe.to_dict(),
        "data_hash": data.data_hash,
    }
    step_model = _StepModule(model, stack)
    if world.distributed:
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    xtr = torch.as_tensor(data.train.x)
    ytr = torch.as_tensor(data.train.y)
    real = recipe.data.kind != "synthetic" and recipe.data.augment
    t0 = time.time() - prior_s  # so elapsed times count the whole training across resumes
    for epoch in range(start, o.epochs):
        model.train()
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(o.lr, epoch, o.epochs)
        gen = torch.Generator().manual_seed(o.seed * 100003 + epoch)
        perm = D.shard(torch.randperm(len(ytr), generator=gen), world)
        tot = [0.0, 0.0, 0.0, 0.0]  # loss sum, regulariser sum, correct, n
        bar = progress_bar(range(0, len(perm), o.batch_size), f"{recipe.name} epoch {epoch + 1}/{o.epochs}",
                           progress, leave=False)
        for i in bar:
            idx = perm[i : i + o.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if real:
                xb = augment(xb, gen)
            xb, yb = stack.transform(model, xb, yb, Step(epoch, i, o.seed, gen, device))
            xb, yb = xb.to(device), yb.to(device)
            logits, aux = step_model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=o.label_smoothing)
            reg = stack.loss(model, xb, yb, logits, aux)
            opt.zero_grad(set_to_none=True)
            (loss if reg is None else loss + reg).backward()
            opt.step()
            n = len(yb)
            tot[0] += float(loss.detach()) * n
            tot[1] += float(reg.detach()) * n if reg is not None else 0.0
            tot[2] += int((logits.argmax(1) == yb).sum())
            tot[3] += n
            bar.set_postfix(loss=f"{tot[0] / tot[3]:.3f}", acc=f"{tot[2] / tot[3]:.3f}")
        tot = D.all_sum(tot, world, device)
        val_acc = accuracy(model, data.val, device)
        score = stack.validate(model, data.val, device)  # what the best checkpoint is chosen by
        score = val_acc if score is None else score
        rec = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": tot[0] / tot[3],
            "train_reg": tot[1] / tot[3],
            "train_acc": tot[2] / tot[3],
            "val_acc": val_acc,
            **({} if score == val_acc else {"val_score": score}),
            "elapsed_s": round(time.time() - t0, 2),
        }
        if world.is_main:
            with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
            log.info("%s epoch %d: %s", recipe.name, epoch + 1, rec)
            if progress:
                print(f"  {recipe.name} epoch {epoch + 1}/{o.epochs}: loss {rec['train_loss']:.3f} "
                      f"train acc {rec['train_acc']:.3f} val acc {val_acc:.3f}", flush=True)
            if score >= best:
                save_checkpoint(run_dir / "model", model, {**meta, "epoch": epoch, "metrics": {"val_acc": val_acc}})
            save_checkpoint(run_dir / "last", model, {**meta, "epoch": epoch, "metrics": {"val_acc": val_acc}})
            save_train_state(run_dir, model, opt, epoch,
                             {"best_val": max(best, score), "train_time_s": time.time() - t0,
                              **({} if val_key is None else {"val_key": val_key})})
        best = max(best, score)
    D.barrier(world)  # rank 0 has written the best checkpoint

    model, final_meta = load_checkpoint(run_dir / "model.json", device=device)
    fitted = stack.finish(model, data, run_dir, device)  # e.g. a detector fitted on the best rectifier
    metrics = {
        "val_acc": accuracy(model, data.val, device),
        "test_acc": accuracy(model, data.test, device),
        "n_test": len(data.test),
        "train_time_s": round(time.time() - t0, 1),
        "best_epoch": final_meta["epoch"],
        **fitted,
    }
    if world.is_main:
        save_checkpoint(run_dir / "model", model, {**meta, "epoch": final_meta["epoch"], "metrics": metrics})
    D.barrier(world)
    return metrics


class _StepModule(nn.Module):
    """The training forward pass as a module, so DistributedDataParallel wraps whatever forward the defenses
    define (e.g. BlurNet's pass that also returns the first-layer maps), not only ``model(x)``."""

    def __init__(self, model: nn.Module, stack: DefenseStack):
        super().__init__()
        self.model, self.stack = model, stack

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.stack.forward(self.model, x)
