"""SSP: the self-supervised perturbation of NRP (Naseer et al., CVPR 2020, Algorithm 1).

A label-free attack: it never looks at a classifier's logits or at a label.
It pushes the activations of one mid-level layer of a *feature extractor*
as far as the budget allows from those of the clean image (feature
distortion, Eq. 1, with the mean absolute error).  Because it does not
follow any one model's decision boundary, its examples transfer across
models and tasks (paper Sec. 3.1, Table 5); NRP's purifier is trained on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.errors import SignguardError

from .base import Attack, project


class LayerFeatures(nn.Module):
    """The activations of the submodule ``layer`` (a dotted name, e.g. ``features.relu3_2``) of ``model``.

    A forward hook captures them during ``model``'s own forward pass, so any registered architecture can
    serve as the extractor without a per-model feature API.  The extractor is frozen: its parameters do not
    require gradients and it stays in eval mode (SSP differentiates with respect to the input only).
    """

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            names = [n for n, m in model.named_modules() if n and not list(m.children())]
            raise SignguardError(f"ssp: layer {layer!r} is not a module of {type(model).__name__} (known: {names})")
        self.model, self.layer = model.eval(), layer
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._out: list[torch.Tensor] = []
        modules[layer].register_forward_hook(lambda _m, _i, out: self._out.append(out))

    def train(self, mode: bool = True) -> LayerFeatures:
        """Stays in eval mode whatever the caller asks: the extractor's BN/dropout must not change."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out.clear()
        self.model(x)
        return self._out.pop()


def load_features(extractor: str | Path, layer: str) -> LayerFeatures:
    """``layer`` of the checkpoint ``extractor`` (a run folder or sidecar written by ``signguard train``)."""
    from ..checkpoint import load_checkpoint
    from ..defenses import classifier_of

    model, _ = load_checkpoint(extractor)
    return LayerFeatures(classifier_of(model), layer)


def feature_distortion(f_adv: torch.Tensor, f_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample feature distortion Delta (Eq. 1) with NRP's distance: mean absolute error, shape (N,)."""
    return (f_adv - f_clean).abs().flatten(1).mean(1)


class SSP(Attack):
    """Self-supervised perturbation (Naseer et al., "A self-supervised approach for adversarial robustness",
    CVPR 2020, Algorithm 1): maximise the feature distortion (Eq. 1, MAE) at one layer of a feature extractor
    within an L-inf ball (Eq. 4).

    ``x' = R(x)`` -- the paper's random first step, here a uniform draw in the ``eps`` ball -- then ``steps``
    times ``x' <- clip_{x, eps}(x' + alpha * sign(grad_x' Delta(x, x')))`` (Eqs. 2-3), also clipped to the
    [0, 1] box.  The random first step matters: at ``x' = x`` the MAE has no ascent direction.

    Threat model: label-free and model-agnostic -- the attacked classifier ``model`` is used only to score
    the result, so against a classifier SSP is always a *transfer* attack from the extractor.  ``y`` is not
    used to craft; ``targeted`` mode does not exist.

    Args:
        model: classifier scored on the result ((N, 3, H, W) pixels in [0, 1] -> logits); not used to craft.
        extractor: checkpoint (run folder or ``.json``) of the feature extractor, loaded on first use.
        layer: dotted module name in the extractor whose output is distorted (default ``features.relu3_3``,
            the layer ``bench/nrp_report.py layers`` picks by transferability for ``vgg_small``).
        eps: L-inf budget in [0, 1] pixels (default 16/255, the paper's).
        alpha: step size kappa (default 0.01, the reference implementation's).
        steps: iterations T (default 20).
        features: an already-built ``images -> features`` module used instead of ``extractor`` (the purifier's
            training loop and tests pass the extractor they hold).
        batch_size, progress: see :class:`~train.attacks.base.Attack`.

    Extra per-sample info: ``feature_distortion``, the MAE at the layer after the last step.
    """

    name = "ssp"
    targeted_ok = False
    runtime_args = ("features",)

    def __init__(self, model: nn.Module, *, extractor: str | None = None, layer: str = "features.relu3_3",
                 eps: float = 16 / 255, alpha: float = 0.01, steps: int = 20, features: nn.Module | None = None,
                 batch_size: int = 256, progress: bool = False):
        super().__init__(model, batch_size=batch_size, progress=progress)
        if (extractor is None) == (features is None):
            raise SignguardError("ssp: give exactly one feature extractor: extractor=<checkpoint> or "
                                 "features=<module>")
        for arg, value in (("eps", eps), ("alpha", alpha)):
            if not value >= 0:
                raise SignguardError(f"ssp: {arg} must be >= 0, got {value!r}")
        if int(steps) != steps or steps < 1:
            raise SignguardError(f"ssp: steps must be an integer >= 1, got {steps!r}")
        self.extractor, self.layer = extractor, layer
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self._features = features

    def config(self) -> dict[str, Any]:
        """The hyper-parameters plus the extractor's weight hash when it is a checkpoint (so a cached result
        made with another extractor is not reused)."""
        out = super().config()
        if self.extractor is not None:
            from ..checkpoint import read_sidecar

            try:
                out["extractor_sha256"] = read_sidecar(self.extractor)[1]["weights_sha256"]
            except SignguardError:
                pass  # not trained yet: the sweep validates entries before it runs them
        return out

    @property
    def features(self) -> nn.Module:
        if self._features is None:
            self._features = load_features(self.extractor, self.layer)
        return self._features

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        feats = self.features.to(x.device)
        x = x.detach()
        with torch.no_grad():
            f_clean = feats(x)
        start = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * self.eps  # R: a random first step
        x_adv = (x + start).clamp(0.0, 1.0)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(feature_distortion(feats(x_adv), f_clean).sum(), x_adv)
            x_adv = x + project(x_adv.detach() + self.alpha * grad.sign() - x, self.eps, "linf")
            x_adv = x_adv.clamp(0.0, 1.0)
        with torch.no_grad():
            dist = feature_distortion(feats(x_adv), f_clean)
        return x_adv, {"feature_distortion": dist}
