"""One lifecycle for every inference backend: construct (cheap) -> load -> infer* -> close.

Backends are context managers; ``infer`` takes and returns name -> array mappings, so a caller never
depends on which runtime executes the graph.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import BackendError


class Backend(abc.ABC):
    name: ClassVar[str]
    # True: the backend takes ``preprocessing=`` (the bundle's PreprocessSpec) and ``max_panes=`` and may
    # preprocess on the host instead of in the graph; the engine passes both to such backends.
    accepts_preprocessing: ClassVar[bool] = False

    def __init__(self, model_path: str | Path, *, threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self._loaded = False

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        """Release runtime resources; the default has none."""

    @property
    def input_names(self) -> list[str]:
        return []

    @property
    def providers(self) -> list[str]:
        """What actually executes the graph (e.g. ORT execution providers), for reports."""
        return [self.name]

    def load(self) -> "Backend":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise BackendError(f"{self.name} backend used before load(); call load() or use it as a context manager")
        return self._infer(feeds)

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
