"""PRN's perturbation detector (Akhtar, Liu & Mian, CVPR 2018, Sec. 4.3): an SVM on the log-absolute 2-D DCT
of what the rectifier removed, ``D(I) = B(F(I - R(I)))``.

Why it is a torch module with buffers rather than a scikit-learn object: the detector must travel inside the
checkpoint (safetensors, no pickle) and inside the device's one ONNX graph.  Every step is a plain tensor op
that exports to the ops the device runs well:

* gray = 0.299 R + 0.587 G + 0.114 B of ``I - R(I)`` (a 1x1 weighted sum);
* the orthonormal DCT-II as two MatMuls with a constant matrix, ``C = D X D^T`` (what ``scipy.fft.dctn(...,
  norm="ortho")`` and ``cv2.dct`` compute);
* ``log(|C| + eps)``, flattened, standardised with the training set's mean and scale (folded into buffers);
* the SVM's decision function: linear, ``w . z + b`` (one Gemm), or RBF,
  ``sum_j alpha_j exp(-gamma ||z - s_j||^2) + b`` over the support vectors (MatMul + Exp + MatMul).

scikit-learn fits the SVM (:func:`fit_detector`); its parameters are copied into the buffers, so the module's
score equals ``SVC.decision_function`` on the same features.  Buffers resize on load, because the number of
support vectors is known only after fitting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import SignguardError

GRAY = (0.299, 0.587, 0.114)
KERNELS = ("linear", "rbf")


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n, n): ``D @ x`` is ``scipy.fft.dct(x, norm="ortho")``."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


class DCTFeatures(nn.Module):
    """F(.): images (N, 3, S, S) -> log|DCT-II(gray)| (N, S*S)."""

    def __init__(self, size: int, eps: float = 1e-4):
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("dct", dct_matrix(size))
        self.register_buffer("gray", torch.tensor(GRAY).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.gray).sum(dim=1)  # (N, S, S)
        c = torch.matmul(torch.matmul(self.dct, g), self.dct.t())
        return torch.log(c.abs() + self.eps).flatten(1)


class DCTSVMDetector(nn.Module):
    """``D(I) = B(F(I - R(I)))``: a score per image (> ``threshold`` = perturbed).

    Before :meth:`load_svm` it fires on every image (``w = 0``, ``b = 1``), so a PRN in training is measured
    through its rectifier alone.
    """

    def __init__(self, rectifier: nn.Module, size: int, threshold: float = 0.0, eps: float = 1e-4):
        super().__init__()
        self.rectifier = [rectifier]  # not a submodule: the gate owns it (one copy of its weights)
        self.features = DCTFeatures(size, eps)
        n = size * size
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("weight", torch.zeros(n))  # linear part (zeros for an RBF SVM)
        self.register_buffer("support", torch.zeros(0, n))  # RBF support vectors (standardised features)
        self.register_buffer("dual", torch.zeros(0))  # alpha_j y_j
        self.register_buffer("gamma", torch.zeros(()))
        self.register_buffer("bias", torch.ones(()))
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        # the kernel as a Python value, kept with the buffers' shapes: at export the branch below is taken on it,
        # so tracing does not turn a tensor shape into a Python bool (TracerWarning)
        self.rbf = False

    @property
    def kernel(self) -> str:
        return "rbf" if self.rbf else "linear"

    def standardized(self, x: torch.Tensor, rectified: torch.Tensor | None = None) -> torch.Tensor:
        r = self.rectifier[0](x) if rectified is None else rectified
        return (self.features(x - r) - self.mean) / self.scale

    def score(self, x: torch.Tensor, rectified: torch.Tensor | None = None) -> torch.Tensor:
        """SVM decision value (N,); pass ``rectified`` = R(x) when already computed."""
        z = self.standardized(x, rectified)
        if self.rbf:  # a Python branch: fixed at export, so the graph has one kernel's ops
            d2 = (z * z).sum(1, keepdim=True) - 2.0 * F.linear(z, self.support) + (self.support ** 2).sum(1)
            z = torch.exp(-self.gamma * d2.clamp_min(0.0))
            return F.linear(z, self.dual.view(1, -1), self.bias.view(1)).reshape(-1)
        return F.linear(z, self.weight.view(1, -1), self.bias.view(1)).reshape(-1)  # one Gemm

    def forward(self, x: torch.Tensor, rectified: torch.Tensor | None = None) -> torch.Tensor:
        """Score minus threshold (N,): > 0 = perturbed."""
        return self.score(x, rectified) - self.threshold

    def load_svm(self, params: dict[str, np.ndarray]) -> None:
        """Copy fitted parameters (from :func:`svm_params`) into the buffers, resizing them."""
        for name, value in params.items():
            setattr(self, name, torch.as_tensor(np.asarray(value), dtype=torch.float32).clone())
        self.rbf = len(self.support) > 0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("support", "dual"):  # sized by the fit: take the checkpoint's shape
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.rbf = len(self.support) > 0


def make_svm(kernel: str, c: float = 1.0, seed: int = 0) -> Any:
    """The scikit-learn SVM of a kernel: LinearSVC (primal, fast on 1k-dim features) or SVC(rbf)."""
    from sklearn.svm import SVC, LinearSVC

    if kernel not in KERNELS:
        raise SignguardError(f"detector kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "linear":
        return LinearSVC(C=c, dual=False, max_iter=5000, random_state=seed)
    return SVC(kernel="rbf", C=c, gamma="scale")


def svm_params(svm: Any, mean: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """The detector's buffers for a fitted SVM on standardised features (``mean``, ``scale``)."""
    n = len(mean)
    out = {"mean": mean, "scale": scale}
    if hasattr(svm, "support_vectors_") and svm.kernel == "rbf":
        gamma = svm._gamma  # the value "scale" resolved to at fit time
        out.update(weight=np.zeros(n), support=svm.support_vectors_, dual=svm.dual_coef_[0],
                   gamma=np.float32(gamma), bias=np.float32(svm.intercept_[0]))
    else:
        out.update(weight=svm.coef_[0], support=np.zeros((0, n)), dual=np.zeros(0), gamma=np.float32(0.0),
                   bias=np.float32(svm.intercept_[0]))
    return out


def fit_detector(features: np.ndarray, labels: np.ndarray, kernel: str = "linear", c: float = 1.0,
                 seed: int = 0) -> tuple[Any, dict[str, np.ndarray]]:
    """Fit B on F-features (N, S*S) of clean (0) and perturbed (1) images; returns (svm, buffers)."""
    labels = np.asarray(labels)
    if set(np.unique(labels)) != {0, 1}:
        raise SignguardError("detector: training labels must hold both clean (0) and perturbed (1) images")
    mean = features.mean(0)
    scale = features.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (features - mean) / scale
    svm = make_svm(kernel, c, seed).fit(z, labels)
    return svm, svm_params(svm, mean, scale)
