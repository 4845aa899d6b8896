"""The OpenCV CPU fast path, for backends whose graph has no preprocessing (the backbone-only graph
with input "pixels" [N, 3, S, S]).

Per pane: ``cv2.resize`` (INTER_LINEAR: half-pixel centres, clamp-to-edge, no anti-aliasing — the
reference's definition) on a view of the ROI into a preallocated S x S buffer; then one
``cv2.dnn.blobFromImagesWithParams`` call does BGR->RGB, the per-channel ``(x - 255 mean) / (255 std)``
and the NCHW layout for all panes at once, writing straight into the caller's buffer.

Two resampling modes (:class:`Resampling`):

* ``FLOAT`` (default): exact bilinear in float32, two ways. A crop much larger than the output
  (area >= :data:`GATHER_MIN_AREA_RATIO` x S^2, the usual case: 600x970 panes -> 128): without
  anti-aliasing each output pixel reads two source rows and two source columns, so only those
  2S x 2S uint8 pixels are gathered, converted and blended (rows, then columns, as the reference
  does); converting the whole crop instead cost 1.7 ms for 3 panes of 606x970 and streamed ~21 MB
  through the cache right before inference. Smaller crops are converted to float32 whole (into a
  reused buffer) and resized by cv2.resize. Both equal the reference to float32 rounding: the
  network sees exactly what it was trained on.
* ``UINT8``: ``cv2.resize`` straight on the uint8 crop. OpenCV uses 11-bit fixed-point weights with
  truncating shifts and rounds the result to uint8: up to 0.8 uint8 level off the reference (mean
  0.27, bias -0.12 level; see :data:`kernels.check.UINT8_RESIZE`). 2-4x faster; the INT8 models
  built here quantize their input in steps of 0.5-1.1 levels anyway. Opt-in: use it where that is
  measured to be harmless for the model at hand.

fp16 output is supported (computed in float32, rounded once to float16).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import cv2
import numpy as np

from .reference import PreprocessSpec, bilinear_taps, validate_rois


class Resampling(enum.Enum):
    """How the crop is resampled: in float (exact) or in uint8 (OpenCV fixed point, <= 1 level)."""

    FLOAT = "float"
    UINT8 = "uint8"


_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

# FLOAT mode gathers the 2S x 2S tap pixels when the crop has at least this many times S x S pixels;
# below it, converting the whole crop and running cv2.resize is cheaper than the NumPy blend of the
# gather (measured, 3 panes of a 1080p frame: 600x600 -> 128 (ratio 22) gather 0.59 vs 0.71 ms;
# 600x600 -> 224 (7.2) 1.81 vs 0.96 ms; 300x300 -> 128 (5.5) 0.58 vs 0.33 ms).
GATHER_MIN_AREA_RATIO = 16


class OpenCVPreprocessor:
    """Keeps the per-pane buffers between frames, so the hot loop allocates nothing.

    >>> pre = OpenCVPreprocessor(PreprocessSpec(image_size=128))
    >>> pixels = pre(frame, [(20, 100, 600, 600), (660, 100, 600, 600)])   # float32 [2, 3, 128, 128]

    Not thread-safe: use one instance per thread.
    """

    def __init__(self, spec: PreprocessSpec, *, resampling: Resampling = Resampling.FLOAT,
                 dtype: np.dtype | type = np.float32) -> None:
        spec.validate()
        if np.dtype(dtype) not in _SUPPORTED_DTYPES:
            raise ValueError(f"output dtype must be float32 or float16, got {np.dtype(dtype)}")
        if not isinstance(resampling, Resampling):
            raise ValueError(f"resampling must be a Resampling member, got {resampling!r}")
        self.spec = spec
        self.resampling = resampling
        self.dtype = np.dtype(dtype)
        size = spec.image_size
        self._buffer_dtype = np.float32 if resampling is Resampling.FLOAT else np.uint8
        self._resized: list[np.ndarray] = []  # one S x S x 3 buffer per pane, grown on demand
        self._gray: np.ndarray = np.empty((size, size), dtype=self._buffer_dtype)
        self._scratch = np.empty(0, dtype=np.float32)  # the float crop (FLOAT mode, small crops), grown on demand
        self._tap_cache: dict[tuple[int, int, int], tuple[np.ndarray, ...]] = {}  # (h, w, C) -> gather maps, weights
        self._tap_buffers_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # C -> reused buffers
        self._blob = np.empty((0, 3, size, size), dtype=np.float32)  # float32 staging for fp16 output
        params = cv2.dnn.Image2BlobParams()
        params.size = (size, size)
        params.swapRB = True
        params.ddepth = cv2.CV_32F
        # blobFromImagesWithParams computes (x - mean) * scalefactor per *output* (RGB) channel.
        params.mean = tuple(255.0 * m for m in spec.mean) + (0.0,)
        params.scalefactor = tuple(1.0 / (255.0 * s) for s in spec.std) + (0.0,)
        self._params = params

    def _pane_buffers(self, count: int) -> list[np.ndarray]:
        size = self.spec.image_size
        while len(self._resized) < count:
            self._resized.append(np.empty((size, size, 3), dtype=self._buffer_dtype))
        return self._resized[:count]

    def _float_crop(self, crop: np.ndarray) -> np.ndarray:
        if self._scratch.size < crop.size:
            self._scratch = np.empty(crop.size, dtype=np.float32)
        buffer = self._scratch[: crop.size].reshape(crop.shape)
        np.copyto(buffer, crop, casting="unsafe")  # uint8 -> float32 is exact
        return buffer

    def _taps(self, height: int, width: int, channels: int) -> tuple[np.ndarray, ...]:
        """Gather maps and blend weights (as whole images, so OpenCV's arithmetic needs no broadcasting)
        for a ``height`` x ``width`` crop (cached: a layout's panes keep their size from frame to frame)."""
        key = (height, width, channels)
        if key not in self._tap_cache:
            size = self.spec.image_size
            y0, y1, wy = bilinear_taps(height, size)
            x0, x1, wx = bilinear_taps(width, size)
            rows = np.concatenate([y0, y1]).astype(np.float32)
            columns = np.concatenate([x0, x1]).astype(np.float32)
            map_x = np.ascontiguousarray(np.broadcast_to(columns[None, :], (2 * size, 2 * size)))
            map_y = np.ascontiguousarray(np.broadcast_to(rows[:, None], (2 * size, 2 * size)))
            tail = (channels,) if channels > 1 else ()
            weight_y = np.ascontiguousarray(np.broadcast_to(
                wy.astype(np.float32).reshape(size, 1, *[1] * len(tail)), (size, 2 * size, *tail)))
            weight_x = np.ascontiguousarray(np.broadcast_to(
                wx.astype(np.float32).reshape(1, size, *[1] * len(tail)), (size, size, *tail)))
            if len(self._tap_cache) > 16:
                self._tap_cache.clear()
            self._tap_cache[key] = (map_x, map_y, weight_y, weight_x)
        return self._tap_cache[key]

    def _tap_buffers(self, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The gathered taps (uint8 and float32, 2S x 2S) and the row blend (S x 2S), reused per frame."""
        if channels not in self._tap_buffers_cache:
            size = self.spec.image_size
            tail = (channels,) if channels > 1 else ()
            self._tap_buffers_cache[channels] = (np.empty((2 * size, 2 * size, *tail), dtype=np.uint8),
                                                 np.empty((2 * size, 2 * size, *tail), dtype=np.float32),
                                                 np.empty((size, 2 * size, *tail), dtype=np.float32))
        return self._tap_buffers_cache[channels]

    def _two_tap_resize(self, crop: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Exact half-pixel bilinear resize (no anti-aliasing) into float32 ``out``.

        Bilinear without anti-aliasing reads two source rows and two source columns per output
        pixel, so only those 2S x 2S pixels are gathered (cv2.remap, nearest, integer coordinates:
        an exact copy) and converted to float; the blend follows the reference (rows, then columns)
        in float32. 3 panes of 606 x 970 -> 128: ~0.6 ms, against 1.7 ms to convert each whole crop
        to float for cv2.resize (which also streamed ~21 MB through the cache before inference).
        The blend runs as OpenCV arithmetic into reused buffers: the same IEEE float32 operations in
        the same order as NumPy's (bit-identical), 0.11 instead of 0.16 ms per 613x970 pane."""
        size = self.spec.image_size
        channels = 1 if crop.ndim == 2 else crop.shape[2]
        map_x, map_y, weight_y, weight_x = self._taps(crop.shape[0], crop.shape[1], channels)
        gathered, picked, blended = self._tap_buffers(channels)
        cv2.remap(crop, map_x, map_y, cv2.INTER_NEAREST, dst=gathered)  # 2S x 2S (x C), exact copies
        np.copyto(picked, gathered)                                       # uint8 -> float32 is exact
        top, bottom = picked[:size], picked[size:]
        cv2.subtract(bottom, top, dst=blended)
        cv2.multiply(blended, weight_y, dst=blended)
        cv2.add(blended, top, dst=blended)                                # S x 2S (x C)
        left, right = blended[:, :size], blended[:, size:]
        target = out.reshape(left.shape)
        cv2.subtract(right, left, dst=target)
        cv2.multiply(target, weight_x, dst=target)
        cv2.add(target, left, dst=target)
        return out

    def _output(self, count: int, out: np.ndarray | None) -> np.ndarray:
        size = self.spec.image_size
        shape = (count, 3, size, size)
        if out is None:
            return np.empty(shape, dtype=self.dtype)
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {shape}, got {got}")
        return out

    def __call__(self, frame: np.ndarray, rois: np.ndarray | Sequence[Sequence[int]],
                 out: np.ndarray | None = None) -> np.ndarray:
        """Preprocess the panes of ``frame`` (uint8 HxWx3 BGR, or HxW / HxWx1 grayscale) into ``out``
        (allocated when None) and return it: N x 3 x S x S."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be a uint8 NumPy array, got {getattr(frame, 'dtype', type(frame).__name__)}")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise ValueError(f"frame must be HxW, HxWx1 or HxWx3, got shape {frame.shape}")
        boxes = validate_rois(rois, frame.shape[0], frame.shape[1])
        size = self.spec.image_size
        resized = self._pane_buffers(len(boxes))
        for i, (x, y, w, h) in enumerate(boxes.tolist()):
            crop = frame[y : y + h, x : x + w]
            if self.resampling is Resampling.FLOAT:
                if h * w >= GATHER_MIN_AREA_RATIO * size * size:
                    if frame.ndim == 2:
                        cv2.cvtColor(self._two_tap_resize(crop, self._gray), cv2.COLOR_GRAY2BGR, dst=resized[i])
                    else:
                        self._two_tap_resize(crop, resized[i])
                    continue
                crop = self._float_crop(crop)
            if frame.ndim == 2:
                # Resample the single channel once, then replicate it: 3x less resize work.
                cv2.resize(crop, (size, size), dst=self._gray, interpolation=cv2.INTER_LINEAR)
                cv2.cvtColor(self._gray, cv2.COLOR_GRAY2BGR, dst=resized[i])
            else:
                cv2.resize(crop, (size, size), dst=resized[i], interpolation=cv2.INTER_LINEAR)
        result = self._output(len(boxes), out)
        if self.dtype == np.float32:
            blob = cv2.dnn.blobFromImagesWithParams(resized, result, self._params)
            if blob is not result and not np.shares_memory(blob, result):
                np.copyto(result, blob)
            return result
        if self._blob.shape[0] < len(boxes):
            self._blob = np.empty((len(boxes), 3, size, size), dtype=np.float32)
        staging = self._blob[: len(boxes)]
        blob = cv2.dnn.blobFromImagesWithParams(resized, staging, self._params)
        np.copyto(result, blob, casting="same_kind")  # one float32 -> float16 rounding
        return result


def preprocess_opencv(
    frame: np.ndarray,
    rois: np.ndarray | Sequence[Sequence[int]],
    spec: PreprocessSpec,
    out: np.ndarray | None = None,
    dtype: np.dtype | type = np.float32,
    resampling: Resampling = Resampling.FLOAT,
) -> np.ndarray:
    """One-shot form of :class:`OpenCVPreprocessor` (allocates its buffers per call; keep an
    instance in a loop)."""
    return OpenCVPreprocessor(spec, resampling=resampling, dtype=dtype)(frame, rois, out=out)
