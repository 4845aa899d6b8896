"""Every CPU preprocessing path through the one checker (kernels.check.check_kernel), and the checker
itself: it must catch the mistakes it claims to catch."""

from functools import lru_cache

import numpy as np
import pytest

from edge_thyroid.kernels.check import (
    CAST_ONLY,
    FLOAT32,
    LEVEL,
    ONNX_RESIZE,
    UINT8_RESIZE,
    check_kernel,
    kernel_cases,
    reference_impl,
)
from edge_thyroid.kernels.numpy_path import preprocess_numpy
from edge_thyroid.kernels.onnx_graph import InGraphPreprocessor
from edge_thyroid.kernels.opencv_path import OpenCVPreprocessor, Resampling, preprocess_opencv
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

BOTH = (np.float32, np.float16)


def opencv_impl(resampling):
    def impl(frame, rois, spec, dtype):
        return preprocess_opencv(frame, rois, spec, dtype=dtype, resampling=resampling)

    impl.__name__ = f"opencv-{resampling.value}"
    return impl


@lru_cache(maxsize=None)
def _session(spec):
    return InGraphPreprocessor(spec, threads=1)


def onnx_impl(frame, rois, spec, dtype):
    if np.dtype(dtype) != np.float32:
        raise ValueError("the in-graph path outputs float32 only")
    return _session(spec)(frame, rois)


def test_cases_cover_the_edge_conditions():
    cases = kernel_cases(0)
    rois = [(c, tuple(r)) for c in cases for r in c.rois.tolist()]
    assert any(c.frame.ndim == 2 for c in cases) and any(c.frame.ndim == 3 and c.frame.shape[2] == 1 for c in cases)
    assert any(c.frame.shape[0] == 1 for c in cases), "a 1-pixel-tall frame"
    assert any(c.frame.shape[1] % 2 for c in cases) and any(c.spec.image_size % 2 for c in cases), "odd sizes"
    assert any(r[2] == 1 and r[3] > 1 for _, r in rois) and any(r[3] == 1 and r[2] > 1 for _, r in rois)
    assert any(r[2] == 1 and r[3] == 1 for _, r in rois), "a 1x1 ROI"
    assert any(r[0] + r[2] == c.frame.shape[1] and r[1] + r[3] == c.frame.shape[0] and r[0] > 0 for c, r in rois)
    assert any(r[2] < c.spec.image_size for c, r in rois) and any(r[2] > c.spec.image_size for c, r in rois)
    assert any(c.exact for c in cases) and any(not c.exact for c in cases)


def test_reference_output_dtypes():
    report = check_kernel(reference_impl, CAST_ONLY, dtypes=BOTH)
    assert report.max_abs["float32"] < 1e-6


def test_numpy_path():
    report = check_kernel(preprocess_numpy, FLOAT32, dtypes=BOTH, cases=kernel_cases(1, count=20))
    assert report.max_abs["float32"] < 1e-5


def test_opencv_float_path_is_exact_to_float32():
    report = check_kernel(opencv_impl(Resampling.FLOAT), FLOAT32, dtypes=BOTH, cases=kernel_cases(2, count=30))
    assert report.max_abs["float32"] < 1e-5


@pytest.mark.parametrize("ratio, path", [(0, "gather the taps"), (float("inf"), "convert the crop + cv2.resize")])
def test_both_exact_opencv_float_strategies_are_exact(monkeypatch, ratio, path):
    """FLOAT mode picks a strategy by crop size; force each one over every case (grayscale included)."""
    import edge_thyroid.kernels.opencv_path as opencv_path

    monkeypatch.setattr(opencv_path, "GATHER_MIN_AREA_RATIO", ratio)
    report = check_kernel(opencv_impl(Resampling.FLOAT), FLOAT32, dtypes=BOTH, cases=kernel_cases(6, count=30))
    assert report.max_abs["float32"] < 1e-5, path


@pytest.mark.parametrize("channels", [3, 1])
def test_gathered_taps_blend_in_opencv_equals_the_numpy_blend_bit_for_bit(channels):
    """The tap blend runs as OpenCV arithmetic into reused buffers; it must be the same float32 operations
    in the same order as the plain NumPy blend (rows, then columns), not merely close."""
    from edge_thyroid.kernels.reference import bilinear_taps

    rng = np.random.default_rng(channels)
    shape = (613, 970, 3) if channels == 3 else (613, 970)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    size = 128
    pre = OpenCVPreprocessor(PreprocessSpec(image_size=size))
    out = np.empty((size, size, 3) if channels == 3 else (size, size), dtype=np.float32)
    for _ in range(2):  # the second call runs on the reused buffers
        got = pre._two_tap_resize(frame, out).copy()
    y0, y1, wy = bilinear_taps(frame.shape[0], size)
    x0, x1, wx = bilinear_taps(frame.shape[1], size)
    tail = (1,) if channels == 3 else ()
    top, bottom = frame[y0].astype(np.float32), frame[y1].astype(np.float32)
    rows = (bottom - top) * wy.astype(np.float32).reshape(size, 1, *tail) + top
    left, right = rows[:, x0], rows[:, x1]
    expected = (right - left) * wx.astype(np.float32).reshape(1, size, *tail) + left
    assert np.array_equal(got, expected)


def test_opencv_uint8_path_within_one_level():
    report = check_kernel(opencv_impl(Resampling.UINT8), UINT8_RESIZE, dtypes=BOTH, cases=kernel_cases(3, count=30))
    # It really is a uint8 path: clearly worse than the float one, and it would fail the float bound.
    assert report.max_abs["float32"] > 0.25 * LEVEL
    with pytest.raises(AssertionError, match="exceed the tolerance"):
        check_kernel(opencv_impl(Resampling.UINT8), FLOAT32, cases=kernel_cases(3, count=30))


def test_in_graph_onnx_path():
    check_kernel(onnx_impl, ONNX_RESIZE, cases=kernel_cases(4, count=10))


def test_opencv_at_the_production_size():
    """3 panes of a 1080p frame, as the engine sees them."""
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    rois = np.array([(20, 100, 600, 600), (660, 100, 600, 600), (1319, 479, 601, 601)], dtype=np.int64)
    spec = PreprocessSpec(image_size=128)
    expected = preprocess_reference(frame, rois, spec, dtype=np.float64)
    exact = preprocess_opencv(frame, rois, spec)
    fast = preprocess_opencv(frame, rois, spec, resampling=Resampling.UINT8)
    np.testing.assert_allclose(exact, expected, rtol=0, atol=FLOAT32.max_abs)
    np.testing.assert_allclose(fast, expected, rtol=0, atol=UINT8_RESIZE.max_abs)
    assert np.abs(fast - expected).mean() <= UINT8_RESIZE.mean_abs


def test_opencv_preprocessor_reuses_buffers_across_frames():
    spec = PreprocessSpec(image_size=16)
    pre = OpenCVPreprocessor(spec)
    rng = np.random.default_rng(6)
    out = np.empty((2, 3, 16, 16), dtype=np.float32)
    for i in range(4):  # pane count, frame size and color change between calls
        frame = rng.integers(0, 256, size=(60 + i, 80 + 3 * i) + ((3,) if i % 2 else ()), dtype=np.uint8)
        rois = [(0, 0, 80, 60), (5, 7, 11, 9)][: 1 + i % 2]
        expected = preprocess_reference(frame, rois, spec, dtype=np.float64)
        if len(rois) == 2:
            result = pre(frame, rois, out=out)
            assert result is out
        else:
            result = pre(frame, rois)
        np.testing.assert_allclose(result, expected, rtol=0, atol=FLOAT32.max_abs)


@pytest.mark.parametrize("bad_out", [np.empty((1, 3, 16, 16), np.float32), np.empty((2, 3, 16, 16), np.float64),
                                     np.empty((2, 16, 16, 3), np.float32).transpose(0, 3, 1, 2)])
def test_opencv_refuses_a_wrong_output_buffer(bad_out):
    frame = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array of shape"):
        OpenCVPreprocessor(PreprocessSpec(image_size=16))(frame, [(0, 0, 10, 10), (1, 1, 5, 5)], out=bad_out)


def test_opencv_refuses_bad_input():
    pre = OpenCVPreprocessor(PreprocessSpec(image_size=16))
    with pytest.raises(ValueError, match="outside the 40x30 frame"):
        pre(np.zeros((30, 40, 3), dtype=np.uint8), [(35, 0, 10, 10)])
    with pytest.raises(ValueError, match="must be a uint8"):
        pre(np.zeros((30, 40, 3), dtype=np.float32), [(0, 0, 10, 10)])
    with pytest.raises(ValueError, match="HxW, HxWx1 or HxWx3"):
        pre(np.zeros((30, 40, 4), dtype=np.uint8), [(0, 0, 10, 10)])
    with pytest.raises(ValueError, match="float32 or float16"):
        OpenCVPreprocessor(PreprocessSpec(image_size=16), dtype=np.float64)


# --- the checker must fail where it claims to -------------------------------------------------------------


def _align_corners(frame, rois, spec, dtype):
    """A classic mistake: align-corners sampling instead of half-pixel centres."""
    from edge_thyroid.kernels.reference import as_bgr

    bgr = as_bgr(frame).astype(np.float64)
    size = spec.image_size
    out = []
    for x, y, w, h in np.asarray(rois).tolist():
        crop = bgr[y : y + h, x : x + w]
        ys = np.linspace(0, h - 1, size)
        xs = np.linspace(0, w - 1, size)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        rows = crop[y0] * (1 - wy) + crop[y1] * wy
        img = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
        rgb = img[:, :, ::-1] / 255.0
        out.append(((rgb - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1))
    return np.stack(out).astype(dtype)


def _no_color_swap(frame, rois, spec, dtype):
    from edge_thyroid.kernels.reference import as_bgr

    return preprocess_reference(np.ascontiguousarray(as_bgr(frame)[:, :, ::-1]), rois, spec, dtype=dtype)


def _modifies_input(frame, rois, spec, dtype):
    out = preprocess_reference(frame, rois, spec, dtype=dtype)
    frame.flat[0] ^= 1
    return out


def _biased(frame, rois, spec, dtype):
    return (preprocess_reference(frame, rois, spec, dtype=np.float64) + 0.9 * LEVEL).astype(dtype)


@pytest.mark.parametrize("impl, tolerance, message", [
    (_align_corners, FLOAT32, "exceed the tolerance"),
    (_no_color_swap, UINT8_RESIZE, "exceed the tolerance"),
    (_modifies_input, FLOAT32, "modified the input frame"),
    (lambda f, r, s, d: preprocess_reference(f, r, s, dtype=np.float64), FLOAT32, "output dtype float64"),
    (lambda f, r, s, d: preprocess_reference(f, r, s, dtype=d)[:, ::-1].copy(), FLOAT32, "exceed the tolerance"),
    (lambda f, r, s, d: preprocess_reference(f, np.asarray(r)[:1], s, dtype=d), FLOAT32, "output shape"),
    (_biased, UINT8_RESIZE, "a biased result"),
    (opencv_impl(Resampling.FLOAT), UINT8_RESIZE, "non-integer uint8 levels"),
])
def test_checker_catches(impl, tolerance, message):
    with pytest.raises(AssertionError, match=message):
        check_kernel(impl, tolerance, cases=kernel_cases(7, count=6))
