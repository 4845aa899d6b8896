"""Checked readers of manifest fields: each returns the value or raises a BundleError naming the field and
what it expected (shared by the bundle loader and the optional entries other modules own)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from .errors import BundleError


def mapping(value: Any, name: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise BundleError(f"manifest field {name!r} must be an object, got {type(value).__name__}")
    return value


def strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"manifest field {name!r} must be a list of strings, got {value!r}"[:200])
    return value


def file_name(name: Any, field_name: str) -> str:
    """A file name inside the bundle: relative, no '..', no absolute path, no drive."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"manifest field {field_name!r} must name a file, got {name!r}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or ":" in name or "\x00" in name:
        raise BundleError(f"manifest field {field_name!r} names {name!r}, which escapes the bundle directory")
    return str(posix)
