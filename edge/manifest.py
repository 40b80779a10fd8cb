"""Deployment-bundle manifest: the contract between ``export`` (writer) and ``edge`` (reader).

A bundle is a folder holding ``manifest.json`` plus model files.  The
manifest records everything the device needs and nothing it must guess:
classes, input shape and range, THE preprocessing parameters, output
semantics, one entry per model file (format, precision, part), and the
SHA-256 of every file.  :func:`read_manifest` refuses a bundle whose schema
version is unknown, whose fields are missing or ill-typed, or whose files do
not match their hashes, naming the file at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import BundleError
from .fileio import PathLike, atomic_write_json, sha256_file
from .preprocess import PreprocessConfig

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "engine")
PARTS = ("model", "classifier", "rectifier", "purifier")

# field -> expected python type(s); checked on read so a hand-edited manifest fails clearly
_REQUIRED = {
    "schema_version": int,
    "name": str,
    "classes": list,
    "input": dict,
    "output": dict,
    "preprocess": dict,
    "models": list,
    "files": dict,
    "tools": dict,
}
_OPTIONAL = {"gate": (dict, type(None)), "source": dict, "created": str, "extra": dict}


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


# Parts that take an image and return class scores on their own, in order of preference.
WHOLE_MODEL_PARTS = ("model", "classifier")


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
    describe bytes other than the ones beside it.  Files already listed stay
    listed, so a rewrite (a new engine) keeps ``verify.npz`` and calibration
    caches without every caller re-listing them; drop a file from ``files``
    to unlist it.
    """
    bundle_dir = Path(bundle_dir)
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    names = [m["file"] for m in manifest.get("models", [])] + list(manifest.get("files", {})) + list(extra_files or [])
    names = list(dict.fromkeys(names))
    files = {}
    for name in names:
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError("%s: listed in the manifest but missing from %s" % (name, bundle_dir))
        files[name] = sha256_file(p)
    manifest["files"] = files
    _validate(manifest, bundle_dir / MANIFEST_NAME)
    out = bundle_dir / MANIFEST_NAME
    atomic_write_json(out, manifest)
    return out


def _validate(m: Dict[str, Any], where: Path) -> None:
    for key, typ in _REQUIRED.items():
        if key not in m:
            raise BundleError("%s: missing field %r" % (where, key))
        if not isinstance(m[key], typ) or (typ is int and isinstance(m[key], bool)):
            raise BundleError("%s: field %r must be %s, got %s" % (where, key, typ.__name__, type(m[key]).__name__))
    for key, typ in _OPTIONAL.items():
        if key in m and not isinstance(m[key], typ):
            raise BundleError("%s: field %r has the wrong type %s" % (where, key, type(m[key]).__name__))
    unknown = sorted(set(m) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise BundleError("%s: unknown field(s) %s" % (where, unknown))
    if m["schema_version"] != SCHEMA_VERSION:
        raise BundleError(
            "%s: schema_version %r is not supported (this runtime reads %d); re-export the bundle"
            % (where, m["schema_version"], SCHEMA_VERSION)
        )
    if not m["classes"] or not all(isinstance(c, str) for c in m["classes"]):
        raise BundleError("%s: field 'classes' must be a non-empty list of names" % where)
    for k in ("name", "shape"):
        if k not in m["input"]:
            raise BundleError("%s: field 'input.%s' is missing" % (where, k))
    if "name" not in m["output"]:
        raise BundleError("%s: field 'output.name' is missing" % where)
    try:
        PreprocessConfig.from_dict(m["preprocess"], where="%s: preprocess" % where)
    except Exception as e:  # ConfigError -> BundleError, same message
        raise BundleError(str(e)) from None
    if not m["models"]:
        raise BundleError("%s: field 'models' is empty" % where)
    for i, entry in enumerate(m["models"]):
        if not isinstance(entry, dict) or not {"file", "precision", "format", "part"} <= set(entry):
            raise BundleError("%s: models[%d] needs file, precision, format and part" % (where, i))
        model_entry(entry["file"], entry["precision"], entry["format"], entry["part"])
        if entry["file"] not in m["files"]:
            raise BundleError("%s: models[%d] file %r has no hash in 'files'" % (where, i, entry["file"]))


def read_manifest(bundle_dir: PathLike, verify_hashes: bool = True) -> Dict[str, Any]:
    """Read, validate and (by default) hash-check a bundle's manifest."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
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
        for name, digest in m["files"].items():
            p = bundle_dir / name
            if not p.is_file():
                raise BundleError("%s: listed in the manifest but missing" % p)
            actual = sha256_file(p)
            if actual != digest:
                raise BundleError(
                    "%s: SHA-256 mismatch (manifest %s..., file %s...); the file was changed or corrupted"
                    % (p, digest[:12], actual[:12])
                )
    return m
