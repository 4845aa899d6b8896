"""Bring your own model: a user's model file -> what ``export_bundle`` writes, with its model card.

Recognised, by content: the project's own checkpoints (returned as such: they keep their own path),
torchvision classifiers (see torchvision_import) and ONNX image classifiers (see onnx_import).
Anything else is refused with one line naming what was found and what is expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_thyroid.bundle import sha256_file
from edge_thyroid.errors import InputError
from edge_thyroid.head import CAM_EXACT, CAM_GRADIENT, CAM_NONE
from edge_thyroid.kernels.reference import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

from .bundle_export import Branch, BundleModel
from .model_file import check_readable, is_onnx_file, read_onnx, read_payload, read_weights

# The project's checkpoints: a multimodal model under backbone.* with its fusion layer under head.*.
PROJECT_KEYS = ("backbone.", "head.weight")
TORCHVISION_IMAGE_SIZE = 224  # torchvision's classifiers are trained and evaluated at 224 px
CAM_NOTES = {
    CAM_EXACT: "exact (the classifier is linear over globally pooled features)",
    CAM_GRADIENT: "the malignant log-odds' gradient over pooled features (exact per class; N-class softmax)",
    CAM_NONE: "none: the classifier is not linear over globally pooled features, so no heatmap is drawn",
}


@dataclass(frozen=True)
class ImportOptions:
    """What the user may say about their model; None means "from the file, else the default"."""

    modality: str = "bmode"
    malignant: tuple[int, ...] | None = None
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str | None = None
    intended_use: str = ""


@dataclass(frozen=True)
class ImportedModel:
    model: BundleModel
    preprocessing: PreprocessSpec
    model_card: dict[str, Any]


def is_project_checkpoint(path: str | Path) -> bool:
    """True for the project's checkpoints, which ``load_checkpoint`` reads (unchanged path)."""
    path = check_readable(path)
    if is_onnx_file(path):
        return False
    weights = read_weights(path)
    if weights.payload.get("format") == "edge-thyroid-checkpoint":
        return True
    return "head.weight" in weights.state_dict and any(k.startswith(PROJECT_KEYS[0]) for k in weights.state_dict)


def is_branched_model(path: str | Path) -> bool:
    """True for a PyTorch file holding a backbone per modality (see branch_import for the layouts)."""
    from .branch_import import is_branched

    path = check_readable(path)
    return not is_onnx_file(path) and is_branched(read_payload(path))


def import_branched_model(path: str | Path, options: ImportOptions) -> ImportedModel:
    """A late-fusion model (a backbone per modality + a fusion linear) -> a branched BundleModel."""
    from .branch_import import import_branches
    from .onnx_export import export_features_onnx

    path = check_readable(path)
    if options.channel_order not in (None, "RGB"):
        raise InputError(f"--channel-order {options.channel_order} applies to ONNX models; torchvision backbones take RGB")
    imported = import_branches(read_payload(path), source=str(path), malignant=options.malignant)
    size = options.image_size or TORCHVISION_IMAGE_SIZE
    spec = _spec(size, options.mean, options.std, str(path))
    branches = {m: Branch(export_features_onnx(features, size), imported.architectures[m])
                for m, features in imported.features.items()}
    architecture = ",".join(f"{m}={a}" for m, a in imported.architectures.items())
    card = _card(path, "torch model with a backbone per modality (late fusion)", architecture, imported.outputs, spec,
                 {"image_size": "command line" if options.image_size else "default (torchvision 224)",
                  "mean_std": "command line" if options.mean or options.std else "default (ImageNet)",
                  "channel_order": "RGB"}, CAM_EXACT, options.intended_use)
    card["branches"] = dict(imported.architectures)
    return ImportedModel(BundleModel(None, imported.head, architecture, branches), spec, card)


def import_model(path: str | Path, options: ImportOptions) -> ImportedModel:
    """A torchvision state_dict/checkpoint or an ONNX classifier -> BundleModel + spec + model card."""
    path = check_readable(path)
    if is_onnx_file(path):
        return _import_onnx_file(path, options)
    return _import_torchvision_file(path, options)


def _import_torchvision_file(path: Path, options: ImportOptions) -> ImportedModel:
    from .torchvision_import import export_imported_onnx, import_torchvision

    if options.channel_order not in (None, "RGB"):
        raise InputError(f"--channel-order {options.channel_order} applies to ONNX models; a torchvision model "
                         "takes RGB (its weights were trained on torchvision's RGB tensors)")
    weights = read_weights(path)
    size = options.image_size or TORCHVISION_IMAGE_SIZE
    imported = import_torchvision(weights.state_dict, source=str(path), image_size=size, modality=options.modality,
                                  malignant=options.malignant)
    spec = _spec(size, options.mean, options.std, str(path))
    backbone = export_imported_onnx(imported, size)
    card = _card(path, "torchvision state_dict", imported.architecture, imported.outputs, spec,
                 {"image_size": "command line" if options.image_size else "default (torchvision 224)",
                  "mean_std": "command line" if options.mean or options.std else "default (ImageNet)",
                  "channel_order": "RGB"},
                 imported.head.cam_mode, options.intended_use)
    return ImportedModel(BundleModel(backbone, imported.head, imported.architecture), spec, card)


def _import_onnx_file(path: Path, options: ImportOptions) -> ImportedModel:
    from .onnx_import import import_onnx

    model = read_onnx(path)
    metadata = {p.key.lower(): p.value for p in model.metadata_props}
    size = options.image_size or _metadata_int(metadata, "image_size", path)
    order = (options.channel_order or metadata.get("channel_order", "RGB")).upper()
    imported = import_onnx(model, source=str(path), image_size=size, channel_order=order, modality=options.modality,
                           malignant=options.malignant)
    mean = options.mean or _metadata_triple(metadata, "mean", path)
    std = options.std or _metadata_triple(metadata, "std", path)
    if order == "BGR":  # given in the model's channel order; the preprocessing normalises in RGB, then flips
        mean = tuple(reversed(mean)) if mean else None
        std = tuple(reversed(std)) if std else None
    spec = _spec(imported.image_size, mean, std, str(path))
    origin = {"image_size": "command line" if options.image_size else ("model metadata" if size else "model input shape"),
              "mean_std": _origin(options.mean or options.std, "mean" in metadata or "std" in metadata),
              "channel_order": f"{order} ({_origin(options.channel_order, 'channel_order' in metadata)})"}
    architecture = f"onnx:{path.stem}"
    card = _card(path, "onnx", architecture, imported.outputs, spec, origin, imported.head.cam_mode,
                 options.intended_use)
    card["graph"] = imported.split
    return ImportedModel(BundleModel(imported.backbone, imported.head, architecture), spec, card)


def _card(path: Path, kind: str, architecture: str, outputs: dict, spec: PreprocessSpec, origin: dict,
          cam_mode: str, intended_use: str) -> dict[str, Any]:
    return {
        "source": {"file": path.name, "sha256": sha256_file(path), "kind": kind},
        "architecture": architecture,
        "outputs": outputs,
        "input": {"image_size": spec.image_size, "mean": list(spec.mean), "std": list(spec.std),
                  "color_order": spec.color_order, "from": origin},
        "cam": cam_mode,
        "cam_note": CAM_NOTES[cam_mode],
        "intended_use": intended_use or "not stated",
    }


def _origin(given: Any, in_metadata: bool) -> str:
    return "command line" if given else ("model metadata" if in_metadata else "default (ImageNet)")


def _spec(size: int, mean: Sequence[float] | None, std: Sequence[float] | None, source: str) -> PreprocessSpec:
    spec = PreprocessSpec(image_size=int(size), mean=tuple(mean or IMAGENET_MEAN), std=tuple(std or IMAGENET_STD))
    try:
        spec.validate()
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None
    return spec


def _metadata_int(metadata: dict[str, str], key: str, path: Path) -> int | None:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise InputError(f"{path}: metadata {key}={metadata[key]!r}; expected an integer (or pass --{key.replace('_', '-')})") from None


def _metadata_triple(metadata: dict[str, str], key: str, path: Path) -> tuple[float, float, float] | None:
    if key not in metadata:
        return None
    return parse_triple(metadata[key], f"{path}: metadata {key}")


def parse_triple(text: str, what: str) -> tuple[float, float, float]:
    """'0.485,0.456,0.406' or '[0.485, 0.456, 0.406]' -> three finite floats."""
    parts = [p for p in text.strip().strip("[]()").replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} is {text!r}; expected three numbers such as 0.485,0.456,0.406")
    return values  # type: ignore[return-value]


