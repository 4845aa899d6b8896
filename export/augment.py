"""Training-time inputs that look like what the workstation will hand the model.

Small pure functions on uint8 grayscale arrays (H x W) and boolean masks, each checked on small arrays in
tests/test_augment.py. Three families:

* **Nodule boxes.** At run time the model sees an operator's box or a box derived from calipers, of
  unknown tightness. :func:`sample_box` draws such a box around the mask's bounding box (margin 1.1x-2.5x
  the nodule's size, random shift); :func:`box_at_margin` is the fixed-margin box used for evaluation.
* **Scanner look.** Depth gain (TGC), overall gain, gamma, speckle, blur, down/up-sampling and JPEG
  re-compression: other scanners, presets and capture paths.
* **Burned-in marks.** Calipers ('+' / 'x', filled or hollow, white or coloured then grey-converted)
  at the nodule's extreme points, text and rulers, drawn on crops of *both* classes with the same
  probability, so a mark can never be a shortcut to the label.
* **Synthetic cysts.** A simple anechoic cyst is benign in every guideline (TI-RADS 1-2), but DDTI
  holds a single one among its labelled crops, so a model trained on it has no reason to know.
  :func:`synthetic_cyst` turns a crop's nodule into one: a smooth oval of fluid (near-black, a faint
  grain), a thin bright wall and the brighter band of posterior acoustic enhancement below it, drawn
  into the crop's own tissue.

Vertical flips are never used: depth is physical (see export/train.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in pixels


# -- boxes ----------------------------------------------------------------------------------------------

def mask_bbox(mask: np.ndarray) -> Box | None:
    """Tight bounding box of a boolean mask, or None when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1


def clip_box(cx: float, cy: float, w: float, h: float, shape: tuple[int, int], min_size: int = 8) -> Box:
    """A box of size w x h centred at (cx, cy), cut to the image (as the runtime cuts an ROI to its pane)."""
    height, width = shape[:2]
    x0 = int(round(max(0.0, cx - w / 2)))
    y0 = int(round(max(0.0, cy - h / 2)))
    x1 = int(round(min(float(width), cx + w / 2)))
    y1 = int(round(min(float(height), cy + h / 2)))
    # Never collapse below min_size: a box squeezed against an edge keeps a usable crop.
    if x1 - x0 < min_size:
        x0, x1 = max(0, min(x0, width - min_size)), min(width, max(x1, min_size))
    if y1 - y0 < min_size:
        y0, y1 = max(0, min(y0, height - min_size)), min(height, max(y1, min_size))
    return x0, y0, x1 - x0, y1 - y0


def box_at_margin(bbox: Box, margin: float, shape: tuple[int, int]) -> Box:
    """The nodule's bounding box grown ``margin`` times about its centre, cut to the image."""
    x, y, w, h = bbox
    return clip_box(x + w / 2, y + h / 2, w * margin, h * margin, shape)


def sample_box(bbox: Box, shape: tuple[int, int], rng: np.random.Generator,
               margin: tuple[float, float] = (1.1, 2.5), shift: float = 0.15, aspect: float = 0.15) -> Box:
    """A random operator/caliper box around the nodule.

    Each side is the nodule's size times a margin drawn from ``margin`` (with a little aspect jitter);
    the centre moves by up to ``shift`` of the box size, but never so far that the nodule's centre leaves
    the box.
    """
    x, y, w, h = bbox
    m = rng.uniform(*margin)
    jitter = math.exp(rng.uniform(-aspect, aspect))
    bw, bh = w * m * jitter, h * m / jitter
    cx = x + w / 2 + rng.uniform(-shift, shift) * bw
    cy = y + h / 2 + rng.uniform(-shift, shift) * bh
    return clip_box(cx, cy, bw, bh, shape)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return array[y:y + h, x:x + w]


# -- scanner look ---------------------------------------------------------------------------------------

def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def depth_gain(image: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """Time-gain compensation: multiply each row by a gain that goes linearly from ``top`` to ``bottom``."""
    ramp = np.linspace(top, bottom, image.shape[0], dtype=np.float32)[:, None]
    return _to_uint8(image.astype(np.float32) * ramp)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    lut = _to_uint8(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** g)
    return cv2.LUT(image, lut)


def speckle(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise (the statistics of coherent speckle), smoothed to a few pixels' grain."""
    noise = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8) * 1.6  # keep roughly sigma after the blur
    return _to_uint8(image.astype(np.float32) * (1.0 + noise))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image.copy()


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Down-sample by ``factor`` (< 1) and back up: a coarser scanner or a smaller capture."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(2, round(w * factor)), max(2, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


def scanner_look(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                 gamma_log_range: float = 0.3) -> np.ndarray:
    """A random draw of the scanner-look perturbations, each applied with its own probability; gamma is
    drawn as exp(U(-r, r) * strength), r = ``gamma_log_range`` (0.3: 0.74-1.35)."""
    out = image
    if rng.random() < 0.5:
        top = 1.0 + rng.uniform(-0.3, 0.3) * strength
        out = depth_gain(out, top, top + rng.uniform(-0.4, 0.4) * strength)
    if rng.random() < 0.8:
        out = _to_uint8(out.astype(np.float32) * (1.0 + rng.uniform(-0.25, 0.25) * strength))
    if rng.random() < 0.8:
        out = gamma(out, math.exp(rng.uniform(-gamma_log_range, gamma_log_range) * strength))
    if rng.random() < 0.3:
        out = resample(out, 1.0 - rng.uniform(0.2, 0.6) * strength)
    if rng.random() < 0.3:
        out = blur(out, rng.uniform(0.3, 1.2) * strength)
    if rng.random() < 0.6:
        out = speckle(out, rng.uniform(0.02, 0.12) * strength, rng)
    if rng.random() < 0.4:
        out = jpeg(out, int(rng.integers(35, 95)))
    return out


# -- burned-in marks ------------------------------------------------------------------------------------

def mask_extremes(mask: np.ndarray) -> dict[str, tuple[int, int]]:
    """The left-, right-, top- and bottom-most mask pixels (x, y): where sonographers put calipers."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask is empty: no extreme points")
    pick = lambda i: (int(xs[i]), int(ys[i]))  # noqa: E731
    return {"left": pick(xs.argmin()), "right": pick(xs.argmax()),
            "top": pick(ys.argmin()), "bottom": pick(ys.argmax())}


def draw_caliper(image: np.ndarray, centre: tuple[int, int], size: int, shape: str, value: int,
                 thickness: int = 1, hollow: bool = False) -> np.ndarray:
    """Draw one caliper mark ('+' or 'x') of ``size`` px in place; ``hollow`` leaves the centre open."""
    if shape not in ("+", "x"):
        raise ValueError(f"caliper shape must be '+' or 'x', got {shape!r}")
    cx, cy = centre
    r = size // 2
    gap = max(1, size // 5) if hollow else 0
    if shape == "+":
        arms = [((cx - r, cy), (cx - gap, cy)), ((cx + gap, cy), (cx + r, cy)),
                ((cx, cy - r), (cx, cy - gap)), ((cx, cy + gap), (cx, cy + r))]
    else:
        arms = [((cx - r, cy - r), (cx - gap, cy - gap)), ((cx + gap, cy + gap), (cx + r, cy + r)),
                ((cx - r, cy + r), (cx - gap, cy + gap)), ((cx + gap, cy - gap), (cx + r, cy - r))]
    for a, b in arms:
        cv2.line(image, a, b, int(value), thickness, lineType=cv2.LINE_8)
    return image


def draw_calipers(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Calipers at the nodule's extreme points: one axis (2 marks) or both (4), one random style."""
    if not mask.any():
        return image
    out = image.copy()
    points = mask_extremes(mask)
    axes = [("left", "right"), ("top", "bottom")]
    chosen = axes if rng.random() < 0.5 else [axes[int(rng.integers(2))]]
    shape = "+" if rng.random() < 0.6 else "x"
    size = int(rng.integers(7, 16))
    # Coloured calipers (yellow, green, cyan) come out as mid-to-bright grey once the frame is grey.
    value = int(rng.choice([255, 230, 200, 170]))
    hollow = bool(rng.random() < 0.5)
    for axis in chosen:
        for name in axis:
            draw_caliper(out, points[name], size, shape, value, thickness=int(rng.integers(1, 3)), hollow=hollow)
    return out


def draw_text(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A short burned-in annotation (depth, gain, a label) somewhere on the image."""
    out = image.copy()
    h, w = out.shape[:2]
    text = str(rng.choice(["D 4.0cm", "G 52", "THY", "RT LOBE", "L", "TRANS", "1.23 cm", "SAG", "Dist 0.9cm"]))
    scale = float(rng.uniform(0.3, 0.6))
    org = (int(rng.integers(0, max(1, w - 60))), int(rng.integers(12, max(13, h))))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, int(rng.choice([255, 220, 180])), 1, cv2.LINE_AA)
    return out


def draw_ruler(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A depth scale: a column of tick marks near the left or right edge."""
    out = image.copy()
    h, w = out.shape[:2]
    x = int(rng.integers(1, 8)) if rng.random() < 0.5 else w - int(rng.integers(2, 9))
    step = int(rng.integers(8, 25))
    value = int(rng.choice([255, 200]))
    for i, y in enumerate(range(int(rng.integers(0, step)), h, step)):
        length = 5 if i % 5 == 0 else 2
        x1 = min(w - 1, x + length) if x < w // 2 else max(0, x - length)
        cv2.line(out, (x, y), (x1, y), value, 1)
    return out


def burn_in_marks(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  p_calipers: float = 0.4, p_text: float = 0.3, p_ruler: float = 0.2) -> np.ndarray:
    """Each kind of mark with its own probability, independent of the label."""
    out = image
    if rng.random() < p_calipers:
        out = draw_calipers(out, mask, rng)
    if rng.random() < p_text:
        out = draw_text(out, rng)
    if rng.random() < p_ruler:
        out = draw_ruler(out, rng)
    return out


# -- geometry shared by image and mask ------------------------------------------------------------------

def small_affine(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The same small rotation/scale/shift of the image and its mask."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10) * strength,
                                     1.0 + rng.uniform(-0.1, 0.1) * strength)
    matrix[:, 2] += rng.uniform(-0.05, 0.05, size=2) * strength * (w, h)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT) > 0
    return out, out_mask


# -- synthetic cysts ------------------------------------------------------------------------------------

def cyst_outline(mask: np.ndarray) -> np.ndarray | None:
    """The filled ellipse fitted to the mask's largest outline (a cyst's smooth oval of about the nodule's
    size and orientation), or None when the mask has under 16 pixels or too few outline points."""
    mask = np.asarray(mask, dtype=bool)
    if int(mask.sum()) < 16:
        return None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    if len(contour) < 5:
        return None
    (cx, cy), (a, b), angle = cv2.fitEllipse(contour)
    out = np.zeros(mask.shape, np.uint8)
    cv2.ellipse(out, ((cx, cy), (max(a, 3.0), max(b, 3.0)), angle), 1, thickness=-1)
    return out > 0


def synthetic_cyst(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """The crop with its nodule replaced by a simple anechoic cyst, and the cyst's mask; None when the
    mask is too small to fit an outline (see :func:`cyst_outline`).

    Fluid: level 2-18 with a faint grain; wall: +15-45 levels on a 1-2 px rim; posterior acoustic
    enhancement: the tissue below the cyst, as wide as the cyst, brightened by 20-60% fading over about
    the cyst's height. The outline is feathered (0.8-1.6 px) so no hard edge gives the synthesis away.
    """
    outline = cyst_outline(mask)
    if outline is None:
        return None
    pixels = image.astype(np.float32)
    h, w = image.shape
    rows_hit = np.flatnonzero(outline.any(axis=1))
    columns = outline.any(axis=0)
    # Posterior enhancement: each column under the cyst, from the cyst's lower edge down, with a gain that
    # fades with depth; the column profile follows the cyst's width so the band's sides are soft.
    width_profile = cv2.GaussianBlur(columns.astype(np.float32)[None, :], (0, 0), 4.0)[0]
    lower_edge = np.where(columns, h - 1 - np.argmax(outline[::-1], axis=0), h).astype(np.float32)
    depth = np.arange(h, dtype=np.float32)[:, None] - lower_edge[None, :]
    fade = max(4.0, int(rows_hit[-1] - rows_hit[0]) * rng.uniform(0.6, 1.2))  # a Python float keeps float32 math
    gain = rng.uniform(0.2, 0.6) * np.exp(-np.clip(depth, 0, None) / fade) * (depth > 0) * width_profile[None, :]
    pixels = pixels * (1.0 + gain)
    # Wall and fluid, blended through a feathered outline.
    soft = cv2.GaussianBlur(outline.astype(np.float32), (0, 0), rng.uniform(0.8, 1.6))
    rim = cv2.GaussianBlur((cv2.morphologyEx(outline.astype(np.uint8), cv2.MORPH_GRADIENT,
                                             np.ones((3, 3), np.uint8)) > 0).astype(np.float32),
                           (0, 0), rng.uniform(0.5, 1.0))
    pixels = pixels + rim / max(float(rim.max()), 1e-6) * rng.uniform(15, 45)
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 1.0)
    fluid = rng.uniform(2, 18) + grain * rng.uniform(1.0, 4.0)
    pixels = pixels * (1.0 - soft) + fluid * soft
    return _to_uint8(pixels), outline


def synthetic_spongiform(image: np.ndarray, mask: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """The crop with its nodule replaced by a spongiform one (many small cystic spaces in an isoechoic,
    smoothly outlined nodule: benign, TI-RADS 2, whatever else it shows), and its mask; None when the mask
    is too small to fit an outline (see :func:`cyst_outline`).

    Outline: the ellipse fitted to the mask (a smooth oval margin). Tissue inside: the crop's own texture
    shifted to the mean of a ring of tissue around it (isoechoic), plus 0-15 levels of brighter septa.
    Cystic spaces: small ellipses (radius 2.5-6% of the nodule's mean diameter, at least 1.2 px) placed at
    random inside until they cover 50-70% of it, the tissue between them left as thin septa; filled with
    fluid at level 8-30 with a grain, edges feathered (0.6-1.2 px); then speckle (gamma, sd 35%) and a
    0.7 px blur over the whole nodule, so at the model's resolution it reads as a honeycomb, not as holes. Outside the outline the crop is left alone but for the outline's 1 px
    feathering.
    """
    outline = cyst_outline(mask)
    if outline is None:
        return None
    pixels = image.astype(np.float32)
    h, w = image.shape
    area = int(outline.sum())
    ys, xs = np.nonzero(outline)
    diameter = float(np.sqrt(4.0 * area / np.pi))
    ring = (cv2.dilate(outline.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) & ~outline
    level = float(pixels[ring].mean()) if ring.any() else float(pixels.mean())
    tissue = pixels - float(pixels[outline].mean()) + level + rng.uniform(0.0, 15.0)
    spaces = np.zeros((h, w), np.uint8)
    target = rng.uniform(0.5, 0.7)
    for _ in range(3000):   # bounded: a nodule reaches its cover in tens to hundreds of spaces
        if (spaces[outline] > 0).mean() >= target:
            break
        k = int(rng.integers(len(ys)))
        radius = max(1.2, diameter * rng.uniform(0.025, 0.06))
        axes = (radius * rng.uniform(0.7, 1.3), radius * rng.uniform(0.7, 1.3))
        cv2.ellipse(spaces, ((float(xs[k]), float(ys[k])), (2 * axes[0], 2 * axes[1]), float(rng.uniform(0, 180))),
                    1, thickness=-1)
    spaces = spaces.astype(bool) & outline
    fluid = rng.uniform(8, 30) + cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 1.0) * 4.0
    soft_spaces = cv2.GaussianBlur(spaces.astype(np.float32), (0, 0), rng.uniform(0.6, 1.2))
    nodule = tissue * (1.0 - soft_spaces) + fluid * soft_spaces
    # The scanner's speckle and point spread over the whole nodule, fluid included, as over real tissue.
    nodule = cv2.GaussianBlur(nodule * rng.gamma(8.0, 1.0 / 8.0, (h, w)).astype(np.float32), (0, 0), 0.7)
    soft = cv2.GaussianBlur(outline.astype(np.float32), (0, 0), 1.0)
    return _to_uint8(pixels * (1.0 - soft) + nodule * soft), outline


# -- another crop's surroundings ------------------------------------------------------------------------

def _nodule_ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The band ``width`` px wide just outside the mask."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask


def swap_background(image: np.ndarray, mask: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """The crop's nodule and a ring of its own tissue on another crop's surroundings, and the nodule's
    (unchanged) mask; None when either mask is under 16 pixels or the crops differ in size.

    The donor is moved so its nodule's centre meets this one's (reflected at the edges), its own nodule
    inpainted, and its tissue scaled so the ring just outside this nodule keeps its mean brightness: a
    nodule's echogenicity is read against the tissue next to it (TI-RADS), so that stays, while the
    texture, structures and marks around it change. The kept region is the nodule grown by 10-25% of its
    diameter (at least 3 px: its margin and halo), blended in through a 1.5-3 px feather.
    """
    mask, donor_mask = np.asarray(mask, dtype=bool), np.asarray(donor_mask, dtype=bool)
    if image.shape != donor.shape or int(mask.sum()) < 16 or int(donor_mask.sum()) < 16:
        return None
    h, w = image.shape
    (cy, cx), (dy, dx) = (np.argwhere(m).mean(axis=0) for m in (mask, donor_mask))
    shift = np.float32([[1, 0, cx - dx], [0, 1, cy - dy]])
    ring_width = max(3, int(round(np.sqrt(4.0 * mask.sum() / np.pi) * rng.uniform(0.10, 0.25))))
    moved_mask = cv2.warpAffine(donor_mask.astype(np.uint8), shift, (w, h), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_REFLECT) > 0
    moved = cv2.warpAffine(donor, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # The donor's nodule (a little grown, so its margin goes too) filled from its surroundings.
    hole = cv2.dilate(moved_mask.astype(np.uint8), np.ones((7, 7), np.uint8))
    moved = cv2.inpaint(moved, hole, 5, cv2.INPAINT_TELEA).astype(np.float32)
    ring = _nodule_ring(mask, ring_width + 4) & ~_nodule_ring(mask, ring_width)   # just past the kept band
    if not ring.any():
        ring = ~mask
    moved *= float(image[ring].mean() + 1.0) / float(moved[ring].mean() + 1.0)
    keep = (mask | _nodule_ring(mask, ring_width)).astype(np.float32)
    soft = cv2.GaussianBlur(keep, (0, 0), rng.uniform(1.5, 3.0))
    return _to_uint8(image.astype(np.float32) * soft + moved * (1.0 - soft)), mask
