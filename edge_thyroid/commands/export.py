"""edge-thyroid export: checkpoint -> model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..bundle import MAX_BOX_CONTEXT, MIN_BOX_CONTEXT, Precision, Target, sha256_file
from ..errors import EdgeThyroidError, InputError, MissingDependencyError

# The calibration methods (mirrors edge_thyroid.export.calibration.METHODS, which needs onnxruntime's
# quantization tools; listing them must not import those).
CALIBRATION_METHODS = ("entropy", "minmax", "percentile")

BACKBONES = ("resnet50", "densenet121", "vgg16", "googlenet")


def _import_export_tools():
    try:  # the build-time tools need torch and torchvision (the export extra)
        from ..export import bundle_export, checkpoint, models
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "torch", "export", "edge-thyroid export") from None

    return bundle_export, checkpoint, models


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (written atomically).")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None,
              help="Backbone (default: from the checkpoint, else resnet50).")
@click.option("--modalities", default=None, help="Comma-separated modalities (default: from the checkpoint, else bmode,smi,swe).")
@click.option("--image-size", type=int, default=None, help="Pane resolution S (default: from the checkpoint, else 128).")
@click.option("--random-init", is_flag=True, help="Export an untrained model (tests, benchmarks); no CHECKPOINT.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--precision", type=click.Choice([p.value for p in Precision]), default="fp32", show_default=True,
              help="fp32, int8 (static post-training quantization, calibrated: needs --calib) or fp16 (for GPU providers).")
@click.option("--target", type=click.Choice([t.value for t in Target]), default="onnxruntime", show_default=True,
              help="onnxruntime: an ONNX model; tensorrt: a TensorRT plan for this machine's GPU (needs TensorRT).")
@click.option("--calib", "calib", default=None, type=click.Path(),
              help="INT8 calibration frames: a sample CSV (its training-side cases are used) or a folder of images.")
@click.option("--calib-method", type=click.Choice(sorted(CALIBRATION_METHODS)), default="minmax", show_default=True,
              help="How activation ranges are chosen from the calibration frames.")
@click.option("--calib-count", type=int, default=100, show_default=True, help="Calibration frames to use (a seeded subset).")
@click.option("--calib-average/--calib-extremes", default=True, show_default=True,
              help="minmax: average each frame's range (robust to one atypical frame) or take the extremes over all frames.")
@click.option("--fp32-layers", default="",
              help="Comma-separated parts kept in float in an INT8 model: stem, first, last, a module (layer1, "
                   "layer2/layer2.0: its convolutions and residual additions) or node names.")
@click.option("--keep-fp32/--no-keep-fp32", default=True, show_default=True,
              help="Keep model.onnx (FP32) beside the compiled model; --no-keep-fp32 makes a small INT8-only bundle.")
@click.option("--verify-data", default=None, type=click.Path(dir_okay=False),
              help="Labelled sample CSV: run the accuracy gate (validation split) against the FP32 model and record it.")
@click.option("--max-auc-drop", type=float, default=0.01, show_default=True, help="Gate budget: largest AUC drop allowed.")
@click.option("--min-agreement", type=float, default=0.98, show_default=True, help="Gate budget: smallest decision agreement allowed.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Calibration and TensorRT engine cache (default: $EDGE_THYROID_CACHE or ~/.cache/edge_thyroid).")
@click.option("--malignant-index", default=None,
              help="Your own classifier: the malignant class index (2 classes; default 1) or comma-separated "
                   "indices (N classes; required).")
@click.option("--mean", default=None, help="Your own model: per-channel mean in its channel order (default: ONNX "
                                           "metadata, else ImageNet's 0.485,0.456,0.406).")
@click.option("--std", default=None, help="Your own model: per-channel std (default: ONNX metadata, else ImageNet's).")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"], case_sensitive=False), default=None,
              help="ONNX model: channel order it expects (default: its metadata, else RGB).")
@click.option("--box-context", type=float, default=1.0, show_default=True,
              help="Grow every nodule box this many times about its centre (within its pane) before the model "
                   "sees it: the tissue around the nodule that the model learned to compare it with. 1: the box "
                   "as given; the demo bundle uses 1.25 (see BENCHMARKS.md, AUC by box margin).")
@click.option("--test-time-flip", is_flag=True,
              help="Build into the graph the average of each pane's feature maps with its mirror image's "
                   "(2 backbone passes per pane; exact CAMs kept), lined up on training images of --calib (any "
                   "precision) or --verify-data. The demo bundle uses it (BENCHMARKS.md).")
@click.option("--probability-prior", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="The share of malignant nodules the model's p assumes: 0.5 for a model trained with the classes "
                   "sampled equally (the project's recipes). Recorded so that stream/classify --prevalence can read p "
                   "at a site's own share; without it, --prevalence refuses the bundle.")
@click.option("--intended-use", default="", help="What the model is for, in words (the model card: 'edge-thyroid info', "
                                                 "'info --card'); for your own model or an edge-thyroid checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def export(checkpoint, output, backbone, modalities, image_size, random_init, seed, force, precision, target, calib,
           calib_method, calib_count, calib_average, fp32_layers, keep_fp32, verify_data, max_auc_drop, min_agreement, cache_dir,
           malignant_index, mean, std, channel_order, box_context, test_time_flip, probability_prior, intended_use, as_json) -> None:
    """Export CHECKPOINT to a model bundle: model.onnx with the preprocessing fused in (uint8 BGR frame
    + pane ROIs in, feature maps out), head.npz and manifest.json.

    CHECKPOINT is a checkpoint written by edge-thyroid-train (or its state_dict), or your own model: a
    torchvision resnet50 / densenet121 / vgg16 / googlenet state_dict with its own classifier (1 logit,
    2 classes or N classes), or an ONNX image classifier (NCHW float input). Your own model's final
    linear layer becomes the head; it classifies one pane (default modality bmode).

    \b
    A model with a backbone per modality (late fusion) is one torch file in either layout:
      {"bmode": state_dict, "smi": state_dict, "swe": state_dict,
       "fusion": {"weight": [K, D], "bias": [K]}}          (or fusion.weight / fusion.bias)
      one state_dict: branches.bmode.*, branches.smi.*, branches.swe.*, fusion.weight, fusion.bias
    Each branch is a torchvision resnet50 / densenet121 / vgg16 / googlenet (its own classifier, if
    saved, is ignored). The fusion layer is linear over the branches' pooled features concatenated
    in the order bmode, smi, swe: D = the sum of their widths (+1 presence bias per modality), K = 1
    logit or 2 classes (--malignant-index). Each present pane runs through its own backbone.

    \b
    Examples:
      edge-thyroid export best.pt -o runs/fp32
      edge-thyroid export best.pt -o runs/int8 --precision int8 --calib ../shared/data/ddti/labels.csv \\
          --verify-data ../shared/data/ddti/labels.csv --no-keep-fp32
      edge-thyroid export best.pt -o runs/trt --target tensorrt --precision fp16     (on the GPU machine)
      edge-thyroid export resnet50_thyroid.pth -o runs/mine --image-size 224 --malignant-index 1
      edge-thyroid export classifier.onnx -o runs/onnx --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5
      edge-thyroid export late_fusion.pt -o runs/branches --image-size 224
    """
    if bool(checkpoint) == bool(random_init):
        raise click.UsageError("give either CHECKPOINT or --random-init (exactly one)")
    precision, target = Precision(precision), Target(target)
    if not MIN_BOX_CONTEXT <= box_context <= MAX_BOX_CONTEXT:
        raise click.BadParameter(f"must be between {MIN_BOX_CONTEXT} and {MAX_BOX_CONTEXT} (times the box), got "
                                 f"{box_context}", param_hint="--box-context")
    if precision is Precision.INT8 and not calib:
        raise click.UsageError("--precision int8 needs --calib (a sample CSV or a folder of real frames)")
    if calib and precision is not Precision.INT8 and not test_time_flip:
        raise click.UsageError(f"--calib only applies to --precision int8 (or --test-time-flip), not {precision.value}")
    if test_time_flip and not (calib or verify_data):
        raise click.UsageError("--test-time-flip lines the mirrored view up on training images: give --calib (a sample "
                               "CSV or a folder of frames) or --verify-data")
    bundle_export, ckpt, models = _import_export_tools()

    modality_tuple = tuple(m.strip() for m in modalities.split(",")) if modalities else None
    provenance = {}
    trained, metrics, threshold = (), {}, None
    imported = None
    import_only = (malignant_index, mean, std, channel_order)   # what an edge-thyroid checkpoint records itself
    # An edge-thyroid checkpoint's card holds only what it is for; an imported model's, where it came from too.
    own_card = {"intended_use": intended_use} if intended_use else None
    if checkpoint and not random_init:
        from ..export import model_import

        if model_import.is_branched_model(checkpoint):
            imported = _import_branched(model_import, checkpoint, backbone, modality_tuple, image_size, malignant_index,
                                        mean, std, channel_order, intended_use, target)
        elif not model_import.is_project_checkpoint(checkpoint):
            imported = _import_own_model(model_import, checkpoint, backbone, modality_tuple, image_size,
                                         malignant_index, mean, std, channel_order, intended_use)
        elif any(import_only):
            raise click.UsageError("--malignant-index, --mean, --std and --channel-order apply to your own model, "
                                   "not to an edge-thyroid checkpoint (which records them)")
    try:
        if imported is not None:
            model, size = imported.model, imported.preprocessing.image_size
            provenance["checkpoint"] = {"file": str(checkpoint), "sha256": imported.model_card["source"]["sha256"]}
        elif random_init:
            model = models.random_init_model(backbone or "resnet50", modality_tuple or models.MODALITIES, seed)
            size = image_size or 128
            provenance["checkpoint"] = {"random_init": True, "seed": seed}
        else:
            model, info, _ = ckpt.load_checkpoint(checkpoint, backbone, modality_tuple)
            if modality_tuple and modality_tuple != info.modalities:
                raise EdgeThyroidError(f"checkpoint has modalities {list(info.modalities)}, but --modalities {list(modality_tuple)} was asked for")
            size = image_size or info.image_size
            trained, metrics = info.trained_modalities, info.metrics
            if info.threshold:
                from ..bundle import Threshold

                t = dict(info.threshold)
                threshold = Threshold(float(t.pop("value")), str(t.pop("method", "unknown")), str(t.pop("chosen_on", "unknown")), t)
            provenance["checkpoint"] = {"file": str(checkpoint), "sha256": sha256_file(checkpoint)}
            split = info.training.get("split") or {}
            if split.get("sha256"):   # the training CSV, so evaluate knows which rows the model has seen
                provenance["training_data"] = {k: split[k] for k in ("data", "sha256", "folds", "fold", "seed", "every_row")
                                               if k in split}
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise EdgeThyroidError(str(exc)) from None
    calibration = gate = None
    if precision is Precision.INT8:
        from ..export.calibration import CalibrationOptions, parse_method

        calibration = bundle_export.CalibrationRequest(
            Path(calib), calib_count, CalibrationOptions(parse_method(calib_method), frame_average=calib_average),
            tuple(layer.strip() for layer in fp32_layers.split(",") if layer.strip()))
    if verify_data:
        from ..verification import GateBudget

        gate = bundle_export.GateRequest(Path(verify_data), budget=GateBudget(max_auc_drop, min_agreement))
    from ..verification import GateFailedError

    try:
        path = bundle_export.export_bundle(model, output, image_size=size, trained_modalities=trained,
                                           threshold=threshold, metrics=metrics, provenance=provenance, overwrite=force,
                                           precision=precision, target=target, calibration=calibration,
                                           keep_fp32=keep_fp32, gate=gate, cache_dir=Path(cache_dir) if cache_dir else None,
                                           progress=True, model_card=imported.model_card if imported else own_card,
                                           preprocessing=imported.preprocessing if imported else None,
                                           box_context=box_context, test_time_flip=test_time_flip,
                                           probability_prior=probability_prior,
                                           mirror_data=Path(calib) if calib else Path(verify_data) if verify_data else None)
    except GateFailedError as failure:
        click.echo("\n".join(failure.report.lines()), err=True)
        click.echo(f"{output} was not written", err=True)
        raise
    from ..bundle import load_bundle

    manifest = load_bundle(path, ignore_signature=True).manifest  # just written, so unsigned: sign it next
    summary = {"bundle": str(path), "backbone": manifest.backbone, "modalities": list(manifest.modalities),
               "image_size": size, "files": sorted(p.name for p in path.iterdir()),
               "models": {key: entry.to_dict() for key, entry in manifest.models.items()}}
    if manifest.box_context != 1.0:
        summary["box_context"] = manifest.box_context
    if manifest.test_time_flip:
        summary["test_time_flip"] = True
    if manifest.model_card:
        summary["model_card"] = manifest.model_card
    gates = {key: value for key, value in manifest.metrics.items() if key.startswith("gate_")}
    if gates:
        summary["gate"] = {key: {k: value[k] for k in ("passed", "auc_drop", "agreement", "abs_dp")} for key, value in gates.items()}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {path} ({manifest.backbone}, {size}x{size}, modalities {','.join(manifest.modalities)}; "
               f"models {', '.join(f'{k}=' + (e.file or 'a backbone per modality') for k, e in manifest.models.items())})")
    for key, entry in manifest.models.items():
        for modality, branch in entry.branches.items():
            click.echo(f"  {key} branch {modality}: {branch.file} ({branch.details.get('architecture', '?')})")
    if manifest.model_card.get("source"):
        card = manifest.model_card
        click.echo(f"imported {card['source']['kind']} {card['source']['file']} as {card['architecture']}; "
                   f"outputs {card['outputs']['count']} ({card['outputs']['activation']}, malignant: "
                   f"{card['outputs']['malignant']}); CAM {card['cam_note']}")
    for key, value in gates.items():
        click.echo(f"gate {key[5:]}: passed, AUC drop {value['auc_drop']:+.4f}, agreement {value['agreement']:.4f}, "
                   f"max |dp| {value['abs_dp']['max']:.2e}")


def _import_branched(model_import, checkpoint: str, backbone: str | None, modalities: tuple[str, ...] | None,
                     image_size: int | None, malignant_index: str | None, mean: str | None, std: str | None,
                     channel_order: str | None, intended_use: str, target: Target):
    """A model with a backbone per modality -> ImportedModel; its branches name the modalities."""
    if backbone:
        raise InputError("--backbone does not apply to a model with a backbone per modality: each branch's "
                               "architecture is read from its keys")
    if target is not Target.ONNXRUNTIME:
        raise InputError("a model with a backbone per modality exports to --target onnxruntime only")
    options = _own_model_options(model_import, None, malignant_index, image_size, mean, std, channel_order, intended_use)
    imported = model_import.import_branched_model(checkpoint, options)
    if modalities and set(modalities) != set(imported.model.head.modalities):
        raise InputError(f"{checkpoint} has branches for {list(imported.model.head.modalities)}, but --modalities "
                               f"{','.join(modalities)} was asked for")
    return imported


def _own_model_options(model_import, modality: str | None, malignant_index: str | None, image_size: int | None,
                       mean: str | None, std: str | None, channel_order: str | None, intended_use: str):
    malignant = None
    if malignant_index:
        try:
            malignant = tuple(int(i) for i in malignant_index.split(","))
        except ValueError:
            raise click.UsageError(f"--malignant-index {malignant_index!r}; expected integers such as 1 or 2,3") from None
    return model_import.ImportOptions(
        modality=modality or "bmode", malignant=malignant, image_size=image_size,
        mean=model_import.parse_triple(mean, "--mean") if mean else None,
        std=model_import.parse_triple(std, "--std") if std else None,
        channel_order=channel_order.upper() if channel_order else None, intended_use=intended_use)


def _import_own_model(model_import, checkpoint: str, backbone: str | None, modalities: tuple[str, ...] | None,
                      image_size: int | None, malignant_index: str | None, mean: str | None, std: str | None,
                      channel_order: str | None, intended_use: str):
    """A torchvision or ONNX classifier the user trained elsewhere -> ImportedModel (see export.model_import)."""
    if modalities and len(modalities) != 1:
        raise click.UsageError(f"your own classifier classifies one pane; --modalities {','.join(modalities)} names "
                               f"{len(modalities)} (give one, e.g. --modalities bmode)")
    options = _own_model_options(model_import, modalities[0] if modalities else None, malignant_index, image_size,
                                 mean, std, channel_order, intended_use)
    imported = model_import.import_model(checkpoint, options)
    if backbone and backbone != imported.model.architecture:
        raise click.UsageError(f"{checkpoint} holds a {imported.model.architecture}, but --backbone {backbone} was asked for")
    return imported
