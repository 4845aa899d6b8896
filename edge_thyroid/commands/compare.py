"""edge-thyroid compare: DeLong's paired test of two models' ROC AUCs on the same crops."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .evaluate import split_options, split_spec
from .params import make_output_folder
from .trust_options import trust_option


@click.command()
@click.argument("model_a", metavar="A", type=click.Path())
@click.argument("model_b", metavar="B", type=click.Path())
@split_options
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write both ROC curves to this PNG.")
@trust_option
def compare(model_a, model_b, data, split, folds, fold, seed, threads, resamples, as_json, label_source, plot) -> None:
    """Compare two models (bundles or checkpoints) on the same labelled crops: AUC of each, DeLong's
    test for two correlated ROC curves (paired, as in the reference study) and, as a cross-check, a
    paired case-level bootstrap of the AUC difference.

    \b
    Example:
      edge-thyroid compare runs/resnet50_final/best.pt runs/densenet121/best.pt \\
          --data ../shared/data/ddti/labels.csv --split val
    """
    from ..evaluation import compare_models

    if plot:
        make_output_folder(Path(plot).parent, "--plot")
    report = compare_models(model_a, model_b, data, split_spec(split, folds, fold, seed), threads=threads,
                            resamples=resamples, progress=True, plot=plot, label_source=label_source)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
