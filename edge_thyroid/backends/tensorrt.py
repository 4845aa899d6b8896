"""TensorRT backend: a serialized engine (``model.<precision>.plan``) runs the backbone on the GPU.

A plan holds the backbone only (pixels [N, 3, S, S] -> feature maps, N in the optimization profile,
1..3 panes). The frame-to-pixels preprocessing is the same ONNX graph as everywhere else
(``preprocess.onnx`` beside the plan), run by ONNX Runtime on the CPU; TensorRT's handling of a Loop
with data-dependent crop sizes is not worth the risk for ~2 ms of work.

Device memory goes through cuda-python (``cuda.bindings.runtime``). TensorRT and cuda-python are
imported when the backend loads, never at import time: a machine without them can import this
module, list the backend and get a one-line install hint when it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, BundleError, InputError, MissingDependencyError
from ..kernels.graph_io import PIXELS
from .base import Backend

if TYPE_CHECKING:  # annotations only: a backend module imports light (the CLI reads its declarations)
    import numpy as np

FEATURE_MAPS = "feature_maps"
PREPROCESS_FILE = "preprocess.onnx"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("TensorRT", "tensorrt", "TensorRT engines") from None
    return tensorrt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 12.x
        except ImportError:
            raise MissingDependencyError("cuda-python", "tensorrt", "TensorRT device buffers") from None
    return runtime


def cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unwrap cuda-python's ``(error, *values)`` convention; raise on anything but success."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise BackendError(f"CUDA {what} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBackend(Backend):
    name = "tensorrt"
    display_name = "TensorRT"
    requires = "tensorrt"
    targets = ("tensorrt",)
    selectable = False   # a plan is one of the bundle's models: picked by --model, run by this backend

    def __init__(self, model_path: str | Path, *, threads: int | None = None,
                 preprocess: str | Path | None = None, device: int = 0) -> None:
        super().__init__(model_path, threads=threads)
        self.preprocess_path = Path(preprocess) if preprocess else self.model_path.with_name(PREPROCESS_FILE)
        self.device = device
        self._trt: Any = None
        self._cudart: Any = None
        self._preprocess: Backend | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}

    def _load(self) -> None:
        trt, cudart = import_tensorrt(), import_cudart()
        for path, what in ((self.model_path, "TensorRT plan"), (self.preprocess_path, "preprocessing graph")):
            if not path.is_file():
                raise BundleError(f"{what} {path} is missing; a TensorRT model needs {self.model_path.name} and {PREPROCESS_FILE}")
        from .onnxruntime import OnnxRuntimeBackend

        self._trt, self._cudart = trt, cudart
        cuda_call(cudart, cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT {trt.__version__} cannot deserialize {self.model_path}: a plan only runs on the GPU "
                               "model and TensorRT version it was built with; rebuild it with 'edge-thyroid export --target tensorrt'")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [PIXELS] or FEATURE_MAPS not in names:
            raise BundleError(f"{self.model_path} has tensors {names}; expected input {PIXELS!r} and output {FEATURE_MAPS!r}")
        if self._engine.get_tensor_dtype(FEATURE_MAPS) != trt.float32:
            raise BundleError(f"{self.model_path} returns {self._engine.get_tensor_dtype(FEATURE_MAPS)}; expected float32 feature maps")
        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._preprocess = OnnxRuntimeBackend(self.preprocess_path, threads=self.threads).load()

    @property
    def input_names(self) -> list[str]:
        return self._preprocess.input_names if self._preprocess else []

    @property
    def providers(self) -> list[str]:
        version = getattr(self._trt, "__version__", "?")
        return [f"TensorRT {version}", "ONNX Runtime CPU (preprocessing)"]

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device allocation of at least ``nbytes`` per tensor, grown (never shrunk) on demand."""
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                cuda_call(self._cudart, self._cudart.cudaFree(pointer), "cudaFree")
            pointer = int(cuda_call(self._cudart, self._cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np  # here, not at module level: listing backends must not import NumPy

        cudart, context = self._cudart, self._context
        pixels = np.ascontiguousarray(self._preprocess.infer(feeds)[PIXELS], dtype=np.float32)
        if not context.set_input_shape(PIXELS, pixels.shape):
            raise InputError(f"{pixels.shape[0]} panes of {pixels.shape[2]}x{pixels.shape[3]} are outside the TensorRT "
                             f"engine's optimization profile; expected 1 to the profile's maximum pane count")
        output = np.empty(tuple(context.get_tensor_shape(FEATURE_MAPS)), dtype=np.float32)
        source = self._device_buffer(PIXELS, pixels.nbytes)
        target = self._device_buffer(FEATURE_MAPS, output.nbytes)
        kind = cudart.cudaMemcpyKind
        cuda_call(cudart, cudart.cudaMemcpyAsync(source, pixels.ctypes.data, pixels.nbytes, kind.cudaMemcpyHostToDevice,
                                                 self._stream), "copy to device")
        context.set_tensor_address(PIXELS, source)
        context.set_tensor_address(FEATURE_MAPS, target)
        if not context.execute_async_v3(int(self._stream)):
            raise BackendError(f"TensorRT failed to run {self.model_path.name} on {pixels.shape[0]} panes")
        cuda_call(cudart, cudart.cudaMemcpyAsync(output.ctypes.data, target, output.nbytes, kind.cudaMemcpyDeviceToHost,
                                                 self._stream), "copy to host")
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {FEATURE_MAPS: output}

    def _close(self) -> None:
        cudart = self._cudart
        for pointer, _ in self._buffers.values():
            cuda_call(cudart, cudart.cudaFree(pointer), "cudaFree")
        self._buffers.clear()
        if self._stream is not None:
            cuda_call(cudart, cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        if self._preprocess is not None:
            self._preprocess.close()
        self._context = self._engine = self._stream = self._preprocess = None
