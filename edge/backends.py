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
    not with wrong predictions; ``io_shapes`` (input and output dims, ``None``
    for a dynamic one) lets the bundle check the shapes too.  Models with a
    fixed batch size are run in chunks of that size.  ``threads`` sets the
    intra-op thread count (benchmarks compare runtimes at equal threads).
    """

    kind = "onnxruntime"

    def __init__(
        self,
        model_path: PathLike,
        providers: Optional[Sequence[str]] = None,
        input_name: Optional[str] = None,
        output_name: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> None:
        ort = require("onnxruntime", "the onnxruntime backend needs onnxruntime: `pip install signguard[edge]`")
        self.model_path = str(model_path)
        self.providers = resolve_providers(providers, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only; provider fallbacks are logged by us
        # No busy-waiting between runs: onnxruntime's pool threads otherwise spin for a while after each run
        # and take the cores the capture (decode) thread needs -- on a 2-core machine this cut the loop's
        # throughput by 3-10x (bench/capture_throughput.py).  The cost is a thread wake-up per run (microseconds).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads is not None:  # intra-op threads (default: onnxruntime's, one per physical core)
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own (non-exported) exception types
            raise BundleError("%s: onnxruntime cannot load this model (%s)" % (self.model_path, e)) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = self._pick(input_name, [i.name for i in inputs], "input")
        self.output_name = self._pick(output_name, [o.name for o in outputs], "output")
        meta = next(i for i in inputs if i.name == self.input_name)
        out_meta = next(o for o in outputs if o.name == self.output_name)
        self.io_shapes = (_dims(meta.shape), _dims(out_meta.shape))
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
        return self.run_outputs(batch, [self.output_name])[self.output_name]

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.session.get_outputs()]

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
        """(N, ...) array -> the named outputs as float32 arrays with N rows (a gated graph's logits, gate
        score and decision come from one run)."""
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        step = self.fixed_batch or len(x)
        outs: List[List[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(x), max(step, 1)):
            chunk = x[start : start + step]
            pad = step - len(chunk)
            if pad:  # fixed-batch model: pad the last chunk, drop the padding after
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            for acc, y in zip(outs, self.session.run(list(names), {self.input_name: chunk})):
                acc.append(y[: step - pad])
        if not outs[0]:
            raise SignguardError("backend.run: empty batch")
        return {n: np.concatenate(o).astype(np.float32, copy=False) for n, o in zip(names, outs)}


def _dims(shape: Any) -> Optional[List[Optional[int]]]:
    """An onnxruntime shape as ints, ``None`` for a symbolic or unknown dim; ``None`` for an unknown rank."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


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
