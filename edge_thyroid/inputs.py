"""Is this input usable at all? Panes large enough and not blank; OpenCV's and FFmpeg's own logging
silenced (their failures become our one-line errors).

Still images are read, with truncation and decoder complaints detected, by
:func:`edge_thyroid.frames.read_image`. This module imports no NumPy or OpenCV: the package imports it at
start-up to silence native logging before anything loads ``cv2``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads on use: the package imports this module at start-up
    import numpy as np

# A pane smaller than this is upsampled 4x or more to reach even a 128-pixel model input: no nodule
# texture survives, so the model is not asked.
MIN_PANE_PIXELS = 32
# Grey levels of pixel standard deviation under which a pane is blank (a uniform fill, a black screen).
BLANK_STD = 2.0


def silence_native_logging() -> None:
    """Keep OpenCV's ``[ WARN:0@...]`` lines and FFmpeg's ``moov atom not found`` off stderr.

    The environment variables are read when OpenCV initialises (and when it first loads FFmpeg), so
    they are set before ``cv2`` is imported; a user's own setting wins.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def pane_problem(frame: np.ndarray, roi: Sequence[int], *, blank_std: float = BLANK_STD) -> str | None:
    """Why the pane ``roi`` (x, y, w, h) of ``frame`` cannot be classified, or None."""
    x, y, w, h = (int(v) for v in roi)
    small = size_problem(w, h)
    if small:
        return small
    pane = frame[y:y + h, x:x + w]
    spread = float(pane.reshape(-1, pane.shape[-1] if pane.ndim == 3 else 1).std(axis=0).max())
    if spread < blank_std:
        return f"the pane is blank or uniform (pixel std {spread:.2f} < {blank_std:g} grey levels); nothing to classify"
    return None


def size_problem(width: int, height: int) -> str | None:
    if width < MIN_PANE_PIXELS or height < MIN_PANE_PIXELS:
        return (f"the pane is {width}x{height} pixels; expected at least {MIN_PANE_PIXELS}x{MIN_PANE_PIXELS} "
                "(a smaller one holds no nodule texture)")
    return None
