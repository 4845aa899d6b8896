"""Do the fold models rank held-out crops better with batch-norm statistics recomputed for their own weights?

    python benchmarks/bn_recalibration.py --data runs/ddti_pack.npz --cv benchmarks/results/cv_resnet50_cyst_seed0_intel.json \\
        --run runs/rank_base --json benchmarks/results/bn_recalibration.json

The recipe ships the weight average (EMA) of its last steps with the batch-norm statistics of the live
model at the last step (export/batchnorm.py says why that is a mismatch). For every fold model of a
finished cross-validation run (benchmarks/cross_validate.py; no training here) the statistics are
recomputed two ways and the model is scored exactly as the cross-validation scores it (cross_validate.py
``evaluate_fold``: stock crops, the mirror-image average when the run used it, the train-side Youden
threshold):

* ``training_draws``: one further epoch of the recipe's own training draws for that fold (the
  class-balanced sampler, the unlabelled crops, synthetic cysts and every augmentation, drawn as the epoch
  after the last would be), forward only;
* ``stock_crops``: the fold's training-side crops (labelled or not), un-augmented, once each.

Neither reads a held-out crop. Reported per fold, paired with the model as saved (the run's own figures),
and as mean +- sd over folds. Labels are TI-RADS-derived, not pathology.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import cpu_kind, evaluate_fold, fold_model_dir, mean_sd  # noqa: E402

WAYS = ("training_draws", "stock_crops")
KEPT = ("auc", "auc_ci95", "cam_in_mask", "tirads2_benign_rate", "threshold", "sensitivity", "specificity",
        "auc_margin_1.2", "auc_margin_2.0")
UNSUPPORTED = ("replay", "pseudo_label_teachers", "descriptor_weight", "mixup_alpha")


def recipe_from_record(saved: dict, seed: int):
    """The NoduleRecipe a cross-validation run recorded, for one seed; a ClickException for the knobs whose
    extra inputs this check does not rebuild."""
    from edge_thyroid.export.nodule_training import NoduleRecipe

    used = [k for k in UNSUPPORTED if saved.get(k)]
    if used:
        raise click.ClickException(f"the run's recipe uses {', '.join(used)}; this check rebuilds only the "
                                   f"recipe's own draws (expected a run without {', '.join(UNSUPPORTED)})")
    return replace(NoduleRecipe.from_dict(saved), seed=seed)


def training_draw_batches(pack, train_index: np.ndarray, recipe):
    """Pixel batches of the epoch after the recipe's last, drawn for ``train_index`` as training draws them."""
    import torch

    from edge_thyroid.export.nodule_training import NoduleBatches, epoch_draws, feature_grid

    labelled = train_index[pack.labels[train_index] >= 0]
    unlabelled = train_index[pack.labels[train_index] < 0]
    draws = epoch_draws(pack.labels, labelled, unlabelled, recipe, recipe.epochs)
    batch = recipe.batch_size + (recipe.unlabelled_per_batch if len(unlabelled) else 0)
    dataset = NoduleBatches(pack, draws, recipe, feature_grid(recipe.backbone, recipe.image_size), recipe.epochs)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=True)
    return (item[0] for item in loader)


def stock_crop_batches(pack, train_index: np.ndarray, image_size: int, batch: int = 32):
    """The training side's crops as the model scores them (no augmentation), ``batch`` at a time."""
    import torch

    from edge_thyroid.export.nodule_training import to_pixels
    from edge_thyroid.kernels.reference import PreprocessSpec

    spec = PreprocessSpec(image_size=image_size)
    for start in range(0, len(train_index), batch):
        yield torch.from_numpy(np.stack([to_pixels(pack.images[i], spec) for i in train_index[start:start + batch]]))


def recalibrated(checkpoint: Path, batches) -> object:
    """The fold model at ``checkpoint`` with its batch-norm statistics recomputed on ``batches`` (B-mode path)."""
    from edge_thyroid.export.batchnorm import recalibrate_batchnorm
    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.guidance import GuidedClassifier

    model = load_checkpoint(checkpoint)[0]
    recalibrate_batchnorm(model, batches, forward=GuidedClassifier(model, "bmode"))
    return model.eval()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV of the run.")
@click.option("--cv", "cv_json", required=True, type=click.Path(exists=True, dir_okay=False),
              help="cross_validate.py results JSON of the run (its recipe, folds and figures as saved).")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The run folder (foldK_seedS/final.pt).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, cv_json, run_dir, threads, json_out) -> None:
    """Each fold model scored with batch-norm statistics recomputed, paired with the model as saved."""
    import torch

    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import fold_assignment

    record = json.loads(Path(cv_json).read_text())
    models = [(f["fold"], f["seed"]) for f in record["per_fold"]]
    checkpoints = {key: fold_model_dir(run_dir, *key) / "final.pt" for key in models}
    missing = [str(c) for c in checkpoints.values() if not c.is_file()]
    if not models or missing:
        raise click.ClickException(f"missing fold models: {', '.join(missing) or 'the results hold no fold'}; "
                                   f"expected the run that wrote {cv_json}")
    torch.set_num_threads(threads)
    pack = pack_for(data)
    assignment = fold_assignment(pack, record["folds"])
    flip = bool(record.get("test_time_flip"))
    saved = {(f["fold"], f["seed"]): f for f in record["per_fold"]}
    per_model = []
    for fold, seed in models:
        started = time.time()
        recipe = recipe_from_record(record["recipe"], seed)
        train_index, val_index = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
        row = {"fold": fold, "seed": seed, "as_saved": {k: saved[(fold, seed)].get(k) for k in KEPT}}
        sources = {"training_draws": lambda: training_draw_batches(pack, train_index, recipe),
                   "stock_crops": lambda: stock_crop_batches(pack, train_index, recipe.image_size)}
        for way in WAYS:
            model = recalibrated(checkpoints[(fold, seed)], sources[way]())
            result = evaluate_fold(model, pack, train_index, val_index, recipe.image_size, flip)
            row[way] = {k: result.get(k) for k in KEPT}
        per_model.append(row)
        click.echo(f"[fold {fold} seed {seed}] AUC as saved {row['as_saved']['auc']:.3f}  "
                   + "  ".join(f"{way} {row[way]['auc']:.3f}" for way in WAYS)
                   + f"  ({time.time() - started:.0f} s)", err=True)

    summary = {}
    for way in ("as_saved", *WAYS):
        summary[way] = {key: mean_sd([r[way][key] for r in per_model]) for key in ("auc", "cam_in_mask")
                        if all(r[way].get(key) is not None for r in per_model)}
    for way in WAYS:
        deltas = [r[way]["auc"] - r["as_saved"]["auc"] for r in per_model]
        summary[way]["auc_minus_as_saved"] = mean_sd(deltas)
        summary[way]["models_higher"] = int(sum(d > 0 for d in deltas))
    payload = {"what": "fold models with batch-norm statistics recomputed, paired with the models as saved",
               "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "cv": str(cv_json), "run": run_dir, "test_time_flip": flip, "command": " ".join(sys.argv),
               "machine": cpu_kind(), "summary": summary, "per_model": per_model}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    click.echo(" | ".join(f"{way} AUC {summary[way]['auc']['mean']:.3f}" for way in ("as_saved", *WAYS)))


if __name__ == "__main__":
    main()
