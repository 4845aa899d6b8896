"""Toy backends registered by tests only: the real ONNX Runtime backend with a known handicap, so the
auto selection can be checked against an outcome that does not depend on the machine's speed."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from edge_thyroid.backends.onnxruntime import OnnxRuntimeBackend


class SlowBackend(OnnxRuntimeBackend):
    """ONNX Runtime plus a fixed pause per call: always slower than plain ONNX Runtime."""

    name = "toy-slow"
    requires = None
    pause_s = 0.25
    loads = 0  # how many times any instance loaded: tells a measured decision from a cached one

    def _load(self) -> None:
        type(self).loads += 1
        super()._load()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.pause_s)
        return super()._infer(feeds)

    @classmethod
    def runtime_version(cls) -> str:
        return "toy-1"


class FastUngatedBackend(OnnxRuntimeBackend):
    """ONNX Runtime under another name; the tests never record a passing gate for it."""

    name = "toy-ungated"
    requires = None
