"""Build the server-side OpenVINO backend (``native/openvino_backend.c``) that the ``openvino`` flavour
of a model repository runs in, and lay it out where ``tritonserver --backend-directory`` finds it.

Triton loads a backend named ``B`` from ``<backend directory>/B/libtriton_B.so``. The library is
compiled once per (source, OpenVINO installation) with the machine's C compiler against the
OpenVINO wheel's own C headers and ``libopenvino_c``, and cached (``$XDG_CACHE_HOME/edge-thyroid``), so a
server start after the first costs no compile. What it saves is measured in BENCHMARKS.md (serving).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import MissingDependencyError, ServerError

NAME = "edge_thyroid_openvino"
SOURCE = Path(__file__).with_name("native") / "openvino_backend.c"
CACHE_VARIABLE = "EDGE_THYROID_CACHE"


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-thyroid"


def openvino_c_library() -> tuple[Path, Path]:
    """(include folder, libopenvino_c shared library) of the installed OpenVINO wheel."""
    import importlib.util

    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("openvino", "openvino", "the openvino serving flavour")
    root = Path(next(iter(spec.submodule_search_locations)))
    include, libraries = root / "include", sorted((root / "libs").glob("libopenvino_c.so*"))
    if not (include / "openvino" / "c" / "openvino.h").is_file() or not libraries:
        raise ServerError(f"the OpenVINO installation at {root} has no C API (include/openvino/c, libs/libopenvino_c.so); "
                          "expected the openvino wheel from PyPI")
    return include, libraries[0]


def compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise ServerError("the openvino serving flavour compiles a small Triton backend on first use and found no C "
                      "compiler (cc, gcc, clang or $CC); install one (e.g. apt-get install gcc) or serve with "
                      "--flavor python")


# Flags of every build (part of the cache key, so a change of them rebuilds).
FLAGS = ("-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-shared", "-fPIC", "-fvisibility=hidden")


def build(cache: Path | None = None) -> Path:
    """The compiled backend library, built now if the cache has none for this source and OpenVINO."""
    include, library = openvino_c_library()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(), str(library.resolve()).encode(),
                                     str(library.stat().st_size).encode()])).hexdigest()[:16]
    target = (cache or cache_root()) / "triton-backends" / key / NAME / f"libtriton_{NAME}.so"
    if target.is_file():
        return target  # built before: no compiler needed now
    cc = compiler()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            partial = Path(scratch) / target.name
            # The Triton symbols stay undefined: they resolve against the server that loads the library.
            command = [cc, *FLAGS, str(SOURCE), f"-I{include}", f"-L{library.parent}", f"-l:{library.name}",
                       f"-Wl,-rpath,{library.parent}", "-o", str(partial)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                # The first error names the cause; the last lines are often only "compilation terminated".
                detail = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
                raise ServerError(f"compiling the {NAME} Triton backend failed ({cc} exited with "
                                  f"{result.returncode}): {detail.strip()[:300]}")
            partial.replace(target)  # atomic: a concurrent build of the same key writes the same bytes
    except subprocess.TimeoutExpired:
        raise ServerError(f"compiling the {NAME} Triton backend with {cc} took over 300 s; expected ~1 s") from None
    except OSError as exc:
        raise ServerError(f"cannot build the {NAME} Triton backend in {target.parents[1]}: {exc.strerror or exc}; "
                          f"set ${CACHE_VARIABLE} to a writable folder") from None
    return target


def install(backend_directory: Path, cache: Path | None = None) -> Path:
    """Link the built library into ``backend_directory``/edge_thyroid_openvino/; returns that folder."""
    library = build(cache)
    folder = backend_directory / NAME
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / library.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(library)
    return folder


def repository_uses_it(repository: Path) -> bool:
    """Whether any model in ``repository`` names this backend in its config.pbtxt."""
    needle = f'backend: "{NAME}"'
    return any(needle in config.read_text(encoding="utf-8", errors="replace")
               for config in Path(repository).glob("*/config.pbtxt"))
