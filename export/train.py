"""Train a multimodal classifier on a CSV of (image, label, case_id, modality).

    python -m edge_thyroid.export.train --data ../shared/data/ddti/labels.csv --out runs/resnet50 \\
        --init runs/pretrain_busi_resnet50/best.pt

Case-level split (fixed seed, k-fold), class balancing (balanced sampler and/or a weighted loss),
ultrasound augmentation, early stopping on validation AUC, an exponential moving average (EMA) of
the weights that is what gets validated and saved, resumable checkpoints (``last.pt`` every epoch,
``best.pt`` on improvement), optional initialisation from a pre-trained checkpoint
(``export/pretrain.py``, e.g. on BUSI breast ultrasound).

Every image goes through the engine's own preprocessing (kernels.reference): what the model sees in
training is exactly what the deployed engine feeds it.

Augmentation, chosen for B-mode ultrasound: gain (overall brightness), contrast (gamma), multiplicative
speckle noise, small affine (rotation, scale, shift). Horizontal flips are used: TI-RADS features
(composition, echogenicity, shape, margin, echogenic foci) do not depend on left/right, and transverse
and longitudinal views appear both ways on screen. Vertical flips are not: depth is physical
(shadowing falls downwards, "taller-than-wide" is measured against the skin line).

Why this recipe (measured on DDTI fold 0, see benchmarks/results/training_resnet50.json): ResNet50
from scratch on ~270 crops with lr 1e-3 and a loss weighted by pos_weight did not learn (train loss
flat, validation AUC 0.37-0.65). A lower peak learning rate with a linear warm-up, a balanced sampler
(every batch sees both classes: BatchNorm statistics and the gradient are not dominated by the
malignant majority), label smoothing and validating an EMA of the weights make the run stable.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import cv2
import numpy as np
import torch
from torch import nn

from edge_thyroid.bundle import sha256_file
from edge_thyroid.dataset import Sample, read_samples, split_by_case
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference
from edge_thyroid.metrics import roc_auc, youden_threshold

from .checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from .models import BACKBONE_CHANNELS, MODALITIES, MultimodalClassifier

LABEL_SOURCE = "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology"


class Balance(str, enum.Enum):
    """How the class imbalance is handled."""

    SAMPLER = "sampler"      # class-balanced sampling with replacement, plain loss
    LOSS = "loss"            # uniform shuffling, BCE weighted by pos_weight = negatives / positives
    BOTH = "both"
    NONE = "none"


def load_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def augment(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Ultrasound-plausible augmentation of a uint8 grayscale crop (see the module docstring).

    ``strength`` scales every perturbation (0: only the random horizontal flip).
    """
    h, w = image.shape
    angle = rng.uniform(-10, 10) * strength
    scale = 1.0 + rng.uniform(-0.1, 0.1) * strength
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.05, 0.05, size=2) * strength * (w, h)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(-0.22, 0.22) * strength)                           # contrast (gamma)
    x = x * (1.0 + rng.uniform(-0.2, 0.2) * strength)                                # gain
    sigma = rng.uniform(0, 0.12) * strength
    x = x * (1.0 + rng.normal(0, sigma, x.shape).astype(np.float32))                 # speckle
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_pixels(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A whole grayscale crop through the engine's preprocessing: 3 x S x S float32."""
    h, w = image.shape
    return preprocess_reference(image, [(0, 0, w, h)], spec)[0]


class PaneDataset(torch.utils.data.Dataset):
    """One labelled pane per sample, placed at its modality's slot (others marked absent)."""

    def __init__(self, samples: Sequence[Sample], modalities: tuple[str, ...], spec: PreprocessSpec,
                 train: bool, seed: int = 0, strength: float = 1.0) -> None:
        for s in samples:
            if s.modality not in modalities:
                raise ValueError(f"{s.image}: modality {s.modality!r} is not one of the model's {modalities}")
        self.samples, self.modalities, self.spec, self.train = list(samples), modalities, spec, train
        self.strength = strength
        self.images = [load_gray(s.image) for s in self.samples]
        self.rng = np.random.default_rng(seed)
        self.clean = None if train else [to_pixels(img, spec) for img in self.images]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if self.train:
            pixels = to_pixels(augment(self.images[index], self.rng, self.strength), self.spec)
        else:
            pixels = self.clean[index]
        size = self.spec.image_size
        panes = np.zeros((len(self.modalities), 3, size, size), dtype=np.float32)
        present = np.zeros(len(self.modalities), dtype=np.float32)
        slot = self.modalities.index(sample.modality)
        panes[slot], present[slot] = pixels, 1.0
        return torch.from_numpy(panes), torch.from_numpy(present), torch.tensor(float(sample.label))


@torch.no_grad()
def predict(model: nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    scores, labels = [], []
    for panes, present, label in loader:
        scores.append(torch.sigmoid(model(panes, present)).numpy())
        labels.append(label.numpy())
    return np.concatenate(labels), np.concatenate(scores)


@dataclass
class TrainConfig:
    backbone: str = "resnet50"
    modalities: tuple[str, ...] = MODALITIES
    image_size: int = 128
    epochs: int = 40
    batch_size: int = 16
    lr: float = 3e-4
    warmup_epochs: float = 2.0
    weight_decay: float = 1e-4
    balance: Balance = Balance.SAMPLER
    label_smoothing: float = 0.1
    mixup: float = 0.0
    ema: float = 0.99
    augment_strength: float = 1.0
    patience: int = 12
    min_epochs: int = 0
    seed: int = 0
    threads: int = 0
    max_minutes: float = 0.0
    init: str | None = None
    label_source: str = LABEL_SOURCE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["balance"], d["modalities"] = self.balance.value, list(self.modalities)
        return d


def balanced_sampler(labels: Sequence[int], seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draw each class with equal probability (with replacement), one epoch = len(labels) draws."""
    labels_arr = np.asarray(labels)
    counts = np.bincount(labels_arr, minlength=2).astype(np.float64)
    weights = 1.0 / counts[labels_arr]
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels_arr),
                                                  replacement=True, generator=generator)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then cosine decay to 1% of it."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def smooth_targets(label: torch.Tensor, smoothing: float) -> torch.Tensor:
    return label * (1.0 - smoothing) + 0.5 * smoothing


def ema_decay_at(step: int, decay: float, ramp: float = 10.0) -> float:
    """The weight average's decay at optimizer step ``step`` (0-based): ``(1 + step) / (ramp + step)``, capped
    at ``decay``. Early on the average would be dominated by the random start, hence the ramp. While the cap
    does not act, the final model weights step ``j`` like ``j ** (ramp - 2)``: ``ramp`` 10 puts ~92% of the
    average on the last quarter of the steps, 2 makes it the plain mean of every step. With ``ramp`` 10 the
    decay reaches 0.99 only after 890 steps, so in a shorter run a cap of 0.99 never acts."""
    return min(decay, (1.0 + step) / (ramp + step))


class Ema:
    """Exponential moving average of the parameters and BatchNorm buffers (buffers copied as-is); the decay
    follows :func:`ema_decay_at`."""

    def __init__(self, model: nn.Module, decay: float, ramp: float = 10.0) -> None:
        if ramp < 2.0:
            raise ValueError(f"EMA ramp must be >= 2 (2: the plain mean of every step), got {ramp}")
        self.decay = decay
        self.ramp = ramp
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = ema_decay_at(step, self.decay, self.ramp)
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def init_from(model: MultimodalClassifier, path: str | Path) -> int:
    """Copy matching tensors (the backbone, and the head when shapes agree) from a checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["state_dict"] if isinstance(payload, dict) and "state_dict" in payload else payload
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in matched):
        raise ValueError(f"{path}: no backbone tensor matches a {model.backbone_name}")
    model.load_state_dict(matched, strict=False)
    return len(matched)


@dataclass
class FitResult:
    best_auc: float
    best_epoch: int
    checkpoint: Path
    history: list[dict] = field(default_factory=list)


def fit(config: TrainConfig, train_samples: Sequence[Sample], val_samples: Sequence[Sample], out: Path, *,
        resume: bool = True, split_info: dict | None = None, log: Callable[[str], None] | None = None) -> FitResult:
    """Train with early stopping on validation AUC; writes OUT/{last,best}.pt and OUT/history.json."""
    from tqdm import tqdm

    log = log or (lambda msg: click.echo(msg, err=True))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(image_size=config.image_size)
    modalities = config.modalities
    trained_modalities = tuple(sorted({s.modality for s in train_samples}, key=modalities.index))
    labels = [int(s.label) for s in train_samples]
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"the training side needs both classes; got {positives} malignant / {negatives} benign")

    train_set = PaneDataset(train_samples, modalities, spec, train=True, seed=config.seed,
                            strength=config.augment_strength)
    val_set = PaneDataset(val_samples, modalities, spec, train=False)
    use_sampler = config.balance in (Balance.SAMPLER, Balance.BOTH)
    sampler = balanced_sampler(labels, config.seed) if use_sampler else None
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None,
                                               sampler=sampler, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=32)

    model = MultimodalClassifier(config.backbone, modalities)
    if config.init:
        n = init_from(model, config.init)
        log(f"initialised {n} tensors from {config.init}")
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.epochs * steps_per_epoch, max(1, round(config.warmup_epochs * steps_per_epoch))))
    pos_weight = None
    if config.balance in (Balance.LOSS, Balance.BOTH):
        pos_weight = torch.tensor(negatives / positives)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    ema = Ema(model, config.ema) if config.ema > 0 else None
    info = CheckpointInfo(backbone=config.backbone, modalities=modalities, trained_modalities=trained_modalities,
                          image_size=config.image_size)
    state = {"epoch": 0, "step": 0, "best_auc": -1.0, "best_epoch": -1, "history": [], "elapsed_s": 0.0}
    last = out / "last.pt"
    if resume and last.exists():
        _, _, payload = load_checkpoint(last)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if ema is not None and "ema_state_dict" in payload:
            ema.model.load_state_dict(payload["ema_state_dict"])
        state = payload["train_state"]
        log(f"resumed from {last} at epoch {state['epoch']} (best AUC {state['best_auc']:.3f})")
    # A resumed run draws fresh (but reproducible) augmentations and batches.
    train_set.rng = np.random.default_rng(config.seed + state["epoch"])
    if sampler is not None:
        sampler.generator.manual_seed(config.seed + state["epoch"])
    mix_rng = np.random.default_rng(config.seed + 1000 + state["epoch"])
    started = time.monotonic() - state["elapsed_s"]
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr)
        losses = []
        for panes, present, label in bar:
            target = smooth_targets(label, config.label_smoothing)
            if config.mixup > 0:
                lam = float(mix_rng.beta(config.mixup, config.mixup))
                perm = torch.randperm(panes.shape[0])
                panes = lam * panes + (1 - lam) * panes[perm]
                present = torch.maximum(present, present[perm])
                target = lam * target + (1 - lam) * target[perm]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(panes, present), target)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            if ema is not None:
                ema.update(model, state["step"])
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        evaluated = ema.model if ema is not None else model
        val_labels, val_scores = predict(evaluated, val_loader)
        auc = roc_auc(val_labels, val_scores)
        elapsed = time.monotonic() - started
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": auc, "elapsed_s": round(elapsed, 1)}
        state["history"].append(record)
        improved = auc > state["best_auc"] and epoch + 1 >= config.min_epochs
        if improved:
            state["best_auc"], state["best_epoch"] = auc, epoch + 1
            info.metrics = {"val_auc": auc, "val_crops": len(val_labels), "epoch": epoch + 1,
                            "label_source": config.label_source}
            info.threshold = {"value": youden_threshold(val_labels, val_scores), "method": "youden",
                              "chosen_on": "validation split"}
            info.training = {"split": split_info or {}, "epochs": epoch + 1, "recipe": config.to_dict()}
            best_model = MultimodalClassifier(config.backbone, modalities)
            best_model.load_state_dict(evaluated.state_dict())
            best_model.zero_untrained_modalities(trained_modalities)
            save_checkpoint(out / "best.pt", best_model, info)
        state["epoch"], state["elapsed_s"] = epoch + 1, elapsed
        extra = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "train_state": state}
        if ema is not None:
            extra["ema_state_dict"] = ema.model.state_dict()
        save_checkpoint(last, model, info, extra=extra)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        log(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val AUC {auc:.3f}"
            f"{'  *best*' if improved else ''}  ({elapsed / 60:.1f} min)")
        if state["best_epoch"] > 0 and epoch + 1 - state["best_epoch"] >= config.patience:
            log(f"early stop: no better validation AUC for {config.patience} epochs")
            break
        if config.max_minutes and elapsed / 60 >= config.max_minutes:
            log(f"stopping at the {config.max_minutes} min budget")
            break
    return FitResult(state["best_auc"], state["best_epoch"], out / "best.pt", state["history"])


def recipe_options(function):
    """The recipe options shared by train and pretrain."""
    options = [
        click.option("--backbone", type=click.Choice(sorted(BACKBONE_CHANNELS)), default="resnet50", show_default=True),
        click.option("--modalities", default=",".join(MODALITIES), show_default=True,
                     help="Modalities the fusion head has slots for (comma-separated)."),
        click.option("--image-size", type=int, default=128, show_default=True,
                     help="Pane resolution (the engine's input size); 128 fits a CPU budget."),
        click.option("--epochs", type=int, default=40, show_default=True, help="Length of the LR schedule."),
        click.option("--batch-size", type=int, default=16, show_default=True),
        click.option("--lr", type=float, default=3e-4, show_default=True, help="Peak AdamW learning rate."),
        click.option("--warmup-epochs", type=float, default=2.0, show_default=True, help="Linear warm-up, then cosine decay."),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        click.option("--balance", type=click.Choice([b.value for b in Balance]), default=Balance.SAMPLER.value,
                     show_default=True, help="Class balancing: balanced sampler, pos_weight loss, both or none."),
        click.option("--label-smoothing", type=float, default=0.1, show_default=True),
        click.option("--mixup", type=float, default=0.0, show_default=True, help="Mixup Beta(a, a) parameter (0: off)."),
        click.option("--ema", type=float, default=0.99, show_default=True,
                     help="Decay of the weight EMA that is validated and saved (0: off)."),
        click.option("--augment-strength", type=float, default=1.0, show_default=True),
        click.option("--patience", type=int, default=12, show_default=True,
                     help="Early-stopping patience (epochs without a better validation AUC)."),
        click.option("--min-epochs", type=int, default=0, show_default=True,
                     help="Do not select a best checkpoint before this epoch (the EMA is still warming up)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)."),
        click.option("--max-minutes", type=float, default=0, help="Stop after this wall time (0: no limit); the best checkpoint stays."),
        click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Initialise from a checkpoint (e.g. export/pretrain.py's best.pt)."),
        click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/last.pt if present."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def config_from_options(options: dict) -> TrainConfig:
    modalities = tuple(m.strip() for m in options.pop("modalities").split(",") if m.strip())
    return TrainConfig(modalities=modalities, balance=Balance(options.pop("balance")), **options)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with image, label, case_id[, modality, mask] columns.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints (last.pt, best.pt), history.json, split.json.")
@click.option("--folds", type=int, default=4, show_default=True, help="Case-level folds; one is validation.")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the case-level split.")
@recipe_options
def main(data_csv, out_dir, folds, fold, split_seed, resume, **options) -> None:
    """Train a backbone + fusion head with early stopping on validation AUC (case-level split).

    \b
    Reported recipe (ResNet50, DDTI fold 0 of 4):
      python -m edge_thyroid.export.pretrain --out runs/pretrain_busi_resnet50 --threads 2
      python -m edge_thyroid.export.train --data ../shared/data/ddti/labels.csv \\
          --out runs/resnet50_final --init runs/pretrain_busi_resnet50/best.pt --threads 2
    """
    config = config_from_options(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_samples(data_csv)
    train_samples, val_samples = split_by_case(samples, folds=folds, fold=fold, seed=split_seed)
    # The CSV's sha256 travels into the checkpoint and the bundle: evaluate uses only the validation side
    # of this exact file, and every row of any other.
    split = {"data": str(data_csv), "sha256": sha256_file(data_csv), "folds": folds, "fold": fold, "seed": split_seed}
    (out / "split.json").write_text(json.dumps(split | {
        "train_cases": sorted({s.case_id for s in train_samples}),
        "val_cases": sorted({s.case_id for s in val_samples}),
    }, indent=1))
    positives = sum(s.label for s in train_samples)
    click.echo(f"train {len(train_samples)} crops ({positives} malignant / {len(train_samples) - positives} benign), "
               f"validation {len(val_samples)} crops; {len({s.case_id for s in train_samples})} vs "
               f"{len({s.case_id for s in val_samples})} cases", err=True)
    result = fit(config, train_samples, val_samples, out, resume=resume, split_info=split)
    click.echo(json.dumps({"best_val_auc": result.best_auc, "best_epoch": result.best_epoch,
                           "checkpoint": str(result.checkpoint)}))


if __name__ == "__main__":
    main()
