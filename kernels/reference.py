"""The NumPy reference for pane preprocessing: written for clarity, used as the oracle.

Definition (every other implementation must match it within its stated tolerance):

1. ``frame``: uint8, HxWx3 BGR as captured (HxW or HxWx1 grayscale is replicated to 3 channels).
2. For each ROI ``(x, y, w, h)`` (integers, inside the frame, w,h >= 1) take the crop
   ``frame[y:y+h, x:x+w]``.
3. Resize the crop to ``size x size`` with bilinear interpolation, half-pixel centres
   (``src = (dst + 0.5) * in / out - 0.5``) and clamp-to-edge. No anti-aliasing: a strong
   downscale aliases, and the model is trained through this very transform, so it learns on
   what it will see. The arithmetic is float64 here; fast paths run float32.
4. Reorder BGR -> RGB, scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.
5. Stack to ``N x 3 x size x size`` (NCHW).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects of each pane; stored in the bundle manifest, never hard-coded."""

    image_size: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    coordinate_transformation: str = "half_pixel"
    antialias: bool = False
    color_order: str = "RGB"
    input_color_order: str = "BGR"
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "coordinate_transformation": self.coordinate_transformation,
            "antialias": self.antialias,
            "color_order": self.color_order,
            "input_color_order": self.input_color_order,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        spec = cls(
            image_size=int(data["image_size"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
            coordinate_transformation=str(data.get("coordinate_transformation", "half_pixel")),
            antialias=bool(data.get("antialias", False)),
            color_order=str(data.get("color_order", "RGB")),
            input_color_order=str(data.get("input_color_order", "BGR")),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if not 8 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be in [8, 2048], got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"std values must be finite and > 0, got {self.std}")
        if not all(np.isfinite(m) for m in self.mean):  # a NaN mean turns every pane's features into NaN
            raise ValueError(f"mean values must be finite, got {self.mean}")
        supported = ("bilinear", "half_pixel", False, "RGB", "BGR")
        got = (self.interpolation, self.coordinate_transformation, self.antialias,
               self.color_order, self.input_color_order)
        if got != supported:
            raise ValueError(
                "only bilinear/half_pixel/no-antialias/BGR->RGB preprocessing is implemented, "
                f"got interpolation={got[0]!r}, coordinates={got[1]!r}, antialias={got[2]!r}, "
                f"colors={got[4]!r}->{got[3]!r}"
            )


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Return ``frame`` as HxWx3; a grayscale HxW or HxWx1 frame is replicated to 3 channels."""
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise ValueError(f"frame must be HxW, HxWx1 or HxWx3, got shape {frame.shape}")


def validate_rois(rois: np.ndarray | Sequence[Sequence[int]], height: int, width: int) -> np.ndarray:
    """Return ``rois`` as an int64 Nx4 array of (x, y, w, h), or raise naming the bad ROI."""
    arr = np.asarray(rois)
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] < 1:
        raise ValueError(f"rois must be an Nx4 array of (x, y, w, h) with N >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"rois must be whole pixel coordinates, got {arr.tolist()}")
    arr = arr.astype(np.int64)
    for i, (x, y, w, h) in enumerate(arr.tolist()):
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise ValueError(
                f"ROI {i} (x={x}, y={y}, w={w}, h={h}) is outside the {width}x{height} frame; "
                f"expected 0 <= x, x + w <= {width}, 0 <= y, y + h <= {height}, w, h >= 1"
            )
    return arr


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear taps along one axis: (index0, index1, weight of index1)."""
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of an HxWxC image in float64 (separable: rows, then columns)."""
    img = image.astype(np.float64)
    y0, y1, wy = bilinear_taps(img.shape[0], out_h)
    x0, x1, wx = bilinear_taps(img.shape[1], out_w)
    rows = img[y0] * (1.0 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def preprocess_reference(
    frame: np.ndarray,
    rois: np.ndarray | Sequence[Sequence[int]],
    spec: PreprocessSpec,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Crop, resize, BGR->RGB, normalize and stack the panes of ``frame``: N x 3 x S x S."""
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    bgr = as_bgr(frame)
    boxes = validate_rois(rois, bgr.shape[0], bgr.shape[1])
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    size = spec.image_size
    out = np.empty((len(boxes), 3, size, size), dtype=np.float64)
    for i, (x, y, w, h) in enumerate(boxes.tolist()):
        resized = resize_bilinear(bgr[y : y + h, x : x + w], size, size)
        rgb = resized[:, :, ::-1] / 255.0
        out[i] = ((rgb - mean) / std).transpose(2, 0, 1)
    return out.astype(dtype)
