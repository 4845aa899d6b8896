"""Which nodule box the B-mode pane is classified on, frame by frame.

The model was trained on nodule-centred crops, so a frame is classified on a box around the nodule,
never on a whole pane unless asked (``whole_pane``). Where the box comes from, strongest first:

* ``control``  - the workstation UI sent it (``stream --control``), or
* ``calipers`` - the sonographer froze the image and placed measurement calipers;
  either one is the *operator's box*; when the image moves on, it is followed (``tracked``) and
  dropped (``roi_lost``) when the view changed too much;
* ``layout``   - the layout's fixed ``nodule`` box;
* ``whole_pane`` - the B-mode pane itself, only with ``whole_pane``;
* none: the frame abstains with ``no_roi``.

A freeze is noticed here too (the pane's pixels the same as the last frame's, but for a few marks):
that is when calipers are looked for, and while the image is live the pane's fixed pixels (text,
ticks, icons) are learnt so that a caliper search never takes them for marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..calipers import CaliperFinder, CaliperMark, FixedPixels
from ..frames import Roi
from ..tracking import BoxTracker

CONTROL, CALIPERS, TRACKED, LAYOUT, WHOLE_PANE = "control", "calipers", "tracked", "layout", "whole_pane"
FREEZE_STRIDE = 4          # compare every 4th pixel of the pane with the last frame's
FREEZE_LEVELS = 12         # a pixel that moved by more than this changed (codec noise stays under it)
FREEZE_FRACTION = 0.01     # under 1% of the pane changed: frozen (calipers are a few hundred pixels)
FURNITURE_EVERY = 4        # learn the pane's fixed pixels from every 4th live frame


@dataclass(frozen=True)
class BoxChoice:
    """The box for this frame (None: no box), where it came from, whether an operator's box was just
    lost, whether the pane is frozen, and the caliper marks behind a ``calipers`` box."""

    roi: Roi | None
    source: str | None
    lost: bool = False
    frozen: bool = False
    marks: tuple[CaliperMark, ...] = field(default=())


class FreezeDetector:
    """Frozen = almost none of the pane's pixels changed since the previous frame."""

    def __init__(self) -> None:
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        self._last = None

    def frozen(self, frame: np.ndarray, pane: Roi) -> bool:
        x, y, w, h = pane
        size = (max(1, w // FREEZE_STRIDE), max(1, h // FREEZE_STRIDE))
        # every 4th pixel, by OpenCV on the view (a NumPy strided copy costs 4x more on a 1080p pane)
        sample = cv2.resize(frame[y:y + h, x:x + w], size, interpolation=cv2.INTER_NEAREST)
        last, self._last = self._last, sample
        if last is None or last.shape != sample.shape:
            return False
        moved = int(np.count_nonzero(cv2.absdiff(last, sample) > FREEZE_LEVELS))   # channel values that moved
        return bool(moved < FREEZE_FRACTION * sample.size)


class NoduleBox:
    """The stream's nodule box: ``set_operator`` (control channel), ``reset`` (a new layout), and
    ``choose`` once per frame."""

    def __init__(self, *, whole_pane: bool = False, calipers: bool = True, track: bool = True) -> None:
        self.whole_pane = whole_pane
        self.finder = CaliperFinder() if calipers else None
        self.track = track
        self.fixed = FixedPixels()
        self.freeze = FreezeDetector()
        self.tracker = BoxTracker()
        self.operator: Roi | None = None        # the box as the operator gave it
        self.operator_source: str | None = None
        self.pending_start = False              # the tracker takes its template on the next frame
        self.marks: tuple[CaliperMark, ...] = ()
        self._searched: tuple[int, ...] | None = None   # the frozen pane the calipers were last looked for on
        self._live_frames = 0

    def reset(self) -> None:
        """A new layout: the screen's furniture, the freeze and any operator's box start again."""
        self.fixed.reset()
        self.freeze.reset()
        self._live_frames = 0
        self.set_operator(None, CONTROL)

    def set_operator(self, roi: Roi | None, source: str) -> None:
        self.operator = tuple(int(v) for v in roi) if roi is not None else None  # type: ignore[assignment]
        self.operator_source = source if roi is not None else None
        self.tracker.stop()
        self.pending_start = roi is not None
        self.marks = ()

    def choose(self, frame: np.ndarray, pane: Roi, layout_nodule: Roi | None) -> BoxChoice:
        frozen = self.freeze.frozen(frame, pane)
        x, y, w, h = pane
        if frozen:
            self._look_for_calipers(frame, pane)
        else:
            self._live_frames += 1
            if self._live_frames % FURNITURE_EVERY == 1:   # furniture stays put: a sample of the live frames will do
                self.fixed.update(frame[y:y + h, x:x + w])
            self._searched = None
        lost = False
        if self.operator is not None:
            choice = self._follow(frame, pane, frozen)
            if choice is not None:
                return choice
            lost = True
        if layout_nodule is not None:
            return BoxChoice(layout_nodule, LAYOUT, lost, frozen)
        if self.whole_pane:
            return BoxChoice(pane, WHOLE_PANE, lost, frozen)
        return BoxChoice(None, None, lost, frozen)

    def _follow(self, frame: np.ndarray, pane: Roi, frozen: bool) -> BoxChoice | None:
        """The operator's box on this frame (followed while the image moves), or None once lost."""
        assert self.operator is not None and self.operator_source is not None
        if self.pending_start or not self.track:
            if self.track:
                self.tracker.start(frame, self.operator, pane)
                self.pending_start = False
            return BoxChoice(self.operator, self.operator_source, frozen=frozen, marks=self.marks)
        if frozen:   # the same image: the box stays where it is
            roi = self.tracker.roi or self.operator
        else:
            step = self.tracker.update(frame)
            if step.lost:
                self.operator = self.operator_source = None
                self.marks = ()
                return None
            roi = step.roi
        source = self.operator_source if roi == self.operator else TRACKED
        return BoxChoice(roi, source, frozen=frozen, marks=self.marks if source == CALIPERS else ())

    def _look_for_calipers(self, frame: np.ndarray, pane: Roi) -> None:
        """On a frozen pane: calipers that appeared or moved give the operator's box."""
        if self.finder is None:
            return
        x, y, w, h = pane
        # Search once per frozen picture: a hash of the subsampled pane says whether marks changed.
        key = (hash(frame[y:y + h:2, x:x + w:2].tobytes()),)
        if key == self._searched:
            return
        self._searched = key
        found = self.finder.find(frame, pane, self.fixed.mask)
        if found.box is None:
            return
        if self.operator_source == CALIPERS and found.positions == tuple((m.x, m.y) for m in self.marks):
            return
        self.set_operator(found.box, CALIPERS)
        self.marks = found.marks
