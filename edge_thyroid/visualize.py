"""Overlays (OpenCV only): a CAM upsampled to its pane and blended over the frame, the nodule box with
where it came from, and the decision on a band of its own below the screen."""

from __future__ import annotations

import cv2
import numpy as np

from .engine import Prediction


def cam_to_heat(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upsample a CAM to (height, width) and scale it to [0, 1] (positive evidence only)."""
    positive = np.maximum(cam.astype(np.float32), 0)
    peak = float(positive.max())
    scaled = positive / peak if peak > 0 else positive
    return cv2.resize(scaled, (width, height), interpolation=cv2.INTER_LINEAR)


def overlay_prediction(frame: np.ndarray, prediction: Prediction, alpha: float = 0.4, label: bool = True) -> np.ndarray:
    """A copy of ``frame`` with each pane's CAM blended in and (``label``) the result written on top."""
    canvas = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    # A model without a CAM gets its panes outlined and labelled, never a made-up heatmap.
    has_cam = prediction.head is None or prediction.head.has_cam
    for pane in prediction.panes:
        x, y, w, h = pane.roi
        if has_cam:
            heat = cam_to_heat(prediction.cam(pane.modality), w, h)
            colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            region = canvas[y : y + h, x : x + w]
            weight = (alpha * heat)[:, :, None]
            canvas[y : y + h, x : x + w] = (region * (1 - weight) + colored * weight).astype(np.uint8)
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1)
        cv2.putText(canvas, pane.modality, (x + 4, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if label:
        text = f"{prediction.decision} p={prediction.probability:.2f} (thr {prediction.threshold:.2f})"
        color = (0, 0, 255) if prediction.malignant else (0, 200, 0)
        if not has_cam:
            text += " (no CAM for this model)"
        if prediction.familiarity is not None and not prediction.familiarity.familiar:
            text += " UNFAMILIAR IMAGE"
        cv2.putText(canvas, text, (8, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2, cv2.LINE_AA)
    return canvas


BOX_COLOURS = {"layout": (255, 255, 255), "control": (255, 200, 0), "calipers": (0, 255, 255),
               "tracked": (0, 200, 255), "whole_pane": (160, 160, 160)}


def draw_nodule_box(canvas: np.ndarray, roi: tuple[int, int, int, int], source: str | None,
                    marks: list[dict] | None = None) -> None:
    """The box the model classified, labelled with its source; the caliper marks it came from, in place."""
    from .calipers import draw_mark

    x, y, w, h = roi
    colour = BOX_COLOURS.get(source or "", (255, 255, 255))
    thickness = max(2, round(canvas.shape[0] / 400))
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), colour, thickness)
    label = f"nodule: {source}" if source else "nodule"
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    top = y - th - base - 4 if y - th - base - 4 >= 0 else y + 2
    cv2.rectangle(canvas, (x, top), (x + tw + 6, top + th + base + 4), colour, -1)
    cv2.putText(canvas, label, (x + 3, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for mark in marks or ():
        draw_mark(canvas, int(mark["x"]), int(mark["y"]), mark["shape"], int(mark["size"]) + 4, (255, 0, 255))


def with_decision_band(canvas: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """``canvas`` with a solid band added below it carrying ``text`` in large letters: added, not drawn
    over, so the workstation's own banner and measurements stay visible."""
    height, width = canvas.shape[:2]
    band_height = max(48, round(height * 0.12))
    band = np.zeros((band_height, width, 3), np.uint8)
    band[:] = (32, 32, 32)
    scale = band_height / 48
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(2, round(2 * scale)))
    if tw > width - 20:   # a narrow screen: shrink the text to fit the band
        scale *= (width - 20) / tw
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(2 * scale)))
    cv2.putText(band, text, (10, (band_height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                max(1, round(2 * scale)), cv2.LINE_AA)
    return np.vstack([canvas, band])
