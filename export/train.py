"""Train a multimodal classifier on a CSV of (image, label, case_id, modality).

    python -m edge_thyroid.export.train --data ../shared/data/ddti/labels.csv --out runs/resnet50

Case-level split (fixed seed, k-fold), class-balanced loss, ultrasound augmentation, early stopping
on validation AUC, resumable checkpoints (``last.pt`` every epoch, ``best.pt`` on improvement).

Every image goes through the engine's own preprocessing (kernels.reference): what the model sees in
training is exactly what the deployed engine feeds it.

Augmentation, chosen for B-mode ultrasound: gain (overall brightness), contrast (gamma), multiplicative
speckle noise, small affine (rotation, scale, shift). Horizontal flips are used: TI-RADS features
(composition, echogenicity, shape, margin, echogenic foci) do not depend on left/right, and transverse
and longitudinal views appear both ways on screen. Vertical flips are not: depth is physical
(shadowing falls downwards, "taller-than-wide" is measured against the skin line).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch
from torch import nn

from edge_thyroid.dataset import Sample, read_samples, split_by_case
from edge_thyroid.metrics import roc_auc, youden_threshold
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from .models import BACKBONE_CHANNELS, MODALITIES, MultimodalClassifier


def load_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ultrasound-plausible augmentation of a uint8 grayscale crop (see the module docstring)."""
    h, w = image.shape
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.9, 1.1)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.05, 0.05, size=2) * (w, h)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.8, 1.25)                         # contrast
    x = x * rng.uniform(0.8, 1.2)                           # gain
    x = x * (1.0 + rng.normal(0, rng.uniform(0, 0.12), x.shape).astype(np.float32))  # speckle
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_pixels(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A whole grayscale crop through the engine's preprocessing: 3 x S x S float32."""
    h, w = image.shape
    return preprocess_reference(image, [(0, 0, w, h)], spec)[0]


class PaneDataset(torch.utils.data.Dataset):
    """One labelled pane per sample, placed at its modality's slot (others marked absent)."""

    def __init__(self, samples: list[Sample], modalities: tuple[str, ...], spec: PreprocessSpec,
                 train: bool, seed: int = 0) -> None:
        for s in samples:
            if s.modality not in modalities:
                raise ValueError(f"{s.image}: modality {s.modality!r} is not one of the model's {modalities}")
        self.samples, self.modalities, self.spec, self.train = samples, modalities, spec, train
        self.images = [load_gray(s.image) for s in samples]
        self.rng = np.random.default_rng(seed)
        self.clean = None if train else [to_pixels(img, spec) for img in self.images]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        pixels = to_pixels(augment(self.images[index], self.rng), self.spec) if self.train else self.clean[index]
        size = self.spec.image_size
        panes = np.zeros((len(self.modalities), 3, size, size), dtype=np.float32)
        present = np.zeros(len(self.modalities), dtype=np.float32)
        slot = self.modalities.index(sample.modality)
        panes[slot], present[slot] = pixels, 1.0
        return torch.from_numpy(panes), torch.from_numpy(present), torch.tensor(float(sample.label))


@torch.no_grad()
def predict(model: MultimodalClassifier, loader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    scores, labels = [], []
    for panes, present, label in loader:
        scores.append(torch.sigmoid(model(panes, present)).numpy())
        labels.append(label.numpy())
    return np.concatenate(labels), np.concatenate(scores)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with image, label, case_id[, modality, mask] columns.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints (last.pt, best.pt), history.json, split.json.")
@click.option("--backbone", type=click.Choice(sorted(BACKBONE_CHANNELS)), default="resnet50", show_default=True)
@click.option("--modalities", default=",".join(MODALITIES), show_default=True,
              help="Modalities the fusion head has slots for (comma-separated).")
@click.option("--image-size", type=int, default=128, show_default=True,
              help="Pane resolution (the engine's input size); 128 fits a CPU budget.")
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--patience", type=int, default=10, show_default=True, help="Early-stopping patience (epochs without a better validation AUC).")
@click.option("--folds", type=int, default=4, show_default=True, help="Case-level folds; one is validation.")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
@click.option("--max-minutes", type=float, default=0, help="Stop after this wall time (0: no limit); the best checkpoint stays.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/last.pt if present.")
def main(data_csv, out_dir, backbone, modalities, image_size, epochs, batch_size, lr, weight_decay,
         patience, folds, fold, seed, threads, max_minutes, resume) -> None:
    """Train a backbone + fusion head with early stopping on validation AUC (case-level split)."""
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modality_tuple = tuple(m.strip() for m in modalities.split(",") if m.strip())
    spec = PreprocessSpec(image_size=image_size)
    samples = read_samples(data_csv)
    train_samples, val_samples = split_by_case(samples, folds=folds, fold=fold, seed=seed)
    trained_modalities = tuple(sorted({s.modality for s in train_samples}, key=modality_tuple.index))
    (out / "split.json").write_text(json.dumps({
        "data": str(data_csv), "folds": folds, "fold": fold, "seed": seed,
        "train_cases": sorted({s.case_id for s in train_samples}),
        "val_cases": sorted({s.case_id for s in val_samples}),
    }, indent=1))
    positives = sum(s.label for s in train_samples)
    negatives = len(train_samples) - positives
    click.echo(f"train {len(train_samples)} crops ({positives} malignant / {negatives} benign), "
               f"validation {len(val_samples)} crops; {len({s.case_id for s in train_samples})} vs "
               f"{len({s.case_id for s in val_samples})} cases", err=True)

    train_set = PaneDataset(train_samples, modality_tuple, spec, train=True, seed=seed)
    val_set = PaneDataset(val_samples, modality_tuple, spec, train=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=32)

    model = MultimodalClassifier(backbone, modality_tuple).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                    pct_start=0.15)
    # Class balance: the benign minority weighs as much as the malignant majority.
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(negatives / max(positives, 1)))
    info = CheckpointInfo(backbone=backbone, modalities=modality_tuple, trained_modalities=trained_modalities,
                          image_size=image_size)
    state = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "history": [], "elapsed_s": 0.0}
    last = out / "last.pt"
    if resume and last.exists():
        _, _, payload = load_checkpoint(last)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = payload["train_state"]
        train_set.rng = np.random.default_rng(seed + state["epoch"])
        click.echo(f"resumed from {last} at epoch {state['epoch']} (best AUC {state['best_auc']:.3f})", err=True)

    started = time.monotonic() - state["elapsed_s"]
    for epoch in range(state["epoch"], epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
        losses = []
        for panes, present, label in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(panes.contiguous(memory_format=torch.channels_last)
                                 if panes.ndim == 4 else panes, present), label)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        labels, scores = predict(model, val_loader)
        auc = roc_auc(labels, scores)
        elapsed = time.monotonic() - started
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": auc, "elapsed_s": round(elapsed, 1)}
        state["history"].append(record)
        improved = auc > state["best_auc"]
        if improved:
            state["best_auc"], state["best_epoch"] = auc, epoch + 1
            threshold = youden_threshold(labels, scores)
            info.metrics = {"val_auc": auc, "val_crops": len(labels), "epoch": epoch + 1,
                            "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology"}
            info.threshold = {"value": threshold, "method": "youden", "chosen_on": "validation split"}
            info.training = {"split": json.loads((out / "split.json").read_text()) | {"train_cases": None, "val_cases": None},
                             "epochs": epoch + 1, "image_size": image_size, "lr": lr, "batch_size": batch_size}
            best_model = MultimodalClassifier(backbone, modality_tuple)
            best_model.load_state_dict(model.state_dict())
            best_model.zero_untrained_modalities(trained_modalities)
            save_checkpoint(out / "best.pt", best_model, info)
        state["epoch"], state["elapsed_s"] = epoch + 1, elapsed
        save_checkpoint(last, model, info, extra={"optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict(), "train_state": state})
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        click.echo(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val AUC {auc:.3f}"
                   f"{'  *best*' if improved else ''}  ({elapsed / 60:.1f} min)", err=True)
        if epoch + 1 - state["best_epoch"] >= patience:
            click.echo(f"early stop: no better validation AUC for {patience} epochs", err=True)
            break
        if max_minutes and elapsed / 60 >= max_minutes:
            click.echo(f"stopping at the {max_minutes} min budget", err=True)
            break
    click.echo(json.dumps({"best_val_auc": state["best_auc"], "best_epoch": state["best_epoch"],
                           "checkpoint": str(out / "best.pt")}))


if __name__ == "__main__":
    main()
