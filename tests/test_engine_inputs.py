"""Bad frames, ROIs and modalities: one clear error each, naming what was received and expected."""

import numpy as np
import pytest

from edge_thyroid.engine import Engine
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane

from .conftest import needs_torch, screen_frame

pytestmark = needs_torch


@pytest.fixture(scope="module")
def engine(random_bundle):
    with Engine(random_bundle) as e:
        yield e


@pytest.mark.parametrize("frame, message", [
    (np.zeros((100, 100, 3), dtype=np.float32), "frame dtype is float32; expected uint8"),
    (np.zeros((100, 100, 4), dtype=np.uint8), r"frame shape is \(100, 100, 4\); expected HxWx3"),
    (np.zeros((2, 100, 100, 3), dtype=np.uint8), "expected HxWx3"),
    ("not an array", "frame must be a NumPy array"),
])
def test_bad_frames(engine, frame, message):
    with pytest.raises(InputError, match=message):
        engine.classify(frame, [Pane("bmode", (0, 0, 10, 10))])


def test_grayscale_frame_equals_replicated_bgr(engine):
    gray = screen_frame()[:, :, 0].copy()
    bgr = np.repeat(gray[:, :, None], 3, axis=2)
    pane = [Pane("bmode", (20, 50, 400, 400))]
    assert engine.classify(gray, pane).probability == pytest.approx(engine.classify(bgr, pane).probability, abs=1e-9)


def test_roi_outside_frame(engine):
    with pytest.raises(InputError, match=r"ROI x=1200,y=0,w=100,h=10 is outside the 1280x720 frame"):
        engine.classify(screen_frame(), [Pane("bmode", (1200, 0, 100, 10))])


def test_unknown_and_duplicate_modality(engine):
    with pytest.raises(InputError, match="unknown modality 'ct'"):
        engine.classify(screen_frame(), [Pane("ct", (0, 0, 10, 10))])
    with pytest.raises(InputError, match="given twice"):
        engine.classify(screen_frame(), [Pane("bmode", (0, 0, 10, 10)), Pane("bmode", (10, 0, 10, 10))])


def test_roi_text_parsing():
    assert Pane.parse("bmode", "1, 2,3,4").roi == (1, 2, 3, 4)
    with pytest.raises(InputError, match="not 4 integers"):
        Pane.parse("bmode", "1,2,3")
