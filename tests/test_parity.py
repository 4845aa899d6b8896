"""torch (the training graph) vs the exported bundle run by ONNX Runtime + the NumPy head."""

import numpy as np
import pytest

from edge_thyroid.engine import Engine
from edge_thyroid.frames import Pane
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .conftest import needs_torch, screen_frame

pytestmark = needs_torch

PANES = [Pane("bmode", (20, 50, 600, 620)), Pane("smi", (660, 50, 600, 620)), Pane("swe", (700, 300, 211, 97))]


def torch_reference(model, frame, panes, image_size):
    import torch

    spec = PreprocessSpec(image_size=image_size)
    pixels = preprocess_reference(frame, [p.roi for p in panes], spec)
    batch = np.zeros((1, len(model.modalities), 3, image_size, image_size), dtype=np.float32)
    present = np.zeros((1, len(model.modalities)), dtype=np.float32)
    for i, pane in enumerate(panes):
        slot = model.modalities.index(pane.modality)
        batch[0, slot], present[0, slot] = pixels[i], 1
    with torch.no_grad():
        logit = model(torch.from_numpy(batch), torch.from_numpy(present)).double().item()
        maps = model.feature_maps(torch.from_numpy(pixels)).double().numpy()
    return logit, maps


@pytest.mark.parametrize("count", [1, 2, 3])
def test_torch_and_onnxruntime_agree(random_model, random_bundle, count):
    frame = screen_frame()
    panes = PANES[:count]
    logit, maps = torch_reference(random_model, frame, panes, 64)
    with Engine(random_bundle) as engine:
        prediction = engine.classify(frame, panes)
        ort_maps = engine.extract(frame, [p.roi for p in panes])
    p_torch = 1 / (1 + np.exp(-logit))
    assert abs(prediction.probability - p_torch) <= 1e-4
    assert abs(prediction.logit - logit) <= 1e-3 * max(1.0, abs(logit))
    np.testing.assert_allclose(ort_maps, maps, rtol=1e-3, atol=1e-3 * np.abs(maps).max())


def test_missing_modalities_are_masked_not_imagined(random_model, random_bundle):
    """A bmode-only prediction equals the torch model with smi/swe marked absent."""
    frame = screen_frame(seed=3)
    with Engine(random_bundle) as engine:
        only_bmode = engine.classify(frame, PANES[:1])
        with_swe = engine.classify(frame, [PANES[0], PANES[2]])
    assert set(only_bmode.contributions) == {"bmode"}
    assert only_bmode.contributions["bmode"] == pytest.approx(with_swe.contributions["bmode"], rel=1e-6)
    assert with_swe.logit == pytest.approx(only_bmode.logit + with_swe.contributions["swe"], rel=1e-6, abs=1e-9)
