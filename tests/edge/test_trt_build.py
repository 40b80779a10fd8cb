"""Engine builder: cache keys, file names, profiles, flags, trtexec command and the plan against a real bundle.

Everything here runs without TensorRT: the TensorRT calls themselves are
only checked to fail with an install hint when TensorRT is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import trt_build as tb
from edge import trt_plan as tp
from edge.errors import BundleError, SignguardError
from edge.manifest import model_entry, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
GPU = "NVIDIA Jetson AGX Orin sm87"


def _spec(**kw):
    base = dict(onnx_path="model.fp16.onnx", onnx_sha256=SHA, precision="fp16", input_name="images",
                input_shape=(3, 32, 32), batch=(1, 8, 32), workspace_mib=1024)
    base.update(kw)
    return tp.EngineSpec(**base)


# ---------------------------------------------------------------- keys and names


def test_cache_key_is_stable_and_changes_with_every_component() -> None:
    profile = tp.profile_shapes(_spec())
    base = dict(onnx_sha256=SHA, trt_version="8.6.2.3", gpu_name=GPU, precision="fp16", profile=profile)
    key = tp.cache_key(**base)
    assert len(key) == 16 and int(key, 16) >= 0
    assert tp.cache_key(**base) == key  # deterministic
    assert tp.cache_key(**dict(base, profile=tp.profile_shapes(_spec()))) == key  # equal profiles, equal key
    variants = [
        dict(base, onnx_sha256="cd" * 32),
        dict(base, trt_version="10.3.0"),
        dict(base, gpu_name="Xavier sm72"),
        dict(base, precision="int8"),
        dict(base, profile=tp.profile_shapes(_spec(batch=(1, 8, 16)))),
        dict(base, profile=tp.profile_shapes(_spec(input_name="input"))),
        dict(base, profile=tp.profile_shapes(_spec(input_shape=(3, 64, 64)))),
        dict(base, calibration_sha256="ef" * 32),
    ]
    keys = [tp.cache_key(**v) for v in variants]
    assert key not in keys and len(set(keys)) == len(keys)


def test_engine_filename_slugifies_the_gpu() -> None:
    assert tp.gpu_slug("NVIDIA Jetson AGX Orin sm87") == "nvidia-jetson-agx-orin-sm87"
    assert tp.gpu_slug("  GeForce RTX 4090 (Laptop) / sm_89 ") == "geforce-rtx-4090-laptop-sm-89"
    assert tp.gpu_slug("***") == "gpu"
    assert len(tp.gpu_slug("x" * 100)) == 40
    assert tp.engine_filename("int8", "Orin sm87", "0123456789abcdef") == "model.int8.orin-sm87.0123456789abcdef.engine"
    with pytest.raises(SignguardError, match="precision"):
        tp.engine_filename("bf16", "Orin", "k")


@pytest.mark.parametrize("version,major", [("8.5.2.2", 8), ("8.6.1", 8), ("10.0.1.6", 10), ("10.3.0", 10)])
def test_supported_trt_versions(version: str, major: int) -> None:
    assert tp.check_trt_version(version) == major


@pytest.mark.parametrize("version,msg", [("8.4.1.5", "too old"), ("7.2.3", "too old"), ("11.0.0", "strongly typed"),
                                         ("abc", "cannot parse")])
def test_unsupported_trt_versions(version: str, msg: str) -> None:
    with pytest.raises(SignguardError, match=msg):
        tp.check_trt_version(version)


# ---------------------------------------------------------------- profile and spec validation


def test_profile_shapes() -> None:
    assert tp.profile_shapes(_spec()) == {"images": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}
    assert tp.profile_shapes(_spec(batch=(4, 4, 4)))["images"][0] == (4, 3, 32, 32)


@pytest.mark.parametrize("batch,msg", [
    ((0, 8, 32), "min must be >= 1, got 0"),
    ((-1, 8, 32), "min must be >= 1"),
    ((8, 4, 32), "min <= opt <= max, got min=8 opt=4 max=32"),
    ((1, 33, 32), "min=1 opt=33 max=32"),
    ((1, 8), r"must be \(min, opt, max\)"),
    (("a", 8, 32), "three integers"),
])
def test_profile_validation_errors(batch, msg: str) -> None:
    with pytest.raises(SignguardError, match=msg):
        tp.profile_shapes(_spec(batch=batch))


def test_spec_validation() -> None:
    with pytest.raises(SignguardError, match="precision"):
        _spec(precision="bf16")
    with pytest.raises(SignguardError, match="workspace"):
        _spec(workspace_mib=0)
    with pytest.raises(SignguardError, match=r"\(C, H, W\)"):
        _spec(input_shape=(3, 32))


# ---------------------------------------------------------------- flags


def test_builder_flags_per_precision() -> None:
    assert tp.builder_flags("fp32", False) == []
    assert tp.builder_flags("fp16", False) == ["FP16"]
    assert tp.builder_flags("int8", True) == ["INT8", "FP16"]
    assert tp.builder_flags("int8", False, has_calibration_cache=True) == ["INT8", "FP16"]
    with pytest.raises(SignguardError, match="QuantizeLinear/DequantizeLinear"):
        tp.builder_flags("int8", False)
    with pytest.raises(SignguardError, match="precision"):
        tp.builder_flags("fp8", True)
    assert tp.cleared_flags("fp32") == ["TF32"] and tp.cleared_flags("fp16") == [] == tp.cleared_flags("int8")


def test_network_creation_flags_by_trt_major() -> None:
    assert tp.network_creation_flags(8) == 1  # 1 << EXPLICIT_BATCH (== 0)
    assert tp.network_creation_flags(9) == 1
    assert tp.network_creation_flags(10) == 0  # deprecated and ignored in 10: pass nothing


# ---------------------------------------------------------------- trtexec


def test_trtexec_command_fp16_exact() -> None:
    cmd = tp.trtexec_command(_spec(timing_cache="/var/cache/tc.bin"), "out.engine", 10)
    assert cmd == [
        "trtexec", "--onnx=model.fp16.onnx", "--saveEngine=out.engine",
        "--minShapes=images:1x3x32x32", "--optShapes=images:8x3x32x32", "--maxShapes=images:32x3x32x32",
        "--memPoolSize=workspace:1024", "--fp16", "--timingCacheFile=/var/cache/tc.bin",
    ]
    assert tp.trtexec_command(_spec(), "out.engine", 8) == cmd[:-1]  # same on 8.x: no --explicitBatch


def test_trtexec_command_fp32_and_int8() -> None:
    fp32 = tp.trtexec_command(_spec(precision="fp32", onnx_path="model.onnx", workspace_mib=256), "e", 8)
    assert fp32[-2:] == ["--memPoolSize=workspace:256", "--noTF32"]
    qdq = tp.trtexec_command(_spec(precision="int8", onnx_has_qdq=True), "e", 10)
    assert qdq[-2:] == ["--int8", "--fp16"] and not any(a.startswith("--calib") for a in qdq)
    implicit = tp.trtexec_command(_spec(precision="int8", calibration_cache="calib.cache"), "e", 8)
    assert implicit[-3:] == ["--int8", "--fp16", "--calib=calib.cache"]
    with pytest.raises(SignguardError, match="Q/DQ|QuantizeLinear"):
        tp.trtexec_command(_spec(precision="int8"), "e", 8)
    with pytest.raises(SignguardError, match="not supported"):
        tp.trtexec_command(_spec(), "e", 7)


def test_trtexec_command_keeps_paths_with_spaces_whole_and_quotes_io_names() -> None:
    spec = _spec(onnx_path="/data/my bundles/model.fp16.onnx", input_name="input:0", timing_cache="/tmp/t c.bin")
    cmd = tp.trtexec_command(spec, "/data/my bundles/model.engine", 10)
    assert "--minShapes='input:0':1x3x32x32" in cmd  # names with ':' are quoted for trtexec's spec parser
    assert cmd[:3] == ["trtexec", "--onnx=/data/my bundles/model.fp16.onnx",
                       "--saveEngine=/data/my bundles/model.engine"]
    assert "--timingCacheFile=/tmp/t c.bin" in cmd  # one argv element each: shlex.join quotes them when printed


# ---------------------------------------------------------------- ONNX inspection (real graphs)


def _qdq_model(path: Path, classes: int = 5, size: int = 32) -> Path:
    """images -> QuantizeLinear/DequantizeLinear (int8, zero point 0) -> GAP -> Flatten -> Gemm: explicit Q/DQ."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(7)
    inits = [numpy_helper.from_array(np.array(1.0 / 127, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(rng.randn(classes, 3).astype(np.float32), "w"),
             numpy_helper.from_array(rng.randn(classes).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("GlobalAveragePool", ["dq"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_has_qdq(tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qdq = _qdq_model(tmp_path / "q.onnx")
    assert tp.onnx_has_qdq(qdq) is True
    assert tp.onnx_has_qdq(tiny_bundle / "model.onnx") is False
    monkeypatch.setitem(sys.modules, "onnx", None)  # a device without the onnx package: byte scan
    assert tp.onnx_has_qdq(qdq) is True
    assert tp.onnx_has_qdq(tiny_bundle / "model.onnx") is False


# ---------------------------------------------------------------- planning against a real bundle


def _fake_build(bundle: Path, plan: tp.EnginePlan, payload: bytes = b"plan") -> None:
    """What ensure_engine does after build_engine: write the file, update and rewrite the manifest."""
    (bundle / plan.engine_file).write_bytes(payload)
    new, stale = tp.updated_manifest(read_manifest(bundle), plan.entry)
    write_manifest(bundle, new)
    for name in stale:
        (bundle / name).unlink()


def _plan(bundle: Path, precision: str = "fp16", trt: str = "8.6.2.3", gpu: str = GPU, **kw) -> tp.EnginePlan:
    return tp.plan_engine(read_manifest(bundle), bundle, precision, trt, gpu, **kw)


def test_plan_fp16_builds_from_the_fp16_onnx_and_describes_the_engine(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    plan = _plan(tiny_bundle)
    assert plan.reuse is False
    spec = plan.spec
    assert spec.onnx_path == str(tiny_bundle / "model.fp16.onnx")
    assert spec.onnx_sha256 == m["files"]["model.fp16.onnx"]
    assert (spec.input_name, spec.input_shape, spec.batch) == ("images", (3, 32, 32), (1, 8, 32))
    assert spec.precision == "fp16" and spec.timing_cache is None and spec.calibration_cache is None
    key = tp.cache_key(spec.onnx_sha256, "8.6.2.3", GPU, "fp16", tp.profile_shapes(spec))
    assert plan.engine_file == "model.fp16.nvidia-jetson-agx-orin-sm87.%s.engine" % key
    e = plan.entry
    keys = ("file", "precision", "format", "part", "trt_version", "gpu", "cache_key", "built_from")
    assert {k: e[k] for k in keys} == {
        "file": plan.engine_file, "precision": "fp16", "format": "engine", "part": "model",
        "trt_version": "8.6.2.3", "gpu": GPU, "cache_key": key, "built_from": "model.fp16.onnx"}
    assert e["profile"] == {"input": "images", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}
    assert e["flags"] == ["FP16"] and "quantization" not in e
    assert shlex.split(e["trtexec"]) == ["trtexec", "--onnx=model.fp16.onnx", "--saveEngine=" + plan.engine_file,
                                         "--minShapes=images:1x3x32x32", "--optShapes=images:8x3x32x32",
                                         "--maxShapes=images:32x3x32x32", "--memPoolSize=workspace:1024", "--fp16"]
    json.dumps(e)  # the entry is plain JSON


def test_plan_reuses_a_matching_engine_and_rebuilds_on_any_change(tiny_bundle: Path) -> None:
    first = _plan(tiny_bundle)
    _fake_build(tiny_bundle, first)
    m = read_manifest(tiny_bundle)  # hashes verified, engine listed
    assert m["files"][first.engine_file] and m["tools"]["tensorrt"] == "8.6.2.3"

    again = _plan(tiny_bundle)
    assert again.reuse is True and again.engine_file == first.engine_file and again.entry == first.entry
    assert _plan(tiny_bundle, rebuild=True).reuse is False
    assert _plan(tiny_bundle, workspace_mib=2048, timing_cache="/tmp/tc").reuse is True  # not part of the key

    changed = [_plan(tiny_bundle, trt="10.3.0"), _plan(tiny_bundle, gpu="Xavier sm72"),
               _plan(tiny_bundle, batch=(1, 4, 16)), _plan(tiny_bundle, precision="fp32")]
    assert all(not p.reuse for p in changed)
    assert len({p.engine_file for p in changed} | {first.engine_file}) == 5

    (tiny_bundle / first.engine_file).unlink()  # listed but gone (hash check off): rebuild, never crash
    assert tp.plan_engine(read_manifest(tiny_bundle, verify_hashes=False), tiny_bundle, "fp16", "8.6.2.3",
                          GPU).reuse is False


def test_a_new_build_replaces_the_old_engine_and_keeps_other_files(tiny_bundle: Path) -> None:
    (tiny_bundle / "verify.npz").write_bytes(b"not really npz")
    write_manifest(tiny_bundle, read_manifest(tiny_bundle), extra_files=["verify.npz"])
    old = _plan(tiny_bundle)
    _fake_build(tiny_bundle, old)
    fp32 = _plan(tiny_bundle, precision="fp32")
    _fake_build(tiny_bundle, fp32)
    new = _plan(tiny_bundle, trt="10.3.0")
    m, stale = tp.updated_manifest(read_manifest(tiny_bundle), new.entry)
    assert stale == [old.engine_file] and "verify.npz" in m["files"] and old.engine_file not in m["files"]
    _fake_build(tiny_bundle, new)

    m = read_manifest(tiny_bundle)
    engines = sorted((e["precision"], e["file"]) for e in m["models"] if e["format"] == "engine")
    assert engines == sorted([("fp16", new.engine_file), ("fp32", fp32.engine_file)])
    assert "verify.npz" in m["files"] and not (tiny_bundle / old.engine_file).exists()
    assert m["tools"]["tensorrt"] == "10.3.0" and m["tools"]["onnx"]  # other tool versions kept
    assert [e["file"] for e in m["models"] if e["format"] == "onnx"] == ["model.onnx", "model.fp16.onnx"]


def test_fp16_falls_back_to_the_fp32_onnx(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    m["models"] = [e for e in m["models"] if e["precision"] == "fp32"]
    write_manifest(tiny_bundle, m)
    plan = _plan(tiny_bundle)
    assert plan.entry["built_from"] == "model.onnx" and plan.entry["flags"] == ["FP16"]
    assert plan.spec.onnx_sha256 == m["files"]["model.onnx"]


def test_int8_plans(tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SignguardError, match="model.onnx has no Q/DQ nodes.*calibration cache"):
        _plan(tiny_bundle, precision="int8")

    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n")
    implicit = _plan(tiny_bundle, precision="int8", calibration_cache=cache)
    assert implicit.entry["built_from"] == "model.onnx" and implicit.entry["quantization"] == "calibration-cache"
    assert implicit.spec.calibration_cache == str(cache) and "--calib=calib.cache" in implicit.entry["trtexec"]
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010a15\n")
    assert _plan(tiny_bundle, precision="int8", calibration_cache=cache).entry["cache_key"] != \
        implicit.entry["cache_key"]  # new scales, new engine
    with caplog.at_level(logging.WARNING, logger="edge.trt_plan"):
        _plan(tiny_bundle, precision="int8", trt="10.3.0", calibration_cache=cache)
    assert "deprecated" in caplog.text
    with pytest.raises(SignguardError, match="not found"):
        _plan(tiny_bundle, precision="int8", calibration_cache=tmp_path / "none.cache")

    with pytest.raises(SignguardError, match="no Q/DQ ONNX for an explicit int8 engine"):
        _plan(tiny_bundle, precision="int8", int8_mode="explicit", calibration_cache=cache)
    with pytest.raises(SignguardError, match="int8_mode must be"):
        _plan(tiny_bundle, precision="int8", int8_mode="qat")

    # as export writes it: the Q/DQ model, and the TensorRT 8.x cache derived from it, listed in the manifest
    _qdq_model(tiny_bundle / "model.int8.onnx")
    (tiny_bundle / "model.int8.trt8.cache").write_bytes(cache.read_bytes())
    m = read_manifest(tiny_bundle)
    m["models"].append(model_entry("model.int8.onnx", "int8", trt_calibration_cache="model.int8.trt8.cache"))
    write_manifest(tiny_bundle, m, extra_files=["model.int8.trt8.cache"])
    explicit = _plan(tiny_bundle, precision="int8", calibration_cache=cache)  # Q/DQ wins: the cache is ignored
    assert explicit.entry["built_from"] == "model.int8.onnx" and explicit.entry["quantization"] == "qdq"
    assert explicit.spec.onnx_has_qdq and explicit.spec.calibration_cache is None
    assert explicit.entry["flags"] == ["INT8", "FP16"] and "--calib" not in explicit.entry["trtexec"]
    assert _plan(tiny_bundle, precision="int8", int8_mode="explicit").engine_file == explicit.engine_file

    implicit = _plan(tiny_bundle, precision="int8", int8_mode="implicit")  # fp32 graph + the bundle's cache
    assert implicit.entry["built_from"] == "model.onnx" and implicit.entry["quantization"] == "calibration-cache"
    assert implicit.spec.calibration_cache == str(tiny_bundle / "model.int8.trt8.cache")
    assert "--calib=model.int8.trt8.cache" in implicit.entry["trtexec"]


def test_plan_errors_name_the_bundle(tiny_bundle: Path) -> None:
    with pytest.raises(SignguardError, match="too old"):
        _plan(tiny_bundle, trt="8.2.1")
    with pytest.raises(SignguardError, match="min <= opt <= max"):
        _plan(tiny_bundle, batch=(4, 2, 8))
    m = read_manifest(tiny_bundle)
    m["models"] = [dict(e, part="rectifier") for e in m["models"]]
    with pytest.raises(BundleError, match="manifest.json: no whole-model ONNX"):
        tp.plan_engine(m, tiny_bundle, "fp16", "8.6.2.3", GPU)


# ---------------------------------------------------------------- without TensorRT


def test_tensorrt_calls_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    for call in (lambda: tb.build_engine(_spec(), tmp_path / "x.engine"),
                 lambda: tb.ensure_engine(tmp_path),
                 tb.detect_gpu_name):
        with pytest.raises(SignguardError, match=r"pip install signguard\[jetson\]"):
            call()
    assert not (tmp_path / "x.engine").exists()


def test_modules_import_without_tensorrt_pycuda_or_torch() -> None:
    """In a fresh interpreter where those imports fail: the modules load and the TensorRT calls explain."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'pycuda', 'torch', 'train', 'export', 'calib'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edge.trt_build, edge.trt_runtime, edge.engine_check\n"
        "from edge.errors import SignguardError\n"
        "try:\n"
        "    edge.trt_runtime.TrtBackend('x.engine')\n"
        "except SignguardError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
    assert "needs tensorrt and pycuda" in out.stdout and "pip install signguard[jetson]" in out.stdout


def test_engine_cli_prints_the_trtexec_command_without_tensorrt(tiny_bundle: Path, capsys) -> None:
    import argparse

    from edge import engine_cli

    p = argparse.ArgumentParser()
    engine_cli.add_arguments(p)
    args = p.parse_args(["--bundle", str(tiny_bundle), "--precision", "fp16", "--trtexec", "--trt-version", "8.5.2",
                         "--gpu", "Xavier sm72"])
    assert engine_cli.run(args) == 0
    out = capsys.readouterr().out
    cmd = shlex.split(out.split("&&", 1)[1])
    assert cmd[0] == "trtexec" and "--onnx=model.fp16.onnx" in cmd and "--fp16" in cmd
    assert "--minShapes=images:1x3x32x32" in cmd and "--maxShapes=images:32x3x32x32" in cmd
    assert any(a.startswith("--saveEngine=model.fp16.xavier-sm72.") for a in cmd)
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:  # building needs the device's TensorRT
        with pytest.raises(SignguardError, match="tensorrt"):
            engine_cli.run(p.parse_args(["--bundle", str(tiny_bundle)]))
