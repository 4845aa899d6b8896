"""A toy inference backend that lives only in the tests folder: proof that a backend is one file.

It runs no model: each pane's feature maps are its crop's mean colour, spread over the channels the
bundle's head expects, on a 2x2 grid. Registered by name, it streams like any real backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_thyroid.backends import Backend
from edge_thyroid.bundle import Bundle, ModelEntry


class ToyBackend(Backend):
    name = "toy"
    display_name = "Toy (mean colour)"
    loads = 0   # how many instances were loaded (tests check the CLI really used this backend)

    def __init__(self, model_path: str | Path, *, threads: int | None = None, channels: int = 8) -> None:
        super().__init__(model_path, threads=threads)
        self.channels = channels
        self.calls = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle, entry: ModelEntry, *, threads: int | None = None,
                    **options: Any) -> "ToyBackend":
        return cls(bundle.path(entry.file), threads=threads, channels=bundle.manifest.feature_channels, **options)

    def _load(self) -> None:
        if not self.model_path.is_file():
            raise FileNotFoundError(self.model_path)
        type(self).loads += 1

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        frame, rois = feeds["frame"], feeds["rois"]
        maps = np.zeros((len(rois), self.channels, 2, 2), dtype=np.float32)
        for i, (x, y, w, h) in enumerate(rois.tolist()):
            colour = frame[y:y + h, x:x + w].reshape(-1, 3).mean(axis=0) / 255.0
            maps[i] = np.resize(colour, self.channels)[:, None, None] / 100.0
        return {"feature_maps": maps}


class SlowToyBackend(ToyBackend):
    """The toy plus a fixed pause per call: slower than any real backend on any machine, so the
    auto selection can be checked without asserting anything about the machine's speed."""

    name = "toy-slow"
    display_name = "Toy (mean colour, paused)"
    pause_s = 0.25
    loads = 0

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        time.sleep(self.pause_s)
        return super()._infer(feeds)

    @classmethod
    def runtime_version(cls) -> str:
        return "toy-1"


class UngatedToyBackend(ToyBackend):
    """The toy under another name, faster than any real backend; tests never record a passing gate for it."""

    name = "toy-ungated"
    display_name = "Toy (mean colour, never gated)"
    loads = 0
