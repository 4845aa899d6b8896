"""Measurement calipers on a frozen B-mode pane -> the nodule box the operator measured.

Sonographers freeze the image and place calipers ('+' or 'x' marks, white or coloured, 7-15 px, often
hollow in the middle) at the ends of a nodule's diameters. :class:`CaliperFinder` finds them and
derives the box the model should see (it was trained on nodule-centred crops):

* **Marks.** A '+' is four bright arms along the axes with darker speckle on the diagonals between
  them; an 'x' is the same turned by 45 degrees. So each pixel is scored as
  ``min(arm means) - max(between-arm means)`` at radius 3 (every mark of 7-15 px has its arms there,
  hollow or not), and the few candidates that pass are refined over arm radius (3-7) and hole size,
  with the arms required to *end* (a scale bar or a tissue edge continues; a caliper stops). Coloured
  marks are scored on chroma (max - min channel), where grey speckle is zero; white ones on the
  brightest channel.
* **Furniture.** Fixed screen content inside the pane (depth ticks, an orientation '+', text) is
  ignored when the caller passes the pixels that never changed while the image was live
  (:class:`FixedPixels`, which the stream keeps up to date), and marks touching the pane's edge are
  not calipers. Still images have no live history; several screenshots of one workstation stand in for
  it (:class:`StillFurniture`: what is the same on all of them is the screen, not the patient).
* **Box.** Two marks measure one diameter: a square of that diameter around their midpoint. Three or
  more give both axes: their bounding box. Then a margin on every side, because the training crops
  show the nodule at about two thirds of the crop's side (DDTI: median extent 0.67 of the side), and
  the box is clipped to the pane.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import InputError
from .frames import Roi

PLUS = "+"
CROSS = "x"

_AXIAL = ((0, -1), (0, 1), (-1, 0), (1, 0))        # (dx, dy): up, down, left, right
_DIAGONAL = ((-1, -1), (1, 1), (1, -1), (-1, 1))
PROBE_RADIUS = 3          # every 7-15 px mark has arm pixels 3 px from its centre
MAX_RADIUS = 7            # 15 px marks
MAX_HOLE = 2              # hollow centre: up to 2 px from the centre left empty
_REACH = MAX_RADIUS + 4   # profiles go this far, for the "arms end" test
DEFAULT_MARGIN = 0.25     # box = extent * 1.5: the nodule at ~2/3 of the crop, as in the training crops


@dataclass(frozen=True)
class CaliperMark:
    """One mark found: centre in frame pixels, its shape, its size (px across) and contrast."""

    x: int
    y: int
    shape: str
    size: int
    contrast: float

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "shape": self.shape, "size": self.size,
                "contrast": round(self.contrast, 1)}


@dataclass(frozen=True)
class CaliperFinding:
    """The marks found and the nodule box they give (None: fewer than two marks)."""

    marks: tuple[CaliperMark, ...]
    box: Roi | None
    extent: Roi | None   # the marks' own extent, before the margin

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        return tuple((m.x, m.y) for m in self.marks)


def box_from_marks(points: Sequence[tuple[float, float]], margin: float = DEFAULT_MARGIN,
                   bounds: Roi | None = None) -> tuple[Roi, Roi] | None:
    """(box with margin, extent) from caliper centres, or None for fewer than two marks.

    Two marks: a square whose side is their distance, centred on their midpoint. More: the bounding
    box of all of them; a side shorter than a third of the other (marks nearly on one line, i.e. one
    diameter measured in pieces) is widened to a square like the two-mark case. ``bounds`` clips.
    """
    if len(points) < 2:
        return None
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 2:
        side = float(np.hypot(*(pts[1] - pts[0])))
        cx, cy = pts.mean(axis=0)
        w = h = side
    else:
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        longer = max(w, h)
        if min(w, h) < longer / 3:
            w = h = longer
    if max(w, h) < 1:
        return None
    extent = _centred(cx, cy, w, h, bounds)
    box = _centred(cx, cy, w * (1 + 2 * margin), h * (1 + 2 * margin), bounds)
    if extent is None or box is None:
        return None
    return box, extent


def _centred(cx: float, cy: float, w: float, h: float, bounds: Roi | None) -> Roi | None:
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if bounds is not None:
        bx, by, bw, bh = bounds
        x0, y0, x1, y1 = max(x0, bx), max(y0, by), min(x1, bx + bw), min(y1, by + bh)
    left, top = int(math.floor(x0)), int(math.floor(y0))
    width, height = int(math.ceil(x1)) - left, int(math.ceil(y1)) - top
    if width < 1 or height < 1:
        return None
    return left, top, width, height


class FixedPixels:
    """Which pixels of a region never changed over the live frames seen: the screen's furniture.

    Feed it the live (not frozen) frames; ``mask`` is then True where the pixel stayed within
    ``tolerance`` grey levels since the last ``reset`` (at least ``min_frames`` frames seen). Live
    speckle always moves, text and tick marks never do; calipers only appear after the freeze.
    """

    def __init__(self, tolerance: int = 6, min_frames: int = 5) -> None:
        self.tolerance = int(tolerance)
        self.min_frames = int(min_frames)
        self.reset()

    def reset(self) -> None:
        self._low: np.ndarray | None = None
        self._high: np.ndarray | None = None
        self.frames = 0

    def update(self, pixels: np.ndarray) -> None:
        # change detection only: luma is enough, and one OpenCV pass on the pane's view
        grey = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY) if pixels.ndim == 3 else np.ascontiguousarray(pixels)
        if self._low is None or self._low.shape != grey.shape:
            self._low, self._high, self.frames = grey.copy(), grey.copy(), 0
        else:
            cv2.min(self._low, grey, dst=self._low)
            cv2.max(self._high, grey, dst=self._high)
        self.frames += 1

    @property
    def mask(self) -> np.ndarray | None:
        """Bool mask of fixed pixels and their neighbours (the shape of the frames fed), or None
        before ``min_frames``."""
        if self._low is None or self.frames < self.min_frames:
            return None
        fixed = (cv2.absdiff(self._high, self._low) <= self.tolerance).view(np.uint8)
        # and their neighbours: anti-aliased text blends into the moving image at its edges, so only
        # its core stays fixed
        return cv2.dilate(fixed, np.ones((3, 3), np.uint8)).view(bool)


class StillFurniture:
    """The fixed furniture of screenshots taken on one workstation, learnt from the stills themselves.

    A still has no live frames before it, but a set of screenshots of the same screen does the same job:
    the text, depth scale and orientation mark sit on the same pixels in every one, while the anatomy and
    the calipers move from patient to patient. So each image size gets a :class:`FixedPixels` fed with
    every still of that size; with fewer than ``min_stills`` of a size there is nothing to learn and
    ``mask`` is None (the finder then searches the whole image, as before).
    """

    def __init__(self, min_stills: int = 5) -> None:
        self.min_stills = int(min_stills)
        self._by_size: dict[tuple[int, int], FixedPixels] = {}
        # Each size's mask, made once: every still of a run asks for it, and it only changes with ``add``.
        self._masks: dict[tuple[int, int], np.ndarray | None] = {}

    def add(self, frame: np.ndarray) -> None:
        key = frame.shape[:2]
        self._by_size.setdefault(key, FixedPixels(min_frames=self.min_stills)).update(frame)
        self._masks.pop(key, None)

    def stills(self, frame: np.ndarray) -> int:
        """How many stills of this frame's size were seen."""
        fixed = self._by_size.get(frame.shape[:2])
        return fixed.frames if fixed is not None else 0

    def mask(self, frame: np.ndarray) -> np.ndarray | None:
        """Bool mask of the furniture for a frame of this size, or None when too few stills of it were seen."""
        key = frame.shape[:2]
        if key not in self._masks:
            fixed = self._by_size.get(key)
            self._masks[key] = fixed.mask if fixed is not None else None
        return self._masks[key]


class CaliperFinder:
    """Finds caliper marks on a pane and the nodule box they give. Pure: no state between calls.

    ``min_contrast``: grey levels by which a mark's weakest arm must exceed the brightest speckle
    between its arms; ``margin``: fraction of the extent added on each side of the box.
    """

    def __init__(self, min_contrast: float = 70.0, margin: float = DEFAULT_MARGIN, edge: int = 6,
                 max_marks: int = 8) -> None:
        if not (math.isfinite(min_contrast) and min_contrast > 0):
            raise InputError(f"caliper contrast {min_contrast} must be a positive number of grey levels")
        if not (math.isfinite(margin) and 0 <= margin <= 2):
            raise InputError(f"caliper margin {margin} must be between 0 and 2 (a fraction of the extent)")
        self.min_contrast = float(min_contrast)
        self.margin = float(margin)
        self.edge = int(edge)
        self.max_marks = int(max_marks)

    def find(self, frame: np.ndarray, pane: Roi | None = None, fixed: np.ndarray | None = None) -> CaliperFinding:
        """Marks inside ``pane`` (default: the whole frame) of a uint8 grey or BGR ``frame``.

        ``fixed``: bool mask the size of the pane, True on the screen's furniture (see :class:`FixedPixels`).
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise InputError(f"caliper search needs a uint8 grey or BGR image; got "
                             f"{getattr(frame, 'dtype', type(frame).__name__)} of shape {getattr(frame, 'shape', None)}")
        height, width = frame.shape[:2]
        x, y, w, h = pane if pane is not None else (0, 0, width, height)
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise InputError(f"caliper pane {[x, y, w, h]} is outside the {width}x{height} frame")
        region = frame[y:y + h, x:x + w]
        if fixed is not None and fixed.shape != (h, w):
            raise InputError(f"fixed-pixel mask is {fixed.shape}; expected the pane's {h}x{w}")
        marks: list[CaliperMark] = []
        for channel in _channels(region):
            marks.extend(self._marks(channel, fixed))
        marks = _suppress(marks, self.max_marks)
        marks = [CaliperMark(m.x + x, m.y + y, m.shape, m.size, m.contrast) for m in marks]
        derived = box_from_marks([(m.x, m.y) for m in marks], self.margin, (x, y, w, h))
        box, extent = derived if derived else (None, None)
        return CaliperFinding(tuple(marks), box, extent)

    def _marks(self, image: np.ndarray, fixed: np.ndarray | None) -> list[CaliperMark]:
        pad = _REACH
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE).astype(np.int16)
        h, w = image.shape
        found: list[CaliperMark] = []
        for shape, arms, between in ((PLUS, _AXIAL, _DIAGONAL), (CROSS, _DIAGONAL, _AXIAL)):
            score = self._probe(padded, arms, between, h, w)
            ys, xs = np.nonzero(score >= self.min_contrast)
            if len(xs) == 0:
                continue
            if len(xs) > 4000:   # a textured region lit everything: keep the strongest candidates
                keep = np.argpartition(-score[ys, xs], 4000)[:4000]
                ys, xs = ys[keep], xs[keep]
            for cx, cy, size, contrast in self._refine(padded, xs, ys, arms, between):
                if min(cx, cy, w - 1 - cx, h - 1 - cy) < self.edge + size // 2:
                    continue   # touches the pane edge: depth ticks and frame lines live there
                if fixed is not None and _on_furniture(fixed, cx, cy, size, arms):
                    continue
                found.append(CaliperMark(int(cx), int(cy), shape, int(size), float(contrast)))
        return found

    @staticmethod
    def _probe(padded: np.ndarray, arms: Sequence[tuple[int, int]], between: Sequence[tuple[int, int]],
               h: int, w: int) -> np.ndarray:
        """min(arm pixels) - mean(between pixels) at radius PROBE_RADIUS for every pixel of the region."""
        p, r = _REACH, PROBE_RADIUS

        def at(dx: int, dy: int) -> np.ndarray:
            return padded[p + dy * r:p + dy * r + h, p + dx * r:p + dx * r + w]

        low = at(*arms[0]).copy()
        for d in arms[1:]:
            np.minimum(low, at(*d), out=low)
        total = at(*between[0]).copy()
        for d in between[1:]:
            total += at(*d)
        # the mean between the arms, not the max: one bright speckle grain must not hide a mark here
        # (the refinement is strict)
        return low - total // 4

    def _refine(self, padded: np.ndarray, xs: np.ndarray, ys: np.ndarray, arms: Sequence[tuple[int, int]],
                between: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, float]]:
        """Per candidate: best (radius, hole) whose four arms beat the between-arm speckle by
        ``min_contrast`` and then end; returns (x, y, size, contrast) of the accepted ones."""
        k = np.arange(1, _REACH + 1)
        cy, cx = ys + _REACH, xs + _REACH

        def profiles(dirs: Sequence[tuple[int, int]]) -> np.ndarray:   # [N, 4, REACH]
            return np.stack([padded[cy[:, None] + dy * k, cx[:, None] + dx * k] for dx, dy in dirs], axis=1)

        on = profiles(arms)
        off = profiles(between).astype(np.float32)
        best = np.full(len(xs), -np.inf, dtype=np.float32)
        best_radius = np.zeros(len(xs), dtype=np.int32)
        for radius in range(PROBE_RADIUS, MAX_RADIUS + 1):
            bg = off[:, :, 1:radius].mean(axis=2).max(axis=1)   # between the arms, radius 2..r
            tip = on[:, :, radius + 1:radius + 4].astype(np.float32).mean(axis=2).max(axis=1)
            # the weakest pixel of all four arms (a stroke is solid; speckle is not), over the hole sizes
            # that leave each arm at least two pixels
            arm = np.max([on[:, :, hole:radius].min(axis=(1, 2)) for hole in range(min(MAX_HOLE, radius - 2) + 1)],
                         axis=0).astype(np.float32)
            contrast = arm - bg
            valid = (tip <= arm - contrast / 2) & (contrast >= self.min_contrast)
            # the largest radius that still holds its contrast: a bigger mark also passes at smaller radii
            take = valid & (contrast >= 0.8 * best)
            best = np.where(take, np.maximum(contrast, np.where(np.isfinite(best), best, contrast)), best)
            best_radius = np.where(take, radius, best_radius)
        ok = best >= self.min_contrast
        return [(int(x), int(y), int(2 * r + 1), float(c))
                for x, y, r, c in zip(xs[ok], ys[ok], best_radius[ok], best[ok])]


def _channels(region: np.ndarray) -> list[np.ndarray]:
    """White marks show on the brightest channel; coloured ones on chroma, where grey speckle is 0."""
    if region.ndim == 2 or region.shape[2] == 1:
        return [np.ascontiguousarray(region.reshape(region.shape[:2]))]
    brightest = _brightest(region)
    b, g, r = cv2.split(region)
    chroma = cv2.subtract(brightest, cv2.min(cv2.min(b, g), r))
    _, peak, _, _ = cv2.minMaxLoc(chroma)
    return [brightest, chroma] if peak >= 60 else [brightest]


def _brightest(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return np.ascontiguousarray(pixels)
    b, g, r = cv2.split(pixels)
    return cv2.max(cv2.max(b, g), r)


def _on_furniture(fixed: np.ndarray, x: int, y: int, size: int, arms: Sequence[tuple[int, int]]) -> bool:
    """Most of the mark's arm pixels were fixed while the image was live: screen furniture."""
    h, w = fixed.shape
    radius = size // 2
    hits = total = 0
    for dx, dy in arms:
        for k in range(1, radius + 1):
            px, py = x + dx * k, y + dy * k
            if 0 <= px < w and 0 <= py < h:
                total += 1
                hits += bool(fixed[py, px])
    return total > 0 and hits * 2 > total


def _suppress(marks: list[CaliperMark], limit: int) -> list[CaliperMark]:
    """Strongest mark per neighbourhood (one mark lights up its neighbours and both shape probes)."""
    kept: list[CaliperMark] = []
    for mark in sorted(marks, key=lambda m: -m.contrast):
        if all(max(abs(mark.x - k.x), abs(mark.y - k.y)) > max(mark.size, k.size) for k in kept):
            kept.append(mark)
        if len(kept) == limit:
            break
    return sorted(kept, key=lambda m: (m.y, m.x))


def draw_mark(image: np.ndarray, x: int, y: int, shape: str = PLUS, size: int = 11,
              colour: tuple[int, int, int] | int = (255, 255, 255), hollow: int = 0, thickness: int = 1) -> None:
    """Draw a caliper mark in place, as workstations do: two 1-2 px strokes, ``hollow`` px left empty
    around the centre. Used by the overlay to show the marks found, and by tests to compose frames."""
    if shape not in (PLUS, CROSS):
        raise InputError(f"caliper shape {shape!r}; expected {PLUS!r} or {CROSS!r}")
    radius = size // 2
    dirs = _AXIAL if shape == PLUS else _DIAGONAL
    colour_arg = colour if image.ndim == 3 and not isinstance(colour, int) else (
        colour if isinstance(colour, int) else int(max(colour)))
    for dx, dy in dirs:
        start = (x + dx * (hollow + 1) if hollow else x, y + dy * (hollow + 1) if hollow else y)
        cv2.line(image, start, (x + dx * radius, y + dy * radius), colour_arg, thickness, cv2.LINE_8)
