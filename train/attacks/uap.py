"""Universal perturbations: one image-agnostic ``v`` that fools the model on most images of a data set.

Two ways to make one (the UAP algorithm built on DeepFool, and stochastic
projected gradient ascent), one way to apply and score it
(:func:`apply_universal`), and its file format (:func:`save_perturbation` /
:func:`load_perturbation`): universal perturbations are computed once and
reused by defenses (PRN, FRU) and evaluations, so they live on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError
from edge.fileio import PathLike, atomic_write_bytes, atomic_write_json

from ..eval.metrics import fooling_ratio
from .base import (
    Attack,
    AttackResult,
    batched_predict,
    check_inputs,
    check_norm,
    describe,
    eval_mode,
    flat_norm,
    normalized_step,
    project,
)
from .deepfool import DeepFool

log = logging.getLogger(__name__)

#: Keys a saved perturbation's sidecar must carry (plus ``shape``/``dtype``/``sha256`` written by the saver).
REQUIRED_META = ("norm", "xi", "fooling_ratio", "model_hash")


def default_xi(norm: str, dim: int) -> float:
    """The UAP / PRN / FRU budget carried over to [0, 1] pixels of ``dim`` values.

    Those papers use xi = 10 (l-inf) and xi = 2000 (l2) on 224x224x3 images in
    [0, 255], about 4% of the mean image norm.  L-inf: 10/255.  L2: the same
    per-pixel RMS, 2000 / 255 / sqrt(224*224*3) ~= 0.0202, times sqrt(dim)
    (~= 1.12 for 32x32x3).
    """
    return 10 / 255 if norm == "linf" else 2000 / 255 * math.sqrt(dim / (224 * 224 * 3))


def apply_universal(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    v: torch.Tensor | np.ndarray) -> AttackResult:
    """Score a universal perturbation ``v`` (3, H, W) on images ``x`` (N, 3, H, W) with labels ``y`` (N,).

    ``x_adv = clip(x + v, 0, 1)``.  ``info`` holds the per-sample fields of
    :func:`~train.attacks.base.describe` plus ``perturbation`` (``v`` as a
    float32 numpy array) and ``fooling_ratio`` (fraction of images whose
    predicted label changes, the UAP paper's definition).
    """
    check_inputs(x, y)
    v = torch.as_tensor(v).to(device=x.device, dtype=x.dtype)
    if v.shape != x.shape[1:]:
        raise SignguardError(f"universal perturbation: v must have shape {tuple(x.shape[1:])}, got {tuple(v.shape)}")
    x_adv = (x + v).clamp(0.0, 1.0)
    pred_clean, pred_adv = batched_predict(model, x), batched_predict(model, x_adv)
    info: dict[str, Any] = describe(x, x_adv, y, None, pred_clean, pred_adv)
    info["perturbation"] = v.detach().cpu().numpy().astype(np.float32)
    info["fooling_ratio"] = fooling_ratio(info["pred_clean"], info["pred_adv"])
    return AttackResult(x_adv, info)


def _check_budget(name: str, xi: float | None, norm: str) -> str:
    if xi is not None and not xi > 0:
        raise SignguardError(f"{name}: xi must be > 0 (or None for the paper's default), got {xi!r}")
    return check_norm(norm)


def _check_int(name: str, arg: str, value: int, low: int) -> int:
    if int(value) != value or value < low:
        raise SignguardError(f"{name}: {arg} must be an integer >= {low}, got {value!r}")
    return int(value)


class UniversalAttack(Attack):
    """One perturbation for all images: ``fit(x, seed) -> v`` (3, H, W), then scored by :func:`apply_universal`."""

    targeted_ok = False

    def fit(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
                 seed: int = 0) -> AttackResult:
        check_inputs(x, y, target)
        if target is not None:
            raise SignguardError(f"attack {self.name}: targeted mode is not supported")
        with eval_mode(self.model):
            v = self.fit(x, seed)
        return apply_universal(self.model, x, y, v)


class UAP(UniversalAttack):
    """Universal adversarial perturbation (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, CVPR 2017, Algorithm 1).

    Threat model: white-box, one image-agnostic perturbation ``v`` with ``||v||_norm <= xi`` added to
    every image; success is the *fooling ratio* ``P(k(x + v) != k(x))`` (Eq. 1), not accuracy.

    Algorithm 1: pass over the images in a seeded random order; for each image that ``x + v`` does
    not fool yet, compute the DeepFool (l2) minimal extra perturbation ``dv`` at ``x + v`` and set
    ``v <- P_{p,xi}(v + dv)``.  Stop once the fooling ratio on the data reaches ``target_fooling``, or
    after ``max_passes`` passes.  As in the reference code, ``dv`` is only added when DeepFool did
    change the label within ``deepfool_iter`` iterations.

    ``batch_size`` trades exactness for speed: the not-yet-fooled images of each mini-batch get their
    DeepFool steps computed together at the *same* ``v``; those steps are then added one after the
    other, each followed by the projection -- the algorithm's update, with the linearisation point
    lagging by at most ``batch_size - 1`` updates (and an image that an earlier step of its mini-batch
    already fooled still contributes).  ``batch_size=1`` (default) is Algorithm 1 exactly.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        xi: budget in [0, 1] pixel units; None (default) -> :func:`default_xi`.
        norm: ``"linf"`` (default) or ``"l2"``: the ball ``v`` is projected onto.
        target_fooling: stop once the fooling ratio is >= this (the paper's 1 - delta, default 0.8).
        max_passes: passes over the data at most (default 10).
        overshoot: DeepFool overshoot (default 0.02).
        deepfool_iter: DeepFool iteration cap per image (default 10, the reference code's).
        num_candidates: DeepFool candidate classes (default 10).
        batch_size: images whose DeepFool steps are computed together (default 1, see above).
        progress: progress bar (on a terminal) over passes.

    ``__call__(x, y, seed=0)`` fits ``v`` on ``x`` and returns :func:`apply_universal`'s result on ``x``.
    """

    name = "uap"

    def __init__(self, model: nn.Module, *, xi: float | None = None, norm: str = "linf", target_fooling: float = 0.8,
                 max_passes: int = 10, overshoot: float = 0.02, deepfool_iter: int = 10, num_candidates: int = 10,
                 batch_size: int = 1, progress: bool = False):
        super().__init__(model, batch_size=_check_int("uap", "batch_size", batch_size, 1), progress=progress)
        self.norm = _check_budget("uap", xi, norm)
        if not 0 < target_fooling <= 1:
            raise SignguardError(f"uap: target_fooling must be in (0, 1], got {target_fooling!r}")
        self.xi, self.target_fooling = xi, float(target_fooling)
        self.max_passes = _check_int("uap", "max_passes", max_passes, 1)
        deepfool_iter = _check_int("uap", "deepfool_iter", deepfool_iter, 1)
        self.deepfool = DeepFool(model, overshoot=overshoot, max_iter=deepfool_iter, num_candidates=num_candidates,
                                 norm="l2", batch_size=self.batch_size)

    def config(self) -> dict[str, Any]:
        """As :meth:`Attack.config`; ``xi`` None means :func:`default_xi` of the images it is fitted on."""
        df = self.deepfool
        return {"xi": self.xi, "norm": self.norm, "target_fooling": self.target_fooling, "max_passes": self.max_passes,
                "overshoot": df.overshoot, "deepfool_iter": df.max_iter, "num_candidates": df.num_candidates,
                "batch_size": self.batch_size}

    @torch.no_grad()
    def fit(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The universal perturbation (3, H, W) for images ``x``; the model must already be in eval mode."""
        from ..progress import progress as bar

        xi = self.xi if self.xi is not None else default_xi(self.norm, x[0].numel())
        gen = torch.Generator().manual_seed(int(seed))
        k0 = batched_predict(self.model, x)
        v = torch.zeros_like(x[:1])
        for p in bar(range(self.max_passes), self.name, self.progress, leave=False):
            fr = float((batched_predict(self.model, (x + v).clamp(0, 1)) != k0).float().mean())
            log.info("uap pass %d: fooling ratio %.3f (target %.3f, xi %.4g %s)", p, fr, self.target_fooling, xi,
                     self.norm)
            if fr >= self.target_fooling:
                break
            for idx in torch.randperm(len(x), generator=gen).to(x.device).split(self.batch_size):
                xv = (x[idx] + v).clamp(0.0, 1.0)
                keep = self.model(xv).argmax(1) == k0[idx]  # not fooled yet
                idx, xv = idx[keep], xv[keep]
                if not len(idx):
                    continue
                with torch.enable_grad():
                    x_df, _ = self.deepfool.perturb(xv, k0[idx], None, gen)
                flipped = self.model(x_df).argmax(1) != k0[idx]
                for dv in (x_df - xv)[flipped]:
                    v = project(v + dv, xi, self.norm)
        return v[0]


class SPGDUniversal(UniversalAttack):
    """Universal perturbation by stochastic projected gradient ascent (Shafahi et al., "Universal adversarial
    training", AAAI 2020; the sPGD of Mummadi, Brox & Metzen, ICCV 2019).

    Threat model: as :class:`UAP` (one ``v`` with ``||v||_norm <= xi`` for all images, scored by the
    fooling ratio).  Each of ``steps`` iterations draws a random mini-batch, takes the gradient of the
    mean *clipped* cross-entropy ``min(CE(f(clip(x + v)), k(x)), loss_clip)`` with respect to the
    shared ``v``, steps ``alpha`` along its sign (l-inf) or its l2 direction, and projects onto the
    ball.  Labels are the clean predictions ``k(x)``, so the objective is the fooling ratio's; the
    clipping (Shafahi et al.'s ``beta``) stops images that are already fooled from dominating the mean.

    Args:
        model: classifier taking (N, 3, H, W) pixels in [0, 1], returning (N, K) logits.
        xi: budget in [0, 1] pixel units; None (default) -> :func:`default_xi`.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: gradient steps (default 200).
        alpha: step size; None (default) -> ``xi / 10``.
        batch_size: images per step (default 32).
        loss_clip: the clipping level ``beta`` in nats (default 4.0, our choice, not the paper's: above it
            the clean class has probability below e^-4 ~= 2%, so the image is fooled anyway).
        progress: progress bar (on a terminal) over steps.

    ``__call__(x, y, seed=0)`` fits ``v`` on ``x`` and returns :func:`apply_universal`'s result on ``x``.
    """

    name = "spgd_universal"

    def __init__(self, model: nn.Module, *, xi: float | None = None, norm: str = "linf", steps: int = 200,
                 alpha: float | None = None, batch_size: int = 32, loss_clip: float = 4.0, progress: bool = False):
        super().__init__(model, batch_size=_check_int("spgd_universal", "batch_size", batch_size, 1),
                         progress=progress)
        self.norm = _check_budget("spgd_universal", xi, norm)
        if alpha is not None and not alpha > 0:
            raise SignguardError(f"spgd_universal: alpha must be > 0 (or None for xi / 10), got {alpha!r}")
        if not loss_clip > 0:
            raise SignguardError(f"spgd_universal: loss_clip must be > 0, got {loss_clip!r}")
        self.xi, self.alpha, self.loss_clip = xi, alpha, float(loss_clip)
        self.steps = _check_int("spgd_universal", "steps", steps, 1)

    def fit(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The universal perturbation (3, H, W) for images ``x``; the model must already be in eval mode."""
        from ..progress import progress as bar

        xi = self.xi if self.xi is not None else default_xi(self.norm, x[0].numel())
        alpha = self.alpha if self.alpha is not None else xi / 10
        gen = torch.Generator().manual_seed(int(seed))
        k0 = batched_predict(self.model, x)
        v = torch.zeros_like(x[:1])
        for _ in bar(range(self.steps), self.name, self.progress, leave=False):
            idx = torch.randperm(len(x), generator=gen)[: self.batch_size].to(x.device)
            v.requires_grad_(True)
            # float64 keeps the true-class gradient term up to ~36-nat margins (float32: ~17); unlike in
            # PGD, log CE is no remedy here: the batch mean is not normalised per sample.
            logits = self.model((x[idx] + v).clamp(0.0, 1.0)).double()
            ce = F.cross_entropy(logits, k0[idx], reduction="none")
            (grad,) = torch.autograd.grad(ce.clamp(max=self.loss_clip).mean(), v)
            v = project(v.detach() + alpha * normalized_step(grad, self.norm), xi, self.norm)
        return v[0].detach()


# --------------------------------------------------------------------------- files


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_perturbation(path: PathLike, v: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ``v`` (3, H, W) as ``path`` (.npy, no pickle) and ``<path>.json`` (``meta`` + shape, dtype, SHA-256).

    ``meta`` must hold :data:`REQUIRED_META`: ``norm``, ``xi``, ``fooling_ratio`` (on the data ``v``
    was made on) and ``model_hash`` (of the model it was made for).  Both files are written
    atomically, the array first; the sidecar's SHA-256 ties the two together, so a crash between the
    writes or a swapped file is caught by :func:`load_perturbation`.
    """
    path = Path(path)
    v = np.asarray(v, dtype=np.float32)
    if v.ndim != 3 or v.shape[0] != 3:
        raise SignguardError(f"save_perturbation: v must have shape (3, H, W), got {v.shape}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SignguardError(f"save_perturbation: meta is missing {missing}")
    norm = check_norm(meta["norm"])
    n = float(flat_norm(torch.from_numpy(v)[None], norm)[0])
    if n > float(meta["xi"]) + 1e-5:
        raise SignguardError(f"save_perturbation: ||v||_{norm} = {n:.6g} exceeds meta xi = {meta['xi']}")
    buf = io.BytesIO()
    np.save(buf, v, allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_json(_sidecar(path), {**meta, "shape": list(v.shape), "dtype": "float32",
                                       "sha256": hashlib.sha256(data).hexdigest()})


def load_perturbation(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a perturbation saved by :func:`save_perturbation`: ``(v float32 (3, H, W), meta)``.

    Raises a one-line :class:`SignguardError` naming the file when the array or its sidecar is
    missing, unreadable, does not match the sidecar's SHA-256, or has the wrong shape/dtype.
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise SignguardError(f"{path}: perturbation file not found")
    if not side.is_file():
        raise SignguardError(f"{side}: sidecar not found (every perturbation .npy needs its .json)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SignguardError(f"{side}: not valid JSON ({type(e).__name__})") from None
    missing = [k for k in (*REQUIRED_META, "shape", "sha256") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SignguardError(f"{side}: sidecar is missing {missing}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise SignguardError(f"{path}: contents do not match the SHA-256 in {side.name} (corrupt or replaced)")
    try:
        v = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SignguardError(f"{path}: not a valid .npy array ({type(e).__name__})") from None
    if v.dtype != np.float32 or list(v.shape) != list(meta["shape"]) or v.ndim != 3 or v.shape[0] != 3:
        raise SignguardError(f"{path}: expected float32 (3, H, W) of shape {meta['shape']}, "
                             f"got {v.dtype} {v.shape}")
    if not np.isfinite(v).all():
        raise SignguardError(f"{path}: perturbation holds NaN or inf")
    return v, meta


def load_perturbation_set(folder: str | Path) -> tuple[np.ndarray, list[dict]]:
    """Every universal perturbation ``*.npy`` (with its JSON sidecar, hash-checked) under ``folder``, sorted by
    path: ``(V (m, 3, H, W) float32, sidecars)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SignguardError(f"{folder}: perturbation folder not found (make UAPs with `signguard attack uap`)")
    files = sorted(folder.rglob("*.npy"))
    if not files:
        raise SignguardError(f"{folder}: no universal perturbation .npy files in it")
    loaded = [load_perturbation(f) for f in files]
    shapes = {v.shape for v, _ in loaded}
    if len(shapes) > 1:
        raise SignguardError(f"{folder}: perturbations of different shapes {sorted(shapes)}")
    return np.stack([v for v, _ in loaded]), [{**m, "file": str(f)} for f, (_, m) in zip(files, loaded)]
