"""edge-thyroid evaluate: a bundle or checkpoint over a labelled CSV, reported like a diagnostic study."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..dataset import Split
from .params import make_output_folder
from .trust_options import trust_option
from .runtime_options import backend_settings, gate_runtime_options


def split_options(function):
    """--split/--folds/--fold/--seed: the training run's case-level split (shared with compare)."""
    options = [
        click.option("--data", required=True, type=click.Path(dir_okay=False),
                     help="Labelled sample CSV (image,label,case_id[,modality,roi,label_source]); roi = x,y,w,h of "
                          "the nodule box in the image, or calipers (the box the image's measurement calipers give; "
                          "an image without them stops the run, naming it); empty: the whole image; e.g. "
                          "../shared/data/ddti/labels.csv."),
        click.option("--split", type=click.Choice(["auto", *(s.value for s in Split)]), default="auto",
                     show_default=True,
                     help="Which rows: a side of the case-level split (val: never seen in training) or all. auto: "
                          "the val side only when --data is the CSV the model was trained on (its sha256 is in the "
                          "bundle's manifest), else all rows. The rows used and why are always printed."),
        click.option("--label-source", type=click.Choice(["tirads", "pathology"]), default=None,
                     help="What the labels are, for every row (default: the CSV's label_source column; a tirads "
                          "column means TI-RADS)."),
        click.option("--folds", type=int, default=4, show_default=True, help="Case-level folds of the split."),
        click.option("--fold", type=int, default=0, show_default=True, help="The validation fold."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split."),
        click.option("--threads", type=int, default=None, help="Inference threads."),
        click.option("--resamples", type=int, default=2000, show_default=True, help="Case-level bootstrap resamples."),
        click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def split_spec(split: str, folds: int, fold: int, seed: int):
    """--split as the evaluation wants it: auto -> None (decided from the model's training record)."""
    from ..evaluation import SplitSpec

    return SplitSpec(None if split == "auto" else Split(split), folds, fold, seed)


@click.command()
@click.argument("model_path", metavar="BUNDLE_OR_CHECKPOINT", type=click.Path())
@split_options
@click.option("--model", "model_key", default=None, help="Model key inside a bundle (default: the bundle's default).")
@click.option("--sensitivity-target", type=float, default=None,
              help="Choose the threshold as the highest one reaching this sensitivity on the validation side "
                   "(default: Youden's J on the validation side).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Write roc.png and calibration.png into this folder.")
@click.option("--scores", "scores_csv", type=click.Path(dir_okay=False), default=None,
              help="Also write per-crop scores (image, case_id, label, score) to this CSV.")
@trust_option
@gate_runtime_options
def evaluate(model_path, data, split, folds, fold, seed, threads, resamples, as_json, label_source, model_key,
             sensitivity_target, plots_dir, scores_csv, **backend_kwargs) -> None:
    """Evaluate BUNDLE_OR_CHECKPOINT on the labelled crops of --data: ROC AUC with 95% CIs (DeLong and
    a case-level bootstrap), accuracy / sensitivity / specificity / PPV / NPV and the confusion matrix
    at the model's own threshold, a threshold re-chosen on the validation side only (Youden, or
    --sensitivity-target), calibration (Brier, ECE) and optional ROC / calibration plots.

    A bundle runs through the engine (no torch); a checkpoint (.pt) needs the export extra. Each row
    is a whole image, or with a roi column the nodule box in a full frame; its modality from the CSV.
    The DDTI labels are TI-RADS categories, not pathology. A bundle with a familiarity reference
    ('edge-thyroid familiarize') also reports how many rows are unlike its training crops and the AUC
    on the others; --scores then adds familiar and distance columns.

    \b
    Examples:
      edge-thyroid evaluate runs/bundle --data ../shared/data/ddti/labels.csv
      edge-thyroid evaluate runs/resnet50_final/best.pt --data labels.csv --plots plots/ --json
      edge-thyroid evaluate runs/bundle --data labels.csv --sensitivity-target 0.9
    """
    import csv

    from ..evaluation import ThresholdRule, evaluate_model

    if plots_dir:
        make_output_folder(plots_dir, "--plots")
    if scores_csv:
        make_output_folder(Path(scores_csv).parent, "--scores")
    rule = ThresholdRule.SENSITIVITY if sensitivity_target is not None else ThresholdRule.YOUDEN
    report, scored = evaluate_model(model_path, data, split_spec(split, folds, fold, seed), model=model_key,
                                    rule=rule, sensitivity_target=sensitivity_target, plots_dir=plots_dir,
                                    threads=threads, resamples=resamples, progress=True, label_source=label_source,
                                    backend_options=backend_settings(backend_kwargs))
    if scores_csv:
        with open(scores_csv, "w", newline="") as handle:
            columns = ["image", "case_id", "label", "score"] + (["familiar", "distance"] if scored.familiarity else [])
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(scored.rows())
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
