"""Which score of a trained fold model ranks held-out nodules best: the binary head (the product's), the
ordinal TI-RADS head's shared score (CORAL), or their sum.

    python benchmarks/score_rules.py --data runs/ddti_pack.npz --run runs/cv_resnet50_pt --seeds 0,1,2 \\
        --json benchmarks/results/score_rules.json

The recipe trains an ordinal TI-RADS head (one linear score on the pooled features, K-1 ordered
thresholds) beside the binary head and drops it at export. Both are linear in the same pooled features,
so either (or their sum) could be folded into the exported head at no run-time cost; this measures
whether that would rank better, on the finished cross-validation run (benchmarks/cross_validate.py; the
heads come from each fold's last.pt, whose EMA weights keep the auxiliary heads; no training here).
Every score is computed as the shipped bundle computes p: pooled features of the crop and of its
mirror image averaged (export --test-time-flip; pooling makes the roll irrelevant). The ordinal
probability of "malignant" is P(level >= 4a) = sigmoid(score + threshold bias of 4a). Per rule: AUC per
fold (seeds averaged per fold), mean +- sd over folds, and TI-RADS 2 crops scored benign at the Youden
threshold of the fold model's own training crops. Labels are TI-RADS-derived, not pathology.
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

RULES = ("binary", "ordinal", "sum")
MALIGNANT_FROM = "4a"   # the first TI-RADS level the label calls malignant


def pooled_features(model, images, image_size: int, batch: int = 32) -> np.ndarray:
    """Mean of the pooled backbone features of each crop and of its mirror image (float64, N x C)."""
    import torch

    from edge_thyroid.export.nodule_training import to_pixels
    from edge_thyroid.kernels.reference import PreprocessSpec

    spec = PreprocessSpec(image_size=image_size)
    out = []
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(np.stack([to_pixels(im, spec) for im in images[start:start + batch]]))
        with torch.no_grad():
            both = model.feature_maps(pixels).mean((2, 3)) + model.feature_maps(pixels.flip(-1)).mean((2, 3))
        out.append((both / 2).double().numpy())
    return np.concatenate(out)


def rule_heads(model, ema: dict, levels: tuple[str, ...]) -> dict[str, tuple[np.ndarray, float]]:
    """(weight, bias) of each rule on the B-mode pooled features."""
    channels = model.channels
    weight = model.head.weight.detach().double().numpy()[0]
    binary = (weight[:channels], float(model.head.bias.detach()[0]) + float(weight[len(model.modalities) * channels]))
    cut = levels.index(MALIGNANT_FROM) - 1    # threshold k separates level <= k from level > k
    ordinal = (ema["aux_ordinal.weight"][0].double().numpy(), float(ema["aux_ordinal_bias"][cut]))
    return {"binary": binary, "ordinal": ordinal, "sum": (binary[0] + ordinal[0], binary[1] + ordinal[1])}


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="The data pack (.npz).")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A finished cross_validate.py run (fold{K}_seed{S}/final.pt and last.pt).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--folds", default=4, show_default=True)
@click.option("--image-size", default=128, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, run_dir, seeds, folds, image_size, threads, json_out) -> None:
    """Binary vs ordinal vs summed scores of the CV fold models (mean +- sd over folds)."""
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.datapack import TIRADS_LEVELS, load_pack
    from edge_thyroid.export.nodule_training import fold_assignment
    from edge_thyroid.metrics import roc_auc, youden_threshold

    torch.set_num_threads(threads)
    started = time.time()
    pack = load_pack(data)
    assignment = fold_assignment(pack, folds, 0)
    seed_list = [int(s) for s in seeds.split(",")]
    runs = []
    for fold in range(folds):
        for seed in seed_list:
            where = fold_model_dir(run_dir, fold, seed)
            if not (where / "last.pt").exists():
                raise click.ClickException(f"{where}/last.pt does not exist; expected a finished fold of a "
                                           "cross_validate.py run (it keeps the auxiliary heads)")
            model, _, _ = load_checkpoint(where / "final.pt")
            model.eval()
            ema = torch.load(where / "last.pt", map_location="cpu", weights_only=False)["ema"]
            train = np.flatnonzero((assignment != fold) & (pack.labels >= 0))
            val = np.flatnonzero((assignment == fold) & (pack.labels >= 0))
            features = {side: pooled_features(model, [pack.images[i] for i in index], image_size)
                        for side, index in (("train", train), ("val", val))}
            tirads2 = pack.tirads[val] == TIRADS_LEVELS.index("2")
            record = {"fold": fold, "seed": seed}
            for rule, (weight, bias) in rule_heads(model, ema, TIRADS_LEVELS).items():
                z_train, z_val = features["train"] @ weight + bias, features["val"] @ weight + bias
                threshold = youden_threshold(pack.labels[train].astype(int), 1 / (1 + np.exp(-z_train)))
                p_val = 1 / (1 + np.exp(-z_val))
                record[rule] = {"auc": roc_auc(pack.labels[val].astype(int), z_val),
                                "tirads2_benign_rate": float(np.mean(p_val[tirads2] < threshold)) if tirads2.any() else None}
            runs.append(record)
            click.echo(f"[fold {fold} seed {seed}] " + "  ".join(f"{r} {record[r]['auc']:.3f}" for r in RULES), err=True)
    summary = {}
    for rule in RULES:
        per_fold = [float(np.mean([r[rule]["auc"] for r in runs if r["fold"] == f])) for f in range(folds)]
        tirads2 = [float(np.mean([r[rule]["tirads2_benign_rate"] for r in runs if r["fold"] == f])) for f in range(folds)]
        summary[rule] = {"auc_mean": float(np.mean(per_fold)), "auc_sd": float(np.std(per_fold, ddof=1)),
                         "auc_per_fold": per_fold, "tirads2_benign_mean": float(np.mean(tirads2)),
                         "tirads2_benign_sd": float(np.std(tirads2, ddof=1))}
    payload = {"command": "python benchmarks/score_rules.py " + " ".join(
                   f"--{k} {v}" for k, v in (("data", data), ("run", run_dir), ("seeds", seeds))),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "labels": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
               "minutes": round((time.time() - started) / 60, 1), "summary": summary, "runs": runs}
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(payload, indent=1))
    for rule in RULES:
        s = summary[rule]
        click.echo(f"{rule:8s} AUC {s['auc_mean']:.3f} +- {s['auc_sd']:.3f}  folds "
                   + ", ".join(f"{a:.3f}" for a in s["auc_per_fold"])
                   + f"  TI-RADS 2 benign {s['tirads2_benign_mean']:.2f} +- {s['tirads2_benign_sd']:.2f}")


if __name__ == "__main__":
    main()
