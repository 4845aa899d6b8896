"""edge-thyroid familiarize: give a bundle a reference of its training crops' features, so every result
says how like them the pane it classified looks."""

from __future__ import annotations

import json

import click

from .trust_options import trust_option


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="The CSV the model was trained on (image, label, case_id[, modality, roi]); unlabelled rows "
                   "count too, e.g. ../shared/data/ddti/labels.csv.")
@click.option("--fold", type=int, default=None,
              help="Use only the training side of this case-level fold (a cross-validation fold model); "
                   "default: every row (a model trained on all of them).")
@click.option("--folds", type=int, default=4, show_default=True, help="Case-level folds of the split (with --fold).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split (with --fold).")
@click.option("--neighbours", type=click.IntRange(1, 100), default=5, show_default=True,
              help="k: a pane's distance is to its k-th nearest training crop.")
@click.option("--quantile", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="The threshold: this quantile of the training crops' distances with their own case left out "
                   "(about 1 - QUANTILE of a new patient's crops like the training ones are flagged).")
@click.option("--threads", type=int, default=None, help="Inference threads.")
@click.option("--json", "as_json", is_flag=True, help="Print what was recorded as JSON.")
@trust_option
def familiarize(bundle, data, fold, folds, seed, neighbours, quantile, threads, as_json) -> None:
    """Write BUNDLE's familiarity reference: the pooled features of the crops its model was trained on,
    computed by the bundle itself, and a distance threshold. From then on every result (classify,
    stream records, the live view) carries "familiarity": the distance of its pane's features to the
    k-th nearest training crop (1 - cosine similarity) and whether it is past the threshold: an
    inverted, blank or breast image, or another scanner's look far from the training crops, is marked
    unfamiliar. p and the decision are unchanged: it is a flag, not a filter.

    The manifest records the reference and its sha256; a signature of the old manifest is removed, so
    sign the bundle again ('edge-thyroid sign').

    \b
    Examples:
      edge-thyroid familiarize runs/bundle --data ../shared/data/ddti/labels.csv
      edge-thyroid familiarize runs/fold0 --data ../shared/data/ddti/labels.csv --fold 0
    """
    from ..familiarize import familiarize as build

    reference, details, unsigned = build(bundle, data, folds=None if fold is None else folds,
                                         fold=fold or 0, seed=seed, neighbours=neighbours, quantile=quantile,
                                         threads=threads, progress=not as_json)
    recorded = {"bundle": str(bundle), "modality": reference.modality, "neighbours": reference.neighbours,
                "threshold": reference.threshold, **details, "signature_removed": unsigned}
    if as_json:
        click.echo(json.dumps(recorded))
        return
    click.echo(f"{bundle}: familiarity reference of {details['crops']} {reference.modality} crops "
               f"({details['cases']} cases, {details['data']['rows']}); k={reference.neighbours}, threshold "
               f"{reference.threshold:.4f} (the {quantile:g} quantile of their leave-case-out distances)")
    if unsigned:
        click.echo(f"note: the bundle's signature covered the old manifest and was removed; sign it again "
                   f"(edge-thyroid sign {bundle} --key KEY.pem)", err=True)
