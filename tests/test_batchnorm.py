"""export/batchnorm.py: batch-norm statistics recomputed for a model's own weights, checked against NumPy."""

import numpy as np
import pytest

from .conftest import needs_torch

pytestmark = needs_torch


def _net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.1), nn.ReLU(),
                         nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()


def test_running_statistics_become_the_average_of_the_batch_statistics():
    import torch

    from edge_thyroid.export.batchnorm import batchnorm_layers, recalibrate_batchnorm

    net = _net()
    rng = np.random.default_rng(1)
    batches = [torch.tensor(rng.normal(2.0, 3.0, size=(n, 2, 5, 5)), dtype=torch.float32) for n in (4, 4, 4)]
    weights_before = [p.detach().clone() for p in net.parameters()]
    assert recalibrate_batchnorm(net, batches) == 12
    # Reference in float64: the first layer sees the first convolution's output; equal-size batches, so
    # PyTorch's cumulative average is the mean of each batch's mean and of its unbiased variance.
    conv = net[0]
    outputs = [conv(b).detach().double().numpy() for b in batches]
    means = np.mean([o.mean(axis=(0, 2, 3)) for o in outputs], axis=0)
    variances = np.mean([o.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1, ddof=1) for o in outputs], axis=0)
    first = batchnorm_layers(net)[0]
    np.testing.assert_allclose(first.running_mean.double().numpy(), means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first.running_var.double().numpy(), variances, rtol=1e-5)
    assert int(first.num_batches_tracked) == 3
    # Only the statistics changed; the mode and the momenta are back as they were.
    assert all(torch.equal(a, b) for a, b in zip(weights_before, net.parameters()))
    assert not net.training and first.momentum == pytest.approx(0.1)
    assert [layer.momentum for layer in batchnorm_layers(net)] == [0.1, 0.1]


def test_a_custom_forward_and_an_empty_source():
    import torch

    from edge_thyroid.export.batchnorm import batchnorm_layers, recalibrate_batchnorm

    net = _net()
    before = [layer.running_mean.clone() for layer in batchnorm_layers(net)]
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(net, iter([]))
    assert all(torch.equal(a, layer.running_mean) for a, layer in zip(before, batchnorm_layers(net)))
    # The forward decides what the statistics describe: here the inputs scaled by 10.
    batch = torch.ones(2, 2, 3, 3)
    seen = recalibrate_batchnorm(net, [batch], forward=lambda x: net(x * 10))
    reference = net[0](batch * 10).detach().mean(dim=(0, 2, 3))
    assert seen == 2
    torch.testing.assert_close(batchnorm_layers(net)[0].running_mean, reference, rtol=1e-5, atol=1e-5)
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), [batch]) == 0   # no batch norm: nothing to do
