"""Supervised pre-training on BUSI breast ultrasound (malignant vs benign + normal), before fine-tuning
on thyroid crops with ``train.py --init``.

    python -m edge_thyroid.export.pretrain --out runs/pretrain_busi_resnet50 --threads 2

No ImageNet weights exist on the build machine, and DDTI has only ~270 labelled training crops. BUSI
adds 779 B-mode images whose malignancy cues (hypo-echogenicity, irregular or spiculated margins,
taller-than-wide shape, posterior shadowing) overlap with TI-RADS features. Same preprocessing, same
augmentation and the same model class as the thyroid run, so the whole model (backbone and head)
transfers. BUSI has no patient ids: its hold-out is by image and only steers early stopping.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from edge_thyroid.dataset import Sample

from .train import config_from_options, fit, recipe_options

# BUSI ships one image under both labels (benign (433) == malignant (145)): drop both copies.
BUSI_DUPLICATES = frozenset({"benign (433).png", "malignant (145).png"})


def busi_samples(csv_path: str | Path) -> list[Sample]:
    """BUSI rows as samples: malignant -> 1, benign and normal -> 0; case_id = the image name."""
    import csv

    csv_path = Path(csv_path)
    samples = []
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            name = Path(row["image"]).name
            if name in BUSI_DUPLICATES:
                continue
            label = row["label"].strip().lower()
            if label not in ("benign", "malignant", "normal"):
                raise ValueError(f"{csv_path}: label {label!r} is not benign/malignant/normal")
            samples.append(Sample(image=csv_path.parent / row["image"], label=int(label == "malignant"),
                                  case_id=name, modality=(row.get("modality") or "bmode").strip() or "bmode"))
    if not samples:
        raise ValueError(f"{csv_path}: no rows")
    return samples


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_csv", default="../shared/data/busi/labels.csv", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="BUSI labels.csv (image, label, modality).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--holdout", type=float, default=0.15, show_default=True, help="Fraction of images held out.")
@recipe_options
def main(data_csv, out_dir, holdout, resume, **options) -> None:
    """Pre-train a backbone + head on BUSI; fine-tune it afterwards with train.py --init OUT/best.pt."""
    config = config_from_options(options)
    config.label_source = "BUSI biopsy-confirmed labels (malignant vs benign + normal), breast ultrasound"
    samples = busi_samples(data_csv)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(samples))
    n_val = int(round(holdout * len(samples)))
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    result = fit(config, train, val, Path(out_dir), resume=resume,
                 split_info={"data": str(data_csv), "holdout": holdout, "seed": config.seed})
    click.echo(json.dumps({"best_val_auc": result.best_auc, "best_epoch": result.best_epoch,
                           "checkpoint": str(result.checkpoint)}))


if __name__ == "__main__":
    main()
