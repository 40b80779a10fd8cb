"""Run a TensorRT engine: ``TrtBackend(path).run(batch) -> (N, C) float32``, like the onnxruntime backend.

Uses the name-based I/O API that TensorRT 8.5 introduced and 10.0 made the
only one (``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), with
pycuda for device memory and the stream.  The engine file is a plain plan as
written by :mod:`edge.trt_build`.  Batches larger than the optimization
profile's maximum are run in chunks; a chunk smaller than the profile's
minimum (or than a fixed engine batch) is padded and the padding dropped.

Everything that is arithmetic (dtype mapping, buffer sizes, chunking, I/O
name resolution) is a pure function, tested without a GPU; ``tensorrt`` and
``pycuda`` are imported only when a backend is created.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BundleError, SignguardError, require
from .fileio import PathLike
from .trt_plan import INSTALL_HINT

log = logging.getLogger(__name__)

# TensorRT DataType member name -> numpy dtype (BF16, FP8, INT4, FP4 have no numpy type: refused).
_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def _enum_name(value: Any) -> str:
    """``DataType.HALF`` / ``"DataType.HALF"`` / ``"HALF"`` -> ``"HALF"`` (pybind11 enums have ``.name``)."""
    name = getattr(value, "name", None)
    return str(name if isinstance(name, str) else value).rsplit(".", 1)[-1].upper()


def trt_dtype_to_numpy(dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT ``DataType`` (or its name)."""
    name = _enum_name(dtype)
    if name not in _DTYPES:
        raise SignguardError("TensorRT data type %s has no numpy equivalent for host buffers (supported: %s)"
                             % (name, ", ".join(sorted(_DTYPES))))
    return np.dtype(_DTYPES[name])


def io_buffer_bytes(shape: Sequence[int], dtype: Any, max_batch: int) -> int:
    """Bytes of a device buffer for a tensor of engine shape ``shape`` at ``max_batch``.

    A dynamic batch dimension (``-1`` in dim 0) becomes ``max_batch``; any
    other dynamic dimension is refused (only the batch may vary).
    """
    dims = [int(d) for d in shape]
    if not dims:
        raise SignguardError("io_buffer_bytes: a tensor with no dimensions is not a batch tensor")
    if int(max_batch) < 1:
        raise SignguardError("io_buffer_bytes: max_batch must be >= 1, got %r" % (max_batch,))
    if dims[0] < 0:
        dims[0] = int(max_batch)
    if any(d < 0 for d in dims[1:]):
        raise SignguardError("io_buffer_bytes: only the batch dimension may be dynamic, got shape %s" % (dims,))
    itemsize = np.dtype(dtype).itemsize if not isinstance(dtype, str) else trt_dtype_to_numpy(dtype).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def batch_chunks(n: int, max_batch: int, min_batch: int = 1) -> List[Tuple[int, int, int]]:
    """Split ``n`` items into ``(start, stop, run_batch)`` chunks of at most ``max_batch``.

    ``run_batch`` is ``stop - start`` raised to ``min_batch`` (the rows above
    ``stop - start`` are padding).  ``n == 0`` gives no chunks.
    """
    n, max_batch, min_batch = int(n), int(max_batch), int(min_batch)
    if max_batch < 1 or not 1 <= min_batch <= max_batch:
        raise SignguardError("batch_chunks: need 1 <= min_batch <= max_batch, got min %d max %d"
                             % (min_batch, max_batch))
    if n < 0:
        raise SignguardError("batch_chunks: n must be >= 0, got %d" % n)
    return [(s, min(s + max_batch, n), max(min(s + max_batch, n) - s, min_batch)) for s in range(0, n, max_batch)]


def resolve_io_names(
    names: Sequence[str],
    modes: Sequence[Any],
    input_name: Optional[str],
    output_name: Optional[str],
    where: str = "engine",
) -> Tuple[str, str]:
    """The engine input and output to use, checked against the manifest's names.

    ``modes`` are ``TensorIOMode`` values (or their names) parallel to
    ``names``.  With no name given, the single input and the first output
    are used; a classifier engine must have exactly one input.
    """
    if len(names) != len(modes):
        raise SignguardError("%s: %d tensor names but %d modes" % (where, len(names), len(modes)))
    inputs = [n for n, m in zip(names, modes) if _enum_name(m) == "INPUT"]
    outputs = [n for n, m in zip(names, modes) if _enum_name(m) == "OUTPUT"]
    if not inputs or not outputs:
        raise BundleError("%s: the engine needs an input and an output tensor, it has inputs %s outputs %s"
                          % (where, inputs, outputs))
    if len(inputs) > 1:
        raise BundleError("%s: the engine has %d inputs %s; a classifier engine takes one image tensor"
                          % (where, len(inputs), inputs))
    if input_name is not None and input_name != inputs[0]:
        raise BundleError("%s: the manifest names input %r but the engine has %s" % (where, input_name, inputs))
    if output_name is not None and output_name not in outputs:
        raise BundleError("%s: the manifest names output %r but the engine has %s" % (where, output_name, outputs))
    return inputs[0], output_name if output_name is not None else outputs[0]


# ---------------------------------------------------------------- the TensorRT / CUDA part


def _import_runtime() -> Tuple[Any, Any]:
    return require("tensorrt", INSTALL_HINT), require("pycuda.driver", INSTALL_HINT)


class TrtBackend:
    """A deserialized engine with one execution context, device buffers sized for the profile maximum.

    Uses CUDA device 0's primary context (the one the TensorRT runtime uses),
    made current around every call, so the backend works from any thread
    that calls it (one call at a time).
    """

    kind = "tensorrt"

    def __init__(self, path: PathLike, input_name: Optional[str] = None, output_name: Optional[str] = None) -> None:
        trt, cuda = _import_runtime()
        self.path = str(path)
        if not Path(self.path).is_file():
            raise BundleError("%s: engine file not found" % self.path)
        self._cuda = cuda
        cuda.init()
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            self._open(trt, cuda, input_name, output_name)
        finally:
            self._ctx.pop()

    def _open(self, trt: Any, cuda: Any, input_name: Optional[str], output_name: Optional[str]) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(Path(self.path).read_bytes())
        if self.engine is None:
            raise BundleError("%s: TensorRT %s cannot deserialize this engine (built by another TensorRT version "
                              "or for another GPU? rebuild it on this device)" % (self.path, trt.__version__))
        self._runtime = runtime  # keep alive as long as the engine
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = [self.engine.get_tensor_mode(n) for n in names]
        self.input_name, self.output_name = resolve_io_names(names, modes, input_name, output_name, self.path)
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if shape[0] < 0:
            lo, _, hi = self._profile(self.input_name)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = shape[0]  # fixed-batch engine: pad to it
        self.item_shape = shape[1:]
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self._dtypes: Dict[str, np.dtype] = {}
        self._device: Dict[str, Any] = {}
        self._set_shape(self.max_batch)
        for n in names:  # every I/O tensor needs an address, even the outputs we do not read
            self._dtypes[n] = trt_dtype_to_numpy(self.engine.get_tensor_dtype(n))
            full = tuple(self.context.get_tensor_shape(n))
            self._device[n] = cuda.mem_alloc(max(io_buffer_bytes(full, self._dtypes[n], self.max_batch), 1))
            self.context.set_tensor_address(n, int(self._device[n]))
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        self._host_in = cuda.pagelocked_empty((self.max_batch,) + self.item_shape, self._dtypes[self.input_name])
        self._host_out = cuda.pagelocked_empty(out_shape, self._dtypes[self.output_name])
        log.debug("TensorRT engine %s: %s %s -> %s %s, batch %d..%d", self.path, self.input_name, shape,
                  self.output_name, out_shape, self.min_batch, self.max_batch)

    def _profile(self, name: str) -> Any:
        if hasattr(self.engine, "get_tensor_profile_shape"):  # 8.5+
            return self.engine.get_tensor_profile_shape(name, 0)
        return self.engine.get_profile_shape(0, name)  # pragma: no cover - pre-8.5 fallback

    def _set_shape(self, batch: int) -> None:
        if not self.context.set_input_shape(self.input_name, (int(batch),) + self.item_shape):
            raise SignguardError("%s: the engine refused input shape %s" % (self.path, (batch,) + self.item_shape))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) array -> selected output as float32 (N, classes); chunked by the profile maximum."""
        x = np.asarray(batch)
        if x.ndim != 1 + len(self.item_shape) or tuple(x.shape[1:]) != self.item_shape:
            raise SignguardError("%s: expected inputs of shape (N,) + %s, got %s"
                                 % (self.path, self.item_shape, x.shape))
        chunks = batch_chunks(len(x), self.max_batch, self.min_batch)
        if not chunks:
            raise SignguardError("backend.run: empty batch")
        cuda, outs = self._cuda, []
        self._ctx.push()
        try:
            for start, stop, run_n in chunks:
                n = stop - start
                self._host_in[:n] = x[start:stop]
                if run_n > n:
                    self._host_in[n:run_n] = self._host_in[n - 1]
                self._set_shape(run_n)
                cuda.memcpy_htod_async(self._device[self.input_name], self._host_in[:run_n], self.stream)
                if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                    raise SignguardError("%s: TensorRT execution failed" % self.path)
                rows = self._host_out[:run_n]
                cuda.memcpy_dtoh_async(rows, self._device[self.output_name], self.stream)
                self.stream.synchronize()
                outs.append(np.array(rows[:n], dtype=np.float32))
        finally:
            self._ctx.pop()
        out = np.concatenate(outs)
        return out.reshape(len(out), -1)

    def close(self) -> None:
        """Free the device buffers and release the primary context; the backend is unusable afterwards."""
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
            for mem in getattr(self, "_device", {}).values():
                mem.free()
            self._device = {}
            self.context = self.engine = None
        finally:
            ctx.pop()
            ctx.detach()
            self._ctx = None

    def __repr__(self) -> str:
        return "TrtBackend(%r, batch %s..%s)" % (
            self.path, getattr(self, "min_batch", "?"), getattr(self, "max_batch", "?"))
