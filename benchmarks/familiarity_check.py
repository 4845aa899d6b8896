"""Does the familiarity check flag what it should, and only that? Case-level, on cross-validation fold models.

    python benchmarks/familiarity_check.py --data ../shared/data/ddti/labels.csv \\
        --busi ../shared/data/busi/labels.csv --run runs/cv_resnet50_cyst --bundles runs/bundles/familiarity \\
        --json benchmarks/results/familiarity_check.json --plot docs/familiarity.png

For every fold of a finished cross-validation run (benchmarks/cross_validate.py; its seed's fold models,
no training here) the fold model is exported as the shipped bundle is (FP32, nodule box grown 1.25x,
mirror-image average), given a familiarity reference of its *training side* only (edge-thyroid
familiarize --fold K), and then run through the engine, as a workstation runs it, on:

* its held-out crops as they are: patients the model has not seen, from the same scanners. What is
  flagged here is the false-alarm rate a new DDTI-like patient meets (the threshold aims at 1 - quantile);
* the same crops with a milder or another look (gamma 0.6 / 1.6, JPEG quality 25, blur): other gain
  settings and scanners, which training augments, so most should stay familiar;
* the same crops zoomed out (the crop reflected to three times its side, the nodule a third of the pane:
  what a whole B-mode pane without a nodule box looks like), upside down, inverted, a blank pane,
  speckle noise: inputs the model was never meant to score;
* every BUSI breast image (another organ; the pre-training saw them, but the fine-tuned model did not).

Per fold and as mean +- sd over folds: the share flagged unfamiliar and the median distance for each kind,
and the held-out AUC over all crops against over the familiar ones only (labels are TI-RADS categories,
not pathology).
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import fold_model_dir  # noqa: E402

BOX_CONTEXT = 1.25   # the shipped bundle's (ship_demo_bundle.sh)


def gamma(image: np.ndarray, value: float) -> np.ndarray:
    return (255.0 * (image / 255.0) ** value).round().astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def zoomed_out(image: np.ndarray, factor: int = 3) -> np.ndarray:
    """The crop in the middle of a pane ``factor`` times its side, filled with its reflection (tissue-like)."""
    import cv2

    h, w = image.shape[:2]
    pad_y, pad_x = (factor - 1) * h // 2, (factor - 1) * w // 2
    return cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT_101)


def blank(image: np.ndarray) -> np.ndarray:
    return np.full_like(image, int(image.mean()))


def speckle(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rayleigh-distributed noise with the crop's mean: ultrasound grain with no anatomy in it."""
    noise = rng.rayleigh(scale=max(float(image.mean()), 1.0) / 1.2533, size=image.shape[:2])
    out = np.clip(noise, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], image.shape[2], axis=2) if image.ndim == 3 else out


# Changed copies that keep their crop's label (so an AUC and a change in p mean something).
LABELLED_KINDS = ("as is", "gamma 0.6", "gamma 1.6", "jpeg 25", "blur", "zoomed out 3x", "upside down")


def variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    import cv2

    return {"as is": image, "gamma 0.6": gamma(image, 0.6), "gamma 1.6": gamma(image, 1.6),
            "jpeg 25": jpeg(image, 25), "blur": cv2.GaussianBlur(image, (0, 0), 1.5),
            "zoomed out 3x": zoomed_out(image), "upside down": np.ascontiguousarray(image[::-1]),
            "inverted": 255 - image, "blank": blank(image), "speckle noise": speckle(image, rng)}


def export_fold(checkpoint: Path, bundle: Path, labels: str) -> None:
    if (bundle / "manifest.json").is_file():
        return
    subprocess.run([sys.executable, "-m", "edge_thyroid", "export", str(checkpoint), "-o", str(bundle), "--force",
                    "--box-context", str(BOX_CONTEXT), "--test-time-flip", "--calib", labels],
                   check=True, stdout=subprocess.DEVNULL)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from edge_thyroid.metrics import roc_auc

    return float(roc_auc(labels, scores)) if len(set(labels.tolist())) == 2 else None


def summary(values: list[float | None]) -> dict[str, float | None]:
    kept = [v for v in values if v is not None]
    return {"mean": float(np.mean(kept)) if kept else None, "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else None}


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="DDTI labels.csv.")
@click.option("--busi", required=True, type=click.Path(exists=True, dir_okay=False), help="BUSI labels.csv.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A finished cross_validate.py run (fold{K}_seed{S}/final.pt).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which seed's fold models.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--only-folds", default=None, help="Comma-separated folds to run (default: all), e.g. while the run trains.")
@click.option("--bundles", required=True, type=click.Path(file_okay=False),
              help="Where the fold bundles are exported (reused when present).")
@click.option("--neighbours", type=int, default=5, show_default=True)
@click.option("--quantile", type=float, default=0.95, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False),
              help="Distances by kind for fold 0, against its threshold (PNG).")
def main(data, busi, run_dir, seed, folds, only_folds, bundles, neighbours, quantile, threads, json_out, plot_out) -> None:
    from tqdm import tqdm

    from edge_thyroid.dataset import read_samples, split_by_case
    from edge_thyroid.engine import Engine
    from edge_thyroid.familiarize import familiarize
    from edge_thyroid.frames import Pane, read_image

    started = time.time()
    labelled = read_samples(data, labelled_only=True)
    busi_rows = [row for row in csv.DictReader(open(busi, newline="")) if row["image"] != "benign (433).png"]
    per_fold, distances_fold0 = [], {}
    chosen = range(folds) if only_folds is None else [int(f) for f in only_folds.split(",")]
    for fold in chosen:
        bundle = Path(bundles) / f"fold{fold}_seed{seed}"
        export_fold(fold_model_dir(run_dir, fold, seed) / "final.pt", bundle, data)
        reference, details, _ = familiarize(bundle, data, folds=folds, fold=fold, neighbours=neighbours,
                                            quantile=quantile, threads=threads)
        _, held_out = split_by_case(labelled, folds=folds, fold=fold)
        rng = np.random.default_rng(fold)
        found: dict[str, list[tuple[float, bool, float]]] = {}
        with Engine(bundle, threads=threads) as engine:
            def run(image: np.ndarray) -> tuple[float, bool, float]:
                h, w = image.shape[:2]
                # the whole image is the nodule box, grown within itself: the pane as scoring makes it
                prediction = engine.classify(image, [Pane("bmode", (0, 0, w, h))])
                return prediction.familiarity.distance, prediction.familiarity.familiar, prediction.probability

            for sample in tqdm(held_out, desc=f"fold {fold} held-out", unit="crop", file=sys.stderr):
                for kind, image in variants(read_image(sample.image), rng).items():
                    found.setdefault(kind, []).append(run(image))
            for row in tqdm(busi_rows, desc=f"fold {fold} BUSI", unit="image", file=sys.stderr):
                found.setdefault(f"BUSI {row['label']}", []).append(run(read_image(Path(busi).parent / row["image"])))
        labels = np.array([s.label for s in held_out])
        as_is = np.array(found["as is"])
        familiar = as_is[:, 1].astype(bool)
        # Does the flag track where p moves? Each changed copy of a labelled crop against the crop as it is.
        changed = [k for k in LABELLED_KINDS if k != "as is"]
        moved = {k: np.abs(np.array(found[k])[:, 2] - as_is[:, 2]) for k in changed}
        flagged_copies = np.concatenate([~np.array(found[k])[:, 1].astype(bool) for k in changed])
        moved_all = np.concatenate([moved[k] for k in changed])
        record = {"fold": fold, "threshold": reference.threshold, "reference_crops": details["crops"],
                  "held_out_crops": len(held_out),
                  "flagged": {kind: float(1.0 - np.mean([f for _, f, _ in rows])) for kind, rows in found.items()},
                  "median_distance": {kind: float(np.median([d for d, _, _ in rows])) for kind, rows in found.items()},
                  "auc": {k: auc(labels, np.array(found[k])[:, 2]) for k in LABELLED_KINDS},
                  "median_abs_dp": {k: float(np.median(v)) for k, v in moved.items()},
                  "median_abs_dp_changed_copies": {
                      "flagged": float(np.median(moved_all[flagged_copies])) if flagged_copies.any() else None,
                      "familiar": float(np.median(moved_all[~flagged_copies])) if (~flagged_copies).any() else None},
                  "auc_all": auc(labels, as_is[:, 2]), "auc_familiar": auc(labels[familiar], as_is[familiar, 2]),
                  "familiar_crops": int(familiar.sum()), "familiar_benign": int((labels[familiar] == 0).sum())}
        per_fold.append(record)
        if not distances_fold0:
            distances_fold0 = {kind: [d for d, _, _ in rows] for kind, rows in found.items()}
        click.echo(f"fold {fold}: threshold {reference.threshold:.4f}; flagged " +
                   ", ".join(f"{k} {v:.2f}" for k, v in record["flagged"].items()), err=True)
    kinds = list(per_fold[0]["flagged"])
    result = {
        "what": "share of inputs flagged unfamiliar by each fold model's familiarity reference (its training side only)",
        "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
        "run": str(run_dir), "seed": seed, "folds": folds, "folds_run": list(chosen), "neighbours": neighbours, "quantile": quantile,
        "bundle": f"FP32, box context {BOX_CONTEXT}, mirror-image average, onnxruntime, {threads} thread(s)",
        "summary": {"flagged": {k: summary([r["flagged"][k] for r in per_fold]) for k in kinds},
                    "median_distance": {k: summary([r["median_distance"][k] for r in per_fold]) for k in kinds},
                    "threshold": summary([r["threshold"] for r in per_fold]),
                    "auc": {k: summary([r["auc"][k] for r in per_fold]) for k in LABELLED_KINDS},
                    "median_abs_dp": {k: summary([r["median_abs_dp"][k] for r in per_fold]) for k in LABELLED_KINDS[1:]},
                    "median_abs_dp_changed_copies": {
                        side: summary([r["median_abs_dp_changed_copies"][side] for r in per_fold])
                        for side in ("flagged", "familiar")},
                    "auc_all": summary([r["auc_all"] for r in per_fold]),
                    "auc_familiar": summary([r["auc_familiar"] for r in per_fold])},
        "per_fold": per_fold,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": round(time.time() - started, 1),
        "command": "python " + " ".join(sys.argv),
    }
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    for kind in kinds:
        s = result["summary"]["flagged"][kind]
        line = f"{kind:16s} flagged {s['mean']:.3f} +- {s['sd'] or 0:.3f}"
        if kind in LABELLED_KINDS:
            a = result["summary"]["auc"][kind]
            line += f"   AUC {a['mean']:.3f} +- {a['sd'] or 0:.3f}"
        click.echo(line)
    moved = result["summary"]["median_abs_dp_changed_copies"]
    click.echo(f"changed copies: median |p - p as is| {moved['flagged']['mean']:.3f} flagged, "
               f"{moved['familiar']['mean']:.3f} familiar")
    if plot_out:
        plot(distances_fold0, per_fold[0]["threshold"], per_fold[0]["fold"], neighbours, plot_out)


def plot(distances: dict[str, list[float]], threshold: float, fold: int, neighbours: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(distances)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(kinds) + 1.2))
    for row, kind in enumerate(kinds):
        values = np.asarray(distances[kind])
        jitter = np.random.default_rng(row).uniform(-0.25, 0.25, len(values))
        ax.scatter(np.maximum(values, 1e-4), row + jitter, s=4, alpha=0.5)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.4f}")
    ax.set_xscale("log")
    ax.set_yticks(range(len(kinds)), kinds)
    ax.invert_yaxis()
    ax.set_xlabel(f"distance to the {neighbours}th-nearest training crop (1 - cosine similarity of pooled features)")
    ax.set_title(f"Fold {fold}: held-out DDTI crops, changed copies of them and BUSI images; right of the line: unfamiliar")
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
