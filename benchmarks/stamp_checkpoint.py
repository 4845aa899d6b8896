"""Write the cross-validated figures, the decision threshold and the data's identity into the checkpoint of
the model trained on all data, so that ``edge-thyroid export`` carries them into the bundle's manifest.

    python benchmarks/stamp_checkpoint.py benchmarks/results/cv_resnet50.json runs/cv_resnet50/all/final.pt \\
        -o runs/cv_resnet50/all/shipped.pt

The threshold is Youden's on the pooled out-of-fold scores: every score comes from a fold model that did
not see the crop, and all of them are training data of the shipped model (so the threshold is chosen
inside the shipped model's training data, never on outside data).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cv_json", type=click.Path(exists=True, dir_okay=False))
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False))
def main(cv_json: str, checkpoint: str, out_path: str) -> None:
    """Stamp CV metrics + threshold + data sha256 into CHECKPOINT (written to --out)."""
    from edge_thyroid.export.checkpoint import load_checkpoint, save_checkpoint

    cv = json.loads(Path(cv_json).read_text())
    if not cv.get("out_of_fold"):
        raise click.ClickException(f"{cv_json}: not every fold is done (no pooled out-of-fold scores yet)")
    model, info, _ = load_checkpoint(checkpoint)
    summary = cv["summary"]
    info.threshold = {"value": float(cv["out_of_fold"]["youden_threshold"]), "method": "youden",
                      "chosen_on": f"pooled out-of-fold scores of {cv['folds']}-fold case-level cross-validation "
                                   f"({cv['out_of_fold']['crops']} crops)"}
    info.metrics = {
        "label_source": cv["label_source"],
        "cross_validation": {
            "folds": cv["folds"], "seeds": cv["seeds"], "data": cv["data"].get("path"),
            # scored as the bundle scores (export --test-time-flip), so the figures are the bundle's
            "test_time_flip": bool(cv.get("test_time_flip", False)),
            **{key: {"mean": value["mean"], "sd": value["sd"]} for key, value in summary.items()
               if isinstance(value, dict) and "sd" in value},
            "auc_per_fold": summary["auc"]["folds"],
            **({"auc_seed_sd": summary["auc_seed_sd"]} if "auc_seed_sd" in summary else {}),
            "out_of_fold_auc": cv["out_of_fold"]["auc"], "out_of_fold_auc_ci95": cv["out_of_fold"]["auc_ci95"],
        },
        "training": {
            "recipe": cv["recipe"],
            "data_csv_sha256": cv["data"].get("csv_sha256"),
            "data_files_sha256": cv["data"].get("files_sha256"),
            "data_rows": cv["data"].get("rows"),
            "command": "python benchmarks/cross_validate.py ... --also-all (see BENCHMARKS.md)",
        },
    }
    save_checkpoint(out_path, model, info)
    click.echo(json.dumps({"checkpoint": out_path, "threshold": info.threshold}, indent=1))


if __name__ == "__main__":
    main()
