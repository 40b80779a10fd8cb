"""A loaded deployment bundle: verified manifest + chosen model file + a backend.

Why one object: the device must classify with exactly the preprocessing,
classes and model file that ``export`` recorded, after checking the hashes.
:func:`load_bundle` is the only way in, so nothing on the device can run a
model whose bundle was not verified.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .backends import BACKEND_FORMAT, BACKENDS, make_backend, softmax
from .errors import BundleError, SignguardError
from .fileio import PathLike
from .manifest import WHOLE_MODEL_PARTS, read_manifest, whole_model_entries
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

DEFAULT_PRECISION = "fp32"


def _describe(entries: Sequence[Dict[str, Any]]) -> str:
    return ", ".join("%s (%s %s, part %s)" % (e["file"], e["precision"], e["format"], e["part"]) for e in entries)


def select_model(manifest: Dict[str, Any], precision: Optional[str], fmt: str, where: str) -> Dict[str, Any]:
    """The manifest's model entry to run: right format, whole model, ``precision`` (default fp32, else first)."""
    entries: List[Dict[str, Any]] = manifest["models"]
    usable = whole_model_entries(manifest, fmt)
    if not usable:
        raise BundleError("%s: no %s model file for this backend; the bundle has %s" % (where, fmt, _describe(entries)))
    others = sorted({e["part"] for e in entries} - set(WHOLE_MODEL_PARTS))
    if others:
        log.warning("%s: the bundle also has %s part(s); this runtime runs only the %s graph",
                    where, ", ".join(others), usable[0]["part"])
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
        return self.manifest.get("gate")

    def classify(self, inputs: np.ndarray) -> np.ndarray:
        """Model inputs (N, 3, S, S) float32 RGB in [0, 1] -> raw outputs (N, C) float32.

        The shape is checked against the manifest so a preprocessing mismatch
        fails loudly instead of silently degrading accuracy.
        """
        x = np.asarray(inputs)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise SignguardError("classify: expected inputs of shape (N, 3, %d, %d), got %s" % (s, s, x.shape))
        if x.dtype != np.float32:
            raise SignguardError("classify: expected float32 inputs in [0, 1], got %s" % x.dtype)
        out = self.backend.run(x)
        if out.ndim != 2 or out.shape != (x.shape[0], len(self.classes)):
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
) -> Bundle:
    """Verify a bundle folder (schema, fields, SHA-256 of every file) and open its model.

    ``precision`` picks fp32/fp16/int8 (default fp32 when present, else the
    first model); ``backend`` is ``"onnxruntime"`` or ``"tensorrt"``;
    ``providers`` selects onnxruntime execution providers (``["cuda"]``...).
    """
    if backend not in BACKENDS:
        raise SignguardError("backend %r is unknown; choose one of %s" % (backend, list(BACKENDS)))
    root = Path(path)
    manifest = read_manifest(root, verify_hashes=verify_hashes)
    where = str(root / "manifest.json")
    entry = select_model(manifest, precision, BACKEND_FORMAT[backend], where)
    cfg = PreprocessConfig.from_dict(manifest["preprocess"], where="%s: preprocess" % where)
    shape = manifest["input"]["shape"]
    if isinstance(shape, list) and len(shape) == 4 and shape[2:] != [cfg.input_size, cfg.input_size]:
        raise BundleError(
            "%s: input.shape %s disagrees with preprocess.input_size %d" % (where, shape, cfg.input_size)
        )
    kwargs: Dict[str, Any] = {"input_name": manifest["input"]["name"], "output_name": manifest["output"]["name"]}
    if backend == "onnxruntime":
        kwargs["providers"] = providers
    runner = make_backend(backend, root / entry["file"], **kwargs)
    log.info("loaded bundle %s: %s (%s, %s)", root, entry["file"], entry["precision"], backend)
    return Bundle(root, manifest, entry, runner)
