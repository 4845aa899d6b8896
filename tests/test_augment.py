"""The training inputs of the nodule-guided recipe (export/augment.py): boxes, scanner look, burned-in marks.

Pure functions on small arrays; each property is one that a broken implementation would fail.
"""

import cv2
import numpy as np
import pytest

from .conftest import needs_torch, ultrasound_like

pytestmark = needs_torch


def disc_mask(h=120, w=160, cx=80, cy=60, rx=30, ry=20):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def test_mask_bbox_is_tight_and_none_for_empty():
    from edge_thyroid.export.augment import mask_bbox

    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_bbox(mask) == (3, 2, 6, 3)
    assert mask_bbox(np.zeros((4, 4), bool)) is None


def test_box_at_margin_grows_about_the_centre_and_is_cut_to_the_image():
    from edge_thyroid.export.augment import box_at_margin

    assert box_at_margin((40, 30, 20, 10), 2.0, (100, 100)) == (30, 25, 40, 20)
    assert box_at_margin((40, 30, 20, 10), 1.0, (100, 100)) == (40, 30, 20, 10)
    # Near the corner the box is cut, never negative or past the edge.
    x, y, w, h = box_at_margin((0, 0, 30, 30), 3.0, (50, 60))
    assert (x, y) == (0, 0) and x + w <= 60 and y + h <= 50 and w == 60 and h == 50


def test_sample_box_margins_cover_the_nodule_centre_and_stay_inside():
    from edge_thyroid.export.augment import sample_box

    rng = np.random.default_rng(0)
    bbox = (100, 80, 60, 40)
    shape = (400, 500)
    widths = []
    for _ in range(500):
        x, y, w, h = sample_box(bbox, shape, rng, margin=(1.1, 2.5), shift=0.15, aspect=0.0)
        assert 0 <= x and 0 <= y and x + w <= 500 and y + h <= 400
        assert x <= 130 <= x + w and y <= 100 <= y + h  # the nodule's centre is in the box
        widths.append(w / 60)
    widths = np.array(widths)
    assert widths.min() >= 1.1 - 0.05 and widths.max() <= 2.5 + 0.05
    assert widths.min() < 1.2 and widths.max() > 2.4  # the whole range is used


def test_depth_gain_is_a_row_ramp():
    from edge_thyroid.export.augment import depth_gain

    image = np.full((11, 5), 100, np.uint8)
    out = depth_gain(image, 1.0, 2.0)
    np.testing.assert_array_equal(out[:, 0], np.round(100 * np.linspace(1.0, 2.0, 11)).astype(np.uint8).clip(0, 255))
    assert (out == out[:, :1]).all()


def test_gamma_matches_the_formula_and_keeps_the_ends():
    from edge_thyroid.export.augment import gamma

    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = gamma(image, 2.0)
    expected = np.clip(255 * (np.arange(256) / 255.0) ** 2 + 0.5, 0, 255).astype(np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 0 and out[-1, -1] == 255


def test_speckle_is_multiplicative_and_roughly_sigma():
    from edge_thyroid.export.augment import speckle

    rng = np.random.default_rng(1)
    assert (speckle(np.zeros((64, 64), np.uint8), 0.1, rng) == 0).all()  # black stays black
    out = speckle(np.full((128, 128), 100, np.uint8), 0.1, rng).astype(np.float64)
    assert out.mean() == pytest.approx(100, abs=1.5)
    assert 4.0 < out.std() < 20.0


def test_resample_blur_and_jpeg_keep_shape_and_mean():
    from edge_thyroid.export.augment import blur, jpeg, resample

    image = ultrasound_like(90, 110, seed=3)
    for out in (resample(image, 0.5), blur(image, 1.0), jpeg(image, 40)):
        assert out.shape == image.shape and out.dtype == np.uint8
        assert abs(float(out.mean()) - float(image.mean())) < 4.0
        assert not np.array_equal(out, image)
    # Resampling removes fine detail: the Laplacian's energy drops.
    lap = lambda im: np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F)).mean()  # noqa: E731
    assert lap(resample(image, 0.4)) < 0.7 * lap(image)


def test_scanner_look_is_seeded_and_keeps_the_skin_line_on_top():
    from edge_thyroid.export.augment import scanner_look

    image = ultrasound_like(96, 120, seed=1)
    image[:20] = 255
    a = scanner_look(image, np.random.default_rng(5))
    b = scanner_look(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    for seed in range(20):
        out = scanner_look(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out[:15].mean() > 1.5 * out[-15:].mean()


def test_scanner_look_gamma_range_widens_only_the_gamma_draw(monkeypatch):
    import math

    from edge_thyroid.export import augment

    image = ultrasound_like(64, 64, seed=2)
    drawn: list[float] = []
    real_gamma = augment.gamma
    monkeypatch.setattr(augment, "gamma", lambda out, g: drawn.append(g) or real_gamma(out, g))
    by_range = {}
    for log_range in (0.3, 0.6):
        drawn.clear()
        rngs = [np.random.default_rng(seed) for seed in range(200)]
        outs = [augment.scanner_look(image, rng, 1.0, log_range) for rng in rngs]
        by_range[log_range] = (list(drawn), [rng.random() for rng in rngs], outs)
        assert all(math.exp(-log_range) - 1e-12 <= g <= math.exp(log_range) + 1e-12 for g in drawn)
    narrow, wide = by_range[0.3][0], by_range[0.6][0]
    assert len(narrow) == len(wide) > 100 and max(wide) > 1.5 and min(wide) < 0.65
    # the same generator state afterwards: every other augmentation is drawn as before
    assert by_range[0.3][1] == by_range[0.6][1]
    # the default is the recipe's 0.3, draw for draw
    np.testing.assert_array_equal(augment.scanner_look(image, np.random.default_rng(7)), by_range[0.3][2][7])


@pytest.mark.parametrize("shape", ["+", "x"])
@pytest.mark.parametrize("hollow", [False, True])
def test_draw_caliper_draws_the_right_shape(shape, hollow):
    from edge_thyroid.export.augment import draw_caliper

    image = np.zeros((31, 31), np.uint8)
    draw_caliper(image, (15, 15), 11, shape, 255, hollow=hollow)
    on = image > 0
    assert on.sum() >= 12
    assert bool(on[15, 15]) is (not hollow)
    if shape == "+":
        assert on[15, 10] and on[20, 15] and not on[10, 10]
    else:
        assert on[10, 10] and on[20, 20] and not on[15, 10]
    ys, xs = np.nonzero(on)
    assert xs.min() >= 10 and xs.max() <= 20  # 11 px wide


def test_calipers_sit_at_the_mask_extremes():
    from edge_thyroid.export.augment import draw_calipers, mask_extremes

    mask = disc_mask()
    points = mask_extremes(mask)
    assert points["left"][0] == 50 and points["right"][0] == 110 and points["top"][1] == 40 and points["bottom"][1] == 80
    image = np.zeros(mask.shape, np.uint8)
    for seed in range(10):
        out = draw_calipers(image, mask, np.random.default_rng(seed))
        ys, xs = np.nonzero(out)
        assert len(xs) > 0
        # Every drawn pixel is within a caliper's half-size (<= 8 px) of an extreme point.
        near = np.zeros(len(xs), bool)
        for px, py in points.values():
            near |= (np.abs(xs - px) <= 8) & (np.abs(ys - py) <= 8)
        assert near.all()
    assert (draw_calipers(image, np.zeros_like(mask), np.random.default_rng(0)) == 0).all()


def test_marks_do_not_depend_on_anything_but_the_generator():
    """Burned-in marks are drawn from the generator alone: identical draws for a benign and a malignant
    crop with the same mask, so no mark correlates with the label."""
    from edge_thyroid.export.augment import burn_in_marks

    mask = disc_mask()
    base = np.zeros(mask.shape, np.uint8)
    a = burn_in_marks(base, mask, np.random.default_rng(3), 1.0, 1.0, 1.0)
    b = burn_in_marks(base.copy(), mask, np.random.default_rng(3), 1.0, 1.0, 1.0)
    np.testing.assert_array_equal(a, b)
    assert (a > 0).sum() > 20
    assert (base == 0).all()  # the input is not drawn on


def test_small_affine_moves_image_and_mask_together():
    from edge_thyroid.export.augment import small_affine

    image = np.zeros((120, 160), np.uint8)
    mask = disc_mask()
    image[mask] = 200
    out, out_mask = small_affine(image, mask, np.random.default_rng(2))
    assert out_mask.dtype == bool
    inside = out[out_mask].mean()
    assert inside > 180  # the bright disc moved with its mask
    assert abs(int(out_mask.sum()) - int(mask.sum())) < 0.25 * mask.sum()


# -- synthetic cysts ------------------------------------------------------------------------------------

def test_cyst_outline_is_the_ellipse_of_an_elliptic_mask_and_none_when_too_small():
    from edge_thyroid.export.augment import cyst_outline

    mask = disc_mask()
    outline = cyst_outline(mask)
    iou = (outline & mask).sum() / (outline | mask).sum()
    assert iou > 0.9
    assert cyst_outline(np.zeros((40, 40), bool)) is None
    tiny = np.zeros((40, 40), bool)
    tiny[10:13, 10:13] = True                               # 9 pixels
    assert cyst_outline(tiny) is None


def test_synthetic_cyst_is_dark_inside_brighter_below_and_leaves_the_tissue_above_alone():
    from edge_thyroid.export.augment import synthetic_cyst

    image = np.full((120, 160), 100, np.uint8)
    mask = disc_mask()                                      # centre (80, 60), 30 x 20 radii: rows 40-80
    out, outline = synthetic_cyst(image, mask, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == image.shape and outline.shape == mask.shape
    core = cv2.erode(outline.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert out[core].mean() < 25                             # fluid: 2-18 plus a faint grain
    below = out[84:92, 70:91].astype(float)                  # just under the cyst, inside its width
    assert below.mean() > 100 * 1.15                         # posterior enhancement (20-60%)
    assert np.array_equal(out[:30], image[:30])              # above the cyst: untouched
    assert np.array_equal(out[:, :40], image[:, :40])        # far to the side: untouched
    again, _ = synthetic_cyst(image, mask, np.random.default_rng(3))
    assert np.array_equal(out, again)                        # only the generator decides
    assert synthetic_cyst(image, np.zeros_like(mask), np.random.default_rng(3)) is None


def malignant_pack(masks):
    """A pack-like class for NoduleBatches: one 96x96 crop per mask, each labelled malignant at TI-RADS 4a."""
    return type("Pack", (), {"images": [ultrasound_like(96, 96, seed=1)] * len(masks), "masks": masks,
                             "labels": np.ones(len(masks), int), "tirads": np.full(len(masks), 4)})


def test_training_draws_with_cysts_are_benign_at_tirads_2_and_leave_the_other_draws_alone():
    import torch

    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe

    Pack = malignant_pack([disc_mask(96, 96, 48, 48, 20, 15), np.zeros((96, 96), bool)])
    always = NoduleBatches(Pack(), [0, 1], NoduleRecipe(image_size=64, p_cyst=1.0), 2, epoch=0)
    label, level = always[0][3:5]
    assert float(label) == 0.0 and int(level) == TIRADS_LEVELS.index("2")
    assert float(always[1][3]) == 1.0                       # no mask, no cyst: the crop's own label
    # The origin the natural sampler weights by: synthetic (2) once made a cyst, else the crop's own label.
    assert int(always[0][7]) == 2 and int(always[1][7]) == 1
    plain = NoduleBatches(Pack(), [0, 1], NoduleRecipe(image_size=64), 2, epoch=0)
    never = NoduleBatches(Pack(), [0, 1], NoduleRecipe(image_size=64, p_cyst=0.0), 2, epoch=0)
    for k in range(2):                                       # off: exactly the shipped recipe's draws
        for x, y in zip(plain[k][:5], never[k][:5]):
            assert torch.equal(x, y)
    assert not torch.equal(plain[0][0], always[0][0])


def test_synthetic_spongiform_is_an_isoechoic_honeycomb_inside_its_oval_and_leaves_the_rest_alone():
    from edge_thyroid.export.augment import synthetic_spongiform

    rng = np.random.default_rng(0)
    image = np.clip(100 + rng.normal(0, 8, (120, 160)), 0, 255).astype(np.uint8)
    image[mask := disc_mask()] = 40                          # a dark (hypoechoic) nodule
    out, outline = synthetic_spongiform(image, mask, np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == image.shape and outline.shape == mask.shape
    core = cv2.erode(outline.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    inside = out[core].astype(float)
    dark = (inside < 50).mean()                              # fluid 8-30 under speckle; tissue ~100-115
    assert 0.3 < dark < 0.85                                 # spaces cover 50-70%, septa between them
    bright = image.copy()
    bright[mask] = 160                                       # the same nodule, bright (hyperechoic)
    from_bright, _ = synthetic_spongiform(bright, mask, np.random.default_rng(5))
    # Isoechoic either way: the tissue is moved to the ring's level, so the nodule's own level is gone.
    assert np.abs(from_bright[core].astype(float) - inside).mean() < 1.0
    assert np.percentile(inside, 90) > 65                    # septa well above the dark nodule's 40
    ring = cv2.dilate(outline.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.array_equal(out[~ring], image[~ring])          # beyond the feathered outline: untouched
    again, _ = synthetic_spongiform(image, mask, np.random.default_rng(5))
    assert np.array_equal(out, again)                        # only the generator decides
    assert synthetic_spongiform(image, np.zeros_like(mask), np.random.default_rng(5)) is None


def test_training_draws_with_spongiform_nodules_are_benign_and_leave_the_cyst_draws_alone():
    import torch

    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe

    Pack = malignant_pack([disc_mask(96, 96, 48, 48, 20, 15)] * 8)
    always = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_spongiform=1.0), 2, epoch=0)
    assert all(float(always[k][3]) == 0.0 and int(always[k][4]) == TIRADS_LEVELS.index("2") for k in range(8))
    cysts = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_cyst=0.5), 2, epoch=0)
    both = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_cyst=0.5, p_spongiform=0.5), 2, epoch=0)
    made_cyst = [k for k in range(8) if float(cysts[k][3]) == 0.0]
    assert made_cyst and len(made_cyst) < 8
    for k in made_cyst:                                      # a cyst draw stays exactly that cyst
        assert torch.equal(cysts[k][0], both[k][0])
    assert any(float(both[k][3]) == 0.0 for k in range(8) if k not in made_cyst)


def test_swap_background_keeps_the_nodule_and_takes_the_donors_shifted_surroundings():
    from edge_thyroid.export.augment import swap_background

    mask = disc_mask(96, 96, 48, 50, 14, 10)                 # centroid (48, 50): integer shift below
    donor_mask = disc_mask(96, 96, 40, 44, 12, 9)            # centroid (40, 44): moved by (+8, +6)
    image = ultrasound_like(96, 96, seed=1)
    image[mask] //= 3                                        # a dark (hypoechoic) nodule
    donor = (ultrasound_like(96, 96, seed=7) // 2).astype(np.uint8)   # darker surroundings, other texture
    out, out_mask = swap_background(image, mask, donor, donor_mask, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == image.shape and np.array_equal(out_mask, mask)
    core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.abs(out[core].astype(int) - image[core]).max() <= 1        # the nodule itself: as it was
    # Far from the kept nodule and from the donor's inpainted one: the donor moved by (+8, +6), scaled by
    # the ratio of ring means (float64 reference), to within rounding and the feather's tail.
    moved = np.zeros((96, 96), np.float64)
    moved[6:, 8:] = donor[:-6, :-8]
    kept_far = cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    hole_far = np.zeros((96, 96), bool)
    hole_far[6:, 8:] = cv2.dilate(donor_mask.astype(np.uint8), np.ones((31, 31), np.uint8))[:-6, :-8] > 0
    far = ~kept_far & ~hole_far
    far[:6, :] = far[:, :8] = False                          # the reflected border: not what this checks
    assert far.sum() > 300
    scale = np.median(out[far] / np.maximum(moved[far], 1.0))
    assert 1.3 < scale < 3.5                                 # brightened towards the source's ring level
    assert np.abs(out[far] - moved[far] * scale).mean() < 1.5
    assert np.corrcoef(out[far].astype(float), moved[far])[0, 1] > 0.98
    assert abs(np.corrcoef(out[far].astype(float), image[far].astype(float))[0, 1]) < 0.3


def test_swap_background_matches_the_rings_brightness_and_refuses_what_it_cannot_place():
    from edge_thyroid.export.augment import swap_background

    mask = disc_mask(96, 96, 48, 50, 14, 10)
    image = ultrasound_like(96, 96, seed=2)
    donor = (ultrasound_like(96, 96, seed=4) // 4).astype(np.uint8)   # much darker
    out, _ = swap_background(image, mask, donor, disc_mask(96, 96, 50, 46, 10, 8), np.random.default_rng(0))
    band = (cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0) & \
        ~(cv2.dilate(mask.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0)
    assert abs(out[band].mean() - image[band].mean()) < 0.15 * image[band].mean()   # not the donor's quarter
    again, _ = swap_background(image, mask, donor, disc_mask(96, 96, 50, 46, 10, 8), np.random.default_rng(0))
    assert np.array_equal(out, again)                        # only the generator decides
    rng = np.random.default_rng(0)
    assert swap_background(image, np.zeros_like(mask), donor, mask, rng) is None
    assert swap_background(image, mask, donor, np.zeros_like(mask), rng) is None
    assert swap_background(image, mask, donor[:90], mask[:90], rng) is None


def test_training_draws_with_swapped_surroundings_keep_label_level_and_mask():
    import torch

    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe

    masks = [disc_mask(96, 96, 48, 48, 20, 15), disc_mask(96, 96, 40, 52, 16, 12)] * 4
    Pack = malignant_pack(masks)
    Pack.images = [ultrasound_like(96, 96, seed=s) for s in range(8)]
    plain = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_cyst=0.3), 2, epoch=0)
    swapped = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_cyst=0.3, p_swap=1.0), 2, epoch=0,
                            donors=np.arange(8))
    no_donors = NoduleBatches(Pack(), range(8), NoduleRecipe(image_size=64, p_cyst=0.3, p_swap=1.0), 2, epoch=0)
    changed = 0
    for k in range(8):
        a, b = plain[k], swapped[k]
        assert torch.equal(no_donors[k][0], a[0])            # nowhere to take surroundings from: as before
        assert float(a[3]) == float(b[3]) and int(a[4]) == int(b[4]) and int(a[7]) == int(b[7])
        if float(a[3]) == 0.0:                               # a synthetic cyst is never swapped as well
            assert torch.equal(a[0], b[0])
        else:
            changed += int(not torch.equal(a[0], b[0]))
            assert torch.equal(a[1], b[1])                   # the same nodule, so the same mask coverage
    assert changed >= 4
