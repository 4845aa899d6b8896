"""What teaching "an anechoic cyst is benign" costs on dark and partly cystic malignant nodules.

    python benchmarks/cyst_tradeoff.py --data runs/ddti_pack.npz \\
        --before benchmarks/results/cv_resnet50_tta.json --after benchmarks/results/cv_resnet50_cyst_tta.json \\
        --json benchmarks/results/cyst_tradeoff.json

Marked hypoechogenicity is a suspicious TI-RADS feature and a partly cystic nodule can still carry
others, so a model that learnt "dark means benign" would be dangerous. From two finished
cross-validations (their out-of-fold scores: every crop scored by fold models that did not see it) this
compares, on DDTI's malignant-labelled crops grouped by what their annotated mask shows
(export/descriptors.py): the darkest quarter by echogenicity against the surrounding tissue, the rest,
and those whose nodule is more than 30% anechoic: mean p and the share called malignant at each fold
model's own train-side threshold (each crop's seeds averaged). Labels are TI-RADS-derived, not pathology.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import out_of_fold_by_crop  # noqa: E402

ANECHOIC_SHARE = 0.3


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV.")
@click.option("--before", required=True, type=click.Path(exists=True, dir_okay=False), help="cross_validate.py JSON, the recipe without cysts.")
@click.option("--after", required=True, type=click.Path(exists=True, dir_okay=False), help="cross_validate.py JSON, with --p-cyst.")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, before, after, json_out) -> None:
    """Mean p and share called malignant, before and after, for dark and partly cystic malignant crops."""
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.descriptors import DESCRIPTOR_NAMES, descriptor_table

    pack = pack_for(data)
    echo, anechoic = DESCRIPTOR_NAMES.index("log_echogenicity"), DESCRIPTOR_NAMES.index("anechoic_fraction")
    malignant = np.flatnonzero(pack.labels == 1)
    table = descriptor_table(pack.images[malignant], pack.masks[malignant])
    crops = [(Path(str(pack.names[i])).stem, float(values[echo]), float(values[anechoic]))
             for i, values in zip(malignant, table) if np.isfinite(values).all()]
    crops.sort(key=lambda c: c[1])
    quarter = len(crops) // 4
    groups = {"darkest quarter (echogenicity)": crops[:quarter], "other malignant": crops[quarter:],
              f"more than {ANECHOIC_SHARE:.0%} anechoic": [c for c in crops if c[2] > ANECHOIC_SHARE]}
    runs = {"before": out_of_fold_by_crop(Path(before)), "after": out_of_fold_by_crop(Path(after))}
    table = {}
    for name, members in groups.items():
        keys = [c[0] for c in members]
        table[name] = {"crops": len(keys), **{
            run: {"mean_p": float(np.mean([p[k] for k in keys])), "called_malignant": float(np.mean([c[k] for k in keys]))}
            for run, (p, c) in runs.items()}}
        row = table[name]
        click.echo(f"{name}: {len(keys)} crops, mean p {row['before']['mean_p']:.3f} -> {row['after']['mean_p']:.3f}, "
                   f"called malignant {row['before']['called_malignant']:.3f} -> {row['after']['called_malignant']:.3f}")
    payload = {"what": "out-of-fold scores of malignant-labelled DDTI crops by what their annotated mask shows",
               "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "before": str(before), "after": str(after), "command": " ".join(sys.argv), "groups": table}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
