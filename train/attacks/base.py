"""What every attack shares: the calling convention, the result type, projection and the loss sign.

One attack = one small class.  The constructor takes the model and the
budget as keywords; calling it maps ``(x in [0, 1] NCHW, y, target=None,
seed=0)`` to an :class:`AttackResult` (adversarial images in [0, 1] plus
per-sample info).  Subclasses implement :meth:`Attack.perturb` on one batch;
batching, eval-mode switching, seeding, the progress bar and the common
per-sample info (clean/adversarial predictions, success, L2 dissimilarity)
live here once.  Attacks whose perturbation is shared across images (UAP)
or lives in sign coordinates (RP2) override ``__call__`` but return the same
result type.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError

from ..eval.metrics import l2_dissimilarity

NORMS = ("linf", "l2")

#: Constructor arguments of every attack that are not hyper-parameters: what is attacked, how progress shows.
RUNTIME_ARGS = ("model", "progress")


def hyperparameters(cls: type) -> dict[str, inspect.Parameter]:
    """An attack class's hyper-parameters: the keyword arguments of its constructor, in signature order,
    except :data:`RUNTIME_ARGS` and the class's own ``runtime_args`` (e.g. RP2's ``feature_penalty``).

    The one place their names, defaults and annotations are declared: sweeps validate their attack entries
    against it, the CLI builds its options from it, and a parameter not given is not passed, so the
    default in the class's signature is the one that applies.
    """
    skip = set(RUNTIME_ARGS) | set(getattr(cls, "runtime_args", ()))
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and n not in skip and p.kind in kinds}


@dataclass
class AttackResult:
    """``x_adv`` (N, 3, H, W) in [0, 1] on the input's device; ``info`` per-sample numpy arrays and scalars.

    Per-sample keys every attack fills: ``pred_clean``, ``pred_adv``,
    ``success`` (targeted: ``pred_adv == target``; untargeted:
    ``pred_adv != y``), ``l2_dissimilarity`` (||x - x_adv||_2 / ||x||_2,
    BlurNet Sec. II-A), ``linf`` (max |x - x_adv|).
    """

    x_adv: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        s = self.info["success"]
        return float(np.mean(s)) if len(s) else float("nan")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Attack the deployed behaviour (dropout off, BN running stats), then restore the training flag."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def check_inputs(x: torch.Tensor, y: torch.Tensor | None, target: torch.Tensor | None = None) -> None:
    """Clear errors for the mistakes that otherwise surface deep inside autograd."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise SignguardError(f"attack: images must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        lo, hi = float(x.min()), float(x.max())
        raise SignguardError(f"attack: images must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    for name, t in (("labels", y), ("target", target)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (len(x),)):
            raise SignguardError(f"attack: {name} must be a tensor of shape ({len(x)},), got {getattr(t, 'shape', t)}")


def adv_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss the attacker *ascends*, (N,): ``log`` of the cross-entropy to the true label, or
    minus that to the target.

    Why the log and not the cross-entropy itself: attacks with per-sample normalised steps (sign, or
    grad / ||grad||_2: PGD, FGSM) take the same steps on ``log CE`` -- each sample's gradient only
    gains the positive factor 1 / CE -- but CE's gradient breaks on confident samples: its true-class
    term ``softmax_y - 1`` rounds to 0 once the logit margin passes ~17 nats in float32 (~36 in
    float64), leaving a wrong direction.  (Seen: a toy CNN with margins of 130-170 kept 60% of its
    accuracy under 8/255 PGD on CE, 0% on this loss.)  With ``CE = softplus(L)``,
    ``L = logsumexp_{k != c}(z_k - z_c)``, ``log CE`` is computed as ``log(softplus(L))``, or as ``L``
    itself (error < 1e-9) where ``L < -20`` and softplus would underflow.
    """
    c = (y if target is None else target)[:, None]
    gaps = (logits - logits.gather(1, c)).scatter(1, c, float("-inf"))
    lse = torch.logsumexp(gaps, dim=1)
    small = lse < -20
    log_ce = torch.where(small, lse, torch.log(F.softplus(torch.where(small, torch.zeros_like(lse), lse))))
    return log_ce if target is None else -log_ce


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample Carlini-Wagner margin the attacker *ascends*, (N,): ``max_{k != y} z_k - z_y``, or
    ``z_t - max_{k != t} z_k`` toward a target.

    Why a second loss: it is positive exactly when the attack succeeds and, unlike the cross-entropy,
    does not saturate, so it checks that a PGD result is not an artefact of the loss (the standard
    cross-check of Carlini & Wagner, S&P 2017, and of AutoAttack's DLR loss).
    """
    c = (y if target is None else target)[:, None]
    zc = logits.gather(1, c)[:, 0]
    other = logits.scatter(1, c, float("-inf")).amax(1)
    return other - zc if target is None else zc - other


LOSSES = {"ce": adv_loss, "margin": margin_loss}


def flat_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch, shape (N,)."""
    f = d.flatten(1)
    return f.abs().amax(1) if norm == "linf" else f.norm(dim=1)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Projection of each sample's perturbation onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, "l2").clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
    return delta * torch.clamp(eps / n, max=1.0)


def normalized_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for L-inf, grad / ||grad||_2 for L2."""
    if norm == "linf":
        return grad.sign()
    n = flat_norm(grad, "l2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return grad / n


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise SignguardError(f"attack: norm must be one of {NORMS}, got {norm!r}")
    return norm


@torch.no_grad()
def batched_predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros(0, dtype=torch.long, device=x.device)


def describe(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
             pred_clean: torch.Tensor, pred_adv: torch.Tensor) -> dict[str, np.ndarray]:
    """The per-sample info every :class:`AttackResult` carries."""
    d = (x_adv - x).flatten(1)
    succ = pred_adv == target if target is not None else pred_adv != y
    return {
        "pred_clean": pred_clean.cpu().numpy(),
        "pred_adv": pred_adv.cpu().numpy(),
        "success": succ.cpu().numpy(),
        "l2_dissimilarity": l2_dissimilarity(x.detach().cpu().numpy(), x_adv.detach().cpu().numpy()),
        "linf": d.abs().amax(1).cpu().numpy() if d.numel() else np.zeros(len(x)),
    }


class Attack:
    """Base class: batching, eval mode, per-batch seeding, progress and the common info.

    Subclasses set ``name`` and implement ``perturb(x, y, target, gen) ->
    (x_adv, extra_info)`` for one batch, ``extra_info`` holding per-sample
    tensors/arrays (concatenated over batches) -- e.g. DeepFool's minimal
    perturbation norm.  ``gen`` is a CPU ``torch.Generator`` seeded from
    ``(seed, batch index)``, so results do not depend on the batch size's
    effect on the global RNG.
    """

    name = "attack"
    targeted_ok = True

    def __init__(self, model: nn.Module, *, batch_size: int = 256, progress: bool = False):
        self.model = model
        self.batch_size = int(batch_size)
        self.progress = progress

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter this attack runs with, keyed by its constructor argument, defaults included:
        what reports print as the attack's budget.  Reads the attribute of the same name; a subclass that
        stores an argument differently overrides this."""
        return {name: getattr(self, name) for name in hyperparameters(type(self))}

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
                 seed: int = 0) -> AttackResult:
        check_inputs(x, y, target)
        x_adv, extra = self._run(x, y, target, seed)
        pred_clean = batched_predict(self.model, x)
        pred_adv = batched_predict(self.model, x_adv)
        info = describe(x, x_adv, y, target, pred_clean, pred_adv)
        info.update({k: np.concatenate(v) for k, v in extra.items()})
        return AttackResult(x_adv, info)

    def generate(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
                 seed: int = 0) -> torch.Tensor:
        """The adversarial images of :meth:`__call__` (same batches, seeds and eval mode) without the
        predictions and per-sample info: for adversarial training, which needs only the images."""
        return self._run(x, y, target, seed)[0]

    def _run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
             seed: int) -> tuple[torch.Tensor, dict[str, list]]:
        from ..progress import progress as bar

        if target is not None and not self.targeted_ok:
            raise SignguardError(f"attack {self.name}: targeted mode is not supported")
        advs: list[torch.Tensor] = []
        extra: dict[str, list] = {}
        with eval_mode(self.model):
            starts = range(0, len(x), self.batch_size)
            for b, i in enumerate(bar(starts, self.name, self.progress, leave=False)):
                sl = slice(i, i + self.batch_size)
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
                xa, ex = self.perturb(x[sl], y[sl], None if target is None else target[sl], gen)
                advs.append(xa.detach().clamp(0.0, 1.0))
                for k, v in ex.items():
                    extra.setdefault(k, []).append(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
        return (torch.cat(advs) if advs else x.clone()), extra
