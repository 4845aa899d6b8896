"""Following the operator's box: a moving probe over speckle, and a view that changes too much."""

from __future__ import annotations

import numpy as np
import pytest

from edge_thyroid.errors import InputError
from edge_thyroid.tracking import BoxTracker


def anatomy(seed: int, height: int = 700, width: int = 900) -> np.ndarray:
    """Tissue echo level without speckle: bands and a few dark nodules (the scene the probe sweeps)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tissue = 100 + 35 * np.sin(yy / rng.uniform(20, 40) + rng.uniform(0, 6)) * np.cos(xx / rng.uniform(25, 50))
    for _ in range(6):
        cy, cx = rng.uniform(100, height - 100), rng.uniform(100, width - 100)
        ry, rx = rng.uniform(25, 70), rng.uniform(30, 80)
        tissue[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(30, 60)
    return tissue


def view(scene: np.ndarray, dx: int, dy: int, seed: int, size=(480, 640)) -> np.ndarray:
    """What the pane shows with the probe moved by (dx, dy): fresh speckle on every frame."""
    h, w = size
    part = scene[100 + dy:100 + dy + h, 100 + dx:100 + dx + w]
    speckle = np.random.default_rng(seed).rayleigh(1.0, size=part.shape) / 1.25
    grey = np.clip(part * speckle, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


PANE = (0, 0, 640, 480)


def test_the_box_follows_a_slowly_moving_probe():
    scene = anatomy(0)
    box = (220, 160, 160, 140)
    tracker = BoxTracker()
    tracker.start(view(scene, 0, 0, seed=0), box, PANE)
    dx = dy = 0
    errors = []
    for step in range(1, 25):
        dx, dy = dx + 3, dy + (2 if step % 2 else -1)       # the image content moves by (-dx, -dy)
        result = tracker.update(view(scene, dx, dy, seed=step))
        assert not result.lost, f"lost at step {step} (score {result.score:.2f})"
        assert result.roi[2:] == box[2:]
        errors.append(max(abs(result.roi[0] - (box[0] - dx)), abs(result.roi[1] - (box[1] - dy))))
    # 72 px travelled; the box stays on the nodule within 5% of its side (the margin is 25%)
    assert max(errors) <= 0.05 * 160 and np.mean(errors) <= 4, errors


def test_a_still_probe_keeps_the_box_where_the_operator_put_it():
    scene = anatomy(1)
    tracker = BoxTracker()
    tracker.start(view(scene, 0, 0, seed=0), (300, 200, 120, 120), PANE)
    for seed in range(1, 6):
        result = tracker.update(view(scene, 0, 0, seed=seed))
        assert abs(result.shift[0]) <= 1 and abs(result.shift[1]) <= 1


def test_another_view_loses_the_box_and_the_tracker_stops():
    tracker = BoxTracker()
    tracker.start(view(anatomy(2), 0, 0, seed=0), (250, 180, 150, 150), PANE)
    result = tracker.update(view(anatomy(3), 0, 0, seed=1))
    assert result.lost and result.score < 0.85
    assert not tracker.active
    with pytest.raises(InputError, match="no box"):
        tracker.update(view(anatomy(3), 0, 0, seed=2))


def test_the_box_stays_inside_the_pane():
    scene = anatomy(4)
    tracker = BoxTracker(search=1.0)
    tracker.start(view(scene, 60, 60, seed=0), (10, 10, 100, 100), PANE)
    result = tracker.update(view(scene, 80, 80, seed=1))    # content moves up-left past the edge
    if not result.lost:
        x, y, w, h = result.roi
        assert x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="correlation"):
        BoxTracker(min_score=2)
    with pytest.raises(InputError, match="fraction"):
        BoxTracker(search=0)
    with pytest.raises(InputError, match="too small"):
        BoxTracker().start(view(anatomy(0), 0, 0, 0), (5, 5, 2, 2), PANE)
