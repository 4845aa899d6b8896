"""The bottom layer: what a frame and a pane are, checked once for everybody above.

A frame is a uint8 HxWx3 BGR array (grayscale is replicated); a :class:`Pane` is one modality's
rectangle ``(x, y, w, h)`` on it. Layouts, sources, the engine and the stream all speak these types,
and this module imports nothing of the project but its errors, so a capture source never pulls in a
backend or a bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

Roi = tuple[int, int, int, int]
"""A rectangle in frame pixels: x, y (top-left), width, height."""


@dataclass(frozen=True)
class Pane:
    """One modality's region on the screen, (x, y, w, h) in frame pixels."""

    modality: str
    roi: Roi

    @classmethod
    def parse(cls, modality: str, roi: str | Sequence[int]) -> "Pane":
        if isinstance(roi, str):
            parts = roi.replace(" ", "").split(",")
            try:
                values = tuple(int(p) for p in parts)
            except ValueError:
                values = ()
            if len(values) != 4:
                raise InputError(f"ROI {roi!r} is not 4 integers; expected x,y,w,h such as 0,0,640,480")
            roi = values
        return cls(modality, tuple(int(v) for v in roi))  # type: ignore[arg-type]


def as_frame(frame: np.ndarray) -> np.ndarray:
    """Validate a captured frame; grayscale is replicated to 3 channels. Returns uint8 HxWx3, C-contiguous."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a NumPy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame dtype is {frame.dtype}; expected uint8 (8-bit BGR as captured)")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        import cv2

        frame = cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame shape is {frame.shape}; expected HxWx3 (BGR) or HxW (grayscale)")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"frame shape is {frame.shape}; expected a non-empty image")
    return np.ascontiguousarray(frame)


def check_roi(roi: Roi | Sequence[int], width: int, height: int, what: str = "ROI") -> None:
    """``roi`` lies inside a ``width`` x ``height`` frame and is not empty; else an error naming ``what``."""
    x, y, w, h = (int(v) for v in roi)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"{what} x={x},y={y},w={w},h={h} is outside the {width}x{height} frame; expected "
                         f"0 <= x, x+w <= {width}, 0 <= y, y+h <= {height}, w,h >= 1")


def check_rois(rois: Sequence[Roi], height: int, width: int) -> np.ndarray:
    """The ROIs as an int64 [N, 4] array, each checked to lie inside the frame."""
    arr = np.asarray(rois, dtype=np.int64).reshape(-1, 4)
    for roi in arr.tolist():
        check_roi(roi, width, height)
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """An image file as the engine receives frames: uint8 BGR (grayscale replicated by OpenCV)."""
    import cv2

    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise InputError(f"cannot read image {path}: missing or not an image OpenCV can decode")
    return frame


__all__ = ["Pane", "Roi", "as_frame", "check_roi", "check_rois", "read_image"]
