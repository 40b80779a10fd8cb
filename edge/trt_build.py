"""Build a TensorRT engine from a bundle's ONNX, on the device, and record it in the manifest.

Why here and not in ``export``: an engine is specific to the GPU, the
TensorRT version and the optimization profile it was built for, so it is
built where it runs (a Jetson has no torch).  Everything that decides *what*
to build -- which ONNX file, which flags, which cache key, whether the engine
already in the bundle can be reused, what the manifest entry says -- is pure
Python and tested (:mod:`edge.trt_plan`); this module holds the thin part
that touches ``tensorrt``/``pycuda``, imported inside the functions.

Supported TensorRT: 8.5 to 10.x (see :func:`check_trt_version`).  Version
differences handled here:

* ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``: required for ONNX on 8.x,
  deprecated and ignored in 10.0 (networks are always explicit batch) -> we
  pass it only below 10.
* Workspace: ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE)``
  (8.3+; ``max_workspace_size`` is gone in 10); trtexec ``--memPoolSize``
  (``--workspace`` was removed in 10).
* INT8: explicit quantization (Q/DQ ONNX) works on every supported version;
  implicit INT8 from a calibration cache is a TensorRT 8.x feature
  (calibrators are deprecated since 10.1) and is only replayed, never
  computed, here.
* TensorRT 11 drops weakly typed networks and the FP16/INT8 builder flags,
  so it is refused with a message rather than half-supported.

The engine file is a plain serialized plan (no custom header); its metadata
lives in the manifest entry (TensorRT version, GPU, cache key, profile,
source ONNX, equivalent trtexec command).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Tuple

from .errors import SignguardError, require
from .fileio import PathLike, atomic_write_bytes
from .manifest import read_manifest, write_manifest
from .trt_plan import (
    INSTALL_HINT,
    EngineSpec,
    builder_flags,
    check_trt_version,
    cleared_flags,
    network_creation_flags,
    plan_engine,
    profile_shapes,
    updated_manifest,
)

log = logging.getLogger(__name__)


def _import_tensorrt() -> Any:
    return require("tensorrt", INSTALL_HINT)


def detect_gpu_name() -> str:
    """Name and compute capability of CUDA device 0 via pycuda (e.g. ``"Orin sm87"``): the GPU in the cache key."""
    cuda = require("pycuda.driver", INSTALL_HINT)
    cuda.init()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return "%s sm%d%d" % (dev.name(), major, minor)


def _parser_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        name = getattr(err, "node_name", None)  # TensorRT 8.6+
        op = getattr(err, "node_operator", None)
        extra = ""
        if callable(name) and callable(op):
            extra = " (%s %s)" % (op(), name())
        lines.append("node %s%s: %s [%s]" % (node, extra, err.desc(), err.code()))
    return "; ".join(lines) or "no parser error recorded"


def _replay_calibrator(trt: Any, cache: bytes) -> Any:
    """An ``IInt8EntropyCalibrator2`` that only replays a calibration cache.

    ``get_batch`` returns None (no data), so TensorRT must take every scale
    from ``read_calibration_cache``; if the cache does not match the network
    the build fails instead of calibrating on nothing.
    """

    class _Replay(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Any, *args: Any) -> None:
            return None

        def read_calibration_cache(self, *args: Any) -> bytes:
            return cache

        def write_calibration_cache(self, *args: Any) -> None:
            return None

    return _Replay()


def _trt_logger(trt: Any, level: str) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT messages to Python logging at or above ``level``."""
    sev = trt.ILogger.Severity
    order = {"verbose": sev.VERBOSE, "info": sev.INFO, "warning": sev.WARNING, "error": sev.ERROR}
    if level not in order:
        raise SignguardError("log level must be one of %s, got %r" % (sorted(order), level))
    py_level = {sev.VERBOSE: logging.DEBUG, sev.INFO: logging.INFO, sev.WARNING: logging.WARNING,
                sev.ERROR: logging.ERROR, sev.INTERNAL_ERROR: logging.CRITICAL}

    class _Forward(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(order[level]):
                log.log(py_level.get(severity, logging.WARNING), "TensorRT: %s", msg)

    return _Forward()


def build_engine(spec: EngineSpec, engine_path: PathLike, log_level: str = "warning") -> int:
    """Build ``spec`` with the TensorRT Python API and write the plain plan atomically; returns its size.

    Raises :class:`SignguardError` when TensorRT is missing, the ONNX does not
    parse (with the failing node), or ``build_serialized_network`` fails.
    """
    trt = _import_tensorrt()
    major = check_trt_version(trt.__version__)
    logger = _trt_logger(trt, log_level)
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        raise SignguardError("%s: TensorRT %s cannot parse this ONNX: %s"
                             % (spec.onnx_path, trt.__version__, _parser_errors(parser)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_mib) << 20)
    for flag in builder_flags(spec.precision, spec.onnx_has_qdq, spec.calibration_cache is not None):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in cleared_flags(spec.precision):
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if spec.precision == "int8" and spec.calibration_cache and not spec.onnx_has_qdq:
        config.int8_calibrator = _replay_calibrator(trt, Path(spec.calibration_cache).read_bytes())
        if hasattr(config, "set_calibration_profile"):  # dynamic shapes need one on 8.x
            config.set_calibration_profile(profile)
    timing = None
    if spec.timing_cache:
        tc = Path(spec.timing_cache)
        timing = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        if not config.set_timing_cache(timing, False):
            log.warning("%s: timing cache rejected (other TensorRT version or GPU); starting a new one", tc)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, True)
    log.info("building %s engine from %s (TensorRT %s); this can take minutes",
             spec.precision, spec.onnx_path, trt.__version__)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SignguardError("%s: TensorRT %s failed to build the %s engine (see the TensorRT messages above)"
                             % (spec.onnx_path, trt.__version__, spec.precision))
    data = bytes(memoryview(plan))
    atomic_write_bytes(engine_path, data)
    if timing is not None:
        atomic_write_bytes(spec.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return len(data)


def ensure_engine(
    bundle_dir: PathLike,
    precision: str = "fp16",
    batch: Tuple[int, int, int] = (1, 8, 32),
    workspace_mib: int = 1024,
    timing_cache: Optional[PathLike] = None,
    rebuild: bool = False,
    calibration_cache: Optional[PathLike] = None,
    int8_mode: str = "auto",
    log_level: str = "warning",
) -> Path:
    """The engine for this device's GPU and TensorRT: reused when the bundle has it, else built and recorded.

    After a build the manifest gets (or replaces) the engine's entry and is
    rewritten with fresh hashes; a replaced engine file is deleted.
    """
    trt = _import_tensorrt()
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    plan = plan_engine(manifest, bundle_dir, precision, trt.__version__, detect_gpu_name(), batch=batch,
                       workspace_mib=workspace_mib, timing_cache=timing_cache, calibration_cache=calibration_cache,
                       rebuild=rebuild, int8_mode=int8_mode)
    path = bundle_dir / plan.engine_file
    if plan.reuse:
        log.info("reusing %s (cache key %s)", path, plan.entry.get("cache_key"))
        return path
    log.info("equivalent command (in %s): %s", bundle_dir, plan.entry["trtexec"])
    size = build_engine(plan.spec, path, log_level=log_level)
    new, stale = updated_manifest(manifest, plan.entry)
    write_manifest(bundle_dir, new)
    for name in stale:
        old = bundle_dir / name
        if old.suffix == ".engine" and old.is_file():
            old.unlink()
            log.info("removed the replaced engine %s", old)
    log.info("wrote %s (%.1f MB)", path, size / 1e6)
    return path
