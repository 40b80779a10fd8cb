"""What TensorRT engine to build for a bundle, and what the manifest says about it -- pure Python, no GPU.

Why separate from :mod:`edge.trt_build`: every decision (which ONNX file,
which builder flags, which cache key, whether the engine already in the
bundle can be reused, the manifest entry, the equivalent ``trtexec``
command) is testable on any machine; only the build itself needs TensorRT.
Supported TensorRT: 8.5 to 10.x (:func:`check_trt_version`); the version
differences are listed in :mod:`edge.trt_build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import BundleError, SignguardError
from .fileio import PathLike, sha256_file
from .manifest import PRECISIONS, model_entry, whole_model_entries

log = logging.getLogger(__name__)

KEY_SCHEMA = 1  # bump when the build recipe changes so every cached engine is rebuilt
MIN_TRT = (8, 5)
MAX_TRT_MAJOR = 10
EXPLICIT_BATCH_BIT = 0  # NvInfer.h: NetworkDefinitionCreationFlag::kEXPLICIT_BATCH == 0
INSTALL_HINT = ("TensorRT engines are built and run on the device, which needs tensorrt and pycuda: JetPack ships "
                "both; elsewhere `pip install signguard[jetson]`")

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class EngineSpec:
    """Everything that determines one engine build.

    ``input_shape`` is (C, H, W); ``batch`` is the optimization profile's
    (min, opt, max) batch size.  ``calibration_cache`` is a TensorRT 8.x
    INT8 calibration cache, used only for implicit INT8 when the ONNX has no
    Q/DQ nodes; ``timing_cache`` only speeds up builds and is not part of the
    cache key.
    """

    onnx_path: str
    onnx_sha256: str
    precision: str
    input_name: str
    input_shape: Tuple[int, int, int]
    batch: Tuple[int, int, int] = (1, 8, 32)
    workspace_mib: int = 1024
    timing_cache: Optional[str] = None
    calibration_cache: Optional[str] = None
    onnx_has_qdq: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SignguardError("engine precision must be one of %s, got %r" % (PRECISIONS, self.precision))
        if int(self.workspace_mib) < 1:
            raise SignguardError("engine workspace must be at least 1 MiB, got %r" % (self.workspace_mib,))
        if len(self.input_shape) != 3 or any(int(d) < 1 for d in self.input_shape):
            raise SignguardError("engine input shape must be (C, H, W) with positive sizes, got %r"
                                 % (self.input_shape,))


def check_trt_version(version: str) -> int:
    """Parse a TensorRT version string (``"8.6.1.6"``) and return its major; refuse unsupported ones."""
    m = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not m:
        raise SignguardError("cannot parse the TensorRT version %r" % (version,))
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) < MIN_TRT:
        raise SignguardError("TensorRT %s is too old: signguard builds engines with TensorRT 8.5 to 10.x "
                             "(JetPack 5.1+)" % version)
    if major > MAX_TRT_MAJOR:
        raise SignguardError("TensorRT %s is not supported yet: from 11 on networks are strongly typed and the "
                             "FP16/INT8 builder flags are gone; use TensorRT 8.5 to 10.x" % version)
    return major


def profile_shapes(spec: EngineSpec) -> Dict[str, Tuple[Shape, Shape, Shape]]:
    """``{input_name: (min, opt, max)}`` full NCHW shapes of the optimization profile."""
    if len(spec.batch) != 3:
        raise SignguardError("batch profile must be (min, opt, max), got %r" % (spec.batch,))
    try:
        lo, opt, hi = (int(b) for b in spec.batch)
    except (TypeError, ValueError):
        raise SignguardError("batch profile must be three integers, got %r" % (spec.batch,)) from None
    if lo < 1:
        raise SignguardError("batch profile min must be >= 1, got %d" % lo)
    if not lo <= opt <= hi:
        raise SignguardError("batch profile must satisfy min <= opt <= max, got min=%d opt=%d max=%d" % (lo, opt, hi))
    chw = tuple(int(d) for d in spec.input_shape)
    return {spec.input_name: ((lo,) + chw, (opt,) + chw, (hi,) + chw)}


def _profile_json(profile: Dict[str, Tuple[Shape, Shape, Shape]]) -> Dict[str, List[List[int]]]:
    return {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}


def cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    precision: str,
    profile: Any,
    calibration_sha256: Optional[str] = None,
) -> str:
    """Short hex key of everything that makes an engine valid: a change in any part means a rebuild.

    ``profile`` is :func:`profile_shapes` output (or any JSON-able value);
    ``calibration_sha256`` is the hash of the calibration cache for implicit INT8.
    """
    if isinstance(profile, dict):
        profile = _profile_json(profile)
    payload = {"schema": KEY_SCHEMA, "onnx": onnx_sha256, "tensorrt": str(trt_version), "gpu": str(gpu_name),
               "precision": precision, "profile": profile, "calibration": calibration_sha256}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def gpu_slug(gpu_name: str) -> str:
    """``"NVIDIA Jetson AGX Orin"`` -> ``"nvidia-jetson-agx-orin"`` (file-name safe, at most 40 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-")
    return slug[:40].rstrip("-") or "gpu"


def engine_filename(precision: str, gpu_name: str, key: str) -> str:
    """``model.<precision>.<gpu-slug>.<key>.engine``."""
    if precision not in PRECISIONS:
        raise SignguardError("engine precision must be one of %s, got %r" % (PRECISIONS, precision))
    return "model.%s.%s.%s.engine" % (precision, gpu_slug(gpu_name), key)


def builder_flags(precision: str, onnx_has_qdq: bool, has_calibration_cache: bool = False) -> List[str]:
    """``BuilderFlag`` names to set: fp16 -> FP16; int8 -> INT8 + FP16 (float layers may run in half).

    INT8 needs scales: either Q/DQ nodes in the ONNX (explicit quantization)
    or a calibration cache (implicit, TensorRT 8.x); without either TensorRT
    would silently fall back to float for every layer, so that is an error.
    """
    if precision == "fp32":
        return []
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        if not onnx_has_qdq and not has_calibration_cache:
            raise SignguardError("an int8 engine needs an ONNX with QuantizeLinear/DequantizeLinear nodes "
                                 "(model.int8.onnx from `signguard export --int8`) or a TensorRT calibration cache")
        return ["INT8", "FP16"]
    raise SignguardError("engine precision must be one of %s, got %r" % (PRECISIONS, precision))


def cleared_flags(precision: str) -> List[str]:
    """``BuilderFlag`` names to clear: TF32 (on by default on Ampere/Orin) for fp32, so fp32 means fp32."""
    return ["TF32"] if precision == "fp32" else []


def network_creation_flags(trt_major: int) -> int:
    """``create_network`` flags: the EXPLICIT_BATCH bit below TensorRT 10, 0 from 10 on (deprecated, ignored)."""
    return 1 << EXPLICIT_BATCH_BIT if int(trt_major) < 10 else 0


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _trtexec_name(name: str) -> str:
    # trtexec splits shape specs on ',' and ':'; such names are wrapped in single quotes (see `trtexec --help`).
    return "'%s'" % name if (":" in name or "," in name) else name


def trtexec_command(spec: EngineSpec, engine_path: PathLike, trt_major: int, trtexec: str = "trtexec") -> List[str]:
    """The trtexec argv that builds the same engine as :func:`build_engine` (for logs, the manifest, debugging).

    ``--memPoolSize=workspace:N`` is in MiB on every supported version (8.4/8.5
    accept no unit suffix); ``--explicitBatch`` is never passed (trtexec always
    uses explicit batch for ONNX and warns that the flag has no effect).
    """
    if not 8 <= int(trt_major) <= MAX_TRT_MAJOR:
        raise SignguardError("trtexec_command: TensorRT %r is not supported (8 to %d)" % (trt_major, MAX_TRT_MAJOR))
    name = _trtexec_name(spec.input_name)
    lo, opt, hi = profile_shapes(spec)[spec.input_name]
    cmd = [
        trtexec,
        "--onnx=%s" % spec.onnx_path,
        "--saveEngine=%s" % engine_path,
        "--minShapes=%s:%s" % (name, _dims(lo)),
        "--optShapes=%s:%s" % (name, _dims(opt)),
        "--maxShapes=%s:%s" % (name, _dims(hi)),
        "--memPoolSize=workspace:%d" % int(spec.workspace_mib),
    ]
    flags = builder_flags(spec.precision, spec.onnx_has_qdq, spec.calibration_cache is not None)
    cmd += ["--%s" % f.lower() for f in flags]
    if "TF32" in cleared_flags(spec.precision):
        cmd.append("--noTF32")
    if spec.precision == "int8" and spec.calibration_cache and not spec.onnx_has_qdq:
        cmd.append("--calib=%s" % spec.calibration_cache)
    if spec.timing_cache:
        cmd.append("--timingCacheFile=%s" % spec.timing_cache)
    return cmd


def onnx_has_qdq(path: PathLike) -> bool:
    """Whether an ONNX file contains QuantizeLinear/DequantizeLinear nodes (explicit quantization).

    Uses the ``onnx`` package when installed; otherwise scans the protobuf
    bytes for the op-type string (op types are stored verbatim), which is
    what a torch-free device without ``onnx`` can do.
    """
    try:
        import onnx
    except ImportError:
        data = Path(path).read_bytes()
        return b"DequantizeLinear" in data or b"QuantizeLinear" in data
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear"})


class EnginePlan(NamedTuple):
    spec: EngineSpec
    engine_file: str
    reuse: bool
    entry: Dict[str, Any]


def _source_entry(manifest: Dict[str, Any], precision: str, where: str, implicit_int8: bool = False
                  ) -> Dict[str, Any]:
    """The ONNX entry to build ``precision`` from.

    fp32 -> the fp32 ONNX.  fp16 -> the fp16 ONNX when the bundle has one (it
    is the artifact export verified with onnxruntime), else the fp32 ONNX
    with the FP16 builder flag.  int8 -> the Q/DQ int8 ONNX, else (or with
    ``implicit_int8``) the fp32 ONNX, which then needs a calibration cache.
    """
    usable = whole_model_entries(manifest, "onnx")
    if not usable:
        raise BundleError("%s: no whole-model ONNX file to build an engine from" % where)
    by_precision = {e["precision"]: e for e in reversed(usable)}
    for p in (("fp32",) if implicit_int8 else (precision, "fp32")):
        if p in by_precision:
            return by_precision[p]
    raise BundleError("%s: no %s or fp32 ONNX file to build a %s engine from; the bundle has %s"
                      % (where, precision, precision, ", ".join(e["file"] for e in usable)))


def _bundle_calibration_cache(manifest: Dict[str, Any], bundle_dir: Path, part: str) -> Optional[Path]:
    """The TensorRT calibration cache export derived from the bundle's Q/DQ model (``trt_calibration_cache``)."""
    for e in manifest["models"]:
        name = e.get("trt_calibration_cache")
        if e["format"] == "onnx" and e["precision"] == "int8" and e["part"] == part and name:
            return bundle_dir / name
    return None


def plan_engine(
    manifest: Dict[str, Any],
    bundle_dir: PathLike,
    precision: str,
    trt_version: str,
    gpu_name: str,
    batch: Tuple[int, int, int] = (1, 8, 32),
    workspace_mib: int = 1024,
    timing_cache: Optional[PathLike] = None,
    calibration_cache: Optional[PathLike] = None,
    rebuild: bool = False,
    int8_mode: str = "auto",
) -> EnginePlan:
    """Decide which engine this device needs and whether the bundle already has it (pure, no TensorRT).

    An engine entry is reused when it has the same format/precision/part and
    the same cache key (ONNX hash, TensorRT version, GPU, precision, profile,
    calibration cache) and its file is in the bundle.  ``entry`` is the
    manifest entry describing the engine (the existing one when reused).

    ``int8_mode``: ``"auto"`` builds from the Q/DQ ONNX when the bundle has
    one, else implicitly; ``"explicit"`` requires the Q/DQ ONNX;
    ``"implicit"`` builds the fp32 ONNX with a calibration cache (TensorRT
    8.x), by default the one export derived from the Q/DQ model.
    """
    bundle_dir = Path(bundle_dir)
    where = str(bundle_dir / "manifest.json")
    major = check_trt_version(trt_version)
    if int8_mode not in ("auto", "explicit", "implicit"):
        raise SignguardError("int8_mode must be auto, explicit or implicit, got %r" % (int8_mode,))
    src = _source_entry(manifest, precision, where, implicit_int8=precision == "int8" and int8_mode == "implicit")
    onnx_path = bundle_dir / src["file"]
    digest = manifest["files"][src["file"]]  # read_manifest requires (and verifies) a hash for every model file
    has_qdq = onnx_has_qdq(onnx_path) if precision == "int8" else False
    calib = None
    calib_sha = None
    if precision == "int8" and not has_qdq:
        if int8_mode == "explicit":
            raise SignguardError("%s: no Q/DQ ONNX for an explicit int8 engine (%s has no Q/DQ nodes); export with "
                                 "--int8" % (where, src["file"]))
        if calibration_cache is None:
            calibration_cache = _bundle_calibration_cache(manifest, bundle_dir, src["part"])
        if calibration_cache is None:
            raise SignguardError("%s: %s has no Q/DQ nodes; an int8 engine from it needs a TensorRT calibration "
                                 "cache (calibration_cache=...)" % (where, src["file"]))
        if major >= 10:
            log.warning("implicit INT8 from a calibration cache is deprecated in TensorRT %s; prefer a Q/DQ ONNX",
                        trt_version)
        if not Path(calibration_cache).is_file():
            raise SignguardError("%s: calibration cache not found" % calibration_cache)
        calib, calib_sha = str(calibration_cache), sha256_file(calibration_cache)
    shape = manifest["input"]["shape"]
    if not isinstance(shape, list) or len(shape) != 4:
        raise BundleError("%s: input.shape must be [N, C, H, W], got %r" % (where, shape))
    spec = EngineSpec(
        onnx_path=str(onnx_path), onnx_sha256=digest, precision=precision, input_name=manifest["input"]["name"],
        input_shape=(int(shape[1]), int(shape[2]), int(shape[3])), batch=tuple(int(b) for b in batch),
        workspace_mib=int(workspace_mib), timing_cache=str(timing_cache) if timing_cache else None,
        calibration_cache=calib, onnx_has_qdq=has_qdq,
    )
    profile = profile_shapes(spec)
    flags = builder_flags(precision, has_qdq, calib is not None)
    key = cache_key(digest, trt_version, gpu_name, precision, profile, calib_sha)
    for e in manifest["models"]:
        if (e["format"] == "engine" and e["precision"] == precision and e["part"] == src["part"]
                and e.get("cache_key") == key and (bundle_dir / e["file"]).is_file() and not rebuild):
            return EnginePlan(spec, e["file"], True, dict(e))
    name = engine_filename(precision, gpu_name, key)
    (lo, opt, hi), = profile.values()
    # The command as run from inside the bundle folder, so the manifest does not record this machine's paths.
    local = replace(spec, onnx_path=src["file"], timing_cache=None,
                    calibration_cache=Path(calib).name if calib else None)
    extra: Dict[str, Any] = {
        "trt_version": str(trt_version), "gpu": str(gpu_name), "cache_key": key,
        "profile": {"input": spec.input_name, "min": list(lo), "opt": list(opt), "max": list(hi)},
        "built_from": src["file"], "flags": flags,
        "trtexec": shlex.join(trtexec_command(local, name, major)),
    }
    if precision == "int8":
        extra["quantization"] = "qdq" if has_qdq else "calibration-cache"
    return EnginePlan(spec, name, False, model_entry(name, precision, "engine", src["part"], **extra))


def updated_manifest(manifest: Dict[str, Any], entry: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """The manifest with ``entry`` added, replacing engines of the same precision and part.

    Returns ``(manifest, stale_files)``: ``stale_files`` are the replaced
    engine files, no longer referenced and unlisted from ``files`` (the other
    listed files stay: :func:`~edge.manifest.write_manifest` rehashes them).
    One engine per precision and part keeps engine selection unambiguous for
    ``load_bundle``.
    """
    m = dict(manifest)
    models = [dict(e) for e in manifest["models"]]
    keep, stale = [], []
    for e in models:
        if e["format"] == "engine" and e["precision"] == entry["precision"] and e["part"] == entry["part"]:
            if e["file"] != entry["file"]:
                stale.append(e["file"])
            continue
        keep.append(e)
    m["models"] = keep + [dict(entry)]
    tools = dict(m.get("tools", {}))
    if entry.get("trt_version"):
        tools["tensorrt"] = entry["trt_version"]
    m["tools"] = tools
    stale = [f for f in stale if f not in {e["file"] for e in m["models"]}]
    m["files"] = {f: h for f, h in manifest.get("files", {}).items() if f not in stale}
    return m, stale
