"""Checkpoint -> model bundle: model.onnx (FP32, preprocessing fused in), on request an INT8 or FP16
ONNX or a TensorRT plan, head.npz and manifest.json; optionally gated on labelled data.

Every compiled form is built from one backbone export, so all of them share the same weights and
the same float preprocessing graph. With a gate, the new model is judged against the FP32 model in
the staging directory before the bundle is renamed into place: a bundle that fails is never written.
"""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_thyroid import __version__
from edge_thyroid.backends.tensorrt import PREPROCESS_FILE, import_tensorrt
from edge_thyroid.bundle import (Bundle, Manifest, ModelEntry, Precision, Target, Threshold, bundle_writer,
                                 write_manifest)
from edge_thyroid.errors import InputError
from edge_thyroid.head import FusionHead
from edge_thyroid.kernels.onnx_graph import PIXELS, build_preprocess_graph
from edge_thyroid.kernels.reference import PreprocessSpec
from edge_thyroid.backends import backend_for_target
from edge_thyroid.gates import GATES, Configuration, recorded_gates
from edge_thyroid.verification import GateBudget, GateFailedError, GateReport, Split, labelled_split, run_gate

from .calibration import CalibrationOptions, CalibrationSet, calibration_set
from .models import MultimodalClassifier, head_arrays
from .onnx_export import export_backbone_onnx, save_onnx
from .quantize import QuantConfig, convert_fp16, fuse_preprocessing, quantize_backbone

FP32_FILE = "model.onnx"
# ONNX Runtime providers an FP16 ONNX is meant for (the CPU provider runs it too, by casting to fp32).
FP16_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def tool_versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import torchvision

    return {"edge_thyroid": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0],
            "platform": platform.platform()}


@dataclass(frozen=True)
class CalibrationRequest:
    """Where INT8 calibration frames come from and how ranges are computed."""

    data: Path
    count: int = 100
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    fp32_layers: tuple[str, ...] = ()
    folds: int = 4
    fold: int = 0
    seed: int = 0


@dataclass(frozen=True)
class GateRequest:
    """Labelled data to judge the compiled model on against the FP32 model (see edge_thyroid.verification)."""

    data: Path
    split: Split = Split.VAL
    folds: int = 4
    fold: int = 0
    seed: int = 0
    budget: GateBudget = field(default_factory=GateBudget)


@dataclass(frozen=True)
class Branch:
    """One modality's own backbone graph (pixels -> feature_maps) in a late-fusion model."""

    backbone: onnx.ModelProto
    architecture: str


@dataclass(frozen=True)
class BundleModel:
    """What a bundle is written from: the backbone graph (pixels [N, 3, S, S] -> feature_maps
    [N, C, h, w]) and the NumPy head over its pooled maps; ``architecture`` names the backbone.
    A late-fusion model has no shared ``backbone`` but one per modality in ``branches`` (in the
    head's modality order)."""

    backbone: onnx.ModelProto | None
    head: FusionHead
    architecture: str
    branches: dict[str, Branch] = field(default_factory=dict)

    def graphs(self) -> dict[str | None, onnx.ModelProto]:
        """Branch -> backbone graph; the single backbone under None."""
        return {m: b.backbone for m, b in self.branches.items()} if self.branches else {None: self.backbone}


def classifier_bundle_model(model: MultimodalClassifier, image_size: int, mirror_roll: int | None = None) -> BundleModel:
    """The project's multimodal classifier as a BundleModel (its linear fusion head moved to NumPy);
    ``mirror_roll`` not None: with the mirror-image average in its graph (export/test_time.py)."""
    arrays = head_arrays(model.eval())
    head = FusionHead(model.modalities, arrays["weight"], arrays["presence_bias"], float(arrays["bias"]))
    return BundleModel(export_backbone_onnx(model, image_size, mirror_roll), head, model.backbone_name)


MIRROR_SAMPLE = 64  # training-side images the mirrored view is lined up on


def measure_mirror_roll(model: MultimodalClassifier, source: Path, image_size: int) -> dict[str, Any]:
    """Line the mirrored view up with the original on up to MIRROR_SAMPLE training-side images of
    ``source`` (a sample CSV or a folder), preprocessed as calibration frames are; the manifest's
    ``test_time`` record."""
    import torch

    from .calibration import PanePreprocessor
    from .test_time import model_mirror_roll

    chosen = calibration_set(source, count=MIRROR_SAMPLE)
    pixels = np.concatenate(list(PanePreprocessor(PreprocessSpec(image_size=image_size)).stream(chosen.images)))
    roll, scores = model_mirror_roll(model, torch.from_numpy(pixels))
    return {"flip": True, "roll": roll, "roll_scores": {str(k): round(v, 4) for k, v in scores.items()},
            "roll_chosen_on": f"{len(chosen.images)} images of {chosen.source}"}


def model_key(precision: Precision, target: Target) -> str:
    """Key in manifest.models: 'fp32' / 'int8' / 'fp16' for ONNX Runtime, 'tensorrt_<precision>' for plans."""
    return precision.value if target is Target.ONNXRUNTIME else f"{target.value}_{precision.value}"


def export_bundle(model: MultimodalClassifier | BundleModel, out_dir: str | Path, *, image_size: int,
                  trained_modalities: tuple[str, ...] = (), threshold: Threshold | None = None,
                  metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                  overwrite: bool = False, precision: Precision = Precision.FP32,
                  target: Target = Target.ONNXRUNTIME, calibration: CalibrationRequest | None = None,
                  keep_fp32: bool = True, gate: GateRequest | None = None, cache_dir: Path | None = None,
                  max_panes: int = 3, progress: bool = False, model_card: dict[str, Any] | None = None,
                  preprocessing: PreprocessSpec | None = None, box_context: float = 1.0,
                  test_time_flip: bool = False, mirror_data: Path | None = None,
                  probability_prior: float | None = None) -> Path:
    """Write a bundle atomically; returns its path. Raises GateFailedError (nothing written) when
    ``gate`` is given and the compiled model is outside its budget. ``preprocessing`` overrides the
    default spec at ``image_size`` (an imported model's own mean and std); ``box_context`` is how many
    times the runtime grows a nodule box before the model sees it (Manifest.box_context);
    ``test_time_flip`` builds the mirror-image average into the graph (the project's classifier only),
    lined up on training images of ``mirror_data`` (default: the calibration data, else the gate's);
    ``probability_prior`` is the share of malignant nodules the model's p assumes (Manifest.probability)."""
    test_time: dict[str, Any] = {}
    if test_time_flip:
        if isinstance(model, BundleModel):
            raise InputError("--test-time-flip builds the mirror-image average around the project's own backbone; "
                             "an imported model is exported as it is")
        source = mirror_data or (calibration.data if calibration is not None else gate.data if gate is not None else None)
        if source is None:
            raise InputError("--test-time-flip lines the mirrored view up on training images: give --calib or "
                             "--verify-data")
        test_time = measure_mirror_roll(model, source, image_size)
    key = model_key(precision, target)
    if key == "fp32" and not keep_fp32:
        raise InputError("--no-keep-fp32 with an FP32 ONNX Runtime export would leave the bundle without a model")
    if precision is Precision.INT8 and calibration is None:
        raise InputError("INT8 needs calibration frames; pass --calib with a sample CSV or a folder of images")
    if target is Target.TENSORRT:
        if isinstance(model, BundleModel) and model.branches:
            raise InputError("a model with a backbone per modality exports to ONNX Runtime (--target onnxruntime); "
                             "TensorRT plans hold one backbone")
        import_tensorrt()  # fail before minutes of calibration, not after
    spec = preprocessing or PreprocessSpec(image_size=image_size)
    try:  # before any graph is built at that size (the spec's ValueError came out of the fusion as a traceback)
        spec.validate()
    except ValueError as exc:
        raise InputError(f"preprocessing: {exc}; expected a pane resolution (--image-size) of 8 to 2048 "
                         "and a valid mean/std") from None
    # Read the data first: a wrong path fails in a second, not after the export.
    labelled = labelled_split(gate.data, gate.split, folds=gate.folds, fold=gate.fold, seed=gate.seed) if gate else None
    frames = None
    if precision is Precision.INT8:
        frames = calibration_set(calibration.data, count=calibration.count, folds=calibration.folds,
                                 fold=calibration.fold, seed=calibration.seed)
    if not isinstance(model, BundleModel):
        model = classifier_bundle_model(model, image_size, test_time["roll"] if test_time else None)
    head, graphs = model.head, model.graphs()
    out_dir = Path(out_dir)
    with bundle_writer(out_dir, overwrite=overwrite) as staging:
        head.save(staging / "head.npz")
        models = {}
        compiled: dict[str, dict[str | None, ModelEntry]] = {}
        records: dict[str | None, dict[str, Any]] = {}
        for branch, backbone in graphs.items():
            if keep_fp32 or labelled is not None:  # the gate's reference, even when it is not kept
                name = branch_file(FP32_FILE, branch)
                save_onnx(fuse_preprocessing(backbone, spec), staging / name)
                compiled.setdefault("fp32", {})[branch] = ModelEntry(name, Precision.FP32, Target.ONNXRUNTIME)
            if key != "fp32":
                compiled.setdefault(key, {})[branch], records[branch] = _compile(
                    backbone, spec, precision, target, calibration, frames, staging, cache_dir=cache_dir,
                    max_panes=max_panes, progress=progress, branch=branch)
        for entry_key, entries in compiled.items():
            models[entry_key] = entries[None] if None in entries else branched_entry(model, entries)
        calibration_record: dict[str, Any] = (records.get(None, {}) if None in graphs
                                              else {"branches": records} if any(records.values()) else {})
        manifest = Manifest(
            backbone=model.architecture,
            modalities=head.modalities,
            trained_modalities=tuple(trained_modalities),
            preprocessing=spec,
            models=models,
            head_file="head.npz",
            feature_channels=head.channels,
            threshold=threshold or Threshold(),
            metrics=dict(metrics or {}),
            calibration=calibration_record,
            provenance={"tools": tool_versions(), **(provenance or {})},
            model_card=dict(model_card or {}),
            box_context=float(box_context), test_time=test_time,
            probability={"prior": float(probability_prior), "basis": "given at export (--probability-prior)"}
            if probability_prior is not None else {},
        )
        report = None
        if labelled is not None and key != "fp32":
            staged = Bundle(staging, manifest)  # not hashed yet: nothing has left the staging directory
            report = run_gate(staged, staged, labelled, model=key, reference_model="fp32", budget=gate.budget,
                              progress=progress, display_name=out_dir.name)
            _record_gate(manifest, key, report)
        if not keep_fp32 and "fp32" in manifest.models:
            for name in manifest.models["fp32"].files:
                (staging / name).unlink()
            del manifest.models["fp32"]
        write_manifest(staging, manifest)
        if report is not None and not report.passed:
            raise GateFailedError(report)
    return out_dir


def _record_gate(manifest: Manifest, key: str, report: GateReport) -> None:
    """The gate's report into manifest.metrics, its summary into the model entry, both thresholds into
    manifest.threshold (the bundle keeps deciding at the reference threshold)."""
    manifest.metrics = {**manifest.metrics, f"gate_{key}": report.to_dict()}
    entry = manifest.models[key]
    # The export's gate runs the model on the backend of its target, at the precision it was exported in.
    configuration = Configuration(backend_for_target(entry.target.value))
    gates = {**recorded_gates(entry.details), configuration.key: {**report.summary(), "budget": report.budget.to_dict(),
                                                                  "reference": report.reference["model"]}}
    manifest.models[key] = replace(entry, details={**entry.details, GATES: gates})
    old = manifest.threshold
    refit = {"value": report.candidate["refit"]["threshold"], "method": "youden", "chosen_on": report.data}
    manifest.threshold = Threshold(old.value, old.method, old.chosen_on,
                                   {**old.details, "refit": {**old.details.get("refit", {}), key: refit}})


def branch_file(name: str, branch: str | None) -> str:
    """model.onnx -> model.smi.onnx for a branch (a single backbone keeps its name)."""
    return name if branch is None else name.replace("model.", f"model.{branch}.", 1)


def branched_entry(model: BundleModel, entries: dict[str | None, ModelEntry]) -> ModelEntry:
    """One manifest entry for a late-fusion model: each branch's file, architecture, width and (INT8)
    its quantization facts."""
    first = next(iter(entries.values()))
    head = model.head
    branches = {m: replace(e, details={"architecture": model.branches[m].architecture,
                                       "channels": head.channels_of(head.modality_index(m)), **e.details})
                for m, e in entries.items()}
    return ModelEntry("", first.precision, first.target, {}, branches)


def branch_quantization(branch: str, record: dict[str, Any], frames: CalibrationSet) -> dict[str, Any]:
    """What one branch was calibrated on: the calibration frames are B-mode images (the only modality
    with real data), so the SMI and SWE backbones are calibrated on B-mode pixels as a stand-in."""
    stand_in = "" if branch == "bmode" else f" (stand-in: no {branch} data exists, so B-mode frames)"
    return {"calibrated_on": f"{len(frames.images)} B-mode frames from {frames.source}{stand_in}",
            "method": record.get("method"), "backbone_sha256": record.get("backbone_sha256"),
            "int8_convolutions": record["convolutions"]["int8_convs"], "convolutions": record["convolutions"]["convs"]}


def _compile(backbone: onnx.ModelProto, spec: PreprocessSpec, precision: Precision, target: Target,
             calibration: CalibrationRequest | None, frames: CalibrationSet | None, staging: Path, *,
             cache_dir: Path | None, max_panes: int, progress: bool,
             branch: str | None = None) -> tuple[ModelEntry, dict[str, Any]]:
    """Build the requested non-FP32 model into ``staging``; returns its manifest entry and the
    calibration record (empty when nothing was calibrated). ``branch``: the modality whose own
    backbone this is (its file is named after it)."""
    record: dict[str, Any] = {}
    source = backbone
    if precision is Precision.INT8:
        result = quantize_backbone(backbone, frames, spec,
                                   QuantConfig(calibration.options, target, tuple(calibration.fp32_layers)),
                                   cache_dir=cache_dir, progress=progress)
        source, record = result.model, result.report
    if target is Target.ONNXRUNTIME:
        if precision is Precision.FP16:
            source = convert_fp16(backbone)
        name = branch_file(f"model.{precision.value}.onnx", branch)
        save_onnx(fuse_preprocessing(source, spec), staging / name)
        details: dict[str, Any] = {"io": "float32", "preprocessing": "float32"}
        if precision is Precision.INT8:
            details.update(scheme=record["scheme"], convolutions={k: v for k, v in record["convolutions"].items()
                                                                  if k != "float_convs"})
            if branch is not None:
                details["quantization"] = branch_quantization(branch, record, frames)
        else:
            details["providers"] = FP16_PROVIDERS
        return ModelEntry(name, precision, target, details), record
    from .tensorrt_build import build_engine, profile_shapes

    build = build_engine(source, precision, profile_shapes(spec.image_size, max_panes=max_panes), cache_dir=cache_dir)
    name = f"model.{precision.value}.plan"
    shutil.copyfile(build.plan, staging / name)
    save_onnx(build_preprocess_graph(spec, output_name=PIXELS), staging / PREPROCESS_FILE)
    return ModelEntry(name, precision, target, {**build.details, "preprocess": PREPROCESS_FILE}), record
