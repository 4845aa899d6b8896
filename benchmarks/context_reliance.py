"""How much a fold model's answer depends on what lies around the nodule: held-out crops moved onto other
held-out crops' surroundings.

    python benchmarks/context_reliance.py --data runs/ddti_pack.npz --run runs/cv_base --seeds 0 \\
        --test-time-flip --json benchmarks/results/context_reliance.json

Another hospital's nodules sit in other necks, scanned with other presets and marked with other
furniture. A model that reads the nodule gives a nodule the same answer whatever surrounds it. For every
held-out fold of a finished cross-validation run (benchmarks/cross_validate.py; its fold models, no
training here) each held-out labelled crop keeps its nodule and a ring of its own tissue and takes the rest
from another held-out crop of the same fold (export/augment.py ``swap_background``: the donor moved so
the nodules' centres meet, its own nodule inpainted, brightness matched at the ring so relative
echogenicity stays). Donors are a fixed derangement of the fold's crops (seed 0), and each swap has its own
fixed generator, so two runs see the same inputs. Reported per fold and as mean +- sd over folds:

* context reliance: the median |p(swapped) - p(as is)|;
* donor pull: mean p change when the donor is malignant minus when it is benign (what the surroundings
  alone push the answer towards; 0 for a model that ignores them);
* AUC of the crops as they are and swapped (labels: the kept nodule's; TI-RADS-derived, not pathology).
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
from cross_validate import cpu_kind, fold_model_dir, mean_sd, recorded_mirror_roll  # noqa: E402


def donor_order(count: int, seed: int = 0) -> np.ndarray:
    """A fixed derangement of ``count`` items (no item is its own donor); count >= 2."""
    if count < 2:
        raise ValueError(f"a donor needs another crop; got {count} crop(s)")
    order = np.random.default_rng(seed).permutation(count)
    donors = np.empty(count, np.int64)
    donors[order] = np.roll(order, -1)   # along one random cycle through all items: each one's donor is the next
    return donors


def swapped_crops(images: list[np.ndarray], masks: list[np.ndarray], donors: np.ndarray, seed: int = 0
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each image on its donor's surroundings (augment.swap_background with generator (seed, k)), and which
    of them could be swapped (a mask too small to place leaves the crop as it is and False)."""
    from edge_thyroid.export.augment import swap_background

    out, done = [], np.zeros(len(images), bool)
    for k, (image, mask) in enumerate(zip(images, masks)):
        d = int(donors[k])
        swapped = swap_background(image, mask, images[d], masks[d], np.random.default_rng((seed, k)))
        out.append(image if swapped is None else swapped[0])
        done[k] = swapped is not None
    return out, done


def donor_pull(dp: np.ndarray, donor_labels: np.ndarray) -> float | None:
    """Mean p change with a malignant donor minus with a benign one; None without both kinds."""
    if not ((donor_labels == 1).any() and (donor_labels == 0).any()):
        return None
    return float(dp[donor_labels == 1].mean() - dp[donor_labels == 0].mean())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A finished cross_validate.py run folder (foldK_seedS/final.pt).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; each crop's p is their mean.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--test-time-flip", is_flag=True,
              help="Score as a bundle exported with --test-time-flip does, with each fold model's recorded roll.")
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, run_dir, seeds, folds, test_time_flip, threads, json_out) -> None:
    """Median |dp| and AUC of held-out crops moved onto other held-out crops' surroundings."""
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import fold_assignment, score
    from edge_thyroid.metrics import roc_auc

    if threads:
        torch.set_num_threads(threads)
    seed_list = [int(s) for s in seeds.split(",")]
    pack = pack_for(data)
    assignment = fold_assignment(pack, folds)
    started = time.time()
    per_fold = []
    for fold in range(folds):
        index = np.flatnonzero((assignment == fold) & (pack.labels >= 0))
        index = index[[int(pack.masks[i].sum()) >= 16 for i in index]]
        if len(index) < 2:
            raise click.ClickException(f"fold {fold} holds {len(index)} labelled crop(s) with a nodule mask; expected "
                                       f"at least 2 (one lends the other its surroundings)")
        labels = pack.labels[index].astype(int)
        images, masks = [pack.images[i] for i in index], [pack.masks[i] for i in index]
        donors = donor_order(len(index))
        swapped, done = swapped_crops(images, masks, donors)
        p_as_is, p_swapped = np.zeros(len(index)), np.zeros(len(index))
        for seed in seed_list:
            fold_dir = fold_model_dir(run_dir, fold, seed)
            if not (fold_dir / "final.pt").is_file():
                raise click.ClickException(f"{fold_dir / 'final.pt'} is missing; expected a finished "
                                           f"cross_validate.py run with --seeds {seeds}")
            flip = {"test_time_flip": True, "mirror_roll": recorded_mirror_roll(fold_dir)} if test_time_flip else {}
            model, info, _ = load_checkpoint(fold_dir / "final.pt")
            model.eval()
            p_as_is += score(model, images, [None] * len(images), info.image_size, **flip)[0]
            p_swapped += score(model, swapped, [None] * len(swapped), info.image_size, **flip)[0]
        p_as_is, p_swapped = p_as_is / len(seed_list), p_swapped / len(seed_list)
        dp = (p_swapped - p_as_is)[done]
        row = {"fold": fold, "crops": int(len(index)), "swapped": int(done.sum()),
               "median_abs_dp": float(np.median(np.abs(dp))), "mean_abs_dp": float(np.mean(np.abs(dp))),
               "donor_pull": donor_pull(dp, labels[donors][done]),
               "auc_as_is": roc_auc(labels, p_as_is), "auc_swapped": roc_auc(labels, p_swapped)}
        per_fold.append(row)
        click.echo(f"fold {fold}: median |dp| {row['median_abs_dp']:.3f}  donor pull {row['donor_pull']:+.3f}  "
                   f"AUC {row['auc_as_is']:.3f} -> {row['auc_swapped']:.3f}", err=True)
    keys = ("median_abs_dp", "mean_abs_dp", "donor_pull", "auc_as_is", "auc_swapped")
    values = {key: [row[key] for row in per_fold if row[key] is not None] for key in keys}
    summary = {key: mean_sd(values[key]) if values[key] else None for key in keys}
    payload = {"what": "held-out crops moved onto other held-out crops' surroundings (export/augment.py swap_background)",
               "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "run": str(run_dir), "seeds": seed_list, "folds": folds, "test_time_flip": test_time_flip,
               "machine": {"platform": platform.platform(), "python": sys.version.split()[0], **cpu_kind()},
               "command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
               "per_fold": per_fold, "summary": summary}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    click.echo("  ".join(f"{key} {row['mean']:.3f} +- {row['sd'] or 0:.3f}" for key, row in summary.items() if row))


if __name__ == "__main__":
    main()
