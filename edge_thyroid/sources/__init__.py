"""Capture sources, created from a spec string by scheme.

=====================================  ==============================================================
spec                                   source
=====================================  ==============================================================
``0``, ``/dev/video0``, ``device:1``   capture card / camera (OpenCV; resolution, fps, FOURCC options)
``clip.mp4``, ``file:clip.avi``        video file, replayed at its frame rate (or as fast as possible)
``rtsp://``, ``tcp://``, ``udp://`` …  network stream through OpenCV's FFmpeg backend
``cine.dcm``, ``dicom:cine``           multi-frame ultrasound DICOM (pydicom), its frame timing and regions
``frames/``, ``folder:frames``         folder of still images, in name order
``synthetic[:dual][?size=…]``          composed multi-pane workstation screens (tests, benchmarks)
=====================================  ==============================================================

``register_source(scheme, 'module:Class')`` adds a scheme. Every source has the lifecycle of
:class:`Source`: open -> read (-> :class:`Captured` or None at the end) -> close.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from .base import Captured, Pacer, Source, SourceError, SourceOptions

_REGISTRY: dict[str, str] = {
    "device": "edge_thyroid.sources.capture:DeviceSource",
    "file": "edge_thyroid.sources.capture:VideoFileSource",
    "network": "edge_thyroid.sources.capture:NetworkSource",
    "dicom": "edge_thyroid.sources.dicom:DicomSource",
    "folder": "edge_thyroid.sources.folder:FolderSource",
    "synthetic": "edge_thyroid.sources.synthetic:SyntheticSource",
}
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "tcp", "udp", "srt", "http", "https")
for _scheme in NETWORK_SCHEMES:
    _REGISTRY[_scheme] = _REGISTRY["network"]

DICOM_SUFFIXES = (".dcm", ".dicom")
_DEVICE = re.compile(r"^(\d+|/dev/video\d+)$")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):")


def register_source(scheme: str, target: str | type[Source]) -> None:
    """Register a Source class, or a lazy ``'module:Class'`` path, for specs starting ``scheme:``."""
    _REGISTRY[scheme] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def available_schemes() -> list[str]:
    return sorted(_REGISTRY)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def resolve_spec(spec: str) -> tuple[str, str]:
    """(scheme, target) of a source spec: explicit ``scheme:`` prefixes win, then what the spec looks like."""
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source; expected a device (0, /dev/video0), a file, a folder, a URL or 'synthetic'")
    if spec == "synthetic" or spec.startswith(("synthetic:", "synthetic?")):
        return "synthetic", spec
    if _DEVICE.match(spec):
        return "device", spec
    match = _SCHEME.match(spec)
    if match and len(match.group(1)) > 1:  # "C:" is a Windows drive, not a scheme
        scheme = match.group(1)
        if scheme in NETWORK_SCHEMES:
            return scheme, spec
        if scheme in _REGISTRY:
            return scheme, spec[len(scheme) + 1:]
        if spec[len(scheme) + 1:].startswith("//"):
            raise SourceError(f"unknown source scheme {scheme!r} in {spec!r}; expected one of {available_schemes()}")
    path = Path(spec)
    if path.is_dir():
        return "folder", spec
    if path.is_file():
        return ("dicom" if _is_dicom(path) else "file"), spec
    raise SourceError(f"source {spec!r} is not a device, an existing file or folder, a URL "
                      f"({', '.join(s + '://' for s in NETWORK_SCHEMES)}) or 'synthetic'")


def source_class(scheme: str) -> type[Source]:
    if scheme not in _REGISTRY:
        raise SourceError(f"unknown source scheme {scheme!r}; expected one of {available_schemes()}")
    module_name, _, class_name = _REGISTRY[scheme].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_source(spec: str, options: SourceOptions | None = None) -> Source:
    """A Source for ``spec`` (not yet opened)."""
    scheme, target = resolve_spec(spec)
    return source_class(scheme)(target, options or SourceOptions())


__all__ = ["Captured", "Pacer", "Source", "SourceError", "SourceOptions", "available_schemes",
           "create_source", "register_source", "resolve_spec", "source_class"]
