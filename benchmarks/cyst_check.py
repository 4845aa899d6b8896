"""Does a cross-validated model call a simple anechoic cyst benign? Held-out crops turned into cysts.

    python benchmarks/cyst_check.py --data runs/ddti_pack.npz --run runs/cv_resnet50_pt --seeds 0,1,2 \\
        --json benchmarks/results/cyst_check.json

A simple anechoic cyst is benign in every guideline (TI-RADS 1-2), yet DDTI's labelled crops hold one, so
nothing in the labels teaches it. For every held-out fold of a finished cross-validation run
(benchmarks/cross_validate.py --test-time-flip; its fold models, no training here) each held-out crop
with a usable mask has its nodule replaced by a synthetic cyst (export/augment.py ``synthetic_cyst``,
one fixed generator per crop, so every run compared meets the same cysts) and is scored as a bundle
with the mirror-image average scores it. Reported per fold (seeds averaged) and as mean +- sd over folds:

* the share of cysts below the fold model's own threshold (Youden on its training crops), i.e. called
  benign, and their median p;
* the same crops' median p before the change (the nodule as it was);
* DDTI's one labelled anechoic crop graded TI-RADS 2, wherever it is held out.

The cysts are drawn by the same function that ``--p-cyst`` training uses, so for a model trained with it
this measures what it learned about that picture of a cyst on tissue it has not seen, not how it meets
a real one; real cysts of another hospital are the project's held-out test, not measured here.
``--kind spongiform`` makes each nodule a spongiform one instead (export/augment.py
``synthetic_spongiform``: small cystic spaces in an isoechoic oval), also benign at TI-RADS 2.
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
from cross_validate import fold_model_dir  # noqa: E402

REAL_CYST = "329_1"  # DDTI's one labelled TI-RADS 2 crop whose nodule is mostly anechoic (descriptors: 0.72)


# What a held-out nodule can be made into (export/augment.py), and the stream its generator is seeded on.
KINDS = {"cyst": ("synthetic_cyst", 29), "spongiform": ("synthetic_spongiform", 31)}


def cyst_crops(images, masks, fold: int, index, kind: str = "cyst") -> tuple[list[np.ndarray], list[int]]:
    """Each crop with its nodule made a synthetic cyst (or another benign ``kind``; generator seeded by
    fold and pack index), and the positions that had a usable mask."""
    from edge_thyroid.export import augment

    name, stream = KINDS[kind]
    make = getattr(augment, name)
    cysts, kept = [], []
    for k, (image, mask, i) in enumerate(zip(images, masks, index)):
        made = make(image, mask, np.random.default_rng((fold, int(i), stream)))
        if made is not None:
            cysts.append(made[0])
            kept.append(k)
    return cysts, kept


def cyst_grid(originals, cysts, p_orig, p_cyst, threshold: float, count: int = 6, side: int = 160) -> np.ndarray:
    """Crops (top) above their cysts (bottom), each labelled with its p and the decision at ``threshold``."""
    import cv2

    picks = np.linspace(0, len(cysts) - 1, count).round().astype(int)
    rows = []
    for images, scores in ((originals, p_orig), (cysts, p_cyst)):
        tiles = []
        for k in picks:
            tile = cv2.cvtColor(cv2.resize(images[k], (side, side), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
            malignant = scores[k] >= threshold
            cv2.putText(tile, f"p {scores[k]:.2f} {'malignant' if malignant else 'benign'}", (4, side - 8),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.42, (60, 60, 235) if malignant else (80, 200, 80), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A cross_validate.py --test-time-flip run folder (foldK_seedS/final.pt, result_test_time_flip.json).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds whose fold models to average.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="cyst", show_default=True,
              help="What each held-out nodule is made into: an anechoic cyst (synthetic_cyst) or a spongiform "
                   "nodule (synthetic_spongiform); both benign, TI-RADS 2.")
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
@click.option("--grid", "grid_out", default=None, type=click.Path(dir_okay=False),
              help="Also draw 6 of fold 0's held-out crops above their cysts, with p from the first seed's model (PNG).")
def main(data, run_dir, seeds, folds, kind, threads, json_out, grid_out) -> None:
    """Share of held-out crops, their nodule made an anechoic cyst, that each fold model calls benign."""
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import fold_assignment, score

    if threads:
        torch.set_num_threads(threads)
    seed_list = [int(s) for s in seeds.split(",")]
    pack = pack_for(data)
    assignment = fold_assignment(pack, folds)
    started = time.time()
    per_fold, real = [], []
    for fold in range(folds):
        index = np.flatnonzero((assignment == fold) & (pack.labels >= 0))
        images, masks = [pack.images[i] for i in index], [pack.masks[i] for i in index]
        cysts, kept = cyst_crops(images, masks, fold, index, kind)
        originals = [images[k] for k in kept]
        names = [str(pack.names[i]) for i in index[kept]]
        benign_rates, cyst_p, original_p = [], [], []
        for seed in seed_list:
            path = fold_model_dir(run_dir, fold, seed) / "final.pt"
            recorded = path.parent / "result_test_time_flip.json"
            if not path.is_file() or not recorded.is_file():
                raise click.ClickException(f"{path} or {recorded.name} is missing; expected a finished "
                                           f"cross_validate.py --test-time-flip run with --seeds {seeds}")
            result = json.loads(recorded.read_text())   # its mirror roll and train-side threshold
            model, info, _ = load_checkpoint(path)
            model.eval()
            flip = {"test_time_flip": True, "mirror_roll": int(result["mirror_roll"])}
            with torch.no_grad():
                p_cyst = score(model, cysts, [None] * len(cysts), info.image_size, **flip)[0]
                p_orig = score(model, originals, [None] * len(originals), info.image_size, **flip)[0]
            if grid_out and fold == 0 and seed == seed_list[0]:
                grid = cyst_grid(originals, cysts, p_orig, p_cyst, float(result["threshold"]))
            benign_rates.append(float(np.mean(p_cyst < result["threshold"])))
            cyst_p.append(p_cyst)
            original_p.append(p_orig)
            for name, p in zip(names, p_orig):
                if Path(name).stem == REAL_CYST:
                    real.append({"fold": fold, "seed": seed, "p": float(p), "threshold": float(result["threshold"]),
                                 "benign": bool(p < result["threshold"])})
        row = {"fold": fold, "crops": len(cysts), "benign_rate_by_seed": benign_rates,
               "benign_rate": float(np.mean(benign_rates)),
               "median_p_cyst": float(np.median(np.mean(cyst_p, axis=0))),
               "median_p_original": float(np.median(np.mean(original_p, axis=0)))}
        per_fold.append(row)
        click.echo(f"fold {fold}: {row['crops']} {kind} crops, benign {row['benign_rate']:.2f} "
                   f"(by seed {', '.join(f'{r:.2f}' for r in benign_rates)}), median p {row['median_p_cyst']:.2f} "
                   f"(the crops as they were: {row['median_p_original']:.2f})", err=True)
    rates = np.array([r["benign_rate"] for r in per_fold])
    payload = {"what": f"held-out crops with the nodule replaced by a synthetic {kind} (export/augment.py "
                       f"{KINDS[kind][0]}), scored with the mirror-image average at each fold model's train-side threshold",
               "kind": kind,
               "run": str(run_dir), "seeds": seed_list, "folds": folds,
               "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
               "command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
               "summary": {"benign_rate": {"mean": float(rates.mean()), "sd": float(rates.std(ddof=1)),
                                           "per_fold": rates.tolist()},
                           "median_p_cyst": float(np.median([r["median_p_cyst"] for r in per_fold])),
                           "median_p_original": float(np.median([r["median_p_original"] for r in per_fold]))},
               "real_cyst": {"crop": REAL_CYST, "tirads": "2", "scores": real},
               "per_fold": per_fold}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    if grid_out:
        import cv2

        if not cv2.imwrite(str(grid_out), grid):
            raise click.ClickException(f"cannot write {grid_out}; expected a writable path ending in .png")
        click.echo(f"wrote {grid_out}", err=True)
    click.echo(f"synthetic {kind} crops called benign: {rates.mean():.2f} +- {rates.std(ddof=1):.2f} over {folds} folds; "
               f"DDTI's real TI-RADS 2 cyst: " + (", ".join(f"p {r['p']:.2f}" for r in real) or "not held out"))


if __name__ == "__main__":
    main()
