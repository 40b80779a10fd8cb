"""TensorRT runtime: the pure helpers, and TrtBackend's control flow against an in-memory stand-in for the API.

The stand-in implements only the calls TrtBackend makes (name-based I/O,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``; pycuda
allocations, page-locked buffers and async copies) over numpy byte buffers,
so chunking, padding, dtype handling and output assembly are tested for
real.  Whether the real TensorRT/pycuda behave like it needs a GPU.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from edge import trt_runtime as rt
from edge.backends import make_backend
from edge.errors import BundleError, SignguardError


class _Enum:
    """Looks like a pybind11 enum member: has ``.name``; ``str()`` gives ``Type.NAME``."""

    def __init__(self, kind: str, name: str) -> None:
        self.name = name
        self._kind = kind

    def __str__(self) -> str:
        return "%s.%s" % (self._kind, self.name)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("name,dtype", [("FLOAT", np.float32), ("HALF", np.float16), ("INT8", np.int8),
                                        ("INT32", np.int32), ("INT64", np.int64), ("BOOL", np.bool_),
                                        ("UINT8", np.uint8), ("DataType.HALF", np.float16)])
def test_trt_dtype_to_numpy(name: str, dtype) -> None:
    assert rt.trt_dtype_to_numpy(name) == np.dtype(dtype)


def test_trt_dtype_enum_objects_and_unsupported() -> None:
    assert rt.trt_dtype_to_numpy(_Enum("DataType", "FLOAT")) == np.float32
    for name in ("BF16", "FP8", "INT4"):
        with pytest.raises(SignguardError, match="%s has no numpy equivalent" % name):
            rt.trt_dtype_to_numpy(_Enum("DataType", name))


def test_io_buffer_bytes() -> None:
    assert rt.io_buffer_bytes((-1, 3, 32, 32), np.float32, 8) == 8 * 3 * 32 * 32 * 4
    assert rt.io_buffer_bytes([-1, 18], np.float16, 32) == 32 * 18 * 2
    assert rt.io_buffer_bytes((-1, 18), "HALF", 32) == 32 * 18 * 2
    assert rt.io_buffer_bytes((4, 10), np.float32, 32) == 160  # fixed batch: the engine's, not max_batch
    assert rt.io_buffer_bytes((-1, 3, 640, 640), np.int8, 64) == 64 * 3 * 640 * 640  # no int32 overflow
    with pytest.raises(SignguardError, match="only the batch dimension may be dynamic"):
        rt.io_buffer_bytes((-1, 3, -1, -1), np.float32, 8)
    with pytest.raises(SignguardError, match="max_batch must be >= 1"):
        rt.io_buffer_bytes((-1, 3), np.float32, 0)
    with pytest.raises(SignguardError, match="no dimensions"):
        rt.io_buffer_bytes((), np.float32, 1)


def test_batch_chunks() -> None:
    assert rt.batch_chunks(0, 8) == []
    assert rt.batch_chunks(5, 8) == [(0, 5, 5)]
    assert rt.batch_chunks(8, 8) == [(0, 8, 8)]
    assert rt.batch_chunks(20, 8) == [(0, 8, 8), (8, 16, 8), (16, 20, 4)]
    assert rt.batch_chunks(2, 8, min_batch=4) == [(0, 2, 4)]  # padded up to the profile minimum
    assert rt.batch_chunks(6, 4, min_batch=4) == [(0, 4, 4), (4, 6, 4)]  # fixed-batch engine
    for args, msg in (((5, 0), "min_batch <= max_batch"), ((5, 4, 5), "min 5 max 4"), ((-1, 4), "n must be")):
        with pytest.raises(SignguardError, match=msg):
            rt.batch_chunks(*args)


def test_resolve_io_names() -> None:
    names = ["images", "logits", "features"]
    modes = ["INPUT", _Enum("TensorIOMode", "OUTPUT"), "TensorIOMode.OUTPUT"]
    assert rt.resolve_io_names(names, modes, None, None) == ("images", "logits")
    assert rt.resolve_io_names(names, modes, "images", "features") == ("images", "features")
    with pytest.raises(BundleError, match=r"m\.engine: the manifest names input 'input' but the engine has \['images"):
        rt.resolve_io_names(names, modes, "input", None, "m.engine")
    with pytest.raises(BundleError, match=r"m\.engine: the manifest names output 'probs'.*\['logits', 'features'\]"):
        rt.resolve_io_names(names, modes, None, "probs", "m.engine")
    with pytest.raises(BundleError, match=r"m\.engine: the engine has 2 inputs \['a', 'b'\]"):
        rt.resolve_io_names(["a", "b", "y"], ["INPUT", "INPUT", "OUTPUT"], None, None, "m.engine")
    with pytest.raises(BundleError, match="needs an input and an output"):
        rt.resolve_io_names(["a"], ["INPUT"], None, None, "m.engine")
    with pytest.raises(SignguardError, match="2 tensor names but 1 modes"):
        rt.resolve_io_names(["a", "b"], ["INPUT"], None, None)


# ---------------------------------------------------------------- TrtBackend without TensorRT


def test_backend_without_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SignguardError, match=r"pip install signguard\[jetson\]"):
        rt.TrtBackend("model.engine")
    with pytest.raises(SignguardError, match=r"pip install signguard\[jetson\]"):
        make_backend("tensorrt", "model.engine")


# ---------------------------------------------------------------- TrtBackend on a stand-in API

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0  # logits = mean over H, W of x, times W


class _Alloc:
    registry: Dict[int, _Alloc] = {}

    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, np.uint8)
        self.freed = False
        _Alloc.registry[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        self.freed = True


def _fake_modules(log: List[Tuple], out_dtype: str = "FLOAT", min_batch: int = 1, max_batch: int = 4,
                  fixed: int = 0):
    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "logits"][i]

        def get_tensor_mode(self, n):
            return _Enum("TensorIOMode", "INPUT" if n == "images" else "OUTPUT")

        def get_tensor_dtype(self, n):
            return _Enum("DataType", "FLOAT" if n == "images" else out_dtype)

        def get_tensor_shape(self, n):
            return [fixed or -1, 3, 2, 2] if n == "images" else [fixed or -1, 4]

        def get_tensor_profile_shape(self, n, profile):
            assert (n, profile) == ("images", 0)
            return [[min_batch, 3, 2, 2], [min_batch, 3, 2, 2], [max_batch, 3, 2, 2]]

        def create_execution_context(self):
            return Context()

    class Context:
        def __init__(self):
            self.shape = None
            self.addr = {}

        def set_input_shape(self, n, shape):
            log.append(("shape", tuple(shape)))
            self.shape = tuple(shape)
            return min_batch <= shape[0] <= max_batch

        def get_tensor_shape(self, n):
            return self.shape if n == "images" else (self.shape[0], 4)

        def set_tensor_address(self, n, addr):
            self.addr[n] = addr

        def execute_async_v3(self, stream_handle):
            n = self.shape[0]
            x = _Alloc.registry[self.addr["images"]].buf[: n * 12 * 4].view(np.float32).reshape(n, 3, 2, 2)
            y = (x.mean(axis=(2, 3)) @ W).astype(rt.trt_dtype_to_numpy(out_dtype))
            dst = _Alloc.registry[self.addr["logits"]].buf
            dst[: y.nbytes] = y.view(np.uint8).ravel()
            log.append(("exec", n, stream_handle))
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"plan" else None

    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt = types.SimpleNamespace(__version__="10.3.0", Logger=logger, Runtime=Runtime)

    class Ctx:
        def push(self):
            log.append(("push",))

        def pop(self):
            log.append(("pop",))

        def detach(self):
            log.append(("detach",))

    def htod(dev, host, stream):
        dev.buf[: host.nbytes] = np.ascontiguousarray(host).view(np.uint8).ravel()

    def dtoh(host, dev, stream):
        assert host.flags["C_CONTIGUOUS"]
        host.view(np.uint8).ravel()[:] = dev.buf[: host.nbytes]

    cuda = types.SimpleNamespace(
        init=lambda: None, Device=lambda i: types.SimpleNamespace(retain_primary_context=Ctx),
        Stream=lambda: types.SimpleNamespace(handle=1234, synchronize=lambda: None),
        mem_alloc=_Alloc, pagelocked_empty=lambda shape, dtype: np.zeros(shape, dtype),
        memcpy_htod_async=htod, memcpy_dtoh_async=dtoh)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    return trt, pycuda, cuda


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def install(**kw):
        log: List[Tuple] = []
        trt, pycuda, cuda = _fake_modules(log, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        path = tmp_path / "m.engine"
        path.write_bytes(b"plan")
        return path, log
    return install


def _expected(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3)) @ W


@pytest.mark.parametrize("n, runs", [(1, [1]), (3, [3]), (4, [4]), (9, [4, 4, 1])])
def test_backend_chunks_by_profile_max(fake_trt, n: int, runs: list) -> None:
    path, log = fake_trt(max_batch=4)
    b = rt.TrtBackend(path, input_name="images", output_name="logits")
    assert (b.min_batch, b.max_batch, b.item_shape) == (1, 4, (3, 2, 2))
    x = np.random.RandomState(n).rand(n, 3, 2, 2).astype(np.float32)
    del log[:]
    y = b.run(x)
    assert y.shape == (n, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y, _expected(x), rtol=1e-6, atol=1e-6)
    assert [e[1] for e in log if e[0] == "exec"] == runs
    assert log[0] == ("push",) and log[-1] == ("pop",) and all(e[2] == 1234 for e in log if e[0] == "exec")


def test_backend_pads_to_profile_min_and_casts_half_outputs(fake_trt) -> None:
    path, log = fake_trt(min_batch=2, max_batch=4, out_dtype="HALF")
    b = rt.TrtBackend(path)
    x = np.random.RandomState(0).rand(5, 3, 2, 2)  # float64 in: cast to the engine's float32
    y = b.run(x)
    assert y.dtype == np.float32 and y.shape == (5, 4)
    np.testing.assert_allclose(y, _expected(x), rtol=2e-3, atol=2e-3)  # half-precision outputs
    assert [e[1] for e in log if e[0] == "exec"] == [4, 2]
    single = b.run(x[:1])  # one row, padded to min 2 with copies of itself, padding dropped
    np.testing.assert_allclose(single, y[:1], rtol=0, atol=0)


def test_backend_fixed_batch_engine(fake_trt) -> None:
    path, log = fake_trt(min_batch=4, max_batch=4, fixed=4)
    b = rt.TrtBackend(path)
    assert (b.min_batch, b.max_batch) == (4, 4)
    x = np.random.RandomState(1).rand(6, 3, 2, 2).astype(np.float32)
    np.testing.assert_allclose(b.run(x), _expected(x), rtol=1e-6, atol=1e-6)
    assert [e[1] for e in log if e[0] == "exec"] == [4, 4]


def test_backend_errors(fake_trt, tmp_path: Path) -> None:
    path, _ = fake_trt()
    with pytest.raises(BundleError, match="m.engine: the manifest names input 'input'"):
        rt.TrtBackend(path, input_name="input")
    b = rt.TrtBackend(path)
    with pytest.raises(SignguardError, match=r"expected inputs of shape \(N,\) \+ \(3, 2, 2\), got \(2, 3, 4, 4\)"):
        b.run(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(SignguardError, match="empty batch"):
        b.run(np.zeros((0, 3, 2, 2), np.float32))
    allocs = list(b._device.values())
    assert [a.buf.size for a in allocs] == [4 * 48, 4 * 16]  # max batch x (3*2*2 | 4) float32
    b.close()
    assert all(a.freed for a in allocs)
    path.write_bytes(b"other")
    with pytest.raises(BundleError, match="cannot deserialize this engine.*rebuild it on this device"):
        rt.TrtBackend(path)
    with pytest.raises(BundleError, match="engine file not found"):
        rt.TrtBackend(tmp_path / "none.engine")
