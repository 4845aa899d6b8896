"""Degenerate pixels and overflowing weights: a finite answer or a refusal with a reason, never a
NaN that compares false with the threshold and reads as 'benign'."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_thyroid.engine import Engine
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane
from edge_thyroid.head import FusionHead

from ..conftest import needs_torch

pytestmark = needs_torch

PANES = [Pane("bmode", (0, 0, 96, 96)), Pane("smi", (96, 0, 96, 96))]


@pytest.fixture(scope="module")
def engine(random_bundle):
    with Engine(random_bundle) as e:
        yield e


def extreme_head(head: FusionHead) -> FusionHead:
    """Finite weights whose dot products overflow float64: +inf and -inf halves, i.e. NaN."""
    weight = np.full(head.weight.shape, 1e307)
    weight[:, ::2] = -1e307
    return FusionHead(head.modalities, weight, head.presence_bias, head.bias)


@pytest.mark.parametrize("value", [0, 255])
def test_all_black_and_all_white_frames_give_finite_predictions(engine, value):
    prediction = engine.classify(np.full((96, 192, 3), value, np.uint8), PANES)
    assert math.isfinite(prediction.logit) and 0.0 <= prediction.probability <= 1.0
    assert all(np.isfinite(prediction.cam(p.modality)).all() for p in PANES)


def test_overflowing_head_refuses_instead_of_reading_benign(engine, monkeypatch):
    frame = np.random.default_rng(0).integers(0, 256, (96, 192, 3), dtype=np.uint8)
    monkeypatch.setattr(engine, "head", extreme_head(engine.head))
    with pytest.raises(InputError, match=r"logit is nan .* no decision is made"):
        engine.classify(frame, PANES)


def test_head_reports_overflow_to_infinity(engine):
    head = engine.head
    pooled = {"bmode": np.full(head.channels, 1e300)}
    big = FusionHead(head.modalities, np.full(head.weight.shape, 1e10), head.presence_bias, head.bias)
    with pytest.raises(InputError, match="logit is inf"):
        big.predict(pooled)
