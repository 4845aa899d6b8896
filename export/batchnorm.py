"""Batch-norm statistics recomputed for a model's own weights.

A weight average (the recipe's EMA, export/train.py ``Ema``) keeps the batch-norm running statistics of the
live model at the last step: statistics of *other* weights (the last ~10 batches at momentum 0.1), not of
the averaged ones it ships. Stochastic weight averaging recomputes them with one forward pass over
training data (torch.optim.swa_utils.update_bn); :func:`recalibrate_batchnorm` does the same for any
forward, so the caller decides which inputs the statistics describe.
"""

from __future__ import annotations

from itertools import chain
from typing import Callable, Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of ``model`` (1d, 2d, 3d), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor],
                          forward: Callable[[torch.Tensor], object] | None = None) -> int:
    """Replace every batch-norm layer's running mean and variance by the equal-weight average of the batch
    statistics that ``forward`` (default: ``model`` itself) meets on ``batches``; returns the inputs seen.

    Each layer's statistics are reset and its momentum set to None (PyTorch's cumulative average) for the
    pass, then restored; the model runs in training mode for the pass and returns to the mode it was in.
    Nothing but the running statistics (and their batch counters) changes: no gradient, no parameter.
    Raises ValueError, leaving the model untouched, when ``batches`` is empty.
    """
    layers = batchnorm_layers(model)
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("batch-norm recalibration needs at least one batch of inputs; got none")
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    run = forward or model
    seen = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        model.train()
        for batch in chain([first], iterator):
            run(batch)
            seen += len(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return seen
