"""Following the operator's nodule box while the probe moves a little.

The box the operator gave (control channel or calipers) is cut out as a template when it is set; on
each later frame the template is looked for near the box's last place (normalised cross-correlation,
``cv2.matchTemplate``) on a copy shrunk to ~32 px and blurred, so speckle, which decorrelates from
frame to frame, averages out and the nodule's outline and the tissue around it carry the match. The
template stays the operator's: updating it from tracked frames would let the box drift off the
nodule one small error at a time. When the best match falls below ``min_score`` the view has changed
too much (another plane, another nodule, the probe lifted) and the box is lost: better no answer than
an answer about something else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError
from .frames import Roi

WORK_SIDE = 32   # the template's longer side after shrinking: the outline survives, speckle averages out
STAY = 0.01      # the box moves only to a place that matches clearly better than where it is


@dataclass(frozen=True)
class TrackStep:
    """Where the box is on this frame (None: lost), the match score, and how far it moved."""

    roi: Roi | None
    score: float
    shift: tuple[int, int]

    @property
    def lost(self) -> bool:
        return self.roi is None


class BoxTracker:
    """``start(frame, roi, bounds)`` with the operator's box; ``update(frame)`` on each later frame.

    ``bounds`` is the B-mode pane: the box never leaves it. ``search`` is how far (a fraction of the
    box's size) the box may move between two processed frames.
    """

    def __init__(self, min_score: float = 0.85, search: float = 0.35) -> None:
        if not (math.isfinite(min_score) and -1 < min_score < 1):
            raise InputError(f"tracking score {min_score} must be a correlation in (-1, 1)")
        if not (math.isfinite(search) and 0 < search <= 2):
            raise InputError(f"tracking search {search} must be a fraction of the box in (0, 2]")
        self.min_score = float(min_score)
        self.search = float(search)
        self.stop()

    def stop(self) -> None:
        self._template: np.ndarray | None = None
        self.roi: Roi | None = None
        self.origin: Roi | None = None
        self._bounds: Roi | None = None
        self._scale = 1.0

    @property
    def active(self) -> bool:
        return self._template is not None

    def start(self, frame: np.ndarray, roi: Roi, bounds: Roi) -> None:
        x, y, w, h = roi
        self._scale = min(1.0, WORK_SIDE / max(w, h))
        template = self._prepare(frame, roi)
        if template.shape[0] < 4 or template.shape[1] < 4:
            raise InputError(f"box {list(roi)} is too small to follow; expected at least {math.ceil(4 / self._scale)} px a side")
        self._template = template
        self._flat = float(template.std()) < 1.0   # a uniform box matches anywhere: nothing to follow
        self.roi = self.origin = tuple(int(v) for v in roi)  # type: ignore[assignment]
        self._bounds = bounds

    def update(self, frame: np.ndarray) -> TrackStep:
        if self._template is None or self.roi is None or self._bounds is None:
            raise InputError("the tracker has no box; start it with the operator's box first")
        x, y, w, h = self.roi
        bx, by, bw, bh = self._bounds
        reach_x, reach_y = max(2, round(w * self.search)), max(2, round(h * self.search))
        left, top = max(bx, x - reach_x), max(by, y - reach_y)
        right, bottom = min(bx + bw, x + w + reach_x), min(by + bh, y + h + reach_y)
        if self._flat:
            return TrackStep(self.roi, 1.0, (0, 0))
        area = self._prepare(frame, (left, top, right - left, bottom - top))
        template = self._template
        if area.shape[0] < template.shape[0] or area.shape[1] < template.shape[1]:
            return self._lose()
        scores = cv2.matchTemplate(area, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (mx, my) = cv2.minMaxLoc(scores)
        if not math.isfinite(best) or best < self.min_score:
            return self._lose(best)
        hx, hy = round((x - left) * self._scale), round((y - top) * self._scale)
        if 0 <= hy < scores.shape[0] and 0 <= hx < scores.shape[1] and scores[hy, hx] >= best - STAY:
            return TrackStep(self.roi, float(best), (0, 0))   # no better place: speckle must not jitter the box
        fx, fy = mx + _vertex(scores[my, mx - 1:mx + 2]), my + _vertex(scores[my - 1:my + 2, mx])
        nx = min(max(bx, left + round(fx / self._scale)), bx + bw - w)
        ny = min(max(by, top + round(fy / self._scale)), by + bh - h)
        shift = (nx - x, ny - y)
        self.roi = (nx, ny, w, h)
        return TrackStep(self.roi, float(best), shift)

    def _lose(self, score: float = float("nan")) -> TrackStep:
        self.stop()
        return TrackStep(None, float(score) if math.isfinite(score) else 0.0, (0, 0))

    def _prepare(self, frame: np.ndarray, roi: Roi) -> np.ndarray:
        x, y, w, h = roi
        region = frame[y:y + h, x:x + w]
        grey = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY) if region.ndim == 3 else region
        size = (max(1, round(w * self._scale)), max(1, round(h * self._scale)))
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, (5, 5), 0)


def _vertex(three: np.ndarray) -> float:
    """Sub-pixel offset of a peak from its two neighbours (a parabola through three scores): the
    match runs on a shrunk copy, where one pixel is several screen pixels."""
    if three.size != 3:
        return 0.0
    left, centre, right = (float(v) for v in three)
    curvature = left - 2 * centre + right
    return 0.0 if curvature >= 0 else max(-0.5, min(0.5, 0.5 * (left - right) / curvature))
