"""Training-only heads and losses that make the classifier look at the nodule.

The product is still :class:`MultimodalClassifier` (shared backbone + linear fusion head, exact CAMs);
:class:`GuidedClassifier` wraps it with two auxiliary heads that are dropped at export:

* a **segmentation head** (1x1 convolution on the last feature maps) trained on the nodule mask, so the
  features that the CAM is built from encode where the nodule is;
* an **ordinal TI-RADS head** (CORAL: one shared score, K-1 ordered thresholds) on the pooled features:
  the risk level is richer than the binarised label;
* optionally a **descriptor head** (linear, on the pooled features) regressing the nodule's sonographic
  descriptors (export/descriptors.py: composition, echogenicity, foci, shape, margin);
* optionally a **replay head** (linear, on the pooled features) for pre-training images replayed during
  fine-tuning (BUSI's malignant vs not), so the features that pre-training taught are kept in use.

and the **CAM guidance loss**: the share of the CAM's evidence (positive and negative parts taken
separately) that falls outside the dilated nodule mask.

Everything here is a pure function of tensors or a small module, checked in tests/test_guidance.py
against direct computations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .models import MultimodalClassifier


class GuidedClassifier(nn.Module):
    """A :class:`MultimodalClassifier` plus the auxiliary heads, for single-modality training batches."""

    def __init__(self, base: MultimodalClassifier, modality: str = "bmode", tirads_levels: int = 6,
                 descriptors: int = 0, replay: bool = False, head_dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {head_dropout}")
        if modality not in base.modalities:
            raise ValueError(f"modality {modality!r} is not one of the model's {base.modalities}")
        self.base = base
        self.slot = base.modalities.index(modality)
        channels = base.channels
        self.aux_seg = nn.Conv2d(channels, 1, kernel_size=1)
        self.aux_ordinal = nn.Linear(channels, 1, bias=False)
        # CORAL thresholds, initialised ordered so that the cumulative probabilities start ordered.
        self.aux_ordinal_bias = nn.Parameter(torch.linspace(1.0, -1.0, tirads_levels - 1))
        # Only built when asked for, so the recipe without it keeps its parameters (and its seeded start).
        self.aux_descriptors = nn.Linear(channels, descriptors) if descriptors else None
        # A head for the pre-training task's own images (BUSI: malignant vs not) replayed during fine-tuning;
        # also only built when asked for.
        self.aux_replay = nn.Linear(channels, 1) if replay else None
        # Dropout on what the classification head sees (training only; no parameters, so the seeded start is
        # the same with it on or off). The CAM and the auxiliary heads see the features whole.
        self.head_dropout = head_dropout

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels: B x 3 x S x S of one modality -> logit (B), cam (B x h x w), seg (B x h x w), ordinal (B x K-1).

        The logit equals ``base(pixels at this slot, presence one-hot)``: the head is the product's head.
        """
        base = self.base
        maps = base.feature_maps(pixels)
        pooled = maps.mean(dim=(2, 3))
        batch, channels = pooled.shape
        num_modalities = len(base.modalities)
        features = pooled.new_zeros(batch, num_modalities, channels)
        # Skipped at 0 rather than called with p=0, so the recipe without it draws nothing extra.
        features[:, self.slot] = (F.dropout(pooled, self.head_dropout, self.training) if self.head_dropout > 0
                                  else pooled)
        presence = pooled.new_zeros(batch, num_modalities)
        presence[:, self.slot] = 1.0
        logit = base.head(torch.cat([features.flatten(1), presence], dim=1)).squeeze(1)
        weight = base.head.weight[0, self.slot * channels:(self.slot + 1) * channels]
        cam = torch.einsum("bchw,c->bhw", maps, weight)
        seg = self.aux_seg(maps).squeeze(1)
        ordinal = self.aux_ordinal(pooled) + self.aux_ordinal_bias
        outputs = {"logit": logit, "cam": cam, "seg": seg, "ordinal": ordinal, "maps": maps}
        if self.aux_descriptors is not None:
            outputs["descriptors"] = self.aux_descriptors(pooled)
        if self.aux_replay is not None:
            outputs["replay"] = self.aux_replay(pooled).squeeze(1)
        return outputs


def cam_outside_loss(cam: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor | None = None,
                     eps: float = 1e-6) -> torch.Tensor:
    """Mean share of the CAM's evidence outside the nodule.

    cam: B x h x w; inside: B x h x w in [0, 1] (the dilated mask's coverage of each cell); valid: B bool
    (crops with a mask). Positive and negative evidence are measured separately and averaged, so a map
    cannot hide its outside mass by cancelling signs.
    """
    outside = 1.0 - inside
    shares = []
    for part in (F.relu(cam), F.relu(-cam)):
        total = part.flatten(1).sum(1)
        shares.append((part * outside).flatten(1).sum(1) / (total + eps))
    per_crop = 0.5 * (shares[0] + shares[1])
    if valid is not None:
        if not bool(valid.any()):
            return cam.sum() * 0.0
        per_crop = per_crop[valid]
    return per_crop.mean()


def seg_loss(seg_logits: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the segmentation head against the mask's cell coverage (soft targets)."""
    per_crop = F.binary_cross_entropy_with_logits(seg_logits, inside, reduction="none").flatten(1).mean(1)
    if valid is not None:
        if not bool(valid.any()):
            return seg_logits.sum() * 0.0
        per_crop = per_crop[valid]
    return per_crop.mean()


# The binary head's target per TI-RADS level (2, 3, 4a, 4b, 4c, 5) with --level-targets: the same side
# of 0.5 as the binary label (2-3 benign, 4a-5 malignant), ordered within each side, so a cystic or
# spongiform TI-RADS 2 nodule is asked for a lower score than a TI-RADS 3 one. Fixed before any run.
LEVEL_TARGETS: tuple[float, ...] = (0.0, 0.25, 0.75, 0.85, 0.95, 1.0)


def level_targets(labels: torch.Tensor, levels: torch.Tensor,
                  table: tuple[float, ...] = LEVEL_TARGETS) -> torch.Tensor:
    """Binary targets from TI-RADS levels where a crop has one (``levels`` >= 0), its 0/1 label where not."""
    lookup = torch.tensor(table, dtype=torch.float32, device=labels.device)
    known = levels >= 0
    return torch.where(known, lookup[levels.clamp(min=0)], labels.to(torch.float32))


def ordinal_targets(levels: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Level index (B, long) -> cumulative targets B x (K-1): target[k] = level > k."""
    thresholds = torch.arange(num_levels - 1, device=levels.device)
    return (levels[:, None] > thresholds[None, :]).to(torch.float32)


def ordinal_loss(ordinal_logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """CORAL loss over the crops that have a level (levels < 0 are ignored)."""
    known = levels >= 0
    if not bool(known.any()):
        return ordinal_logits.sum() * 0.0
    targets = ordinal_targets(levels[known], ordinal_logits.shape[1] + 1)
    return F.binary_cross_entropy_with_logits(ordinal_logits[known], targets)


def soft_ordinal_loss(ordinal_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CORAL loss against given cumulative targets in [0, 1] (e.g. two crops' blended by mixup), over ``valid``
    crops; equal to :func:`ordinal_loss` when the targets are :func:`ordinal_targets` of the levels."""
    if not bool(valid.any()):
        return ordinal_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(ordinal_logits[valid], targets[valid])


@dataclass
class TrainingBatch:
    """A training batch as the losses read it: the pixels and every loss's targets with the crops it counts.
    Built as drawn by :func:`training_batch`; mixup (export/mixup.py) blends one into another of the same form."""

    pixels: torch.Tensor          # B x 3 x S x S
    cls_target: torch.Tensor      # B: binary targets (rows without a label are not read)
    cam_inside: torch.Tensor      # B x h x w: the mask's cell coverage the CAM guidance counts as inside
    cam_valid: torch.Tensor       # B bool
    seg_target: torch.Tensor      # B x h x w: the segmentation head's targets
    seg_valid: torch.Tensor       # B bool
    ordinal_target: torch.Tensor  # B x (K-1): cumulative TI-RADS targets
    ordinal_valid: torch.Tensor   # B bool


def training_batch(pixels: torch.Tensor, cls_target: torch.Tensor, coverage: torch.Tensor, has_mask: torch.Tensor,
                   levels: torch.Tensor, num_levels: int) -> TrainingBatch:
    """A batch's loss targets as drawn: the mask's coverage for the CAM and the segmentation head (crops with a
    mask), the cumulative targets of each known TI-RADS level (crops with a level)."""
    known_level = levels >= 0
    cumulative = torch.zeros(len(levels), num_levels - 1, device=levels.device)
    if bool(known_level.any()):
        cumulative[known_level] = ordinal_targets(levels[known_level], num_levels)
    return TrainingBatch(pixels=pixels, cls_target=cls_target.to(torch.float32), cam_inside=coverage,
                         cam_valid=has_mask, seg_target=coverage, seg_valid=has_mask,
                         ordinal_target=cumulative, ordinal_valid=known_level)


def pairwise_rank_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch's (malignant, benign) pairs of softplus(logit_benign - logit_malignant).

    The logistic surrogate of 1 - AUC (each pair ordered the wrong way costs ~|gap|, each ordered right
    ~exp(-gap)): the BCE scores every crop on its own, this loss only the order of the two classes, which is
    what AUC reads. ``labels``: B hard labels, 1 malignant, 0 benign, anything else (unlabelled: -1) left out.
    Zero (with a gradient path) when the batch lacks either class.
    """
    positive, negative = logits[labels == 1], logits[labels == 0]
    if positive.numel() == 0 or negative.numel() == 0:
        return logits.sum() * 0.0
    return F.softplus(negative[None, :] - positive[:, None]).mean()


def descriptor_loss(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between predicted and standardised descriptors (B x D), over the crops whose targets are
    finite (NaN rows: no usable mask)."""
    known = torch.isfinite(targets).all(dim=1)
    if not bool(known.any()):
        return predicted.sum() * 0.0
    return F.smooth_l1_loss(predicted[known], targets[known])


def ordinal_level(ordinal_logits: torch.Tensor) -> torch.Tensor:
    """Predicted level index: the number of thresholds passed."""
    return (torch.sigmoid(ordinal_logits) > 0.5).sum(1)
