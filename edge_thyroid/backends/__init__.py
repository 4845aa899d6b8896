"""Inference backends, created by name. Implementations import lazily: asking for ``tensorrt`` on a
machine without it fails with an install hint, and never slows down anything else."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import BackendError
from .base import Backend

_REGISTRY: dict[str, str] = {
    "onnxruntime": "edge_thyroid.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edge_thyroid.backends.openvino:OpenVinoBackend",
    "tensorrt": "edge_thyroid.backends.tensorrt:TensorRTBackend",
}


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Register a backend class, or a lazy ``'module:Class'`` path, under ``name``."""
    _REGISTRY[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; expected one of {available_backends()}")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(name: str, model_path: str | Path, **options) -> Backend:
    return backend_class(name)(model_path, **options)


__all__ = ["Backend", "available_backends", "backend_class", "create_backend", "register_backend"]
