"""Mixup for the nodule recipe (export/mixup.py): partners and weights, the blended batch against NumPy,
the blended losses against the blend of the two crops' losses, and a short training run with it on."""

import json

import numpy as np
import pytest

from .conftest import needs_torch, ultrasound_like

pytestmark = needs_torch


def test_partners_are_a_permutation_and_weights_keep_the_crop_the_main_one():
    from edge_thyroid.export.mixup import mixup_partners

    partner, lam = mixup_partners(16, 0.4, np.random.default_rng(0))
    assert sorted(partner) == list(range(16))
    assert np.all((lam >= 0.5) & (lam <= 1.0))
    assert lam.std() > 0.01                                   # drawn, not constant
    again = mixup_partners(16, 0.4, np.random.default_rng(0))
    assert np.array_equal(partner, again[0]) and np.array_equal(lam, again[1])
    with pytest.raises(ValueError, match="alpha must be > 0, got 0"):
        mixup_partners(4, 0.0, np.random.default_rng(0))


def small_batch(rng):
    """Six crops: rows 0-3 labelled (row 2 without a mask, row 3 without a level), rows 4-5 unlabelled."""
    import torch

    pixels = torch.tensor(rng.normal(size=(6, 3, 4, 4)), dtype=torch.float32)
    target = torch.tensor([0.05, 0.95, 0.95, 0.05, -0.55, -0.55])  # smoothed labels; unlabelled rows: anything
    coverage = torch.tensor(rng.uniform(size=(6, 2, 2)), dtype=torch.float32)
    coverage[2] = 0
    has_mask = torch.tensor([True, True, False, True, True, True])
    levels = torch.tensor([1, 4, 3, -1, -1, -1])
    labelled = torch.tensor([True, True, True, True, False, False])
    return pixels, target, coverage, has_mask, levels, labelled


def test_mix_batch_blends_the_labelled_rows_as_numpy_does_and_leaves_the_others():
    from edge_thyroid.export.guidance import ordinal_targets
    from edge_thyroid.export.mixup import mix_batch

    rng = np.random.default_rng(1)
    pixels, target, coverage, has_mask, levels, labelled = small_batch(rng)
    partner, lam = np.array([2, 0, 3, 1]), np.array([0.9, 0.6, 0.75, 1.0])
    mixed = mix_batch(pixels, target, coverage, has_mask, levels, 6, labelled, partner, lam)

    x, t, c = pixels.double().numpy(), target.double().numpy(), coverage.double().numpy()
    cumulative = np.zeros((6, 5))
    cumulative[:3] = ordinal_targets(levels[:3], 6).numpy()
    for k, (j, w) in enumerate(zip(partner, lam)):            # labelled row k is row k here
        np.testing.assert_allclose(mixed.pixels[k].numpy(), w * x[k] + (1 - w) * x[j], atol=1e-6)
        assert float(mixed.cls_target[k]) == pytest.approx(w * t[k] + (1 - w) * t[j], abs=1e-6)
        np.testing.assert_allclose(mixed.cam_inside[k].numpy(), np.maximum(c[k], c[j]), atol=1e-7)
        np.testing.assert_allclose(mixed.seg_target[k].numpy(), w * c[k] + (1 - w) * c[j], atol=1e-6)
        np.testing.assert_allclose(mixed.ordinal_target[k].numpy(), w * cumulative[k] + (1 - w) * cumulative[j],
                                   atol=1e-6)
    for k in (4, 5):                                          # unlabelled: untouched
        assert np.array_equal(mixed.pixels[k].numpy(), pixels[k].numpy())
        assert np.array_equal(mixed.seg_target[k].numpy(), coverage[k].numpy())
    # Row 0 blends with row 2 (no mask): the CAM sees row 0's nodule, the segmentation skips the blend.
    assert mixed.cam_valid.tolist() == [True, True, True, True, True, True]
    assert mixed.seg_valid.tolist() == [False, True, False, True, True, True]
    # Row 1's partner (row 0) and row 2 have levels; row 3 has none, nor does row 2's partner.
    assert mixed.ordinal_valid.tolist() == [True, True, False, False, False, False]
    with pytest.raises(ValueError, match="4 labelled crops, but 3 partners"):
        mix_batch(pixels, target, coverage, has_mask, levels, 6, labelled, partner[:3], lam[:3])


def test_the_blended_losses_are_the_blend_of_each_crops_losses():
    """Cross-entropy is linear in its target: the loss against a blended target is the same blend of the
    losses against each crop's own target, which is what mixup asks of every head."""
    import torch
    from torch.nn import functional as F

    from edge_thyroid.export.guidance import ordinal_loss, ordinal_targets, seg_loss, soft_ordinal_loss

    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float64)
    levels_a, levels_b = torch.tensor([0, 2, 5]), torch.tensor([4, 1, 3])
    w = torch.tensor([0.7, 0.55, 0.9], dtype=torch.float64)[:, None]
    blended = w * ordinal_targets(levels_a, 6).double() + (1 - w) * ordinal_targets(levels_b, 6).double()
    got = soft_ordinal_loss(logits, blended, torch.ones(3, dtype=torch.bool))
    per_crop = lambda levels: F.binary_cross_entropy_with_logits(  # noqa: E731
        logits, ordinal_targets(levels, 6).double(), reduction="none").mean(1)
    expected = (w[:, 0] * per_crop(levels_a) + (1 - w[:, 0]) * per_crop(levels_b)).mean()
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    assert float(soft_ordinal_loss(logits, ordinal_targets(levels_a, 6).double(), torch.ones(3, dtype=torch.bool))) \
        == pytest.approx(float(ordinal_loss(logits, levels_a)), rel=1e-6)   # its targets are float32
    seg = torch.tensor(rng.normal(size=(3, 2, 2)), dtype=torch.float64)
    a, b = (torch.tensor(rng.uniform(size=(3, 2, 2)), dtype=torch.float64) for _ in range(2))
    w3 = w[:, :, None]
    mixed = seg_loss(seg, w3 * a + (1 - w3) * b)
    each = lambda t: F.binary_cross_entropy_with_logits(seg, t, reduction="none").flatten(1).mean(1)  # noqa: E731
    assert float(mixed) == pytest.approx(float((w[:, 0] * each(a) + (1 - w[:, 0]) * each(b)).mean()), rel=1e-12)


def tiny_pack(count=24, unlabelled=4):
    from edge_thyroid.export.datapack import DataPack

    from .test_augment import disc_mask

    images = np.stack([ultrasound_like(96, 96, seed=k) for k in range(count)])
    masks = np.stack([disc_mask(96, 96, 48, 48, 18 + k % 5, 14) for k in range(count)])
    labels = np.array([k % 2 for k in range(count)], np.int8)
    labels[-unlabelled:] = -1
    tirads = np.where(labels < 0, -1, np.where(labels == 1, 3, 1)).astype(np.int8)
    cases = np.array([f"c{k}" for k in range(count)])
    return DataPack(images, masks, labels, tirads, cases, cases, {"sha256": "test"})


def test_a_short_run_with_mixup_trains_records_it_and_differs_from_the_run_without(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    pack = tiny_pack()
    index = np.arange(len(pack))
    runs = {}
    for alpha in (0.0, 0.4):
        recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5, mixup_alpha=alpha)
        out = tmp_path / f"alpha{alpha}"
        fit_nodule(recipe, pack, index, out, threads=1, log=lambda msg: None)
        model, info, _ = load_checkpoint(out / "final.pt")
        history = json.loads((out / "history.json").read_text())
        assert len(history) == 1 and all(np.isfinite(history[0][k]) for k in ("cls", "cam", "seg", "ord"))
        assert info.training["recipe"]["mixup_alpha"] == alpha
        runs[alpha] = model.head.weight.detach().clone()
    assert not torch.allclose(runs[0.0], runs[0.4])           # the blend reached the weights
    with pytest.raises(ValueError, match="mixup and the descriptor head cannot be combined"):
        fit_nodule(NoduleRecipe(image_size=64, epochs=1, mixup_alpha=0.4, descriptor_weight=0.5), pack, index,
                   tmp_path / "both", threads=1, log=lambda msg: None)
