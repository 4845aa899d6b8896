"""Does the model look at the nodule? Class activation maps of a bundle on validation crops, measured
against the nodule masks.

For each validation crop (whole image = one B-mode pane) the engine's exact CAM (positive part,
upsampled bilinearly to the crop, as the overlay shows it) is turned into a mass distribution, and we
report the fraction of that mass inside the nodule mask. Because DDTI crops are centred on their
nodule, a map that ignores the image and just glows in the middle already scores well; the baselines
are therefore
  - centre disc: a uniform disc centred in the crop with the same area as the mask,
  - centre Gaussian: an isotropic Gaussian centred in the crop whose sigma is the disc's radius,
  - uniform: the whole crop (= the mask's area fraction).
A CAM that localises the nodule has to beat the centre baselines, not just the uniform one.

    python benchmarks/cam_localization.py runs/bundles/resnet50_final --data ../shared/data/ddti/labels.csv

Writes benchmarks/results/cam_localization.json and an 8-image grid docs/cam_grid.png (overlay of
edge_thyroid.visualize, nodule outline in green). Runtime only: no torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import cv2
import numpy as np

from edge_thyroid.engine import Engine
from edge_thyroid.frames import Pane
from edge_thyroid.evaluation import SplitSpec, select_samples
from edge_thyroid.dataset import Split
from edge_thyroid.visualize import cam_to_heat, overlay_prediction


def mass_inside(weights: np.ndarray, mask: np.ndarray) -> float:
    total = float(weights.sum())
    return float(weights[mask].sum() / total) if total > 0 else float("nan")


def centre_disc(shape: tuple[int, int], area: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.sqrt(area / np.pi)
    return (((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) <= radius**2).astype(np.float64)


def centre_gaussian(shape: tuple[int, int], area: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    sigma = np.sqrt(area / np.pi)
    return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise click.ClickException(f"cannot read mask {path}")
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def tile(images: list[np.ndarray], columns: int, size: int = 256) -> np.ndarray:
    cells = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    while len(cells) % columns:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i : i + columns]) for i in range(0, len(cells), columns)]
    return np.vstack(rows)


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_json", default="benchmarks/results/cam_localization.json", show_default=True)
@click.option("--grid", "grid_png", default="docs/cam_grid.png", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(bundle, data, folds, fold, seed, out_json, grid_png, threads) -> None:
    """Fraction of positive CAM mass inside the nodule mask vs centre-prior baselines (validation side)."""
    from scipy import stats
    from tqdm import tqdm

    samples, _ = select_samples(data, SplitSpec(Split.VAL, folds, fold, seed))
    samples = [s for s in samples if s.mask is not None and s.mask.is_file()]
    if not samples:
        raise click.ClickException(f"no validation rows of {data} have a mask file")
    rows, overlays = [], []
    # An empty mask localises nothing: such crops are listed, not scored.
    empty = [s.image.name for s in samples if not (cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE) > 127).any()]
    samples = [s for s in samples if s.image.name not in empty]
    # Grid: 4 malignant and 4 benign crops spread over the validation side (fixed choice).
    malignant = [i for i, s in enumerate(samples) if s.label == 1]
    benign = [i for i, s in enumerate(samples) if s.label == 0]
    picks = set(malignant[:: max(1, len(malignant) // 4)][:4] + benign[:: max(1, len(benign) // 4)][:4])
    with Engine(bundle, threads=threads) as engine:
        for i, sample in enumerate(tqdm(samples, desc="CAM", unit="image", file=sys.stderr)):
            frame = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
            h, w = frame.shape[:2]
            prediction = engine.classify(frame, [Pane(sample.modality, (0, 0, w, h))])
            heat = cam_to_heat(prediction.cam(sample.modality), w, h).astype(np.float64)
            mask = read_mask(sample.mask, (h, w))
            area = float(mask.sum())
            rows.append({
                "image": sample.image.name, "label": sample.label, "p_malignant": prediction.probability,
                "mask_area_fraction": area / (h * w),
                "cam": mass_inside(heat, mask),
                "centre_disc": mass_inside(centre_disc((h, w), area), mask),
                "centre_gaussian": mass_inside(centre_gaussian((h, w), area), mask),
            })
            if i in picks:
                canvas = overlay_prediction(frame, prediction)
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, (0, 255, 0), 1)
                truth = "TI-RADS malignant" if sample.label else "TI-RADS benign"
                cv2.putText(canvas, truth, (8, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
                overlays.append(canvas)
    rows = [r for r in rows if np.isfinite(r["cam"])]
    cam = np.array([r["cam"] for r in rows])
    summary = {"n": len(rows), "empty_masks_skipped": empty, "bundle": str(bundle), "data": f"{data} (validation side, fold {fold}/{folds}, seed {seed})"}
    for key in ("cam", "centre_disc", "centre_gaussian", "mask_area_fraction"):
        values = np.array([r[key] for r in rows])
        summary[key] = {"mean": float(values.mean()), "median": float(np.median(values))}
    for key in ("centre_disc", "centre_gaussian"):
        base = np.array([r[key] for r in rows])
        summary[f"cam_beats_{key}"] = float(np.mean(cam > base))
        summary[f"wilcoxon_p_vs_{key}"] = float(stats.wilcoxon(cam, base).pvalue)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps({"summary": summary, "images": rows}, indent=1))
    Path(grid_png).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(grid_png), tile(overlays, columns=4))
    click.echo(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
