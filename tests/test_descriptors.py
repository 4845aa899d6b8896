"""The sonographic descriptors (export/descriptors.py) and the descriptor head's loss, on small arrays
whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from edge_thyroid.export.descriptors import (DESCRIPTOR_NAMES, descriptor_scale, nodule_descriptors,  # noqa: E402
                                             ring_around, standardised)

NAMES = {name: k for k, name in enumerate(DESCRIPTOR_NAMES)}


def ellipse(shape=(96, 96), centre=(48, 48), axes=(20, 20)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def test_dark_disc_in_tissue_reads_as_cystic_round_and_smooth():
    mask = ellipse()
    image = np.full(mask.shape, 120, np.uint8)
    image[mask] = 10
    d = nodule_descriptors(image, mask)
    assert d[NAMES["anechoic_fraction"]] == 1.0          # 10 < 0.35 * 121
    assert d[NAMES["bright_fraction"]] == 0.0
    assert d[NAMES["log_echogenicity"]] == pytest.approx(np.log(11 / 121), abs=1e-12)
    assert d[NAMES["heterogeneity"]] == pytest.approx(0.0, abs=1e-12)
    assert d[NAMES["log_taller_than_wide"]] == pytest.approx(0.0, abs=1e-12)
    assert abs(d[NAMES["log_compactness"]]) < 0.15         # a pixelised disc: close to 0
    assert d[NAMES["solidity"]] > 0.97
    assert d[NAMES["edge_contrast"]] > 1.0                 # a sharp 110-level step at the border


def test_shape_descriptors_follow_the_mask():
    tall = ellipse(axes=(10, 30))                          # cv2 axes are (x, y)
    image = np.full(tall.shape, 100, np.uint8)
    d_tall = nodule_descriptors(image, tall)
    assert d_tall[NAMES["log_taller_than_wide"]] == pytest.approx(np.log(61 / 21), abs=1e-12)
    # A lobulated outline: a disc with notches cut in, same rough size.
    lobulated = ellipse()
    for angle in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        cv2.circle(lobulated.view(np.uint8), (int(48 + 20 * np.cos(angle)), int(48 + 20 * np.sin(angle))), 6, 0, -1)
    d_round, d_lobed = nodule_descriptors(image, ellipse()), nodule_descriptors(image, lobulated)
    assert d_lobed[NAMES["log_compactness"]] > d_round[NAMES["log_compactness"]] + 0.2
    assert d_lobed[NAMES["solidity"]] < d_round[NAMES["solidity"]] - 0.05


def test_bright_foci_and_ring_reference():
    mask = ellipse()
    rng = np.random.default_rng(0)
    image = np.full(mask.shape, 80, np.uint8)
    foci = mask & (rng.random(mask.shape) < 0.1)
    image[foci] = 250
    d = nodule_descriptors(image, mask)
    assert d[NAMES["bright_fraction"]] == pytest.approx(foci.sum() / mask.sum(), abs=1e-12)
    ring = ring_around(mask, 4)
    assert not (ring & mask).any() and ring.any()


def test_unusable_masks_and_bad_shapes():
    image = np.zeros((32, 32), np.uint8)
    tiny = np.zeros((32, 32), bool)
    tiny[3:6, 3:6] = True
    assert nodule_descriptors(image, tiny) is None
    assert nodule_descriptors(image, np.ones((32, 32), bool)) is None   # no tissue around it
    with pytest.raises(ValueError, match="same shape"):
        nodule_descriptors(image, np.ones((16, 16), bool))


def test_scale_and_standardised():
    masks = [ellipse(axes=(a, b)) for a, b in ((10, 20), (20, 10), (15, 15))]
    images = [np.where(m, 40 * k, 120).astype(np.uint8) for k, m in enumerate(masks)]
    mean, sd = descriptor_scale(images, masks)
    table = np.stack([nodule_descriptors(i, m) for i, m in zip(images, masks)])
    np.testing.assert_allclose(mean, table.mean(0), atol=1e-12)
    np.testing.assert_allclose(sd, table.std(0) + 1e-6, atol=1e-12)
    z = standardised(table[0], mean, sd, clip=1.0)
    assert z.dtype == np.float32 and np.all(np.abs(z) <= 1.0)
    assert np.isnan(standardised(None, mean, sd)).all()
    with pytest.raises(ValueError, match="at least 2"):
        descriptor_scale(images[:1], masks[:1])


def test_descriptor_loss_skips_rows_without_targets():
    from torch.nn import functional as F

    from edge_thyroid.export.guidance import descriptor_loss

    predicted = torch.tensor([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]], dtype=torch.float64)
    targets = torch.tensor([[0.5, 1.0], [float("nan"), float("nan")], [3.0, 5.5]], dtype=torch.float64)
    expected = F.smooth_l1_loss(predicted[[0, 2]], targets[[0, 2]])
    assert float(descriptor_loss(predicted, targets)) == pytest.approx(float(expected), abs=1e-12)
    # hand check of smooth L1 (beta 1): |d| = .5, 0, 2, .5 -> .125, 0, 1.5, .125
    assert float(expected) == pytest.approx((0.125 + 0 + 1.5 + 0.125) / 4, abs=1e-12)
    empty = descriptor_loss(predicted, torch.full_like(targets, float("nan")))
    assert float(empty) == 0.0 and empty.requires_grad is False


def test_descriptor_head_is_optional_and_keeps_the_recipe_without_it_unchanged():
    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MODALITIES, MultimodalClassifier

    torch.manual_seed(0)
    plain = GuidedClassifier(MultimodalClassifier("resnet50", MODALITIES), "bmode", 6)
    assert plain.aux_descriptors is None
    assert not any(k.startswith("aux_descriptors") for k in plain.state_dict())
    torch.manual_seed(0)
    with_head = GuidedClassifier(MultimodalClassifier("resnet50", MODALITIES), "bmode", 6, len(DESCRIPTOR_NAMES))
    shared = plain.state_dict()
    for key, value in with_head.state_dict().items():
        if not key.startswith("aux_descriptors"):
            assert torch.equal(value, shared[key]), key
    out = with_head.eval()(torch.zeros(2, 3, 64, 64))
    assert out["descriptors"].shape == (2, len(DESCRIPTOR_NAMES))
    assert "descriptors" not in plain.eval()(torch.zeros(1, 3, 64, 64))


def test_training_batches_draw_the_same_pixels_with_or_without_descriptor_targets():
    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe

    class Pack:
        images = [np.where(ellipse(), 30, 140).astype(np.uint8)] * 2
        masks = [ellipse(), np.zeros((96, 96), bool)]
        labels = np.array([1, -1])
        tirads = np.array([3, -1])

    recipe = NoduleRecipe(image_size=64)
    scale = descriptor_scale([Pack.images[0]] * 2, [ellipse(), ellipse(axes=(10, 20))])
    plain = NoduleBatches(Pack(), [0, 1], recipe, 2, epoch=3)
    guided = NoduleBatches(Pack(), [0, 1], recipe, 2, epoch=3, descriptor_scale=scale)
    for k in range(2):
        a, b = plain[k], guided[k]
        for x, y in zip(a[:5], b[:5]):
            assert torch.equal(x, y)
        assert a[5].numel() == 0 and b[5].shape == (len(DESCRIPTOR_NAMES),)
    assert torch.isnan(guided[1][5]).all()                 # no mask, no targets
