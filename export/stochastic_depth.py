"""Stochastic depth (Huang et al., 2016) for a torchvision ResNet, during training only.

Each residual block's branch is dropped for a whole sample with a probability that rises linearly with
depth (0 at the first block, ``max_rate`` at the last) and scaled by ``1 / (1 - rate)`` when kept, so the
expected output is unchanged and evaluation needs nothing. It is attached with forward hooks on each
block's last BatchNorm (the branch's output, before the identity is added), not by replacing modules: the
state dict, the checkpoint format and the exported graph stay exactly those of the plain ResNet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def depth_rates(blocks: int, max_rate: float) -> list[float]:
    """Drop rate of each of ``blocks`` residual blocks: linear from 0 (the first) to ``max_rate`` (the last)."""
    if blocks < 1:
        raise ValueError(f"need at least one residual block, got {blocks}")
    if not 0.0 <= max_rate < 1.0:
        raise ValueError(f"stochastic depth rate must be in [0, 1), got {max_rate}")
    if blocks == 1:
        return [max_rate]
    return [max_rate * i / (blocks - 1) for i in range(blocks)]


def drop_branch(branch: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``branch`` (B x ...) with each sample's branch zeroed with probability ``rate``, the kept ones scaled
    by ``1 / (1 - rate)``."""
    if rate <= 0.0:
        return branch
    keep = 1.0 - rate
    shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)
    kept = torch.rand(shape, generator=generator, device=branch.device) < keep
    return branch * (kept.to(branch.dtype) / keep)


def residual_branch_ends(resnet: nn.Module) -> list[nn.Module]:
    """The last BatchNorm of every residual block of a torchvision ResNet, in depth order (bn3 of a
    Bottleneck, bn2 of a BasicBlock)."""
    ends = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(resnet, name, None)
        if layer is None:
            raise ValueError(f"stochastic depth needs a torchvision ResNet (layer1-layer4); "
                             f"got a {type(resnet).__name__} without {name}")
        for block in layer:
            ends.append(block.bn3 if hasattr(block, "bn3") else block.bn2)
    return ends


def add_stochastic_depth(resnet: nn.Module, max_rate: float) -> list[RemovableHandle]:
    """Attach stochastic depth to ``resnet``'s residual blocks; returns the hook handles (``.remove()``
    detaches them). Active only while the block is in training mode; draws from torch's global generator."""
    ends = residual_branch_ends(resnet)
    handles = []
    for end, rate in zip(ends, depth_rates(len(ends), max_rate)):
        if rate <= 0.0:
            continue

        def hook(module: nn.Module, _inputs, output: torch.Tensor, rate: float = rate):
            return drop_branch(output, rate) if module.training else None

        handles.append(end.register_forward_hook(hook))
    return handles
