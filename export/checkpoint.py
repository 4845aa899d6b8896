"""Checkpoints: a torch file holding the model's state_dict (backbone keys are torchvision's, under
``backbone.``; the fusion head under ``head.``) plus what is needed to rebuild the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .model_file import read_weights
from .models import MODALITIES, MultimodalClassifier

# Top-level state_dict names of heads that only training uses; export drops them.
TRAINING_ONLY_PREFIXES = ("aux", "seg_head.")


@dataclass
class CheckpointInfo:
    backbone: str = "resnet50"
    modalities: tuple[str, ...] = MODALITIES
    trained_modalities: tuple[str, ...] = ()
    image_size: int = 128
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: MultimodalClassifier, info: CheckpointInfo,
                    extra: dict[str, Any] | None = None) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves half a file."""
    path = Path(path)
    payload = {
        "format": "edge-thyroid-checkpoint",
        "state_dict": model.state_dict(),
        "backbone": info.backbone,
        "modalities": list(info.modalities),
        "trained_modalities": list(info.trained_modalities),
        "image_size": info.image_size,
        "metrics": info.metrics,
        "threshold": info.threshold,
        "training": info.training,
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, backbone: str | None = None,
                    modalities: tuple[str, ...] | None = None) -> tuple[MultimodalClassifier, CheckpointInfo, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`, or a bare state_dict (then ``backbone``
    and ``modalities`` say how to rebuild the model)."""
    weights = read_weights(path)
    payload = weights.payload
    if payload.get("format") == "edge-thyroid-checkpoint":
        info = CheckpointInfo(
            backbone=payload["backbone"],
            modalities=tuple(payload["modalities"]),
            trained_modalities=tuple(payload.get("trained_modalities", ())),
            image_size=int(payload.get("image_size", 128)),
            metrics=dict(payload.get("metrics", {})),
            threshold=dict(payload.get("threshold", {})),
            training=dict(payload.get("training", {})),
        )
    else:
        info = CheckpointInfo(backbone=backbone or "resnet50", modalities=modalities or MODALITIES)
    # Heads used only in training (auxiliary classifiers, a segmentation decoder) are not part of the
    # exported model; everything else must match exactly.
    state = {k: v for k, v in weights.state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if backbone and backbone != info.backbone:
        raise ValueError(f"{path}: checkpoint holds a {info.backbone}, but --backbone {backbone} was asked for")
    model = MultimodalClassifier(info.backbone, info.modalities)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A torchvision classifier's own fc/classifier layers are not part of the feature extractor.
    unexpected = [k for k in unexpected if not k.startswith(("backbone.fc.", "backbone.classifier."))]
    missing = [k for k in missing if not k.startswith(("backbone.fc.", "backbone.classifier."))]
    if missing or unexpected:
        raise ValueError(
            f"{path}: state_dict does not match a {info.backbone} with modalities {list(info.modalities)}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.eval()
    return model, info, payload
