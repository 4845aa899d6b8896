"""Inference backends, created by name. Implementations import lazily: asking for ``tensorrt`` on a
machine without it fails with an install hint, and never slows down anything else.

Each backend is one file whose class declares what the rest of the project needs to know (see
:class:`Backend`); this registry is the only other place that names it. ``register_backend`` adds one
(a plugin, a test's toy backend) and it appears in ``--backend`` at once.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import BackendError
from .base import Backend, BackendOption

_REGISTRY: dict[str, str] = {
    "onnxruntime": "edge_thyroid.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edge_thyroid.backends.openvino:OpenVinoBackend",
    "tensorrt": "edge_thyroid.backends.tensorrt:TensorRTBackend",
    "triton": "edge_thyroid.backends.triton:TritonBackend",
}
# The reference runtime: the accuracy gate of every shipped bundle was measured with it.
DEFAULT_BACKEND = "onnxruntime"


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


def selectable_backends() -> list[str]:
    """The backends ``--backend`` offers (the others are chosen by a bundle model's target)."""
    return [name for name in available_backends() if backend_class(name).selectable]


def backend_for_target(target: str) -> str:
    """The backend that runs a bundle model of ``target`` by default: the reference runtime when it can,
    else the first registered backend that declares the target."""
    if target in backend_class(DEFAULT_BACKEND).targets:
        return DEFAULT_BACKEND
    for name in _REGISTRY:
        if target in backend_class(name).targets:
            return name
    raise BackendError(f"no backend runs models of target {target!r}; the registered backends are "
                       f"{available_backends()}")


def backend_options() -> dict[str, tuple[BackendOption, list[str]]]:
    """Every option a selectable backend declares: name -> (the option, the backends that take it)."""
    found: dict[str, tuple[BackendOption, list[str]]] = {}
    for name in selectable_backends():
        for option in backend_class(name).options:
            found.setdefault(option.name, (option, []))[1].append(name)
    return found


__all__ = ["DEFAULT_BACKEND", "Backend", "BackendOption", "available_backends", "backend_class",
           "backend_for_target", "backend_options", "create_backend", "register_backend", "selectable_backends"]
