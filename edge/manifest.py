"""Deployment-bundle manifest: the contract between ``export`` (writer) and ``edge`` (reader).

A bundle is a folder holding ``manifest.json`` plus model files.  The
manifest records everything the device needs and nothing it must guess:
classes, input shape and range, THE preprocessing parameters, output
semantics, one entry per model file (format, precision, part), the
SHA-256 of every file, and ``manifest_sha256``, the SHA-256 of the manifest
itself (its canonical JSON without that field).  :func:`read_manifest`
refuses a bundle whose schema version is unknown, whose fields are missing
or ill-typed, whose files are not plain paths inside the bundle, or whose
manifest or files do not match their hashes, naming the file at fault.

Why the manifest is hashed too: the file hashes protect the models, but the
manifest says what their outputs mean -- swapping two ``classes`` would run
with every prediction wrong.  The digest catches any edit or corruption, not
an attacker (who can recompute it; sign the bundle for that).  A manifest
without the digest (written before it existed) is refused when hashes are
verified: re-export the bundle.  Anything that rewrites a manifest goes
through :func:`write_manifest`, which recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Dict, List, Optional, Tuple, Union

from .config import check_choice, from_dict
from .errors import BundleError, ConfigError
from .fileio import PathLike, atomic_write_json, sha256_file
from .preprocess import PreprocessConfig

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DIGEST_KEY = "manifest_sha256"
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "engine")
PARTS = ("model", "classifier", "rectifier", "purifier", "gate", "detector")  # detector: a localizer bundle


@dataclass(frozen=True)
class InputSpec:
    """``input``: the graph's input tensor (name, shape ``[N, C, H, W]`` with ``-1`` for a dynamic batch...)."""

    name: str
    shape: List[int]
    dtype: str = "float32"
    layout: str = "NCHW"
    range: Optional[Tuple[float, float]] = None
    color: str = "RGB"


@dataclass(frozen=True)
class OutputSpec:
    """``output``: the graph's output tensor and what its values mean."""

    name: str
    semantics: str = "logits"
    num_classes: Optional[int] = None


GATE_KINDS = ("dct_svm",)
GATE_KERNELS = ("linear", "rbf")


@dataclass(frozen=True)
class GateSpec:
    """``gate``: a fused graph's perturbation gate (PRN's DCT-SVM detector in front of the classifier).

    The graph's extra outputs: ``score_output``, the detector's score minus ``threshold`` (> 0 = perturbed;
    the threshold is built into the graph and recorded here), and ``decision_output``, 1.0 where the rectified
    image was classified.  ``no_gate_part`` names the bare classifier graph that ``--no-gate`` runs instead."""

    kind: str
    score_output: str
    decision_output: str
    threshold: float
    kernel: str = "linear"
    support_vectors: int = 0
    features: str = ""
    no_gate_part: str = "classifier"

    def __post_init__(self) -> None:
        check_choice(self.kind, GATE_KINDS, "kind")
        check_choice(self.kernel, GATE_KERNELS, "kernel")
        check_choice(self.no_gate_part, PARTS, "no_gate_part")
        if self.support_vectors < 0:
            raise ConfigError("support_vectors: expected >= 0, got %d" % self.support_vectors)
        if self.score_output == self.decision_output:
            raise ConfigError("decision_output: must differ from score_output (%r)" % self.score_output)


@dataclass(frozen=True)
class ModelEntry:
    """One ``models`` entry: a model file, its precision/format/part, and format-specific metadata
    (export: opset, parity, quantization; engines: TensorRT version, GPU, cache key, profile...)."""

    file: str
    precision: str
    format: str
    part: str
    opset: Optional[int] = None
    parity: Optional[Dict[str, float]] = None
    quantization: Optional[Union[str, Dict[str, Any]]] = None
    trt_calibration_cache: Optional[str] = None
    trt_version: Optional[str] = None
    gpu: Optional[str] = None
    cache_key: Optional[str] = None
    profile: Optional[Dict[str, Any]] = None
    built_from: Optional[str] = None
    flags: Optional[List[str]] = None
    trtexec: Optional[str] = None

    def __post_init__(self) -> None:
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.format, FORMATS, "format")
        check_choice(self.part, PARTS, "part")


@dataclass(frozen=True)
class Manifest:
    """The whole ``manifest.json`` (schema version 1); :func:`read_manifest` checks a file against it."""

    schema_version: int
    name: str
    classes: List[str]
    input: InputSpec
    output: OutputSpec
    preprocess: PreprocessConfig
    models: List[ModelEntry]
    files: Dict[str, str]
    tools: Dict[str, str]
    gate: Optional[GateSpec] = None
    source: Dict[str, Any] = field(default_factory=dict)
    created: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    manifest_sha256: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("classes: expected a non-empty list of class names, got []")
        if self.output.num_classes is not None and self.output.num_classes != len(self.classes):
            raise ConfigError("output.num_classes: %d, but 'classes' lists %d names"
                              % (self.output.num_classes, len(self.classes)))
        if not self.models:
            raise ConfigError("models: expected at least one model entry, got []")
        for name in self.files:
            check_member(name, "files")
        for i, entry in enumerate(self.models):
            if entry.file not in self.files:
                raise ConfigError("models[%d].file: %r has no hash in 'files'" % (i, entry.file))


def check_member(name: str, where: str) -> None:
    """Refuse a bundle file name that is not a plain relative path inside the bundle (``/etc/hostname``,
    ``../x``, ``C:\\x``, ``a\\b``): a manifest must not make the device read, hash or run files elsewhere."""
    if (not name or "\\" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive
            or ".." in PurePosixPath(name).parts):
        raise ConfigError("%s: %r is not a relative path inside the bundle" % (where, name))


def manifest_digest(manifest: Dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces, ASCII), ``manifest_sha256`` left out,
    so re-indenting the file keeps the digest and any change of content breaks it."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def model_entry(
    file: str, precision: str = "fp32", fmt: str = "onnx", part: str = "model", **extra: Any
) -> Dict[str, Any]:
    """One ``models`` entry; ``extra`` holds format-specific metadata (e.g. TensorRT version, GPU)."""
    if precision not in PRECISIONS:
        raise BundleError("model %s: precision must be one of %s, got %r" % (file, PRECISIONS, precision))
    if fmt not in FORMATS:
        raise BundleError("model %s: format must be one of %s, got %r" % (file, FORMATS, fmt))
    if part not in PARTS:
        raise BundleError("model %s: part must be one of %s, got %r" % (file, PARTS, part))
    entry = {"file": file, "precision": precision, "format": fmt, "part": part}
    entry.update(extra)
    return entry


# Parts that take an image and run on their own, in order of preference: a classifier bundle's model or
# classifier, a localizer bundle's detector (so `signguard engine` builds its TensorRT engine the same way).
WHOLE_MODEL_PARTS = ("model", "classifier", "detector")


def whole_model_entries(manifest: Dict[str, Any], fmt: str) -> List[Dict[str, Any]]:
    """The ``fmt`` model entries of the preferred whole-model part (``model``, else ``classifier``); empty
    when there is none.  What the edge runs and what an engine is built from are the same entries."""
    for part in WHOLE_MODEL_PARTS:
        usable = [e for e in manifest["models"] if e["format"] == fmt and e["part"] == part]
        if usable:
            return usable
    return []


def write_manifest(bundle_dir: PathLike, manifest: Dict[str, Any], extra_files: Optional[List[str]] = None) -> Path:
    """Hash every model file, every file the manifest already lists and ``extra_files``; write
    ``manifest.json`` atomically.

    Hashes are computed here, from the files on disk, so a manifest can never
    describe bytes other than the ones beside it; the manifest's own digest
    is computed last, over what is written.  Files already listed stay
    listed, so a rewrite (a new engine) keeps ``verify.npz`` and calibration
    caches without every caller re-listing them; drop a file from ``files``
    to unlist it.
    """
    bundle_dir = Path(bundle_dir)
    manifest = json.loads(json.dumps(manifest))  # plain JSON data: the digest is of what a reader will parse
    manifest.pop(DIGEST_KEY, None)
    manifest["schema_version"] = SCHEMA_VERSION
    names = [m["file"] for m in manifest.get("models", [])] + list(manifest.get("files", {})) + list(extra_files or [])
    names = list(dict.fromkeys(names))
    files = {}
    for name in names:
        try:
            check_member(name, "files")
        except ConfigError as e:
            raise BundleError("%s: %s" % (bundle_dir / MANIFEST_NAME, e)) from None
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError("%s: listed in the manifest but missing from %s" % (name, bundle_dir))
        files[name] = sha256_file(p)
    manifest["files"] = files
    _validate(manifest, bundle_dir / MANIFEST_NAME)
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    out = bundle_dir / MANIFEST_NAME
    atomic_write_json(out, manifest)
    return out


def _validate(m: Dict[str, Any], where: Path) -> None:
    """Check a manifest dict against :class:`Manifest`; a :class:`BundleError` names the file and the field."""
    version = m.get("schema_version")
    if version != SCHEMA_VERSION and isinstance(version, int) and not isinstance(version, bool):
        raise BundleError(
            "%s: schema_version %r is not supported (this runtime reads %d); re-export the bundle"
            % (where, version, SCHEMA_VERSION)
        )
    try:
        from_dict(Manifest, m, "")
    except ConfigError as e:
        raise BundleError("%s: %s" % (where, e)) from None


def read_manifest(bundle_dir: PathLike, verify_hashes: bool = True) -> Dict[str, Any]:
    """Read, validate and (by default) hash-check a bundle's manifest: its own digest, then every file."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if bundle_dir.is_file():
        hint = " (%s)" % bundle_dir.parent if (bundle_dir.parent / MANIFEST_NAME).is_file() else ""
        raise BundleError("%s: is a file, not a bundle; pass the bundle folder that holds manifest.json%s"
                          % (bundle_dir, hint))
    if not bundle_dir.is_dir():
        raise BundleError("%s: bundle folder does not exist" % bundle_dir)
    if not path.is_file():
        raise BundleError("%s: no manifest.json in the bundle" % path)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError("%s: not valid JSON (%s)" % (path, e)) from None
    if not isinstance(m, dict):
        raise BundleError("%s: expected a JSON object at top level" % path)
    _validate(m, path)
    if verify_hashes:
        _verify_digest(m, path)
        root = bundle_dir.resolve()
        for name, digest in m["files"].items():
            p = bundle_dir / name
            if not p.is_file():
                raise BundleError("%s: listed in the manifest but missing" % p)
            if root not in p.resolve().parents:
                raise BundleError("%s: resolves to %s, outside the bundle; refusing it" % (p, p.resolve()))
            actual = sha256_file(p)
            if actual != digest:
                raise BundleError(
                    "%s: SHA-256 mismatch (manifest %s..., file %s...); the file was changed or corrupted"
                    % (p, digest[:12], actual[:12])
                )
    return m


def _verify_digest(m: Dict[str, Any], path: Path) -> None:
    recorded = m.get(DIGEST_KEY)
    if recorded is None:
        raise BundleError("%s: no %s, so its classes, shapes and preprocessing are unprotected (a bundle exported "
                          "before manifests were hashed); re-export the bundle" % (path, DIGEST_KEY))
    actual = manifest_digest(m)
    if actual != recorded:
        raise BundleError("%s: %s mismatch (recorded %s..., content %s...); the manifest was edited or corrupted "
                          "after export" % (path, DIGEST_KEY, recorded[:12], actual[:12]))
