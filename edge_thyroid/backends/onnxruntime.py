"""ONNX Runtime backend (CPU by default; CUDA / TensorRT execution providers when asked and present)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackendError, BundleError
from .base import Backend

if TYPE_CHECKING:  # annotations only: a backend module imports light (the CLI reads its declarations)
    import numpy as np


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    display_name = "ONNX Runtime"
    requires = "onnxruntime"

    def __init__(self, model_path: str | Path, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, optimization: str = "all",
                 require_providers: bool = False) -> None:
        super().__init__(model_path, threads=threads)
        self.requested_providers = list(providers or ["CPUExecutionProvider"])
        self.optimization = optimization
        self.require_providers = require_providers
        self._session = None

    def _load(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.requested_providers if p not in available]
        if missing and self.require_providers:
            raise BackendError(f"ONNX Runtime providers {missing} are not available; this onnxruntime has {available}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                                 providers=[p for p in self.requested_providers if p in available])
        except Exception as exc:  # ORT raises its own exception types for corrupt models
            raise BundleError(f"ONNX Runtime cannot load {self.model_path}: {str(exc).splitlines()[0][:300]}") from None
        if self.require_providers:
            active = self._session.get_providers()
            fell_back = [p for p in self.requested_providers if p not in active]
            if fell_back:
                raise BackendError(f"ONNX Runtime silently fell back from {fell_back}; active providers are {active}")

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()] if self._session else []

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session else []

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, dict(feeds))))

    def _close(self) -> None:
        self._session = None
