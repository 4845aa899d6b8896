"""The NumPy reference preprocessing against an independent implementation (torch's bilinear)."""

import numpy as np
import pytest

from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference, validate_rois

from .conftest import needs_torch


@needs_torch
@pytest.mark.parametrize("seed", range(4))
def test_reference_matches_torch_bilinear(seed):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 300, size=2)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
    roi = (int(x), int(y), int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1)))
    size = int(rng.integers(8, 160))
    spec = PreprocessSpec(image_size=size)
    ours = preprocess_reference(frame, [roi], spec, dtype=np.float64)[0]
    x0, y0, rw, rh = roi
    crop = torch.from_numpy(frame[y0 : y0 + rh, x0 : x0 + rw, ::-1].copy()).double().permute(2, 0, 1)[None] / 255
    resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]
    mean = torch.tensor(spec.mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float64)[:, None, None]
    expected = ((resized - mean) / std).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_grayscale_is_replicated_and_input_untouched():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(50, 70), dtype=np.uint8)
    before = gray.copy()
    spec = PreprocessSpec(image_size=16)
    out_gray = preprocess_reference(gray, [(0, 0, 70, 50)], spec)
    out_bgr = preprocess_reference(np.repeat(gray[:, :, None], 3, axis=2), [(0, 0, 70, 50)], spec)
    np.testing.assert_array_equal(out_gray, out_bgr)
    np.testing.assert_array_equal(gray, before)


def test_constant_image_maps_to_normalized_constant():
    frame = np.full((40, 40, 3), 200, dtype=np.uint8)
    spec = PreprocessSpec(image_size=8)
    out = preprocess_reference(frame, [(3, 4, 30, 20)], spec, dtype=np.float64)[0]
    expected = (200 / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-12)


@pytest.mark.parametrize("roi", [(-1, 0, 5, 5), (0, 0, 0, 5), (0, 0, 41, 5), (30, 30, 11, 5)])
def test_rois_outside_the_frame_are_refused(roi):
    with pytest.raises(ValueError, match="outside the 40x40 frame"):
        validate_rois([roi], 40, 40)
