"""The in-graph (ONNX) preprocessing against the NumPy reference."""

import numpy as np
import onnxruntime as ort
import pytest

from edge_thyroid.kernels.onnx_graph import build_preprocess_graph
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

# float32 arithmetic in ORT's resize: far inside one uint8 level (1/255/std ~ 0.017 normalized).
TOLERANCE = 1e-3


def random_rois(rng, h, w, count):
    rois = []
    for _ in range(count):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        rois.append((x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))))
    return np.array(rois, dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_in_graph_preprocessing_matches_reference(seed):
    rng = np.random.default_rng(seed)
    spec = PreprocessSpec(image_size=int(rng.choice([32, 97, 128])))
    session = ort.InferenceSession(build_preprocess_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    h, w = int(rng.integers(16, 400)), int(rng.integers(16, 600))
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    rois = random_rois(rng, h, w, int(rng.integers(1, 4)))
    rois[0] = (w - 1, 0, 1, h)  # a 1-pixel-wide pane touching the right edge
    before = frame.copy()
    out = session.run(None, {"frame": frame, "rois": rois})[0]
    expected = preprocess_reference(frame, rois, spec, dtype=np.float64)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(frame, before)
