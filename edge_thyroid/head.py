"""The linear fusion head in NumPy: per-modality pooled features -> logit, probability, CAMs.

logit = bias + sum over present modalities m of (w_m . f_m + u_m)

where f_m is modality m's globally averaged feature vector, w_m its weight block and u_m its presence
bias. Missing modalities contribute nothing (masked, not imagined). Because the head is linear over
pooled features, the class activation map of modality m is exact:
CAM_m(y, x) = sum_k w_m[k] * A_m[k, y, x], and its mean over (y, x) is w_m . f_m.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError, InputError


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class HeadOutput:
    logit: float
    probability: float
    contributions: dict[str, float]  # per present modality: w_m . f_m + u_m


@dataclass(frozen=True)
class FusionHead:
    modalities: tuple[str, ...]
    weight: np.ndarray          # [M, C]
    presence_bias: np.ndarray   # [M]
    bias: float

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def load(cls, path: str | Path, modalities: Sequence[str]) -> "FusionHead":
        try:
            with np.load(path, allow_pickle=False) as data:
                weight, presence, bias = data["weight"], data["presence_bias"], data["bias"]
        except Exception as exc:  # corrupt npz bytes raise BadZipFile, NotImplementedError, SyntaxError, ... from numpy/zipfile
            raise BundleError(f"head weights {path} are unreadable ({type(exc).__name__}: {str(exc)[:120]}); "
                              "expected an .npz with weight, presence_bias, bias") from None
        if weight.ndim != 2 or weight.shape[0] != len(modalities) or presence.shape != (len(modalities),):
            raise BundleError(f"head weights {path} have shapes weight={weight.shape}, presence_bias={presence.shape}; "
                              f"expected ({len(modalities)}, C) and ({len(modalities)},) for modalities {list(modalities)}")
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(presence)) and np.isfinite(bias)):
            raise BundleError(f"head weights {path} contain NaN or infinity")
        return cls(tuple(modalities), weight.astype(np.float64), presence.astype(np.float64), float(bias))

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, weight=self.weight, presence_bias=self.presence_bias, bias=np.float64(self.bias))

    def modality_index(self, modality: str) -> int:
        try:
            return self.modalities.index(modality)
        except ValueError:
            raise InputError(f"unknown modality {modality!r}; this model knows {list(self.modalities)}") from None

    def predict(self, pooled: Mapping[str, np.ndarray]) -> HeadOutput:
        """``pooled``: modality -> pooled feature vector [C] for each present pane."""
        if not pooled:
            raise InputError("no panes given; expected at least one of " + ", ".join(self.modalities))
        contributions = {}
        for modality, features in pooled.items():
            index = self.modality_index(modality)
            vector = np.asarray(features, dtype=np.float64).reshape(-1)
            if vector.shape[0] != self.channels:
                raise InputError(f"{modality} features have {vector.shape[0]} channels; expected {self.channels}")
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, as one error
                contributions[modality] = float(self.weight[index] @ vector + self.presence_bias[index])
        logit = self.bias + sum(contributions.values())
        if not math.isfinite(logit):
            # NaN compares false with the threshold and would silently read as "benign".
            raise InputError(f"the head's logit is {logit} (per modality {contributions}); the features or head "
                             "weights overflow, so no decision is made")
        return HeadOutput(logit, sigmoid(logit), contributions)

    def cam(self, modality: str, feature_maps: np.ndarray) -> np.ndarray:
        """Exact class activation map [h, w] of one pane from its feature maps [C, h, w]."""
        weights = self.weight[self.modality_index(modality)]
        return np.tensordot(weights, np.asarray(feature_maps, dtype=np.float64), axes=(0, 0))


def pool(feature_maps: np.ndarray) -> np.ndarray:
    """Global average pooling: [..., C, h, w] -> [..., C]."""
    return feature_maps.mean(axis=(-2, -1))
