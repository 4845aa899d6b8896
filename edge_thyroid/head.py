"""The linear fusion head in NumPy: per-modality pooled features -> logit, probability, CAMs.

logit = bias + sum over present modalities m of (w_m . f_m + u_m)

where f_m is modality m's globally averaged feature vector, w_m its weight block and u_m its presence
bias. Missing modalities contribute nothing (masked, not imagined). Because the head is linear over
pooled features, the class activation map of modality m is exact:
CAM_m(y, x) = sum_k w_m[k] * A_m[k, y, x], and its mean over (y, x) is w_m . f_m.

An imported N-class classifier (one modality) keeps its own last layer as :class:`ClassMap`:
p(malignant) is the softmax mass of its malignant classes, and the logit is that probability's
log-odds. Its CAM is the map of the log-odds' gradient with respect to the pooled features (exact
for one logit or two classes, where the log-odds is linear). A head whose "feature maps" are a whole
model's class scores (1x1) has no CAM at all: ``cam_mode`` says which, and :meth:`FusionHead.cam`
refuses rather than draw a wrong heatmap.

A bundle with a backbone per modality (late fusion) may have branches of different widths: then
``modality_channels`` holds each modality's feature count C_m and row m of ``weight`` is zero past C_m.
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


# How a head's CAM relates to its decision (recorded in head.npz and the manifest's model card).
CAM_EXACT = "exact"          # linear over pooled features: the CAM averages to the modality's logit term
CAM_GRADIENT = "gradient"    # N-class softmax: the CAM of the malignant log-odds' gradient
CAM_NONE = "none"            # the features are a whole model's class scores: no spatial map exists
CAM_MODES = (CAM_EXACT, CAM_GRADIENT, CAM_NONE)


@dataclass(frozen=True)
class ClassMap:
    """An N-class last layer over one modality's pooled features; ``malignant`` marks the classes
    whose softmax mass is p(malignant)."""

    weight: np.ndarray     # [K, C]
    bias: np.ndarray       # [K]
    malignant: np.ndarray  # [K] bool, neither all nor none

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.weight @ features + self.bias

    def log_odds(self, scores: np.ndarray) -> float:
        """log(sum of exp over malignant classes) - log(sum over the others), computed stably."""
        return _logsumexp(scores[self.malignant]) - _logsumexp(scores[~self.malignant])

    def gradient(self, scores: np.ndarray) -> np.ndarray:
        """d(log-odds)/d(features): each class's weight row, weighted by its share of its side's mass."""
        share = np.zeros_like(scores)
        for side, sign in ((self.malignant, 1.0), (~self.malignant, -1.0)):
            exp = np.exp(scores[side] - scores[side].max())
            share[side] = sign * exp / exp.sum()
        return share @ self.weight


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + float(np.log(np.exp(values - top).sum()))


@dataclass(frozen=True)
class FusionHead:
    modalities: tuple[str, ...]
    weight: np.ndarray          # [M, C]
    presence_bias: np.ndarray   # [M]
    bias: float
    classes: ClassMap | None = None  # an imported N-class last layer (then one modality, weight unused)
    cam_mode: str = CAM_EXACT
    # Per modality, when branches differ in width (late fusion of e.g. resnet50 and densenet121); None: all C.
    modality_channels: tuple[int, ...] | None = None

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])

    def channels_of(self, index: int) -> int:
        return self.channels if self.modality_channels is None else self.modality_channels[index]

    @classmethod
    def load(cls, path: str | Path, modalities: Sequence[str]) -> "FusionHead":
        try:
            with np.load(path, allow_pickle=False) as data:
                weight, presence, bias = data["weight"], data["presence_bias"], data["bias"]
                cam_mode = str(data["cam_mode"]) if "cam_mode" in data.files else CAM_EXACT
                classes = (ClassMap(data["class_weight"].astype(np.float64), data["class_bias"].astype(np.float64),
                                    data["class_malignant"].astype(bool))
                           if "class_weight" in data.files else None)
                widths = (tuple(int(c) for c in data["modality_channels"].reshape(-1))
                          if "modality_channels" in data.files else None)
        except Exception as exc:  # corrupt npz bytes raise BadZipFile, NotImplementedError, SyntaxError, ... from numpy/zipfile
            raise BundleError(f"head weights {path} are unreadable ({type(exc).__name__}: {str(exc)[:120]}); "
                              "expected an .npz with weight, presence_bias, bias") from None
        if weight.ndim != 2 or weight.shape[0] != len(modalities) or presence.shape != (len(modalities),):
            raise BundleError(f"head weights {path} have shapes weight={weight.shape}, presence_bias={presence.shape}; "
                              f"expected ({len(modalities)}, C) and ({len(modalities)},) for modalities {list(modalities)}")
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(presence)) and np.isfinite(bias)):
            raise BundleError(f"head weights {path} contain NaN or infinity")
        if cam_mode not in CAM_MODES:
            raise BundleError(f"head weights {path} declare cam_mode {cam_mode!r}; expected one of {list(CAM_MODES)}")
        if classes is not None:
            _check_classes(classes, weight.shape[1], len(modalities), str(path))
        if widths is not None and (len(widths) != len(modalities) or not all(0 < c <= weight.shape[1] for c in widths)):
            raise BundleError(f"head weights {path} give modality_channels {list(widths)}; expected one width in "
                              f"1..{weight.shape[1]} per modality {list(modalities)}")
        return cls(tuple(modalities), weight.astype(np.float64), presence.astype(np.float64), float(bias),
                   classes, cam_mode, widths)

    def save(self, path: str | Path) -> None:
        arrays = {"weight": self.weight, "presence_bias": self.presence_bias, "bias": np.float64(self.bias),
                  "cam_mode": np.str_(self.cam_mode)}
        if self.classes is not None:
            arrays.update(class_weight=self.classes.weight, class_bias=self.classes.bias,
                          class_malignant=self.classes.malignant)
        if self.modality_channels is not None:
            arrays["modality_channels"] = np.array(self.modality_channels, dtype=np.int64)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

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
            width = self.channels_of(index)
            if vector.shape[0] != width:
                raise InputError(f"{modality} features have {vector.shape[0]} channels; expected {width}")
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, as one error
                if self.classes is not None:
                    contributions[modality] = self.classes.log_odds(self.classes.scores(vector))
                else:
                    contributions[modality] = float(self.weight[index, :width] @ vector + self.presence_bias[index])
        logit = self.bias + sum(contributions.values())
        if not math.isfinite(logit):
            # NaN compares false with the threshold and would silently read as "benign".
            raise InputError(f"the head's logit is {logit} (per modality {contributions}); the features or head "
                             "weights overflow, so no decision is made")
        return HeadOutput(logit, sigmoid(logit), contributions)

    def unread_modalities(self) -> tuple[str, ...]:
        """Modalities this head multiplies by exactly zero and whose presence adds exactly zero (e.g. the
        ones a B-mode-only model never learned, ``zero_untrained_modalities`` at export): a pane of one
        changes neither the logit nor any CAM, so it need not go through the backbone. Empty for an
        N-class head, and when no modality would be left to read."""
        if self.classes is not None:
            return ()
        unread = tuple(m for i, m in enumerate(self.modalities)
                       if not np.any(self.weight[i, :self.channels_of(i)]) and self.presence_bias[i] == 0.0)
        return () if len(unread) == len(self.modalities) else unread

    @property
    def has_cam(self) -> bool:
        return self.cam_mode != CAM_NONE

    def cam(self, modality: str, feature_maps: np.ndarray) -> np.ndarray:
        """Class activation map [h, w] of one pane from its feature maps [C, h, w]: exact for a
        linear head, the log-odds' gradient map for an N-class head (see the module docstring)."""
        if not self.has_cam:
            raise InputError("this model has no class activation map (its classifier is not linear over "
                             "globally pooled features); no heatmap is drawn rather than a wrong one")
        maps = np.asarray(feature_maps, dtype=np.float64)
        if self.classes is not None:
            weights = self.classes.gradient(self.classes.scores(pool(maps)))
        else:
            index = self.modality_index(modality)
            weights = self.weight[index, :self.channels_of(index)]
        return np.tensordot(weights, maps, axes=(0, 0))


def _check_classes(classes: ClassMap, channels: int, num_modalities: int, source: str) -> None:
    k = classes.bias.shape[0] if classes.bias.ndim == 1 else -1
    if (num_modalities != 1 or classes.weight.shape != (k, channels) or classes.malignant.shape != (k,)
            or k < 2):
        raise BundleError(f"head weights {source} have an N-class layer of shapes {classes.weight.shape}, "
                          f"{classes.bias.shape}, {classes.malignant.shape} for {num_modalities} modalities; "
                          f"expected one modality, (K, {channels}), (K,), (K,) with K >= 2")
    if not classes.malignant.any() or classes.malignant.all():
        raise BundleError(f"head weights {source} mark {int(classes.malignant.sum())} of {k} classes malignant; "
                          "expected at least one malignant and one other class")
    if not (np.all(np.isfinite(classes.weight)) and np.all(np.isfinite(classes.bias))):
        raise BundleError(f"head weights {source} contain NaN or infinity")


def pool(feature_maps: np.ndarray) -> np.ndarray:
    """Global average pooling: [..., C, h, w] -> [..., C]."""
    return feature_maps.mean(axis=(-2, -1))
