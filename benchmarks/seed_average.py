"""What three seeds are worth when combined: averaging their predictions, or their weights.

    python benchmarks/seed_average.py --data runs/ddti_pack.npz --cv benchmarks/results/cv_resnet50_cyst_tta.json \\
        --run runs/cv_resnet50_cyst --json benchmarks/results/seed_average_cyst.json

A cross-validation with several seeds trains each fold's recipe several times from the same pre-trained
start. Two ways to ship more than one of them:

* the **prediction average** (an ensemble): every held-out crop's p averaged over the fold's seed models;
  read straight from the cross-validation's saved out-of-fold scores. It costs one forward pass per
  member at run time, so three members triple the latency of every pane;
* the **weight average** (a uniform "soup": every parameter and buffer, batch-norm statistics included,
  averaged over the fold's seed models): one model, no run-time cost. Scored exactly as
  cross_validate.py scores a fold (``--test-time-flip`` when the run was), so its figures sit beside the
  single models'.

Each is reported per fold and as mean +- sd over folds beside the seeds' mean single-model AUC. Labels are
TI-RADS-derived, not pathology.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import MARGINS, evaluate_fold, fold_model_dir, mean_sd, pooled_out_of_fold  # noqa: E402


def prediction_average_by_fold(record: dict) -> dict[int, dict]:
    """Per fold: each seed's AUC and the AUC of the crops' p averaged over the fold's seeds (the
    cross-validation's own out-of-fold pooling, applied to one fold)."""
    from edge_thyroid.metrics import delong_auc_ci

    blocks: dict[int, list[dict]] = {}
    for block in record["scores"]:
        blocks.setdefault(block["fold"], []).append(block)
    out = {}
    for fold, runs in sorted(blocks.items()):
        singles = [delong_auc_ci(np.array([r["label"] for r in run["scores"]]),
                                 np.array([r["p"] for r in run["scores"]])).auc for run in runs]
        averaged = pooled_out_of_fold(runs)
        out[fold] = {"seeds": len(runs), "auc_by_seed": singles, "auc_seed_mean": float(np.mean(singles)),
                     "auc_prediction_average": averaged["auc"], "auc_prediction_average_ci95": averaged["auc_ci95"]}
    return out


def weight_average(state_dicts: list[dict]) -> dict:
    """The uniform soup: floating-point entries averaged (in float64, cast back); integer buffers such as
    batch-norm's step counters taken from the first model."""
    first = state_dicts[0]
    if any(set(s) != set(first) for s in state_dicts[1:]):
        raise ValueError("the models do not share one architecture: their state_dict keys differ")
    return {key: (sum(s[key].double() for s in state_dicts) / len(state_dicts)).to(value.dtype)
            if value.is_floating_point() else value for key, value in first.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV of the run.")
@click.option("--cv", "cv_json", required=True, type=click.Path(exists=True, dir_okay=False), help="cross_validate.py results JSON (several seeds).")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="The run folder (foldK_seedS/final.pt) for the weight average; without it only the prediction average.")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, cv_json, run_dir, threads, json_out) -> None:
    """Prediction average and weight average of each fold's seed models, against the single models."""
    record = json.loads(Path(cv_json).read_text())
    by_fold = prediction_average_by_fold(record)
    if any(f["seeds"] < 2 for f in by_fold.values()):
        raise click.ClickException(f"{cv_json}: every fold needs at least 2 seeds, got "
                                   f"{ {k: v['seeds'] for k, v in by_fold.items()} }")
    if run_dir:
        import torch

        from edge_thyroid.export.checkpoint import load_checkpoint
        from edge_thyroid.export.datapack import pack_for
        from edge_thyroid.export.nodule_training import fold_assignment

        torch.set_num_threads(threads)
        pack = pack_for(data)
        assignment = fold_assignment(pack, record["folds"])
        image_size = int(record["recipe"]["image_size"])
        flip = bool(record.get("test_time_flip"))
        for fold in by_fold:
            started = time.time()
            checkpoints = [fold_model_dir(run_dir, fold, seed) / "final.pt" for seed in record["seeds"]]
            missing = [str(c) for c in checkpoints if not c.is_file()]
            if missing:
                raise click.ClickException(f"missing fold models: {', '.join(missing)}; expected the run that wrote {cv_json}")
            models = [load_checkpoint(c)[0] for c in checkpoints]
            soup = models[0]
            soup.load_state_dict(weight_average([m.state_dict() for m in models]))
            soup.eval()
            result = evaluate_fold(soup, pack, np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold),
                                   image_size, flip)
            by_fold[fold]["weight_average"] = {key: result[key] for key in (
                "auc", "auc_ci95", "cam_in_mask", "tirads2_benign_rate", "threshold",
                *(f"auc_margin_{m}" for m in MARGINS))}
            click.echo(f"[fold {fold}] seeds {np.round(by_fold[fold]['auc_by_seed'], 3).tolist()}  prediction average "
                       f"{by_fold[fold]['auc_prediction_average']:.3f}  weight average {result['auc']:.3f} "
                       f"({time.time() - started:.0f} s)", err=True)

    summary = {"auc_seed_mean": mean_sd([f["auc_seed_mean"] for f in by_fold.values()]),
               "auc_prediction_average": mean_sd([f["auc_prediction_average"] for f in by_fold.values()])}
    if run_dir:
        summary["auc_weight_average"] = mean_sd([f["weight_average"]["auc"] for f in by_fold.values()])
        summary["cam_in_mask_weight_average"] = mean_sd([f["weight_average"]["cam_in_mask"] for f in by_fold.values()])
    payload = {"what": "seed models combined by prediction average and by weight average, per fold",
               "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "cv": str(cv_json), "run": run_dir, "seeds": record["seeds"], "test_time_flip": record.get("test_time_flip"),
               "command": " ".join(sys.argv), "summary": summary, "per_fold": {str(k): v for k, v in by_fold.items()}}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    click.echo(" | ".join(f"{k} {v['mean']:.3f} +- {v['sd']:.3f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
