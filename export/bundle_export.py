"""Checkpoint -> model bundle (model.onnx with fused preprocessing, head.npz, manifest.json)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from edge_thyroid import __version__
from edge_thyroid.bundle import Manifest, ModelEntry, Precision, Target, Threshold, bundle_writer, write_manifest
from edge_thyroid.head import FusionHead
from edge_thyroid.kernels.reference import PreprocessSpec

from .models import MultimodalClassifier, head_arrays
from .onnx_export import export_fused_onnx, save_onnx


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {"edge_thyroid": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0],
            "platform": platform.platform()}


def export_bundle(model: MultimodalClassifier, out_dir: str | Path, *, image_size: int,
                  trained_modalities: tuple[str, ...] = (), threshold: Threshold | None = None,
                  metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Path:
    """Write an FP32 bundle atomically; returns its path."""
    spec = PreprocessSpec(image_size=image_size)
    model = model.eval()
    fused = export_fused_onnx(model, spec)
    arrays = head_arrays(model)
    head = FusionHead(model.modalities, arrays["weight"], arrays["presence_bias"], float(arrays["bias"]))
    out_dir = Path(out_dir)
    with bundle_writer(out_dir, overwrite=overwrite) as staging:
        save_onnx(fused, staging / "model.onnx")
        head.save(staging / "head.npz")
        manifest = Manifest(
            backbone=model.backbone_name,
            modalities=model.modalities,
            trained_modalities=tuple(trained_modalities),
            preprocessing=spec,
            models={"fp32": ModelEntry("model.onnx", Precision.FP32, Target.ONNXRUNTIME)},
            head_file="head.npz",
            feature_channels=model.channels,
            threshold=threshold or Threshold(),
            metrics=dict(metrics or {}),
            provenance={"tools": tool_versions(), **(provenance or {})},
        )
        write_manifest(staging, manifest)
    return out_dir

