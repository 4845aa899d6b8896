"""Markdown tables and a reliability diagram from cross-validation results (benchmarks/cross_validate.py).

    python benchmarks/report_cv.py benchmarks/results/cv_resnet50.json [more.json ...] \\
        --markdown benchmarks/results/cv.md --reliability docs/cv_reliability.png

The first file gets the per-fold table and the reliability diagram (its pooled out-of-fold scores); every
file gets a row in the comparison table (mean +- sd over folds; a run with fewer folds done says so), and
every later file a paired row against the first: the difference of each (fold, seed) model both runs
trained, so that the fold-to-fold spread (one fold is harder for every run) does not hide a shift.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


def _cell(summary: dict, key: str) -> str:
    value = summary.get(key)
    if not value:
        return "-"
    sd = value.get("sd")
    return f"{value['mean']:.3f} ± {sd:.3f}" if sd is not None else f"{value['mean']:.3f}"


def fold_table(cv: dict) -> list[str]:
    lines = ["| fold | val crops (benign) | AUC [95% DeLong CI] | AUC 1.2x | AUC 1.5x | AUC 2x | CAM in mask | mask area | "
             "sens / spec at train-side threshold | TI-RADS 2 benign |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for f in cv["per_fold"]:
        t2 = f"{f['tirads2_benign_rate']:.2f} of {f['tirads2_crops']}" if f.get("tirads2_benign_rate") is not None else "-"
        lines.append(f"| {f['fold']} (seed {f['seed']}) | {f['val_crops']} ({f['val_benign']}) | {f['auc']:.3f} "
                     f"[{f['auc_ci95'][0]:.3f}, {f['auc_ci95'][1]:.3f}] | {f['auc_margin_1.2']:.3f} | "
                     f"{f['auc_margin_1.5']:.3f} | {f['auc_margin_2.0']:.3f} | {f['cam_in_mask']:.2f} | "
                     f"{f['mask_area']:.2f} | {f['sensitivity']:.2f} / {f['specificity']:.2f} | {t2} |")
    s = cv["summary"]
    lines.append(f"| **mean ± sd** | | **{_cell(s, 'auc')}** | {_cell(s, 'auc_margin_1.2')} | {_cell(s, 'auc_margin_1.5')} | "
                 f"{_cell(s, 'auc_margin_2.0')} | {_cell(s, 'cam_in_mask')} | {_cell(s, 'mask_area')} | "
                 f"{_cell(s, 'sensitivity')} / {_cell(s, 'specificity')} | {_cell(s, 'tirads2_benign_rate')} |")
    return lines


def comparison_table(runs: list[tuple[str, dict]]) -> list[str]:
    lines = ["| run | folds done | AUC | AUC 1.2x | AUC 2x | CAM in mask | train-side AUC |", "|---|---|---|---|---|---|---|"]
    for name, cv in runs:
        s = cv["summary"]
        lines.append(f"| {name} | {len(cv['per_fold'])} of {cv['folds'] * len(cv['seeds'])} | {_cell(s, 'auc')} | "
                     f"{_cell(s, 'auc_margin_1.2')} | {_cell(s, 'auc_margin_2.0')} | {_cell(s, 'cam_in_mask')} | "
                     f"{_cell(s, 'auc_train_side')} |")
    return lines


PAIRED_KEYS = ("auc", "cam_in_mask", "tirads2_benign_rate")


def paired_differences(first: dict, other: dict, key: str) -> dict | None:
    """``other`` minus ``first`` for ``key`` over the (fold, seed) models both runs trained: pairs, mean, sd
    (n - 1), smallest and largest; None when they share none."""
    mine = {(f["fold"], f["seed"]): f.get(key) for f in first["per_fold"]}
    deltas = [f[key] - mine[(f["fold"], f["seed"])] for f in other["per_fold"]
              if mine.get((f["fold"], f["seed"])) is not None and f.get(key) is not None]
    if not deltas:
        return None
    values = np.asarray(deltas, np.float64)
    return {"pairs": len(values), "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "min": float(values.min()), "max": float(values.max())}


def _held_out_p(cv: dict) -> dict[tuple[int, int], dict[str, float]]:
    return {(r["fold"], r["seed"]): {s["image"]: float(s["p"]) for s in r["scores"]} for r in cv.get("scores", [])}


def score_agreement(first: dict, other: dict) -> dict | None:
    """How alike two runs score the same held-out crops, model by model: over the (fold, seed) models both
    trained, the Pearson correlation of their p on the crops both scored (mean and smallest over models) and
    the median |p difference| over every such crop; None when they share no scored model.

    Two runs of one recipe on different CPUs, or a knob that barely changes the model, show r near 1; the
    paired AUC difference alone cannot tell a reshuffled ranking from an unchanged one."""
    mine, theirs = _held_out_p(first), _held_out_p(other)
    correlations, differences = [], []
    for key in sorted(mine.keys() & theirs.keys()):
        crops = sorted(mine[key].keys() & theirs[key].keys())
        if len(crops) < 3:
            continue
        a = np.array([mine[key][c] for c in crops], np.float64)
        b = np.array([theirs[key][c] for c in crops], np.float64)
        if a.std() > 0 and b.std() > 0:
            correlations.append(float(np.corrcoef(a, b)[0, 1]))
        differences.extend(np.abs(b - a).tolist())
    if not correlations:
        return None
    return {"models": len(correlations), "r_mean": float(np.mean(correlations)), "r_min": float(np.min(correlations)),
            "abs_dp_median": float(np.median(differences))}


def paired_table(runs: list[tuple[str, dict]]) -> list[str]:
    base_name = runs[0][0]
    lines = [f"| run minus {base_name}, same fold and seed | pairs | AUC | CAM in mask | TI-RADS 2 benign | "
             "held-out p: r mean (smallest), median abs dp |",
             "|---|---|---|---|---|---|"]
    for name, cv in runs[1:]:
        cells, pairs = [], 0
        for key in PAIRED_KEYS:
            d = paired_differences(runs[0][1], cv, key)
            pairs = max(pairs, d["pairs"] if d else 0)
            cells.append("-" if d is None else f"{d['mean']:+.3f}" + (f" ± {d['sd']:.3f}" if d["sd"] is not None else "")
                         + f" ({d['min']:+.3f} to {d['max']:+.3f})")
        agreement = score_agreement(runs[0][1], cv)
        cells.append("-" if agreement is None else f"{agreement['r_mean']:.3f} ({agreement['r_min']:.3f}), "
                     f"{agreement['abs_dp_median']:.3f}")
        lines.append(f"| {name} | {pairs} | " + " | ".join(cells) + " |")
    return lines


def reliability_png(cv: dict, path: str | Path) -> Path:
    from edge_thyroid.evaluation_plots import plot_reliability

    labels = np.array([s["label"] for r in cv["scores"] for s in r["scores"]])
    scores = np.array([s["p"] for r in cv["scores"] for s in r["scores"]])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return plot_reliability(labels, scores, path, f"Out-of-fold, {len(labels)} crops",
                            ylabel="fraction malignant (TI-RADS-derived)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cv_json", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--name", "names", multiple=True, help="Row name per file (default: the file name).")
@click.option("--markdown", "markdown_out", default=None, type=click.Path(dir_okay=False))
@click.option("--reliability", "reliability_out", default=None, type=click.Path(dir_okay=False))
def main(cv_json, names, markdown_out, reliability_out) -> None:
    """Per-fold table of the first run, comparison of all runs, reliability diagram (pooled out-of-fold)."""
    runs = [(names[i] if i < len(names) else Path(p).stem, json.loads(Path(p).read_text())) for i, p in enumerate(cv_json)]
    first = runs[0][1]
    lines = [f"Labels: {first['label_source']}. Recipe: `{first['command']}`.", "", *fold_table(first), ""]
    if first["summary"].get("auc_by_seed"):
        by_seed = ", ".join(f"seed {seed} {v['mean']:.3f} ({v['folds_done']} folds)"
                            for seed, v in first["summary"]["auc_by_seed"].items())
        lines += [f"The mean ± sd row is over folds, each fold's seeds averaged first. Mean AUC by seed: {by_seed}; "
                  f"sd between seeds {first['summary']['auc_seed_sd']:.3f}.", ""]
    if first.get("out_of_fold"):
        o = first["out_of_fold"]
        seeds = len(first["seeds"])
        models = f"{first['folds']} different fold models" + (f", each crop's {seeds} seeds averaged" if seeds > 1 else "")
        lines += [f"Pooled out-of-fold ({o['crops']} crops, scores of {models}): AUC "
                  f"{o['auc']:.3f} [{o['auc_ci95'][0]:.3f}, {o['auc_ci95'][1]:.3f}]; Youden threshold "
                  f"{o['youden_threshold']:.3f}" + (" (the shipped model's)" if seeds == 1 else "")
                  + (f"; TI-RADS 2 crops below it {o['tirads2_benign_at_threshold']:.2f} of {o['tirads2_crops']} "
                     "(optimistic: the threshold is chosen on these scores)" if "tirads2_crops" in o else "") + ".", ""]
    if len(runs) > 1:
        lines += comparison_table(runs) + [""] + paired_table(runs) + [""]
    text = "\n".join(lines)
    if markdown_out:
        Path(markdown_out).write_text(text)
    if reliability_out and first.get("out_of_fold"):
        reliability_png(first, reliability_out)
    click.echo(text)


if __name__ == "__main__":
    main()
