"""Heatmap overlays: a CAM upsampled to its pane and blended over the frame (OpenCV only)."""

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


def overlay_prediction(frame: np.ndarray, prediction: Prediction, alpha: float = 0.4) -> np.ndarray:
    """A copy of ``frame`` with each pane's CAM blended in and the result written on top."""
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
    label = f"{prediction.decision} p={prediction.probability:.2f} (thr {prediction.threshold:.2f})"
    color = (0, 0, 255) if prediction.malignant else (0, 200, 0)
    if not has_cam:
        label += " (no CAM for this model)"
    cv2.putText(canvas, label, (8, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2, cv2.LINE_AA)
    return canvas
