"""A loaded deployment bundle: verified manifest + chosen model file + a backend.

Why one object: the device must classify with exactly the preprocessing,
classes and model file that ``export`` recorded, after checking the hashes.
:func:`load_bundle` is the only way in, so nothing on the device can run a
model whose bundle was not verified.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backends import BACKEND_FORMAT, BACKENDS, make_backend, softmax
from .errors import BundleError, SignguardError
from .fileio import PathLike
from .manifest import read_manifest, whole_model_entries
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

DEFAULT_PRECISION = "fp32"


def _describe(entries: Sequence[Dict[str, Any]]) -> str:
    return ", ".join("%s (%s %s, part %s)" % (e["file"], e["precision"], e["format"], e["part"]) for e in entries)


def _shape_text(dims: Sequence[Optional[int]]) -> str:
    return "[%s]" % ", ".join("?" if d is None else str(d) for d in dims)


def check_graph_io(manifest: Dict[str, Any], io_shapes: Tuple[Optional[List[Optional[int]]], ...],
                   model_path: Path, where: str) -> None:
    """Refuse a model whose graph input/output shapes disagree with the manifest (``input.shape``, one score
    per class), at load rather than with a runtime traceback on the first frame.  A dynamic dim on either
    side (``-1`` in the manifest, a symbolic one in the graph) matches anything."""
    graph_in, graph_out = io_shapes
    want = list(manifest["input"]["shape"])
    if graph_in is not None and (len(graph_in) != len(want)
                                 or any(g is not None and w >= 0 and g != w for g, w in zip(graph_in, want))):
        raise BundleError("%s: the graph's input %r has shape %s but %s says input.shape %s"
                          % (model_path, manifest["input"]["name"], _shape_text(graph_in), where, want))
    n = len(manifest["classes"])
    if graph_out is not None and (len(graph_out) != 2 or graph_out[1] not in (None, n)):
        raise BundleError("%s: the graph's output %r has shape %s but %s lists %d classes (expected [N, %d])"
                          % (model_path, manifest["output"]["name"], _shape_text(graph_out), where, n, n))


FRONT_PARTS = ("purifier", "rectifier", "gate")  # image -> image parts, in data order before the classifier


def select_chain(manifest: Dict[str, Any], precision: Optional[str], fmt: str, where: str,
                 gate: bool = True) -> List[Dict[str, Any]]:
    """The model entries to run, in data order: the whole-model graph (one entry), or -- for a bundle exported
    one graph per part -- its front parts followed by the classifier.  ``gate=False`` runs a gated bundle's
    bare classifier (its gate block's ``no_gate_part``) instead."""
    entries: List[Dict[str, Any]] = manifest["models"]
    gate_spec = manifest.get("gate")
    if not gate and gate_spec:
        part = gate_spec.get("no_gate_part", "classifier")
        usable = [e for e in entries if e["format"] == fmt and e["part"] == part]
        if not usable:
            raise BundleError("%s: no %s %r graph to run without the gate; the bundle has %s"
                              % (where, fmt, part, _describe(entries)))
        return [_pick_precision(usable, precision, where)]
    head = select_model(manifest, precision, fmt, where)
    fronts = [p for p in FRONT_PARTS if any(e["part"] == p and e["format"] == fmt for e in entries)]
    if head["part"] != "classifier" or not fronts:
        return [head]
    chain = [_pick_precision([e for e in entries if e["part"] == p and e["format"] == fmt], precision, where)
             for p in fronts]
    return chain + [head]


def select_model(manifest: Dict[str, Any], precision: Optional[str], fmt: str, where: str) -> Dict[str, Any]:
    """The manifest's whole-model entry: right format, ``precision`` (default fp32, else first)."""
    entries: List[Dict[str, Any]] = manifest["models"]
    usable = whole_model_entries(manifest, fmt)
    if not usable:
        raise BundleError("%s: no %s model file for this backend; the bundle has %s" % (where, fmt, _describe(entries)))
    return _pick_precision(usable, precision, where)


def _pick_precision(usable: List[Dict[str, Any]], precision: Optional[str], where: str) -> Dict[str, Any]:
    if precision is None:
        for e in usable:
            if e["precision"] == DEFAULT_PRECISION:
                return e
        return usable[0]
    for e in usable:
        if e["precision"] == precision:
            return e
    raise BundleError(
        "%s: precision %r is not in the bundle; it has %s" % (where, precision, _describe(usable))
    )


class ChainRunner:
    """Part graphs run one after the other (a bundle exported with ``--graphs separate``)."""

    def __init__(self, runners: List[Any]) -> None:
        self.runners = runners
        self.kind = getattr(runners[0], "kind", "chain")
        first, last = (getattr(r, "io_shapes", None) for r in (runners[0], runners[-1]))
        self.io_shapes = (first[0], last[1]) if first is not None and last is not None else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        for r in self.runners:
            batch = r.run(batch)
        return batch


class Bundle:
    """A verified bundle ready to classify preprocessed inputs.

    Attributes: ``path``, ``manifest``, ``classes``, ``preprocess_cfg`` (as
    recorded), ``model`` (the chosen manifest entry), ``model_path``,
    ``precision``, ``backend`` (has ``run(batch)``), ``input_size``.
    """

    def __init__(self, path: Path, manifest: Dict[str, Any], model: Dict[str, Any], backend: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.model = model
        self.model_path = path / model["file"]
        self.precision: str = model["precision"]
        self.classes: List[str] = list(manifest["classes"])
        self.preprocess_cfg = PreprocessConfig.from_dict(manifest["preprocess"], where="%s: preprocess" % path)
        self.input_size = self.preprocess_cfg.input_size
        self.output_semantics: str = str(manifest["output"].get("semantics", "logits"))
        self.backend = backend

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def gate(self) -> Optional[Dict[str, Any]]:
        """The manifest's gate block when the graph that runs is gated (None with ``--no-gate``)."""
        spec = self.manifest.get("gate")
        return spec if spec and self.model["part"] == "model" else None

    def classify_gated(self, inputs: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """:meth:`classify` plus the gate's score and decision per input (None, None without a gate): one run
        of the fused graph gives all three."""
        spec = self.gate
        if spec is None:
            return self.classify(inputs), None, None
        run_outputs = getattr(self.backend, "run_outputs", None)
        if run_outputs is None:
            raise BundleError("%s: the %s backend cannot read the gate's outputs; run with --no-gate"
                              % (self.model_path, getattr(self.backend, "kind", "?")))
        self._check_inputs(inputs)
        names = [self.manifest["output"]["name"], spec["score_output"], spec["decision_output"]]
        out = run_outputs(np.asarray(inputs), names)
        return self._check_outputs(out[names[0]], len(inputs)), out[names[1]], out[names[2]] > 0.5

    def classify(self, inputs: np.ndarray) -> np.ndarray:
        """Model inputs (N, 3, S, S) float32 RGB in [0, 1] -> raw outputs (N, C) float32.

        The shape is checked against the manifest so a preprocessing mismatch
        fails loudly instead of silently degrading accuracy.
        """
        x = np.asarray(inputs)
        self._check_inputs(x)
        return self._check_outputs(self.backend.run(x), x.shape[0])

    def _check_inputs(self, x: np.ndarray) -> None:
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise SignguardError("classify: expected inputs of shape (N, 3, %d, %d), got %s" % (s, s, x.shape))
        if x.dtype != np.float32:
            raise SignguardError("classify: expected float32 inputs in [0, 1], got %s" % x.dtype)

    def _check_outputs(self, out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim != 2 or out.shape != (n, len(self.classes)):
            raise BundleError(
                "%s: model output has shape %s but the manifest lists %d classes"
                % (self.model_path, out.shape, len(self.classes))
            )
        return out

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities from :meth:`classify` outputs, honouring ``output.semantics``."""
        if self.output_semantics in ("probabilities", "probs", "softmax"):
            return np.asarray(outputs, dtype=np.float32)
        return softmax(outputs, axis=-1)

    def __repr__(self) -> str:
        return "Bundle(%r, model=%s, precision=%s, classes=%d)" % (
            str(self.path), self.model["file"], self.precision, len(self.classes))


def load_bundle(
    path: PathLike,
    precision: Optional[str] = None,
    backend: str = "onnxruntime",
    providers: Optional[Sequence[str]] = None,
    verify_hashes: bool = True,
    gate: bool = True,
) -> Bundle:
    """Verify a bundle folder (schema, fields, SHA-256 of the manifest and of every file), open its model and
    check the graph's input/output shapes against the manifest.

    ``precision`` picks fp32/fp16/int8 (default fp32 when present, else the
    first model); ``backend`` is ``"onnxruntime"`` or ``"tensorrt"``;
    ``providers`` selects onnxruntime execution providers (``["cuda"]``...);
    ``gate=False`` runs a gated bundle's bare classifier.  A bundle exported one graph per part runs its
    parts chained (purifier / rectifier / gate, then the classifier).
    """
    if backend not in BACKENDS:
        raise SignguardError("backend %r is unknown; choose one of %s" % (backend, list(BACKENDS)))
    root = Path(path)
    manifest = read_manifest(root, verify_hashes=verify_hashes)
    where = str(root / "manifest.json")
    chain = select_chain(manifest, precision, BACKEND_FORMAT[backend], where, gate)
    entry = chain[-1]
    cfg = PreprocessConfig.from_dict(manifest["preprocess"], where="%s: preprocess" % where)
    shape = manifest["input"]["shape"]
    if isinstance(shape, list) and len(shape) == 4 and shape[2:] != [cfg.input_size, cfg.input_size]:
        raise BundleError(
            "%s: input.shape %s disagrees with preprocess.input_size %d" % (where, shape, cfg.input_size)
        )
    kwargs: Dict[str, Any] = {"input_name": manifest["input"]["name"], "output_name": manifest["output"]["name"]}
    if backend == "onnxruntime":
        kwargs["providers"] = providers
    runners = [make_backend(backend, root / e["file"], **kwargs) for e in chain]
    runner = runners[0] if len(runners) == 1 else ChainRunner(runners)
    io_shapes = getattr(runner, "io_shapes", None)  # backends that report them (onnxruntime)
    if io_shapes is not None:
        check_graph_io(manifest, io_shapes, root / entry["file"], where)
    log.info("loaded bundle %s: %s (%s, %s)", root, " -> ".join(e["file"] for e in chain), entry["precision"],
             backend)
    return Bundle(root, manifest, entry, runner)
