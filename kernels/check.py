"""One checker for every preprocessing implementation: the reference, NumPy, OpenCV, in-graph ONNX
and Triton paths all go through :func:`check_kernel`.

An implementation is any callable ``impl(frame, rois, spec, dtype) -> ndarray [N, 3, S, S]`` that
takes the frame as captured (uint8 HxWx3 BGR, or HxW / HxWx1 grayscale), int64 ROIs ``(x, y, w, h)``
and returns host NumPy data of ``dtype``. Wrappers for device kernels copy in and out.

What is checked, on every case of a seeded set (:func:`kernel_cases`):

* output shape ``[N, 3, S, S]`` and exactly the requested dtype; every value finite;
* the frame and ROIs passed in are not modified;
* error against the float64 reference within the implementation's :class:`Tolerance`: a max-abs
  bound and a mean-abs bound (a biased implementation can stay under the max and still shift every
  pixel), both in *normalized units* (the model's input space); fp16 output adds fp16's own
  rounding, ``|reference| * 2**-11``;
* cases where no resampling happens (ROI exactly ``S x S``, constant frames) must be exact up to
  float rounding for *every* implementation, uint8 ones included: there is nothing to round;
* for uint8-resampling paths (``Tolerance.integer_levels``), every fp32 output must decode to a whole
  uint8 level: the resize rounds to uint8 and the normalization itself adds no error.

The cases cover random frame sizes (odd ones, 1-pixel-tall frames), random ROIs, edge-touching ROIs
(the whole frame, the bottom-right corner), 1-pixel-wide, 1-pixel-tall and 1x1 ROIs, up- and
downscaling, odd output sizes, and grayscale frames (HxW and HxWx1) that must equal the same frame
replicated to three channels.

This module imports only NumPy and the reference (the runtime may import it; torch never).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .reference import PreprocessSpec, preprocess_reference

Impl = Callable[[np.ndarray, np.ndarray, PreprocessSpec, "np.dtype | type"], np.ndarray]

#: One uint8 level in normalized units for the default (ImageNet) spec: 1 / (255 * min(std)).
LEVEL = 1.0 / (255.0 * min(PreprocessSpec().std))
#: fp16 rounds to nearest with a unit roundoff of 2**-11 (relative).
FP16_UNIT_ROUNDOFF = 2.0**-11
#: Float rounding allowed where no resampling happens: float32 affine on |values| <= ~2.7.
EXACT_ATOL = 2e-6


class Frames(enum.Enum):
    """Which frame content a case uses: noise is the worst case for resampling error."""

    NOISE = "noise"
    GRADIENT = "gradient"
    CONSTANT = "constant"


@dataclass(frozen=True)
class Tolerance:
    """Allowed error against the float64 reference, in normalized units, and why."""

    max_abs: float
    mean_abs: float
    why: str
    integer_levels: bool = False

    def levels(self) -> tuple[float, float]:
        """(max_abs, mean_abs) expressed in uint8 levels of the default spec."""
        return self.max_abs / LEVEL, self.mean_abs / LEVEL


# Float paths: exact taps, float32 arithmetic. Tap weights and positions carry 24-bit rounding
# (<= ~4e-5 px at a 600 px crop, times <= 255 levels/px on noise) plus the float32 affine; observed
# <= 1e-6. 1e-4 is 1/175 of a uint8 level: invisible to the network, yet any wrong tap, a half-pixel
# shift or a swapped channel moves noise frames by >= 1e-2 and fails.
FLOAT32 = Tolerance(
    max_abs=1e-4, mean_abs=2e-5,
    why="float32 arithmetic with exact taps: rounding of tap weights/positions and of the affine "
        "(observed <= 1e-6); 1/175 of a uint8 level",
)
# ONNX Runtime's Resize derives the source coordinate from a float32 scale, so at a 600 px crop the
# sample point can move by ~1e-4 px: observed up to 1.8e-4 at S=224. 1e-3 is 1/17 of a level.
ONNX_RESIZE = Tolerance(
    max_abs=1e-3, mean_abs=1e-4,
    why="ONNX Runtime's Resize computes source coordinates from a float32 scale (observed <= 1.8e-4); "
        "1/17 of a uint8 level",
)
# cv2.resize on uint8 uses 11-bit fixed-point weights with truncating shifts and rounds its result
# to uint8: rounding alone is up to 0.5 level (mean 0.25), the fixed point adds ~0.25 level and a
# small negative bias. Observed on noise: max 0.79 level, mean 0.27 level, bias -0.12 level.
UINT8_RESIZE = Tolerance(
    max_abs=1.0 * LEVEL, mean_abs=0.35 * LEVEL,
    why="uint8 resize: fixed-point weights + rounding to uint8 (observed max 0.79, mean 0.27 level); "
        "bounded by 1 level max, 0.35 level mean",
    integer_levels=True,
)
# The reference itself asked for float32/float16 output: only the final cast.
CAST_ONLY = Tolerance(max_abs=EXACT_ATOL, mean_abs=EXACT_ATOL, why="float64 reference cast to the output dtype")


@dataclass
class Case:
    label: str
    frame: np.ndarray
    rois: np.ndarray
    spec: PreprocessSpec
    exact: bool = False  # no resampling anywhere in this case: every path must be exact


@dataclass
class KernelReport:
    """What check_kernel measured; max/mean are in normalized units."""

    name: str
    cases: int = 0
    panes: int = 0
    max_abs: dict[str, float] = field(default_factory=dict)
    mean_abs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "cases": self.cases, "panes": self.panes,
            "max_abs": self.max_abs, "mean_abs": self.mean_abs,
            "max_abs_levels": {k: v / LEVEL for k, v in self.max_abs.items()},
            "mean_abs_levels": {k: v / LEVEL for k, v in self.mean_abs.items()},
        }


def _frame(rng: np.random.Generator, h: int, w: int, kind: Frames, gray: str | None) -> np.ndarray:
    shape = (h, w) if gray == "2d" else (h, w, 1) if gray == "hw1" else (h, w, 3)
    if kind is Frames.NOISE:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if kind is Frames.CONSTANT:
        return np.full(shape, int(rng.integers(0, 256)), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    # A different phase per channel, so a BGR/RGB mix-up shows on gradients too.
    channels = [(127 + 120 * np.sin(yy / 3.7 + xx / 5.3 + c)).astype(np.uint8) for c in range(shape[2] if len(shape) == 3 else 1)]
    return np.stack(channels, axis=2).reshape(shape)


def _random_roi(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    return x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))


def kernel_cases(seed: int = 0, count: int = 12, max_frame: int = 160,
                 sizes: Sequence[int] = (8, 13, 16, 31, 64)) -> list[Case]:
    """A seeded, deterministic set of cases covering the edge conditions listed in the module doc.

    ``max_frame`` and ``sizes`` bound the work (the Triton interpreter is slow); the special ROIs
    are always included.
    """
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    for i in range(count):
        spec = PreprocessSpec(image_size=int(rng.choice(sizes)))
        h = int(rng.integers(1, max_frame)) if i % 5 else 1  # a 1-pixel-tall frame every 5th case
        w = int(rng.integers(2, max_frame)) | (i % 2)  # odd widths half the time
        kind = (Frames.NOISE, Frames.GRADIENT)[i % 2]
        gray = (None, None, "2d", None, "hw1")[i % 5]
        frame = _frame(rng, h, w, kind, gray)
        special = [(0, 0, w, h), (w - 1, 0, 1, h), (0, h - 1, w, 1), (w - 1, h - 1, 1, 1),
                   (max(0, w // 2 - 1), 0, min(2, w), h)]
        rois = [special[i % len(special)]] + [_random_roi(rng, h, w) for _ in range(int(rng.integers(0, 3)))]
        cases.append(Case(f"{kind.value}{'-' + gray if gray else ''} {w}x{h} S={spec.image_size}",
                          frame, np.array(rois, dtype=np.int64), spec))
    # No resampling at all: ROIs of exactly S x S (every path must be exact), incl. edge-touching.
    for s in (8, 13):
        h, w = s + 5, s + 2
        frame = _frame(rng, h, w, Frames.NOISE, None)
        rois = np.array([(0, 0, s, s), (w - s, h - s, s, s)], dtype=np.int64)
        cases.append(Case(f"identity {w}x{h} S={s}", frame, rois, PreprocessSpec(image_size=s), exact=True))
    # Constant frames: every interpolation of a constant is that constant.
    for gray in (None, "2d"):
        frame = _frame(rng, 37, 41, Frames.CONSTANT, gray)
        rois = np.array([(0, 0, 41, 37), (40, 36, 1, 1), (3, 5, 7, 30)], dtype=np.int64)
        cases.append(Case(f"constant{'-' + gray if gray else ''} 41x37 S=16", frame, rois,
                          PreprocessSpec(image_size=16), exact=True))
    return cases


def _dtype_name(dtype: np.dtype | type) -> str:
    return np.dtype(dtype).name


def _fail(name: str, case: Case, dtype: np.dtype | type, message: str) -> None:
    raise AssertionError(
        f"{name} [{_dtype_name(dtype)}] on case '{case.label}' (rois {case.rois.tolist()}): {message}"
    )


def check_case(impl: Impl, case: Case, tolerance: Tolerance, dtype: np.dtype | type, name: str,
               reference: np.ndarray | None = None) -> tuple[float, float, int]:
    """Check one case; returns (max_abs, sum_abs, element count). Raises AssertionError on any failure."""
    frame_before, rois_before = case.frame.copy(), case.rois.copy()
    expected = preprocess_reference(case.frame, case.rois, case.spec, dtype=np.float64) if reference is None else reference
    out = impl(case.frame, case.rois, case.spec, dtype)
    if not isinstance(out, np.ndarray):
        _fail(name, case, dtype, f"returned {type(out).__name__}, expected a NumPy array")
    if out.dtype != np.dtype(dtype):
        _fail(name, case, dtype, f"output dtype {out.dtype}, expected {_dtype_name(dtype)}")
    if out.shape != expected.shape:
        _fail(name, case, dtype, f"output shape {out.shape}, expected {expected.shape}")
    if not np.array_equal(case.frame, frame_before) or case.frame.dtype != frame_before.dtype:
        _fail(name, case, dtype, "modified the input frame")
    if not np.array_equal(case.rois, rois_before):
        _fail(name, case, dtype, "modified the input ROIs")
    got = out.astype(np.float64)
    if not np.all(np.isfinite(got)):
        _fail(name, case, dtype, "produced non-finite values")
    err = np.abs(got - expected)
    fp16 = np.dtype(dtype) == np.float16
    rounding = np.abs(expected) * FP16_UNIT_ROUNDOFF if fp16 else 0.0
    max_allowed = (EXACT_ATOL if case.exact else tolerance.max_abs) + rounding
    over = err > max_allowed
    if np.any(over):
        at = np.unravel_index(int(np.argmax(err - max_allowed)), err.shape)
        _fail(name, case, dtype,
              f"{int(over.sum())} of {err.size} values exceed the tolerance; worst at [pane, channel, y, x]="
              f"{tuple(int(v) for v in at)}: got {got[at]:.6f}, reference {expected[at]:.6f} "
              f"(|err| {err[at]:.3g} > {np.broadcast_to(max_allowed, err.shape)[at]:.3g}; {tolerance.why})")
    mean_allowed = (EXACT_ATOL if case.exact else tolerance.mean_abs) + (float(np.mean(rounding)) if fp16 else 0.0)
    if float(err.mean()) > mean_allowed:
        _fail(name, case, dtype, f"mean |err| {err.mean():.3g} > {mean_allowed:.3g} (a biased result; {tolerance.why})")
    if tolerance.integer_levels and not fp16:
        mean = np.asarray(case.spec.mean, dtype=np.float64)[None, :, None, None]
        std = np.asarray(case.spec.std, dtype=np.float64)[None, :, None, None]
        levels = (got * std + mean) * 255.0
        off = np.abs(levels - np.round(levels))
        if off.max() > 1e-3:
            _fail(name, case, dtype, f"output decodes to non-integer uint8 levels (off by up to {off.max():.3g}); "
                                     "a uint8 path must normalize exact uint8 values")
    return float(err.max()), float(err.sum()), int(err.size)


def check_kernel(impl: Impl, tolerance: Tolerance, *, name: str | None = None,
                 dtypes: Iterable[np.dtype | type] = (np.float32,), cases: Sequence[Case] | None = None,
                 seed: int = 0) -> KernelReport:
    """Check ``impl`` against the reference on every case and dtype; raise AssertionError on the first
    failure (naming the case, the ROIs, the worst pixel and the tolerance's reason). Returns what was
    measured, so callers can print or record it."""
    name = name or getattr(impl, "__name__", repr(impl))
    cases = kernel_cases(seed) if cases is None else cases
    report = KernelReport(name=name, cases=len(cases), panes=sum(len(c.rois) for c in cases))
    references = [preprocess_reference(c.frame, c.rois, c.spec, dtype=np.float64) for c in cases]
    for dtype in dtypes:
        worst, total, count = 0.0, 0.0, 0
        for case, expected in zip(cases, references):
            m, s, n = check_case(impl, case, tolerance, dtype, name, expected)
            worst, total, count = max(worst, m), total + s, count + n
        report.max_abs[_dtype_name(dtype)] = worst
        report.mean_abs[_dtype_name(dtype)] = total / max(count, 1)
    return report


def reference_impl(frame: np.ndarray, rois: np.ndarray, spec: PreprocessSpec, dtype: np.dtype | type) -> np.ndarray:
    """The reference in the checker's calling convention (float32/float16 output)."""
    return preprocess_reference(frame, rois, spec, dtype=dtype)
