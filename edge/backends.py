"""Inference backends: one ``run(batch) -> logits`` call over onnxruntime or TensorRT.

Why a registry: the loop, the field test and the verification of a deployed
artifact must not care which runtime executes the model.  Heavy runtimes are
imported inside the backend, never at package import, so ``import edge`` stays
cheap and a missing optional dependency becomes a message naming the install
command instead of a crash at start-up.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BundleError, SignguardError, require
from .fileio import PathLike

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")

# Short names a user may type for onnxruntime execution providers.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the max so large logits do not overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def topk(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores along the last axis, best first.

    Ties keep the lower index first (stable), so results are deterministic.
    """
    s = np.asarray(scores)
    k = max(1, min(int(k), s.shape[-1]))
    idx = np.argsort(-s, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(s, idx, axis=-1)


def resolve_providers(providers: Optional[Sequence[str]], available: Sequence[str]) -> List[str]:
    """Map aliases to onnxruntime provider names, drop unavailable ones (with a warning), end with CPU."""
    wanted = [_PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["CPUExecutionProvider"])]
    out = []
    for p in wanted:
        if p in available:
            if p not in out:
                out.append(p)
        else:
            log.warning("onnxruntime execution provider %s is not available here (have %s); skipped", p, available)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class OrtBackend:
    """An onnxruntime session over one ONNX file.

    ``providers`` is a list like ``["cuda"]`` or ``["TensorrtExecutionProvider"]``;
    the default is CPU.  ``input_name``/``output_name`` (from the manifest) are
    checked against the graph so a bundle describing another model fails here,
    not with wrong predictions.  Models with a fixed batch size are run in
    chunks of that size.
    """

    kind = "onnxruntime"

    def __init__(
        self,
        model_path: PathLike,
        providers: Optional[Sequence[str]] = None,
        input_name: Optional[str] = None,
        output_name: Optional[str] = None,
    ) -> None:
        ort = require("onnxruntime", "the onnxruntime backend needs onnxruntime: `pip install signguard[edge]`")
        self.model_path = str(model_path)
        self.providers = resolve_providers(providers, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only; provider fallbacks are logged by us
        try:
            self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own (non-exported) exception types
            raise BundleError("%s: onnxruntime cannot load this model (%s)" % (self.model_path, e)) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = self._pick(input_name, [i.name for i in inputs], "input")
        self.output_name = self._pick(output_name, [o.name for o in outputs], "output")
        meta = next(i for i in inputs if i.name == self.input_name)
        self.input_dtype = _ORT_DTYPES.get(meta.type, np.float32)
        batch = meta.shape[0] if meta.shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        log.debug("onnxruntime session %s on %s", self.model_path, self.session.get_providers())

    def _pick(self, wanted: Optional[str], names: List[str], what: str) -> str:
        if wanted is None:
            return names[0]
        if wanted not in names:
            raise BundleError(
                "%s: the manifest names %s %r but the graph has %s" % (self.model_path, what, wanted, names)
            )
        return wanted

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, ...) array -> first/selected output as float32 (N, C)."""
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        step = self.fixed_batch or len(x)
        outs = []
        for start in range(0, len(x), max(step, 1)):
            chunk = x[start : start + step]
            pad = step - len(chunk)
            if pad:  # fixed-batch model: pad the last chunk, drop the padding after
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            y = self.session.run([self.output_name], {self.input_name: chunk})[0]
            outs.append(y[: step - pad])
        if not outs:
            raise SignguardError("backend.run: empty batch")
        return np.concatenate(outs).astype(np.float32, copy=False)


def _make_ort(path: PathLike, **kwargs: Any) -> OrtBackend:
    return OrtBackend(path, **kwargs)


def _make_trt(path: PathLike, **kwargs: Any) -> Any:
    """``edge.trt_runtime.TrtBackend(path, input_name=..., output_name=...)`` with ``run(batch) -> (N, C)``;
    it names what to install when tensorrt or pycuda is missing."""
    from .trt_runtime import TrtBackend

    kwargs.pop("providers", None)
    return TrtBackend(path, **kwargs)


_REGISTRY: Dict[str, Callable[..., Any]] = {"onnxruntime": _make_ort, "tensorrt": _make_trt}

# The model-file format each backend executes (see manifest.FORMATS).
BACKEND_FORMAT = {"onnxruntime": "onnx", "tensorrt": "engine"}


def make_backend(kind: str, path: PathLike, **kwargs: Any) -> Any:
    """Create a backend by name; ``kwargs`` go to its constructor (e.g. ``providers``, ``input_name``)."""
    if kind not in _REGISTRY:
        raise SignguardError("backend %r is unknown; choose one of %s" % (kind, sorted(_REGISTRY)))
    return _REGISTRY[kind](path, **kwargs)
