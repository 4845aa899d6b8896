"""AUC by nodule-box margin when the runtime grows every box by the bundle's context (Manifest.box_context).

    python benchmarks/box_context.py --data runs/ddti_pack.npz --run runs/cv_resnet50_pt --seeds 0,1,2 \\
        --json benchmarks/results/box_context.json --markdown benchmarks/results/box_context.md

An operator's or a caliper box hugs the nodule more or less tightly; the goal is an answer that does not
depend on it (AUC at margin 2x within 0.03 of margin 1.2x). For every held-out fold of a finished
cross-validation run (benchmarks/cross_validate.py; its fold models, no training here) the held-out crops
are scored on the box at margin m around the nodule's mask, grown by each context c exactly as the
runtime grows it (frames.widen_box, cut to the crop), for m in 1.2, 1.5, 2 and c in the given contexts.
Several seeds: each crop's p is the mean of its seeds' fold models (as cross_validate.py pools them).
Reported per fold and as mean +- sd over folds; labels are TI-RADS-derived, not pathology.

Note what the crops allow: DDTI crops are 300 px around a nodule of median extent 0.67 of the side, so a
box much past ~1.6x the nodule reaches the crop's edge and becomes the stock crop; a full screen would
show more tissue there.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import fold_model_dir, recorded_mirror_roll  # noqa: E402

MARGINS = (1.2, 1.5, 2.0)


def fold_scores(model, images, masks, margin: float, context: float, image_size: int,
                mirror_roll: int | None = None) -> np.ndarray:
    """p of each crop on its nodule box at ``margin``, grown ``context`` times within the crop;
    ``mirror_roll`` not None: scored with the mirror-image average (export/test_time.py)."""
    from edge_thyroid.export.nodule_training import evaluation_box, score
    from edge_thyroid.frames import widen_box

    boxes = []
    for image, mask in zip(images, masks):
        box = evaluation_box(mask, margin)
        boxes.append(None if box is None else widen_box(box, context, (0, 0, image.shape[1], image.shape[0])))
    flip = {} if mirror_roll is None else {"test_time_flip": True, "mirror_roll": mirror_roll}
    return score(model, images, boxes, image_size, **flip)[0]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A cross_validate.py run folder (foldK_seedS/final.pt).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds whose fold models to average.")
@click.option("--contexts", default="1,1.25,1.5", show_default=True, help="Comma-separated box contexts to compare.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--test-time-flip", is_flag=True,
              help="Score as a bundle exported with --test-time-flip does, each fold model with the roll its "
                   "cross_validate.py --test-time-flip result recorded.")
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
@click.option("--markdown", "md_out", default=None, type=click.Path(dir_okay=False))
def main(data, run_dir, seeds, contexts, folds, test_time_flip, threads, json_out, md_out) -> None:
    """AUC at box margins 1.2x / 1.5x / 2x for each box context, from a cross-validation run's fold models."""
    import torch

    from edge_thyroid.bundle import MAX_BOX_CONTEXT, MIN_BOX_CONTEXT
    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import fold_assignment
    from edge_thyroid.metrics import roc_auc

    if threads:
        torch.set_num_threads(threads)
    seed_list = [int(s) for s in seeds.split(",")]
    context_list = [float(c) for c in contexts.split(",")]
    bad = [c for c in context_list if not MIN_BOX_CONTEXT <= c <= MAX_BOX_CONTEXT]
    if bad:
        raise click.BadParameter(f"contexts must be between {MIN_BOX_CONTEXT} and {MAX_BOX_CONTEXT}, got {bad}",
                                 param_hint="--contexts")
    pack = pack_for(data)
    assignment = fold_assignment(pack, folds)
    started = time.time()
    table: dict[str, dict[str, list[float]]] = {str(c): {str(m): [] for m in MARGINS} for c in context_list}
    for fold in range(folds):
        index = np.flatnonzero((assignment == fold) & (pack.labels >= 0))
        labels = pack.labels[index].astype(int)
        images, masks = [pack.images[i] for i in index], [pack.masks[i] for i in index]
        summed = {(c, m): np.zeros(len(index)) for c in context_list for m in MARGINS}
        for seed in seed_list:
            path = fold_model_dir(run_dir, fold, seed) / "final.pt"
            if not path.is_file():
                raise click.ClickException(f"{path} is missing; expected a finished cross_validate.py run with --seeds {seeds}")
            roll = recorded_mirror_roll(path.parent) if test_time_flip else None
            model, info, _ = load_checkpoint(path)
            model.eval()
            with torch.no_grad():
                for c in context_list:
                    for m in MARGINS:
                        summed[(c, m)] += fold_scores(model, images, masks, m, c, info.image_size, roll)
        for (c, m), total in summed.items():
            table[str(c)][str(m)].append(roc_auc(labels, total / len(seed_list)))
        click.echo(f"fold {fold}: " + "  ".join(f"c={c} " + "/".join(f"{table[str(c)][str(m)][-1]:.3f}" for m in MARGINS)
                                                for c in context_list), err=True)
    summary = {}
    for c in context_list:
        per_margin = {str(m): np.array(table[str(c)][str(m)]) for m in MARGINS}
        gap = per_margin["2.0"] - per_margin["1.2"]
        summary[str(c)] = {**{f"auc_margin_{m}": {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "per_fold": v.tolist()}
                              for m, v in per_margin.items()},
                           "gap_2x_minus_1.2x": {"mean": float(gap.mean()), "sd": float(gap.std(ddof=1)), "per_fold": gap.tolist()}}
    payload = {"what": "AUC at nodule-box margins when the runtime grows each box by the bundle's context",
               "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "run": str(run_dir), "seeds": seed_list, "folds": folds, "margins": list(MARGINS),
               "test_time_flip": test_time_flip,
               "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
               "command": " ".join(sys.argv), "seconds": round(time.time() - started, 1), "summary": summary}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    lines = [f"AUC on the nodule box at a fixed margin, grown by the box context as the runtime grows it; mean +- sd over "
             f"{folds} case-level folds (seeds {seeds} averaged per crop"
             + ("; each scored with the mirror-image average" if test_time_flip else "")
             + "); labels TI-RADS-derived, not pathology. "
             f"Command: `{payload['command']}`.", "",
             "| box context | AUC 1.2x | AUC 1.5x | AUC 2x | gap 2x - 1.2x |", "|---|---|---|---|---|"]
    for c, row in summary.items():
        cells = [f"{row[f'auc_margin_{m}']['mean']:.3f} +- {row[f'auc_margin_{m}']['sd']:.3f}" for m in ("1.2", "1.5", "2.0")]
        gap = row["gap_2x_minus_1.2x"]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {gap['mean']:+.3f} +- {gap['sd']:.3f} |")
    text = "\n".join(lines) + "\n"
    if md_out:
        Path(md_out).write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
