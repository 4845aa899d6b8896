"""edge-thyroid export: checkpoint -> model bundle."""

from __future__ import annotations

import json

import click

from ..errors import EdgeThyroidError, MissingDependencyError

BACKBONES = ("resnet50", "densenet121", "vgg16", "googlenet")


def _import_export_tools():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "torch", "export", "edge-thyroid export") from None
    from ..export import bundle_export, checkpoint, models

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
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def export(checkpoint, output, backbone, modalities, image_size, random_init, seed, force, as_json) -> None:
    """Export CHECKPOINT (a torch state_dict with torchvision backbone keys + the fusion head, or a
    checkpoint written by edge-thyroid-train) to a model bundle: model.onnx with the preprocessing
    fused in (uint8 BGR frame + pane ROIs in, feature maps out), head.npz and manifest.json.
    """
    if bool(checkpoint) == bool(random_init):
        raise click.UsageError("give either CHECKPOINT or --random-init (exactly one)")
    bundle_export, ckpt, models = _import_export_tools()
    import torch

    modality_tuple = tuple(m.strip() for m in modalities.split(",")) if modalities else None
    provenance = {}
    trained, metrics, threshold = (), {}, None
    try:
        if random_init:
            torch.manual_seed(seed)
            model = models.MultimodalClassifier(backbone or "resnet50", modality_tuple or models.MODALITIES).eval()
            # A small head keeps untrained logits O(1), so p(malignant) is not saturated at 0 or 1.
            torch.nn.init.normal_(model.head.weight, std=1e-3)
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
            provenance["checkpoint"] = {"file": str(checkpoint), "sha256": ckpt.sha256_file(checkpoint)}
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise EdgeThyroidError(str(exc)) from None
    path = bundle_export.export_bundle(model, output, image_size=size, trained_modalities=trained,
                                       threshold=threshold, metrics=metrics, provenance=provenance, overwrite=force)
    summary = {"bundle": str(path), "backbone": model.backbone_name, "modalities": list(model.modalities),
               "image_size": size, "files": sorted(p.name for p in path.iterdir())}
    click.echo(json.dumps(summary) if as_json else f"wrote {path} ({model.backbone_name}, {size}x{size}, "
               f"modalities {','.join(model.modalities)})")
