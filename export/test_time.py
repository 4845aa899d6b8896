"""Test-time augmentation built into the exported graph: a pane's feature maps averaged with those of
its mirror image, mirrored back.

Averaging the maps (not the probabilities) keeps everything after the backbone exact: the linear head
of the averaged pooled features is the average of the two views' logits, and the CAM of the averaged
maps is the average of the two CAMs, so the runtime, the pane cache, CAMs and the serving path need
nothing new; the graph runs 2N panes for N. Cross-validation said it is worth it for the nodule-guided
recipe (benchmarks/cross_validate.py --test-time-flip).

Mirrored back, the second view's maps need not line up with the first's: every stride-2 stage
samples at even positions, which the mirror sends to odd ones, and a trained network's kernels are
not mirror-symmetric, so its features sit a fixed distance to one side of what they respond to, on the
other side in the mirrored view. On the nodule-guided ResNet50's fold models the two views' CAMs,
averaged as they are, nearly cancel (correlation -0.78; CAM-in-mask 0.78 -> 0.67); rolled by one cell
they agree (+0.61; CAM-in-mask 0.78). Which roll lines them up is a property of the trained weights, so
it is measured on training images (``best_mirror_roll``) and recorded. The roll is circular: pooling,
and with it the logit, is exactly the average of the two views'.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ROLL_CANDIDATES = (-1, 0, 1)


def mirrored_back(maps: torch.Tensor, roll: int) -> torch.Tensor:
    """Maps (or CAMs) of a mirrored input, mirrored back and rolled ``roll`` cells to the left (last axis =
    width) onto the original's grid."""
    return torch.roll(maps.flip(-1), shifts=-roll, dims=-1) if roll else maps.flip(-1)


@torch.no_grad()
def best_mirror_roll(features: nn.Module, pixels: torch.Tensor,
                     candidates: tuple[int, ...] = ROLL_CANDIDATES) -> tuple[int, dict[int, float]]:
    """The roll that lines a mirrored view's maps up with the original's on these inputs, and the score of
    each candidate: mean cosine similarity of the two views' maps, each channel's spatial mean removed
    (what is compared is where things are, not how strongly the channels fire)."""
    def centred(maps: torch.Tensor) -> torch.Tensor:
        return (maps - maps.mean(dim=(2, 3), keepdim=True)).flatten(1)

    original = centred(features(pixels))
    mirrored = features(pixels.flip(-1))
    scores = {roll: float(F.cosine_similarity(original, centred(mirrored_back(mirrored, roll))).mean())
              for roll in candidates}
    return max(scores, key=scores.__getitem__), scores


def model_mirror_roll(model: nn.Module, pixels: torch.Tensor) -> tuple[int, dict[int, float]]:
    """``best_mirror_roll`` of a project classifier's backbone (the maps the exported graph averages)."""
    from .models import BackboneFeatures

    return best_mirror_roll(BackboneFeatures(model.backbone_name, model.backbone).eval(), pixels)


class FlipAveraged(nn.Module):
    """pixels (N x 3 x S x S) -> (maps(pixels) + mirrored_back(maps(mirror(pixels)), roll)) / 2."""

    def __init__(self, features: nn.Module, roll: int = 0) -> None:
        super().__init__()
        self.features = features
        self.roll = roll

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        count = pixels.shape[0]
        maps = self.features(torch.cat([pixels, pixels.flip(-1)]))
        return (maps[:count] + mirrored_back(maps[count:], self.roll)) * 0.5
