"""BPDA: attacking through preprocessing that has no useful gradient (Athalye, Carlini & Wagner, ICML 2018).

A defense that puts a non-differentiable step in front of the classifier
(JPEG re-encoding, bit-depth reduction, a median filter, anything computed
in numpy/OpenCV) breaks the gradient chain, so a gradient attack on the
whole pipeline either fails loudly or silently sees a zero gradient -- and
the defense *looks* robust.  Backward Pass Differentiable Approximation
(Sec. 4.1 of the paper) runs the real preprocessing ``g`` on the forward
pass and a differentiable ``h ~= g`` on the backward pass; for the usual
``g(x) ~= x`` that is the identity (the "straight-through" case).

``with_preprocessing(model, g)`` gives a module every attack in this package
can use unchanged: ``PGD(with_preprocessing(model, jpeg(75)), ...)`` is the
adaptive attack on a JPEG defense.  :func:`jpeg`, :func:`quantize` and
:func:`median` are the classic non-differentiable input transformations
(Guo et al. 2018; Xu et al. 2018) to evaluate that way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from edge.errors import SignguardError

Transform = Callable[[torch.Tensor], torch.Tensor]


class _BPDA(torch.autograd.Function):
    """Forward: ``g(x)`` without autograd.  Backward: the vector-Jacobian product of ``h`` at ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: Transform, h: Transform | None) -> torch.Tensor:  # type: ignore[override]
        ctx.h = h
        ctx.save_for_backward(x)
        with torch.no_grad():
            out = g(x.detach())
        if out.shape != x.shape:
            raise SignguardError(f"bpda: preprocessing must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return out.to(dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        if ctx.h is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.h(xx), xx, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """The preprocessing ``g`` as a module whose backward pass is that of ``h`` (identity when None)."""

    def __init__(self, g: Transform, h: Transform | None = None):
        super().__init__()
        self.g, self.h = g, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BPDA.apply(x, self.g, self.h)


def with_preprocessing(model: nn.Module, g: Transform, h: Transform | None = None) -> nn.Module:
    """``model(g(x))`` with BPDA gradients: the defended pipeline, attackable by any gradient attack."""
    return nn.Sequential(BPDA(g, h), model)


def _per_image_u8(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply an OpenCV function to each image as HxWx3 uint8, return [0, 1] NCHW float on x's device."""
    u8 = (x.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([fn(np.ascontiguousarray(im)) for im in u8])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


def jpeg(quality: int = 75) -> Transform:
    """JPEG re-encoding at ``quality`` (OpenCV), a non-differentiable input-transformation defense."""
    if not 1 <= int(quality) <= 100:
        raise SignguardError(f"bpda.jpeg: quality must be in [1, 100], got {quality!r}")
    import cv2

    def code(im: np.ndarray) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)

    return lambda x: _per_image_u8(x, code)


def quantize(bits: int = 3) -> Transform:
    """Bit-depth reduction to ``bits`` per channel (feature squeezing, Xu et al. 2018): zero gradient a.e."""
    if not 1 <= int(bits) <= 8:
        raise SignguardError(f"bpda.quantize: bits must be in [1, 8], got {bits!r}")
    levels = 2 ** int(bits) - 1
    return lambda x: torch.round(x.clamp(0, 1) * levels) / levels


def median(k: int = 3) -> Transform:
    """k x k median filter per channel (OpenCV), the spatial-smoothing squeezer of Xu et al. 2018."""
    if int(k) < 3 or int(k) % 2 == 0:
        raise SignguardError(f"bpda.median: k must be an odd integer >= 3, got {k!r}")
    import cv2

    return lambda x: _per_image_u8(x, lambda im: cv2.medianBlur(im, int(k)))
