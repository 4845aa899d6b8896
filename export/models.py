"""The multimodal classifier: one shared torchvision backbone per present pane, global-average
pooled features per modality, and a linear fusion head over [features x presence, presence].

A linear head over pooled features makes class activation maps exact:
``CAM_m = sum_k w[m, k] * A_m[k]`` from the last feature maps ``A_m``. The runtime computes them
in NumPy from the maps the engine returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

MODALITIES: tuple[str, ...] = ("bmode", "smi", "swe")

# Channels of the last feature map of each backbone (what the head sees per modality).
BACKBONE_CHANNELS: dict[str, int] = {
    "resnet50": 2048,
    "densenet121": 1024,
    "vgg16": 512,
    "googlenet": 1024,
}


def build_torchvision_model(name: str) -> nn.Module:
    """An untrained torchvision model whose state_dict keys are torchvision's own."""
    if name not in BACKBONE_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONE_CHANNELS)}")
    if name == "googlenet":
        return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    return getattr(torchvision.models, name)(weights=None)


def _googlenet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for layer in (m.conv1, m.maxpool1, m.conv2, m.conv3, m.maxpool2, m.inception3a, m.inception3b,
                  m.maxpool3, m.inception4a, m.inception4b, m.inception4c, m.inception4d,
                  m.inception4e, m.maxpool4, m.inception5a, m.inception5b):
        x = layer(x)
    return x


def _resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def backbone_feature_maps(name: str, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Last convolutional feature maps (P x C x h x w) of a torchvision model, before pooling."""
    if name == "resnet50":
        return _resnet_features(model, pixels)
    if name == "densenet121":
        return torch.relu(model.features(pixels))
    if name == "vgg16":
        return model.features(pixels)
    if name == "googlenet":
        return _googlenet_features(model, pixels)
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONE_CHANNELS)}")


class BackboneFeatures(nn.Module):
    """pixels (P x 3 x S x S, normalized) -> feature maps (P x C x h x w): the exported graph."""

    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return backbone_feature_maps(self.name, self.model, pixels)


class MultimodalClassifier(nn.Module):
    """Shared backbone over the present panes + linear fusion head with a presence mask."""

    def __init__(self, backbone: str = "resnet50", modalities: Sequence[str] = MODALITIES) -> None:
        super().__init__()
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct names from {MODALITIES}, got {list(modalities)}")
        self.backbone_name = backbone
        self.modalities = tuple(modalities)
        self.backbone = build_torchvision_model(backbone)
        self.channels = BACKBONE_CHANNELS[backbone]
        num_modalities = len(self.modalities)
        self.head = nn.Linear(num_modalities * self.channels + num_modalities, 1)

    def feature_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        return backbone_feature_maps(self.backbone_name, self.backbone, pixels)

    def forward(self, pixels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """pixels: B x M x 3 x S x S; present: B x M (1 where the pane exists). Returns B logits.

        Only present panes go through the backbone; missing modalities are masked, not imagined.
        """
        batch, num_modalities = present.shape
        flat_present = present.reshape(-1) > 0
        pooled = pixels.new_zeros(batch * num_modalities, self.channels)
        if bool(flat_present.any()):
            maps = self.feature_maps(pixels.reshape(-1, *pixels.shape[2:])[flat_present])
            pooled[flat_present] = maps.mean(dim=(2, 3))
        mask = present.to(pooled.dtype)
        features = (pooled.view(batch, num_modalities, -1) * mask[..., None]).flatten(1)
        return self.head(torch.cat([features, mask], dim=1)).squeeze(1)

    def zero_untrained_modalities(self, trained: Sequence[str]) -> None:
        """Zero the head weights of modalities never seen in training, so they contribute nothing."""
        with torch.no_grad():
            for index, modality in enumerate(self.modalities):
                if modality not in trained:
                    self.head.weight[0, index * self.channels : (index + 1) * self.channels] = 0
                    self.head.weight[0, len(self.modalities) * self.channels + index] = 0


def random_init_model(backbone: str = "resnet50", modalities: Sequence[str] = MODALITIES,
                      seed: int = 0) -> MultimodalClassifier:
    """An untrained classifier (ImageNet-free random weights) for tests and benchmarks, seeded."""
    torch.manual_seed(seed)
    model = MultimodalClassifier(backbone, modalities).eval()
    # A small head keeps untrained logits O(1), so p(malignant) is not saturated at 0 or 1.
    torch.nn.init.normal_(model.head.weight, std=1e-3)
    return model


def head_arrays(model: MultimodalClassifier) -> dict[str, "numpy.ndarray"]:  # noqa: F821
    """The fusion head as NumPy arrays in the runtime's layout (see edge_thyroid.head)."""
    weight = model.head.weight.detach().double().cpu().numpy()[0]
    num_modalities, channels = len(model.modalities), model.channels
    return {
        "weight": weight[: num_modalities * channels].reshape(num_modalities, channels),
        "presence_bias": weight[num_modalities * channels :],
        "bias": model.head.bias.detach().double().cpu().numpy().reshape(()),
    }
