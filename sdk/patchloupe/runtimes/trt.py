"""TensorRT backend for ``.engine`` artefacts (torch-free: device buffers through NVIDIA's ``cuda-python``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from patchloupe.runtimes.graph import GraphScorer

__all__ = ["TensorRTScorer"]

_NEEDS = (
    "running a .engine model needs TensorRT's Python package and cuda-python on a CUDA device "
    "(Jetson: sudo apt install python3-libnvinfer; pip install cuda-python)"
)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: tuple) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTScorer(GraphScorer):
    """Runs a TensorRT engine built by ``det.export(..., format="engine")`` (``device``: the CUDA device index)."""

    runtime = "tensorrt"

    def __init__(self, graph: Path, meta: dict[str, Any], device: int = 0) -> None:
        super().__init__(graph, meta)
        try:
            import tensorrt as trt

            self._cuda = _cudart()
        except ImportError as exc:
            raise ImportError(_NEEDS) from exc
        _check(self._cuda.cudaSetDevice(int(device)))
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(graph).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{graph} is not an engine for this TensorRT / GPU (engines are not portable)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cuda.cudaStreamCreate())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        trt, cuda = self._trt, self._cuda
        self.context.set_input_shape(self.input_name, batch.shape)
        buffers, outputs = [], {}
        try:
            for name in self.names:
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    host = np.ascontiguousarray(batch)
                else:
                    shape = tuple(self.context.get_tensor_shape(name))
                    host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                    outputs[name] = host
                dev = _check(cuda.cudaMalloc(max(1, host.nbytes)))
                buffers.append(dev)
                if name not in outputs:
                    kind = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
                    _check(cuda.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, kind, self.stream))
                self.context.set_tensor_address(name, int(dev))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT failed to run the engine")
            for name, dev in zip(self.names, buffers):
                if name in outputs:
                    host = outputs[name]
                    kind = cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
                    _check(cuda.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, kind, self.stream))
            _check(cuda.cudaStreamSynchronize(self.stream))
        finally:
            for dev in buffers:
                cuda.cudaFree(dev)
        return outputs
