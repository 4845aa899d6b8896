"""How an imported classifier's class scores become p(malignant): the NumPy head that reproduces it,
the malignant class set, and the record of both for the model card. Shared by the torchvision and
ONNX importers; torch-free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_thyroid.errors import InputError
from edge_thyroid.head import ClassMap, FusionHead


def class_scores_head(modality: str, weight: np.ndarray, bias: np.ndarray, malignant: tuple[int, ...],
                      cam_mode: str) -> FusionHead:
    """The NumPy head for scores = weight @ features + bias ([K, C], [K]) with ``malignant`` classes:
    1 output -> that logit; 2 -> the malignant minus the other row (softmax of two is the sigmoid of the
    difference, exactly); N -> a ClassMap."""
    num_outputs, channels = weight.shape
    presence = np.zeros(1)
    if num_outputs == 1:
        return FusionHead((modality,), weight.reshape(1, channels), presence, float(bias[0]), cam_mode=cam_mode)
    if num_outputs == 2:
        other = 1 - malignant[0]
        return FusionHead((modality,), (weight[malignant[0]] - weight[other]).reshape(1, channels), presence,
                          float(bias[malignant[0]] - bias[other]), cam_mode=cam_mode)
    mask = np.zeros(num_outputs, dtype=bool)
    mask[list(malignant)] = True
    return FusionHead((modality,), np.zeros((1, channels)), presence, 0.0,
                      classes=ClassMap(weight.astype(np.float64), bias.astype(np.float64), mask), cam_mode=cam_mode)


def outputs_record(num_outputs: int, malignant: tuple[int, ...]) -> dict:
    kind = "sigmoid" if num_outputs == 1 else "softmax"
    return {"count": num_outputs, "activation": kind,
            "malignant": "the logit" if num_outputs == 1 else list(malignant)}


def malignant_set(num_outputs: int, malignant: Sequence[int] | None, source: str) -> tuple[int, ...]:
    if num_outputs == 1:
        if malignant and tuple(malignant) != (0,):
            raise InputError(f"{source}: the classifier has 1 output (a logit); --malignant-index {list(malignant)} "
                             "does not apply (expected none, or 0)")
        return (0,)
    if malignant is None:
        if num_outputs == 2:
            return (1,)
        raise InputError(f"{source}: the classifier has {num_outputs} classes; name the malignant ones with "
                         f"--malignant-index (e.g. --malignant-index 3,4), indices in 0..{num_outputs - 1}")
    chosen = tuple(sorted(set(int(i) for i in malignant)))
    if not chosen or any(not 0 <= i < num_outputs for i in chosen) or len(chosen) == num_outputs:
        raise InputError(f"{source}: --malignant-index {list(malignant)} for {num_outputs} classes; expected "
                         f"distinct indices in 0..{num_outputs - 1}, leaving at least one class benign")
    if num_outputs == 2 and len(chosen) != 1:
        raise InputError(f"{source}: 2 classes need one malignant index (0 or 1), got {list(malignant)}")
    return chosen
