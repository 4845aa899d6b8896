"""The nodule-guided training recipe: the model is made to look at the nodule and to cope with the boxes,
scanners and burned-in marks it will meet at run time.

    python -m edge_thyroid.export.nodule_training --data ../shared/data/ddti/labels.csv --out runs/nodule_all --all
    python -m edge_thyroid.export.nodule_training --data runs/ddti_160.npz --out runs/f0 --fold 0   # e.g. on a GPU

What differs from the plain recipe (export/train.py):

* inputs: with probability ``p_box`` a box around the nodule's mask (margin 1.1x-2.5x, random shift,
  export/augment.py), else the stock crop; small affine, burned-in calipers/text/rulers on both classes,
  scanner look (TGC, gain, gamma, resampling, blur, speckle, JPEG), horizontal flip;
* losses: the product's BCE (label smoothing, class-balanced sampler; ``sampler`` "natural": every crop
  once an epoch, the BCE weighted per class instead) + CAM guidance (evidence outside the
  dilated mask) + a segmentation head on the last feature maps + an ordinal TI-RADS head
  (export/guidance.py), optionally a head regressing the nodule's sonographic descriptors
  (export/descriptors.py, ``descriptor_weight``), a pairwise ranking loss on the binary head
  (``rank_weight``), mixup of the labelled crops (export/mixup.py, ``mixup_alpha``)
  or the pre-training images replayed with a head of their own (``replay``, ``replay_per_batch``);
  crops without a label (DDTI has 166) still teach the segmentation head and the CAM guidance, never the classifier;
* a fixed schedule: no epoch is picked on validation data; the saved model is the weight EMA at the end;
* a data pack (export/datapack.py) and a device switch: on CUDA it trains in bf16 autocast,
  channels-last, with loader workers; the CPU run is the reference recipe (f32). ``--precision bf16``
  trains in bf16 autocast on a CPU too: on a CPU with AMX an epoch took 0.64x the f32 time, and its
  cross-validated AUC came within 0.03 of the f32 run's, as close as f32 on another CPU comes
  (BENCHMARKS.md "Training precision").

Checkpoints: OUT/last.pt every epoch (model, EMA, auxiliary heads, optimizer; resumable) and OUT/final.pt,
the EMA model alone in the project's checkpoint format (auxiliary heads dropped), which
``edge-thyroid export`` turns into a bundle.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
import torch
from torch.nn import functional as F

from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .augment import (box_at_margin, burn_in_marks, crop, mask_bbox, sample_box, scanner_look,
                      small_affine, swap_background, synthetic_cyst, synthetic_spongiform)
from .checkpoint import CheckpointInfo, save_checkpoint
from .datapack import TIRADS_LEVELS, DataPack, pack_for
from .descriptors import DESCRIPTOR_NAMES, descriptor_scale, nodule_descriptors, standardised
from .guidance import (GuidedClassifier, cam_outside_loss, descriptor_loss, level_targets, pairwise_rank_loss, seg_loss,
                       soft_ordinal_loss, training_batch)
from .mixup import mix_batch, mixup_partners
from .models import BACKBONE_CHANNELS, MODALITIES, MultimodalClassifier
from .recipe_options import SAMPLERS, recipe_options, recipe_overrides
from .stochastic_depth import add_stochastic_depth
from .train import Ema, lr_lambda, smooth_targets

LABEL_SOURCE = "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology"


@dataclass
class NoduleRecipe:
    backbone: str = "resnet50"
    image_size: int = 128
    epochs: int = 30
    batch_size: int = 16          # labelled crops per step
    # How the classes are balanced: "balanced" draws each labelled crop's class by a fair coin (with
    # replacement: the few benign crops recur ~3x an epoch); "natural" meets every labelled crop once an
    # epoch and weights the BCE so each class carries half of it (class_weights).
    sampler: str = "balanced"
    unlabelled_per_batch: int = 2  # extra crops per step for the mask heads (and, pseudo-labelled, the classifier)
    lr: float = 5e-4
    # The pre-trained backbone's learning rate as a share of ``lr`` (the heads keep ``lr``): below 1 the
    # fine-tuning moves the pre-trained features less, the classic small-data fine-tuning choice.
    backbone_lr_scale: float = 1.0
    warmup_epochs: float = 2.0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    # Stochastic depth (export/stochastic_depth.py): the deepest residual block's drop rate, rising linearly
    # from 0 at the first; ResNet only. 0: off (the shipped recipe).
    stochastic_depth: float = 0.0
    # Dropout on the pooled features the classification head sees, in training only. 0: off.
    head_dropout: float = 0.0
    # The weight average that becomes the model (export/train.py ema_decay_at): decay (1 + s) / (ema_ramp + s)
    # at step s, capped at ``ema``. The recipe's ~510 steps never reach the 0.99 cap (that takes 890), so
    # ``ema_ramp`` is what sets the average's length: 10 puts ~92% of it on the last quarter of the steps.
    ema: float = 0.99
    ema_ramp: float = 10.0
    p_box: float = 0.7            # a mask-derived box instead of the stock crop
    margin_min: float = 1.1
    margin_max: float = 2.5
    mask_dilation: float = 0.1    # of the nodule's size: evidence at the border counts as inside
    augment_strength: float = 1.0
    # Scanner gamma drawn as exp(U(-r, r)): 0.3 meets 0.74-1.35; a darker gain than that cost the fold models
    # 0.075 AUC (BENCHMARKS.md "Familiarity"), so wider ranges are tried under cross-validation.
    gamma_log_range: float = 0.3
    cam_weight: float = 1.0
    seg_weight: float = 0.5
    ordinal_weight: float = 0.5
    descriptor_weight: float = 0.0  # 0: no descriptor head (the shipped recipe)
    # Weight of a pairwise ranking loss on the binary head (guidance.pairwise_rank_loss: the logistic
    # surrogate of 1 - AUC over each batch's malignant/benign pairs) beside its BCE. 0: off (the shipped recipe).
    rank_weight: float = 0.0
    level_targets: bool = False   # binary targets graded by TI-RADS level (guidance.LEVEL_TARGETS); off: 0/1
    # Share of drawn crops whose nodule becomes a synthetic anechoic cyst (augment.synthetic_cyst), labelled
    # benign at TI-RADS 2: guideline knowledge that DDTI (one labelled cyst) cannot teach. 0: off.
    p_cyst: float = 0.0
    # Share of drawn crops (not made cysts) whose nodule becomes a synthetic spongiform one
    # (augment.synthetic_spongiform), labelled benign at TI-RADS 2. 0: off.
    p_spongiform: float = 0.0
    # Share of drawn crops (not made synthetic) that keep their nodule and a ring of their own tissue on
    # another training-side crop's surroundings (augment.swap_background), so no answer can come from what
    # lies around the nodule. 0: off (the shipped recipe).
    p_swap: float = 0.0
    # Mixup (export/mixup.py): each labelled crop blended with another of its batch, weight from
    # Beta(alpha, alpha) folded to >= 0.5, targets blended alike. 0: off.
    mixup_alpha: float = 0.0
    # Replay of the pre-training images during fine-tuning: ``replay_per_batch`` labelled crops of the pack
    # at ``replay`` (e.g. runs/pretrain_pack.npz: BUSI, malignant vs not) join every step, scored by a head
    # of their own (weight ``replay_weight``, dropped at export), never by the thyroid head. 0: off.
    # ``replay_shared_head``: scored by the thyroid head itself instead, as more labelled cases of the same
    # question (malignant or not) from another organ.
    replay: str | None = None
    replay_per_batch: int = 0
    replay_weight: float = 0.5
    replay_shared_head: bool = False
    # Soft pseudo-labels (export/pseudo_labels.py): the unlabelled crops get the mean p of these teacher
    # checkpoints (mirror-image average) as their label, so they teach the classifier, not only the mask
    # heads. The teachers must not have seen the held-out cases. Empty: off.
    pseudo_label_teachers: tuple[str, ...] = ()
    seed: int = 0
    init: str | None = None       # a pre-trained checkpoint whose backbone starts the run
    label_source: str = LABEL_SOURCE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "NoduleRecipe":
        """The recipe a run recorded with :meth:`to_dict` (a results JSON's or a checkpoint's): keys the
        recipe no longer has are dropped, fields added since keep their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        if "pseudo_label_teachers" in values:   # JSON gives a list
            values["pseudo_label_teachers"] = tuple(values["pseudo_label_teachers"] or ())
        return cls(**values)


CYST_LEVEL = TIRADS_LEVELS.index("2")  # a simple cyst: benign, the lowest level DDTI grades


def recipe_differences(saved: dict, recipe: NoduleRecipe) -> list[str]:
    """The fields in which a run saved with ``saved`` differs from this recipe. A field added to the recipe
    after the run was saved counts as equal when it has its default (the run trained without it, i.e. with
    the default), so finished runs stay resumable and re-scorable; a saved field the recipe no longer has
    is a difference."""
    current, defaults = recipe.to_dict(), NoduleRecipe().to_dict()
    return sorted([key for key, value in current.items()
                   if (saved[key] != value if key in saved else value != defaults[key])] + list(set(saved) - set(current)))


def same_recipe(saved: dict, recipe: NoduleRecipe) -> bool:
    """Whether a run saved with ``saved`` is this recipe (:func:`recipe_differences` is empty)."""
    return not recipe_differences(saved, recipe)


# -- inputs ---------------------------------------------------------------------------------------------

def dilate(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Grow a mask by ``fraction`` of its bounding box's mean side (at least one pixel)."""
    bbox = mask_bbox(mask)
    if bbox is None or fraction <= 0:
        return mask
    radius = max(1, int(round(fraction * (bbox[2] + bbox[3]) / 2)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def cell_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """The fraction of each of grid x grid cells that the mask covers (area average)."""
    return cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)


def to_pixels(image: np.ndarray, spec: PreprocessSpec, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A grayscale crop (or a box of it) through the engine's own preprocessing: 3 x S x S float32."""
    h, w = image.shape[:2]
    return preprocess_reference(image, [box or (0, 0, w, h)], spec)[0]


def augmented_view(image: np.ndarray, mask: np.ndarray, recipe: NoduleRecipe,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's augmentations of a grayscale crop and its mask: (image, mask) as the model will meet them
    (affine, burned-in marks, a box around the nodule, scanner look, horizontal flip)."""
    strength = recipe.augment_strength
    if rng.random() < 0.7:
        image, mask = small_affine(image, mask, rng, strength)
    image = burn_in_marks(image, mask, rng)
    bbox = mask_bbox(mask)
    if bbox is not None and rng.random() < recipe.p_box:
        box = sample_box(bbox, image.shape, rng, margin=(recipe.margin_min, recipe.margin_max))
        image, mask = crop(image, box), crop(mask, box)
    image = scanner_look(image, rng, strength, recipe.gamma_log_range)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def view_inputs(image: np.ndarray, mask: np.ndarray, recipe: NoduleRecipe, spec: PreprocessSpec,
                grid: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """An augmented view as the model is trained on it: (pixels 3 x S x S, mask coverage grid x grid, has_mask)."""
    return to_pixels(image, spec), cell_coverage(dilate(mask, recipe.mask_dilation), grid), bool(mask.any())


def training_crop(image: np.ndarray, mask: np.ndarray, recipe: NoduleRecipe, spec: PreprocessSpec, grid: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """One augmented training input: (pixels 3 x S x S, mask coverage grid x grid, has_mask)."""
    return view_inputs(*augmented_view(image, mask, recipe, rng), recipe, spec, grid)


def evaluation_box(mask: np.ndarray, margin: float | None) -> tuple[int, int, int, int] | None:
    """The stock crop (None) or the nodule's box at a fixed margin (stock crop when the mask is empty)."""
    bbox = mask_bbox(mask) if margin is not None else None
    return None if bbox is None else box_at_margin(bbox, margin, mask.shape)


SYNTHETIC_ORIGIN = 2   # a draw's origin once its nodule was made a synthetic cyst or spongiform nodule


class NoduleBatches(torch.utils.data.Dataset):
    """One epoch's draws (pack indices); each draw is augmented with its own seeded generator, so the
    batches are the same whatever the number of loader workers."""

    def __init__(self, pack: DataPack, draws: Sequence[int], recipe: NoduleRecipe, grid: int, epoch: int,
                 descriptor_scale: tuple[np.ndarray, np.ndarray] | None = None, replay: DataPack | None = None,
                 soft_labels: np.ndarray | None = None, donors: np.ndarray | None = None) -> None:
        self.pack, self.draws, self.recipe, self.grid, self.epoch = pack, list(draws), recipe, grid, epoch
        self.spec = PreprocessSpec(image_size=recipe.image_size)
        self.descriptor_scale = descriptor_scale
        self.replay = replay
        self.soft_labels = soft_labels   # pack-long; a finite value labels an unlabelled crop (pseudo-label)
        self.donors = donors             # pack indices whose surroundings a swapped draw may take (recipe.p_swap)

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, k: int):
        i = self.draws[k]
        rng = np.random.default_rng((self.recipe.seed, self.epoch, k))
        if i >= len(self.pack.labels):
            return self.replay_item(i - len(self.pack.labels), rng)
        image, mask = self.pack.images[i], self.pack.masks[i]
        label, level = float(self.pack.labels[i]), int(self.pack.tirads[i])
        if label < 0 and self.soft_labels is not None and np.isfinite(self.soft_labels[i]):
            label = float(self.soft_labels[i])   # no level: the ordinal head still learns from graded crops only
        # What the crop was before any synthetic nodule: its own hard label, 2 once made a synthetic nodule,
        # -1 without a label (the natural sampler weights the BCE by it).
        origin = int(self.pack.labels[i]) if self.pack.labels[i] >= 0 else -1
        synthetic = False
        if self.recipe.p_cyst > 0:
            # Its own generator, so the recipe without cysts draws exactly the augmentations it always drew.
            cyst_rng = np.random.default_rng((self.recipe.seed, self.epoch, k, 11))
            cyst = synthetic_cyst(image, mask, cyst_rng) if cyst_rng.random() < self.recipe.p_cyst else None
            if cyst is not None:
                (image, mask), label, level, synthetic, origin = cyst, 0.0, CYST_LEVEL, True, SYNTHETIC_ORIGIN
        if self.recipe.p_spongiform > 0 and not synthetic:
            # Its own generator too: the cysts and every other augmentation are drawn as without it.
            sponge_rng = np.random.default_rng((self.recipe.seed, self.epoch, k, 13))
            if sponge_rng.random() < self.recipe.p_spongiform:
                sponge = synthetic_spongiform(image, mask, sponge_rng)
                if sponge is not None:
                    (image, mask), label, level, origin = sponge, 0.0, CYST_LEVEL, SYNTHETIC_ORIGIN
                    synthetic = True
        if self.recipe.p_swap > 0 and not synthetic and self.donors is not None and len(self.donors):
            # Its own generator as well; the nodule keeps its label, level and origin.
            swap_rng = np.random.default_rng((self.recipe.seed, self.epoch, k, 17))
            if swap_rng.random() < self.recipe.p_swap:
                donor = int(self.donors[swap_rng.integers(len(self.donors))])
                if donor != i:
                    swapped = swap_background(image, mask, self.pack.images[donor], self.pack.masks[donor], swap_rng)
                    if swapped is not None:
                        image, mask = swapped
        # The view itself, not training_crop: the descriptor targets are measured on it.
        image, mask = augmented_view(image, mask, self.recipe, rng)
        pixels, coverage, has_mask = view_inputs(image, mask, self.recipe, self.spec, self.grid)
        targets = np.zeros(0, np.float32)
        if self.descriptor_scale is not None:
            targets = standardised(nodule_descriptors(image, mask), *self.descriptor_scale)
        return (torch.from_numpy(pixels), torch.from_numpy(coverage), torch.tensor(has_mask),
                torch.tensor(label), torch.tensor(level),
                torch.from_numpy(targets), torch.tensor(-1.0), torch.tensor(origin))

    def replay_item(self, i: int, rng: np.random.Generator):
        """A pre-training image, augmented like the others: no thyroid label or level (-1), its own label
        last (the replay head's target); its mask, if it has one, guides the CAM as a nodule's does."""
        if self.replay is None:
            count = len(self.pack.labels)
            raise IndexError(f"draw {i + count} is past the pack's {count} crops and no replay pack was given")
        image, mask = augmented_view(self.replay.images[i], self.replay.masks[i], self.recipe, rng)
        pixels, coverage, has_mask = view_inputs(image, mask, self.recipe, self.spec, self.grid)
        width = len(self.descriptor_scale[0]) if self.descriptor_scale is not None else 0
        return (torch.from_numpy(pixels), torch.from_numpy(coverage), torch.tensor(has_mask),
                torch.tensor(-1.0), torch.tensor(-1), torch.full((width,), float("nan")),
                torch.tensor(float(self.replay.labels[i])), torch.tensor(-1))


def class_weights(labels: np.ndarray) -> tuple[float, float]:
    """BCE weights (benign, malignant) that give each class half the loss over ``labels`` (0/1; others
    ignored): N / (2 N_class), so a batch drawn in the classes' own proportions averages weight 1."""
    counts = [int(np.sum(labels == c)) for c in (0, 1)]
    if min(counts) == 0:
        raise ValueError(f"class weights need both classes; got {counts[1]} malignant / {counts[0]} benign crops")
    total = counts[0] + counts[1]
    return total / (2 * counts[0]), total / (2 * counts[1])


def epoch_draws(labels: np.ndarray, labelled: np.ndarray, unlabelled: np.ndarray, recipe: NoduleRecipe,
                epoch: int, replay_count: int = 0) -> list[int]:
    """Pack indices for one epoch, batch by batch: ``batch_size`` labelled crops drawn class-balanced
    (with replacement) followed by ``unlabelled_per_batch`` unlabelled ones and, with a replay pack of
    ``replay_count`` crops, ``replay_per_batch`` of those (as ``len(labels) + index``)."""
    replay_rng = np.random.default_rng((recipe.seed, epoch, 19))  # its own: the other draws stay as they were
    rng = np.random.default_rng((recipe.seed, epoch, 7))
    classes = [labelled[labels[labelled] == c] for c in (0, 1)]
    if any(len(c) == 0 for c in classes):
        raise ValueError(f"training needs both classes; got {len(classes[1])} malignant / {len(classes[0])} benign crops")
    steps = len(labelled) // recipe.batch_size
    if recipe.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {recipe.sampler!r}; expected one of {', '.join(SAMPLERS)}")
    order = rng.permutation(labelled) if recipe.sampler == "natural" else None
    draws: list[int] = []
    for step in range(steps):
        if order is not None:
            draws += [int(i) for i in order[step * recipe.batch_size:(step + 1) * recipe.batch_size]]
        else:
            chosen = rng.integers(0, 2, recipe.batch_size)
            draws += [int(rng.choice(classes[c])) for c in chosen]
        if len(unlabelled) and recipe.unlabelled_per_batch:
            draws += [int(i) for i in rng.choice(unlabelled, recipe.unlabelled_per_batch)]
        if replay_count and recipe.replay_per_batch:
            draws += [len(labels) + int(i) for i in replay_rng.integers(0, replay_count, recipe.replay_per_batch)]
    return draws


# -- training -------------------------------------------------------------------------------------------

def parameter_groups(model: GuidedClassifier, recipe: NoduleRecipe) -> list[dict]:
    """The optimizer's parameter groups: one group at ``recipe.lr`` (the recipe as shipped), or the backbone
    at ``lr * backbone_lr_scale`` and the heads at ``lr``."""
    if recipe.backbone_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    backbone = list(model.base.backbone.parameters())
    inside = {id(p) for p in backbone}
    heads = [p for p in model.parameters() if id(p) not in inside]
    return [{"params": backbone, "lr": recipe.lr * recipe.backbone_lr_scale}, {"params": heads}]


def load_replay(recipe: NoduleRecipe) -> DataPack | None:
    """The labelled crops of the recipe's replay pack, or None when replay is off."""
    if recipe.replay_per_batch <= 0:
        return None
    if not recipe.replay:
        raise ValueError(f"replay_per_batch is {recipe.replay_per_batch} but no replay pack was given; "
                         "expected a data pack such as runs/pretrain_pack.npz")
    pack = pack_for(recipe.replay)
    labelled = np.flatnonzero(pack.labelled)
    if len(labelled) == 0:
        raise ValueError(f"{recipe.replay}: no labelled crops to replay; expected a pack with labels (e.g. BUSI's)")
    return pack.subset(labelled)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda was asked for, but torch sees no CUDA device")
    return device


PRECISIONS = ("auto", "f32", "bf16")


def training_precision(device: torch.device, requested: str = "auto") -> str:
    """What the forward pass runs in: ``auto`` is bf16 on CUDA and f32 (the reference recipe) on a CPU,
    where bf16 is an opt-in because it changes the recipe's numbers."""
    if requested not in PRECISIONS:
        raise click.ClickException(f"--precision {requested!r} is not supported; expected one of {list(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "f32"
    return requested


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of one training step: bf16 where ``precision`` says so, none for f32.
    Losses are taken in float32 either way (the step casts the outputs back)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def feature_grid(backbone: str, image_size: int) -> int:
    """Side of the backbone's last feature map for this input size (all four backbones: stride 32)."""
    with torch.no_grad():
        model = MultimodalClassifier(backbone, ("bmode",)).eval()
        return int(model.feature_maps(torch.zeros(1, 3, image_size, image_size)).shape[-1])


def training_csv(pack: DataPack) -> dict[str, Any] | None:
    """The one CSV a pack was built from ({data, sha256}), or None (a pack of several CSVs, or none named)."""
    digest = pack.meta.get("csv_sha256")
    if not digest or "+" in str(digest):
        return None
    return {"data": pack.meta.get("csv"), "sha256": digest}


def split_record(pack: DataPack, folds: int, fold: int, seed: int = 0) -> dict[str, Any] | None:
    """What a fold model records of its split (checkpoint training.split, as export/train.py writes it), so
    that `edge-thyroid evaluate` on its CSV takes the fold it held out; None when the pack names no CSV."""
    csv = training_csv(pack)
    return None if csv is None else {**csv, "folds": folds, "fold": fold, "seed": seed}


def every_row_record(pack: DataPack) -> dict[str, Any] | None:
    """What a model trained on every crop of the pack records (checkpoint training.split with ``every_row``),
    so that `edge-thyroid evaluate` on that CSV says every figure is in-sample even before
    stamp_checkpoint adds the cross-validated metrics; None when the pack names no one CSV."""
    csv = training_csv(pack)
    return None if csv is None else {**csv, "every_row": True}


def fit_nodule(recipe: NoduleRecipe, pack: DataPack, train_index: np.ndarray, out: Path, *,
               device: str = "auto", workers: int = 0, threads: int = 0, resume: bool = True,
               log: Callable[[str], None] | None = None, split: dict[str, Any] | None = None,
               precision: str = "auto") -> MultimodalClassifier:
    """Train on ``pack[train_index]`` (labelled and unlabelled crops) for the fixed schedule.

    Writes OUT/last.pt every epoch and OUT/final.pt (the EMA model, the project's checkpoint format) at
    the end; returns that model in eval mode, on the CPU. ``precision``: see :func:`training_precision`;
    the checkpoint records the one used.
    """
    from tqdm import tqdm

    log = log or (lambda msg: click.echo(msg, err=True))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    dev = pick_device(device)
    precision = training_precision(dev, precision)
    out.mkdir(parents=True, exist_ok=True)
    grid = feature_grid(recipe.backbone, recipe.image_size)
    train_index = np.asarray(train_index)
    labels = pack.labels
    labelled = train_index[labels[train_index] >= 0]
    unlabelled = train_index[labels[train_index] < 0]
    if recipe.mixup_alpha > 0 and recipe.descriptor_weight > 0:
        raise ValueError("mixup and the descriptor head cannot be combined: a blend of two crops has no descriptors")
    if recipe.sampler == "natural" and (recipe.mixup_alpha > 0 or recipe.pseudo_label_teachers):
        raise ValueError("the natural sampler's class weights need hard labels: no mixup, no pseudo-labels")
    if recipe.mixup_alpha > 0 and recipe.rank_weight > 0:
        raise ValueError("mixup and the ranking loss cannot be combined: a blend of two crops is neither class")
    if recipe.stochastic_depth > 0 and not recipe.backbone.startswith("resnet"):
        raise ValueError(f"stochastic depth needs a ResNet backbone (residual blocks to drop), got {recipe.backbone}")
    replay = load_replay(recipe)
    soft_labels = None
    if recipe.pseudo_label_teachers:
        # Building the teachers draws from torch's generator: restored after, so the model starts exactly as
        # it would without pseudo-labels.
        with torch.random.fork_rng(devices=[]):
            soft_labels = teacher_probabilities(recipe.pseudo_label_teachers, pack, unlabelled)
        given = soft_labels[unlabelled]
        log(f"pseudo-labels for {len(unlabelled)} unlabelled crops from {len(recipe.pseudo_label_teachers)} "
            f"teachers: median p {np.median(given) if len(given) else float('nan'):.3f}")
    base = MultimodalClassifier(recipe.backbone, MODALITIES)
    if recipe.init:
        # Only the backbone: the head and the auxiliary heads start fresh for the new task.
        from .train import init_from

        head = {k: v.clone() for k, v in base.head.state_dict().items()}
        log(f"initialised {init_from(base, recipe.init)} tensors from {recipe.init}")
        base.head.load_state_dict(head)
    scale = None
    if recipe.descriptor_weight > 0:
        # Scaled on the training side's own crops (labelled or not), never on the held-out fold.
        scale = descriptor_scale(pack.images[train_index], pack.masks[train_index])
    model = GuidedClassifier(base, "bmode", len(TIRADS_LEVELS),
                             len(DESCRIPTOR_NAMES) if scale is not None else 0,
                             replay=replay is not None and not recipe.replay_shared_head,
                             head_dropout=recipe.head_dropout)
    model = model.to(dev).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(labelled) // recipe.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(recipe.epochs * steps_per_epoch, max(1, round(recipe.warmup_epochs * steps_per_epoch))))
    ema = Ema(model, recipe.ema, recipe.ema_ramp)
    if recipe.stochastic_depth > 0:
        # After the EMA copy: the averaged model is only ever evaluated, where the hooks do nothing anyway.
        add_stochastic_depth(model.base.backbone, recipe.stochastic_depth)
    state = {"epoch": 0, "step": 0, "history": [], "elapsed_s": 0.0}
    last = out / "last.pt"
    if resume and last.exists():
        payload = torch.load(last, map_location=dev, weights_only=True)
        if not same_recipe(payload.get("recipe") or {}, recipe):
            raise click.ClickException(f"{last} was written with another recipe; use a new --out or --no-resume")
        if payload.get("precision", precision) != precision:
            raise click.ClickException(f"{last} was trained in {payload['precision']}, this run asks for {precision}; "
                                       f"expected the same --precision, a new --out or --no-resume")
        model.load_state_dict(payload["model"])
        ema.model.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = payload["state"]
        log(f"resumed from {last} at epoch {state['epoch']}")
    autocast = autocast_for(dev, precision)
    # Training-side crops (labelled or not) whose surroundings a swapped draw may take: a usable mask only.
    donors = (train_index[[int(pack.masks[i].sum()) >= 16 for i in train_index]] if recipe.p_swap > 0 else None)
    # BCE weight by origin (benign, malignant, synthetic), for the natural sampler only.
    origin_weights = (torch.tensor([*class_weights(labels[labelled]), 1.0], device=dev)
                      if recipe.sampler == "natural" else None)
    started = time.monotonic() - state["elapsed_s"]
    batch = (recipe.batch_size + (recipe.unlabelled_per_batch if len(unlabelled) else 0)
             + (recipe.replay_per_batch if replay is not None else 0))
    for epoch in range(state["epoch"], recipe.epochs):
        model.train()
        draws = epoch_draws(labels, labelled, unlabelled, recipe, epoch, len(replay) if replay is not None else 0)
        loader = torch.utils.data.DataLoader(NoduleBatches(pack, draws, recipe, grid, epoch, scale, replay, soft_labels,
                                                           donors),
                                             batch_size=batch,
                                             shuffle=False, num_workers=workers, drop_last=True,
                                             persistent_workers=False, pin_memory=dev.type == "cuda")
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False, file=sys.stderr)
        for step, (pixels, coverage, has_mask, label, level, targets, replay_label, origin) in enumerate(bar):
            pixels = pixels.to(dev, non_blocking=True).to(memory_format=torch.channels_last)
            coverage, has_mask = coverage.to(dev), has_mask.to(dev)
            label, level = label.to(dev), level.to(dev)
            known = label >= 0
            target = smooth_targets(level_targets(label, level) if recipe.level_targets else label, recipe.label_smoothing)
            if recipe.mixup_alpha > 0:
                # Its own generator, so nothing else the recipe draws changes with mixup on.
                partner, lam = mixup_partners(int(known.sum()), recipe.mixup_alpha,
                                              np.random.default_rng((recipe.seed, epoch, step, 17)))
                inputs = mix_batch(pixels, target, coverage, has_mask, level, len(TIRADS_LEVELS), known, partner, lam)
            else:
                inputs = training_batch(pixels, target, coverage, has_mask, level, len(TIRADS_LEVELS))
            with autocast:
                outputs = model(inputs.pixels)
            logit, cam = outputs["logit"].float(), outputs["cam"].float()
            weight = None
            if origin_weights is not None:
                # Each real class carries half of the real crops' BCE, as the balanced draws give it; a
                # synthetic nodule keeps weight 1, so the cysts' share of the loss is the balanced recipe's too.
                weight = origin_weights[origin[known].clamp(min=0).to(dev)]
            losses = {
                "cls": F.binary_cross_entropy_with_logits(logit[known], inputs.cls_target[known], weight=weight),
                "cam": cam_outside_loss(cam, inputs.cam_inside, inputs.cam_valid),
                "seg": seg_loss(outputs["seg"].float(), inputs.seg_target, inputs.seg_valid),
                "ord": soft_ordinal_loss(outputs["ordinal"].float(), inputs.ordinal_target, inputs.ordinal_valid),
            }
            loss = (losses["cls"] + recipe.cam_weight * losses["cam"] + recipe.seg_weight * losses["seg"]
                    + recipe.ordinal_weight * losses["ord"])
            if recipe.rank_weight > 0:
                # The drawn hard labels (a synthetic cyst's is 0), not the smoothed or graded targets.
                losses["rank"] = pairwise_rank_loss(logit[known], label[known])
                loss = loss + recipe.rank_weight * losses["rank"]
            if "descriptors" in outputs:
                losses["desc"] = descriptor_loss(outputs["descriptors"].float(), targets.to(dev))
                loss = loss + recipe.descriptor_weight * losses["desc"]
            if replay is not None:
                replay_label = replay_label.to(dev)
                replayed = replay_label >= 0
                replay_logit = logit if recipe.replay_shared_head else outputs["replay"].float()
                losses["replay"] = F.binary_cross_entropy_with_logits(
                    replay_logit[replayed], smooth_targets(replay_label[replayed], recipe.label_smoothing))
                loss = loss + recipe.replay_weight * losses["replay"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            ema.update(model, state["step"])
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix({k: f"{v / (bar.n + 1):.3f}" for k, v in sums.items()})
        elapsed = time.monotonic() - started
        record = {"epoch": epoch + 1, **{k: v / max(1, len(loader)) for k, v in sums.items()},
                  "elapsed_s": round(elapsed, 1)}
        state["history"].append(record)
        state["epoch"], state["elapsed_s"] = epoch + 1, elapsed
        tmp = last.with_suffix(".pt.tmp")
        torch.save({"recipe": recipe.to_dict(), "model": model.state_dict(), "ema": ema.model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                    "precision": precision}, tmp)
        tmp.replace(last)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        log(f"epoch {epoch + 1}/{recipe.epochs}: " + "  ".join(f"{k} {v:.3f}" for k, v in record.items()
                                                                 if k not in ("epoch", "elapsed_s"))
            + f"  ({elapsed / 60:.1f} min)")
    final = MultimodalClassifier(recipe.backbone, MODALITIES)
    final.load_state_dict(ema.model.base.state_dict())
    final.zero_untrained_modalities(("bmode",))
    final.eval()
    info = CheckpointInfo(backbone=recipe.backbone, modalities=MODALITIES, trained_modalities=("bmode",),
                          image_size=recipe.image_size,
                          training={"recipe": recipe.to_dict(), "data": pack.meta, "epochs": recipe.epochs,
                                    "train_crops": int(len(labelled)), "unlabelled_crops": int(len(unlabelled)),
                                    "pseudo_labelled_crops": int(len(unlabelled)) if soft_labels is not None else 0,
                                    "label_source": recipe.label_source, "history": state["history"],
                                    "precision": precision, "device": dev.type,
                                    **({"split": split} if split else {})})
    save_checkpoint(out / "final.pt", final, info)
    return final


# -- scoring --------------------------------------------------------------------------------------------

@torch.no_grad()
def score(model: MultimodalClassifier, images: Sequence[np.ndarray], boxes: Sequence, image_size: int,
          batch: int = 32, flip: bool = False, test_time_flip: bool = False,
          mirror_roll: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """p(malignant) and the B-mode CAM (N x h x w) of each image's box (None: the whole crop).

    ``flip``: score the mirrored whole images (boxes must be None). ``test_time_flip``: what a bundle
    exported with --test-time-flip computes (export/test_time.py): the logits and CAMs of each input
    and of its mirrored pixels (CAM mirrored back and rolled ``mirror_roll`` cells onto the grid)
    averaged, i.e. the head and CAM of the averaged maps.
    """
    if flip and any(box is not None for box in boxes):
        raise ValueError("flip mirrors whole images; a box would point at the wrong side")
    spec = PreprocessSpec(image_size=image_size)
    guided = GuidedClassifier(model, "bmode").eval()
    probabilities, cams = [], []
    for start in range(0, len(images), batch):
        chunk = [to_pixels(im[:, ::-1] if flip else im, spec, box) for im, box in
                 zip(images[start:start + batch], boxes[start:start + batch])]
        pixels = torch.from_numpy(np.stack(chunk))
        out = guided(pixels)
        logit, cam = out["logit"], out["cam"]
        if test_time_flip:
            from .test_time import mirrored_back

            mirrored = guided(pixels.flip(-1))
            logit = (logit + mirrored["logit"]) * 0.5
            cam = (cam + mirrored_back(mirrored["cam"], mirror_roll)) * 0.5
        probabilities.append(torch.sigmoid(logit).numpy())
        cams.append(cam.numpy())
    return np.concatenate(probabilities).astype(np.float64), np.concatenate(cams).astype(np.float64)


def teacher_probabilities(teachers: Sequence[str | Path], pack: DataPack, index: np.ndarray,
                          test_time_flip: bool = True) -> np.ndarray:
    """Soft pseudo-labels (export/pseudo_labels.py): a pack-long float32 array, at ``index`` the mean over
    ``teachers`` of p(malignant) on each stock crop (with ``test_time_flip``, each teacher's mirror-image
    average, as its bundle scores), NaN elsewhere."""
    from .checkpoint import load_checkpoint

    if not teachers:
        raise ValueError("pseudo-labels need at least one teacher checkpoint; got none")
    index = np.asarray(index, dtype=np.int64)
    images = [pack.images[i] for i in index]
    total = np.zeros(len(index), np.float64)
    for path in teachers:
        model, info, _ = load_checkpoint(path)
        p, _ = score(model, images, [None] * len(images), info.image_size, test_time_flip=test_time_flip)
        total += p
    soft = np.full(len(pack), np.nan, np.float32)
    soft[index] = (total / len(teachers)).astype(np.float32)
    return soft


# -- folds ----------------------------------------------------------------------------------------------

def fold_assignment(pack: DataPack, folds: int, seed: int = 0) -> np.ndarray:
    """Fold of every crop, by case: the labelled crops split exactly as ``edge-thyroid evaluate --split``
    does (edge_thyroid.dataset.case_folds); an unlabelled crop follows its case, and a case with no
    labelled crop is -1 (training side of every fold)."""
    from edge_thyroid.dataset import Sample, case_folds

    labelled = np.flatnonzero(pack.labelled)
    samples = [Sample(Path(str(pack.names[i])), int(pack.labels[i]), str(pack.case_ids[i])) for i in labelled]
    assigned = case_folds(samples, folds, seed)
    fold_of_case = {s.case_id: f for s, f in zip(samples, assigned)}
    return np.asarray([fold_of_case.get(str(c), -1) for c in pack.case_ids])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled CSV (image, mask, case_id, tirads, label) or a data pack (.npz, export/datapack.py).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (last.pt, final.pt).")
@click.option("--fold", type=int, default=None, help="Train on every fold but this one (case-level).")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--all", "use_all", is_flag=True, help="Train on every crop (the shipped model).")
@click.option("--backbone", type=click.Choice(sorted(BACKBONE_CHANNELS)), default="resnet50", show_default=True)
@click.option("--epochs", type=int, default=NoduleRecipe.epochs, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Start the backbone from this checkpoint (e.g. the pre-training run's final.pt).")
@click.option("--pseudo-labels-from", "pseudo_run", default=None, type=click.Path(exists=True, file_okay=False),
              help="Cross-validation run (benchmarks/cross_validate.py --out) whose models of this fold (with --all: "
                   "its all-data model) give the unlabelled crops soft labels (export/pseudo_labels.py).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Forward pass precision: auto is bf16 autocast on CUDA and f32 (the reference recipe) on a CPU; "
                   "bf16 on a CPU with AMX trains faster with other numbers than the reference.")
@click.option("--workers", type=int, default=0, show_default=True, help="Data-loader worker processes.")
@click.option("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
@click.option("--resume/--no-resume", default=True, show_default=True)
@recipe_options
def main(data, out_dir, fold, folds, use_all, backbone, epochs, seed, init, pseudo_run, device, precision, workers,
         threads, resume, **knobs) -> None:
    """Train the nodule-guided classifier on one case-level fold's training side, or on all data."""
    if (fold is None) == (not use_all):
        raise click.UsageError("give exactly one of --fold K or --all")
    # The options given; unset ones keep the recipe's default.
    overrides = recipe_overrides(knobs, backbone, pseudo_labels=pseudo_run is not None)
    pack = pack_for(data)
    recipe = NoduleRecipe(backbone=backbone, epochs=epochs, seed=seed, init=init, **overrides)
    if pseudo_run:
        from .pseudo_labels import fold_teachers

        try:
            recipe.pseudo_label_teachers = tuple(fold_teachers(pseudo_run, "all" if use_all else fold))
        except FileNotFoundError as error:
            raise click.BadParameter(str(error), param_hint="--pseudo-labels-from") from None
    if use_all:
        index = np.arange(len(pack))
    else:
        if not 0 <= fold < folds:
            raise click.BadParameter(f"must be in [0, {folds}), got {fold}", param_hint="--fold")
        index = np.flatnonzero(fold_assignment(pack, folds) != fold)
    fit_nodule(recipe, pack, index, Path(out_dir), device=device, workers=workers, threads=threads, resume=resume,
               precision=precision, split=every_row_record(pack) if use_all else split_record(pack, folds, fold))
    click.echo(json.dumps({"checkpoint": str(Path(out_dir) / "final.pt")}))


if __name__ == "__main__":
    main()
