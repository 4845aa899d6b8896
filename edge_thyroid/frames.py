"""The bottom layer: what a frame and a pane are, checked once for everybody above.

A frame is a uint8 HxWx3 BGR array (grayscale is replicated); a :class:`Pane` is one modality's
rectangle ``(x, y, w, h)`` on it. Layouts, sources, the engine and the stream all speak these types,
and this module imports nothing of the project but its errors, so a capture source never pulls in a
backend or a bundle.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


def widen_box(roi: Roi, context: float, bounds: Roi) -> Roi:
    """The box the model sees for a nodule box: ``roi`` grown ``context`` times about its centre, cut to
    ``bounds`` (its pane or image), the way training cut its boxes to the crop.

    A bundle records its context (``nodule_box.context``): an operator's box may hug the nodule, and a
    nodule's echogenicity is judged against the tissue around it, so the model asks for some of that
    tissue whatever box it is handed. The result always contains ``roi``'s part inside ``bounds``;
    ``context`` 1 returns that part unchanged.
    """
    x, y, w, h = (int(v) for v in roi)
    bx, by, bw, bh = (int(v) for v in bounds)
    if context != 1.0:
        cx, cy = x + w / 2, y + h / 2
        w, h = w * context, h * context
        x, y = cx - w / 2, cy - h / 2
        right, bottom = x + w, y + h
        x, y, right, bottom = math.floor(x), math.floor(y), math.ceil(right), math.ceil(bottom)
    else:
        right, bottom = x + w, y + h
    x0, y0 = max(x, bx), max(y, by)
    x1, y1 = min(right, bx + bw), min(bottom, by + bh)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


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


MAX_IMAGE_BYTES = 256 * 1024 * 1024

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_STDERR_LOCK = threading.Lock()


def pane_modalities(count: int, modalities: Sequence[str] | None, bundle_modalities: Sequence[str]) -> list[str]:
    """The modality of each of ``count`` panes for a bundle with a backbone per modality: as given, or the
    bundle's modalities in order; one per pane, never silently fewer."""
    names = list(modalities) if modalities is not None else list(bundle_modalities[:count])
    if len(names) != count:
        raise InputError(f"{count} panes but {len(names)} modalities; expected one modality per pane "
                         f"(this bundle has a backbone for each of {list(bundle_modalities)})")
    return names


def stack_maps(maps: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Per-pane feature maps as one [N, C, h, w] array, or the list itself when branches differ in shape."""
    return np.stack(maps) if len({m.shape for m in maps}) == 1 else list(maps)


@contextmanager
def native_messages() -> Iterator[list[str]]:
    """Collect what native code (libpng, libjpeg, libtiff) prints on file descriptor 2 meanwhile.

    The list is filled when the block ends. A decoder that had something to say about an image is
    telling us the image is damaged: the caller turns it into an error instead of letting it scroll by.
    """
    messages: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.extend(line.strip() for line in sink.read(4096).decode("utf-8", "replace").splitlines()
                            if line.strip())


def truncation(data: bytes) -> str | None:
    """Why ``data`` is an incomplete JPEG or PNG, or None (other formats: OpenCV's decoder decides).

    A truncated JPEG decodes "successfully" in OpenCV (libjpeg fills the missing rows with grey and
    prints a warning on stderr that no caller can see): the file structure is checked here instead.
    """
    tail = data.rstrip(b"\x00")  # some writers pad to a block size
    if data.startswith(_JPEG_START) and not tail.endswith(_JPEG_END):
        return "a JPEG without its end marker (truncated: the missing rows would be decoded as grey)"
    if data.startswith(_PNG_START) and not tail.endswith(_PNG_END):
        return "a PNG without its IEND chunk (truncated)"
    return None


def read_image(path: str | Path) -> np.ndarray:
    """A still image as the engine receives frames: uint8 HxWx3 BGR (grayscale replicated), or an
    InputError saying why not (unreadable, empty, too large, truncated, or a decoder complaint)."""
    import cv2

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InputError(f"image {path} is {size} bytes; expected at most {MAX_IMAGE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise InputError(f"image {path} is empty (0 bytes); expected a PNG, JPEG, BMP, TIFF or WebP file")
    problem = truncation(data)
    if problem:
        raise InputError(f"image {path} is {problem}; expected a complete image file")
    with native_messages() as messages:
        try:
            frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # e.g. a header declaring more pixels than OpenCV allows
            frame = None
    said = f" (the decoder said: {messages[0][:160]})" if messages else ""
    if frame is None:
        raise InputError(f"cannot decode image {path}{said}; expected a PNG, JPEG, BMP, TIFF or WebP file")
    if messages:
        raise InputError(f"image {path} is damaged{said}; expected an image that decodes without errors")
    return frame


__all__ = ["MAX_IMAGE_BYTES", "Pane", "Roi", "as_frame", "check_roi", "check_rois", "native_messages", "read_image",
           "truncation"]
