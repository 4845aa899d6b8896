"""Sonographic descriptors of a nodule, measured from a grayscale crop and its mask: auxiliary targets.

TI-RADS scores a nodule by what a sonographer reads off the image: composition (cystic / solid),
echogenicity against the surrounding thyroid, echogenic foci, shape (taller than wide) and margin. Each
has a crude pixel proxy once the nodule's mask is known; regressing those proxies from the pooled
features (export/guidance.py ``aux_descriptors``, dropped at export) asks the backbone to encode the
properties the label is built from, and DDTI's unlabelled crops, which have masks but no label, can
teach it too.

The proxies are measured on the *augmented* view the network sees (after box, scanner look and marks),
so a target never describes pixels the model was not shown. Every function here is pure NumPy/OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

DESCRIPTOR_NAMES = (
    "anechoic_fraction",   # composition: share of the nodule darker than 0.35x the surrounding tissue
    "log_echogenicity",    # log(mean inside / median of a ring around the nodule)
    "bright_fraction",     # echogenic foci: share brighter than 1.6x the surrounding tissue
    "heterogeneity",       # std inside / surrounding tissue
    "log_taller_than_wide",  # log(height / width) of the mask's bounding box
    "log_compactness",     # log(perimeter^2 / (4 pi area)): 0 for a disc, larger for lobulated margins
    "solidity",            # area / convex hull area: low for irregular margins
    "edge_contrast",       # mean gradient magnitude on the mask's border / surrounding tissue
)
MIN_MASK_PIXELS = 16


def ring_around(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the mask but outside it (the tissue the nodule is compared with)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask


def nodule_descriptors(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The descriptors (DESCRIPTOR_NAMES order, float64) of a grayscale image's masked nodule, or None
    when the mask has fewer than MIN_MASK_PIXELS pixels or no surrounding tissue is visible."""
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 2 or image.shape != mask.shape:
        raise ValueError(f"expected a 2-D image and a mask of the same shape, got {image.shape} and {mask.shape}")
    if int(mask.sum()) < MIN_MASK_PIXELS:
        return None
    pixels = image.astype(np.float64)
    ys, xs = np.nonzero(mask)
    height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    ring = ring_around(mask, max(2, int(round(0.1 * (height + width) / 2))))
    if not ring.any():
        return None
    inside = pixels[mask]
    reference = float(np.median(pixels[ring])) + 1.0  # +1: a black surround must not divide by zero
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour) + 1.0
    perimeter = cv2.arcLength(contour, True)
    hull_area = cv2.contourArea(cv2.convexHull(contour)) + 1.0
    gx = cv2.Sobel(pixels, cv2.CV_64F, 1, 0)
    gy = cv2.Sobel(pixels, cv2.CV_64F, 0, 1)
    square = np.ones((3, 3), np.uint8)
    border = (cv2.dilate(mask.astype(np.uint8), square) > 0) & ~(cv2.erode(mask.astype(np.uint8), square) > 0)
    return np.array([
        float(np.mean(inside < 0.35 * reference)),
        float(np.log((inside.mean() + 1.0) / reference)),
        float(np.mean(inside > 1.6 * reference)),
        float(inside.std() / reference),
        float(np.log(height / width)),
        float(np.log(max(perimeter, 1.0) ** 2 / (4 * np.pi * area))),
        float(min(1.0, area / hull_area)),
        float(np.hypot(gx, gy)[border].mean() / reference),
    ])


def descriptor_table(images, masks) -> np.ndarray:
    """The descriptors of every crop (N x len(DESCRIPTOR_NAMES), float64); a NaN row where the mask is not
    usable (see :func:`nodule_descriptors`)."""
    table = np.full((len(images), len(DESCRIPTOR_NAMES)), np.nan)
    for row, (image, mask) in enumerate(zip(images, masks)):
        values = nodule_descriptors(image, mask)
        if values is not None:
            table[row] = values
    return table


def descriptor_scale(images, masks) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each descriptor over crops with a usable mask (the targets are
    standardised with these, so every descriptor weighs alike in the loss)."""
    table = descriptor_table(images, masks)
    table = table[np.isfinite(table).all(1)]
    if len(table) < 2:
        raise ValueError(f"need at least 2 crops with a usable mask to scale the descriptors, got {len(table)}")
    return table.mean(0), table.std(0) + 1e-6


def standardised(values: np.ndarray | None, mean: np.ndarray, sd: np.ndarray, clip: float = 4.0) -> np.ndarray:
    """(values - mean) / sd clipped to +-clip, float32; NaNs (no usable mask) when values is None."""
    if values is None:
        return np.full(len(mean), np.nan, np.float32)
    return np.clip((values - mean) / sd, -clip, clip).astype(np.float32)
