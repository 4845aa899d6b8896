"""One lifecycle for every inference backend: construct (cheap) -> load -> infer* -> close.

Backends are context managers; ``infer`` takes and returns name -> array mappings, so a caller never
depends on which runtime executes the graph. A backend is one file: its class declares its name,
display name, the bundle targets it runs, its command-line options and how it is built from a bundle
entry (:meth:`Backend.from_bundle`); the registry (:mod:`edge_thyroid.backends`) and the CLI read
them from there.
"""

from __future__ import annotations

import abc
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BackendError

if TYPE_CHECKING:  # annotations only: a backend module imports light (the CLI reads its declarations)
    import numpy as np

    from ..bundle import Bundle, ModelEntry


EXECUTION_PRECISION = "execution_precision"  # the option that makes one backend several gated configurations


@dataclass(frozen=True)
class BackendOption:
    """A setting a backend takes from the command line: ``--flag`` with fixed choices (or free text
    when ``choices`` is empty, e.g. a server address), passed to the backend's constructor as the
    keyword ``name``."""

    name: str                     # constructor keyword, e.g. "execution_precision"
    choices: tuple[str, ...]      # () = any text, shown as ``metavar``
    default: str                  # what the backend uses when the option is not given
    help: str
    metavar: str | None = None
    names_rows: bool = True       # a non-default value names benchmark rows (False: an address, not a variant)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Backend(abc.ABC):
    name: ClassVar[str]
    display_name: ClassVar[str]                 # for reports: "ONNX Runtime"
    tag: ClassVar[str | None] = None            # short suffix of benchmark rows (default: the name)
    targets: ClassVar[tuple[str, ...]] = ("onnxruntime",)   # bundle model targets it runs (manifest "target")
    selectable: ClassVar[bool] = True           # offered by --backend (False: chosen by the model's target)
    options: ClassVar[tuple[BackendOption, ...]] = ()
    # Whether it can run a bundle with a backbone per modality (the engine makes one backend per branch).
    runs_branches: ClassVar[bool] = True
    # The Python module the runtime lives in (None: nothing beyond this package); checked without importing it.
    requires: ClassVar[str | None] = None

    @classmethod
    def from_bundle(cls, bundle: "Bundle", entry: "ModelEntry", *, threads: int | None = None,
                    **options: Any) -> "Backend":
        """This backend for one model of a bundle (not loaded yet)."""
        return cls(bundle.path(entry.file), threads=threads, **options)

    def __init__(self, model_path: str | Path, *, threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self._loaded = False

    @classmethod
    def execution_precisions(cls) -> tuple[str, ...]:
        """The precisions the backend may run a model's float parts in (its ``execution_precision``
        option), default first; empty: the precision the model was exported in. Each one is a
        configuration with its own accuracy gate."""
        for option in cls.options:
            if option.name == EXECUTION_PRECISION:
                return (option.default, *(c for c in option.choices if c != option.default))
        return ()

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run here (its runtime is not installed), or None; imports nothing."""
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            return f"{cls.requires} is not installed"
        return None

    @classmethod
    def runtime_version(cls) -> str:
        """The installed runtime's version (part of what a cached speed decision depends on)."""
        if not cls.requires:
            return ""
        try:
            return importlib.metadata.version(cls.requires)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

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
