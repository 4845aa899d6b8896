"""Training-only heads and losses (export/guidance.py) and the nodule recipe's inputs and folds
(export/nodule_training.py, export/datapack.py), checked against direct computations."""

import csv
import json

import cv2
import numpy as np
import pytest

from .conftest import needs_torch, ultrasound_like

pytestmark = needs_torch


def test_cam_outside_loss_against_a_direct_computation():
    import torch

    from edge_thyroid.export.guidance import cam_outside_loss

    rng = np.random.default_rng(0)
    cam = rng.normal(size=(3, 4, 4))
    inside = rng.uniform(size=(3, 4, 4))
    expected = []
    for c, m in zip(cam, inside):
        pos, neg = np.maximum(c, 0), np.maximum(-c, 0)
        expected.append(0.5 * ((pos * (1 - m)).sum() / pos.sum() + (neg * (1 - m)).sum() / neg.sum()))
    got = cam_outside_loss(torch.tensor(cam), torch.tensor(inside), eps=0.0)
    assert float(got) == pytest.approx(np.mean(expected), rel=1e-9)
    valid = torch.tensor([True, False, True])
    got = cam_outside_loss(torch.tensor(cam), torch.tensor(inside), valid, eps=0.0)
    assert float(got) == pytest.approx(np.mean([expected[0], expected[2]]), rel=1e-9)
    # Evidence only inside the mask costs nothing; only outside costs everything.
    mask = torch.zeros(1, 4, 4)
    mask[0, 1:3, 1:3] = 1
    assert float(cam_outside_loss(mask * 3.0 - mask * 0.0, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(cam_outside_loss((1 - mask) * 2.0, mask)) == pytest.approx(0.5, abs=1e-6)
    assert float(cam_outside_loss(torch.randn(2, 4, 4), torch.zeros(2, 4, 4), torch.tensor([False, False]))) == 0.0


def test_pairwise_rank_loss_against_a_float64_reference():
    import torch

    from edge_thyroid.export.guidance import pairwise_rank_loss

    rng = np.random.default_rng(3)
    logits = rng.normal(size=9) * 2
    labels = np.array([1, 0, 1, -1, 0, 1, 0, 1, -1], dtype=np.float64)   # -1: unlabelled, left out
    pairs = [np.log1p(np.exp(n - p)) for p in logits[labels == 1] for n in logits[labels == 0]]
    x = torch.tensor(logits, requires_grad=True)
    got = pairwise_rank_loss(x, torch.tensor(labels))
    assert got.item() == pytest.approx(np.mean(pairs), rel=1e-12)
    got.backward()
    grad = x.grad.numpy()
    # Pushes malignant logits up and benign ones down; unlabelled crops get no gradient.
    assert (grad[labels == 1] < 0).all() and (grad[labels == 0] > 0).all() and (grad[labels == -1] == 0).all()
    # Only the order counts: shifting every logit leaves it unchanged.
    assert float(pairwise_rank_loss(torch.tensor(logits + 5.0), torch.tensor(labels))) == pytest.approx(np.mean(pairs), rel=1e-9)
    # One class only: zero, and still differentiable.
    only = torch.tensor(logits[:3], requires_grad=True)
    none = pairwise_rank_loss(only, torch.ones(3, dtype=torch.float64))
    none.backward()
    assert none.item() == 0.0 and only.grad is not None and not only.grad.any()


def test_seg_loss_is_mean_bce_over_valid_crops():
    import torch

    from edge_thyroid.export.guidance import seg_loss

    logits = torch.tensor([[[2.0, -1.0]], [[0.5, 0.0]]])
    target = torch.tensor([[[1.0, 0.25]], [[0.0, 1.0]]])
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    bce = lambda z, t: -(t * np.log(sig(z)) + (1 - t) * np.log(1 - sig(z)))  # noqa: E731
    first = (bce(2.0, 1.0) + bce(-1.0, 0.25)) / 2
    second = (bce(0.5, 0.0) + bce(0.0, 1.0)) / 2
    assert float(seg_loss(logits, target)) == pytest.approx((first + second) / 2, rel=1e-6)
    assert float(seg_loss(logits, target, torch.tensor([True, False]))) == pytest.approx(first, rel=1e-6)


def test_ordinal_targets_loss_and_level():
    import torch

    from edge_thyroid.export.guidance import ordinal_level, ordinal_loss, ordinal_targets

    levels = torch.tensor([0, 2, 5])
    np.testing.assert_array_equal(ordinal_targets(levels, 6).numpy(),
                                  [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    # Logits that agree strongly with the targets give a small loss and decode to the right level.
    logits = (ordinal_targets(levels, 6) * 2 - 1) * 8
    assert float(ordinal_loss(logits, levels)) < 1e-3
    np.testing.assert_array_equal(ordinal_level(logits).numpy(), [0, 2, 5])
    # Unknown levels (-1) are ignored; none known: zero.
    assert float(ordinal_loss(logits, torch.tensor([0, -1, 5]))) < 1e-3
    assert float(ordinal_loss(logits, torch.tensor([-1, -1, -1]))) == 0.0


def test_level_targets_grade_by_tirads_and_keep_each_label_on_its_side():
    import torch

    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.export.guidance import LEVEL_TARGETS, level_targets

    assert len(LEVEL_TARGETS) == len(TIRADS_LEVELS)
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    levels = torch.tensor([0, 1, 2, 3, 4, 5, -1, -1])  # 2, 3, 4a, 4b, 4c, 5, then two without a level
    got = level_targets(labels, levels).numpy()
    np.testing.assert_allclose(got, [0.0, 0.25, 0.75, 0.85, 0.95, 1.0, 1.0, 0.0])
    # Every graded target is on its binary label's side of 0.5, and ordered by level.
    benign = np.array([TIRADS_LEVELS.index(v) for v in ("2", "3")])
    assert (np.asarray(LEVEL_TARGETS)[benign] < 0.5).all() and (np.asarray(LEVEL_TARGETS)[2:] > 0.5).all()
    assert list(LEVEL_TARGETS) == sorted(LEVEL_TARGETS)


def test_guided_logit_is_the_products_logit_and_cam_is_exact():
    """The training wrapper's logit equals MultimodalClassifier's on a B-mode pane, and the CAM it
    guides is the runtime's: mean(CAM) + presence bias + bias = logit."""
    import torch

    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(0)
    base = MultimodalClassifier("resnet50").eval()
    torch.nn.init.normal_(base.head.weight, std=1e-2)
    guided = GuidedClassifier(base, "bmode").eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = guided(pixels)
        panes = torch.zeros(2, 3, 3, 64, 64)
        panes[:, 0] = pixels
        reference = base(panes, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    np.testing.assert_allclose(out["logit"].numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    presence_bias = base.head.weight[0, 3 * base.channels].item()
    from_cam = out["cam"].mean(dim=(1, 2)) + presence_bias + base.head.bias.item()
    np.testing.assert_allclose(from_cam.numpy(), out["logit"].numpy(), rtol=1e-5, atol=1e-5)
    assert out["seg"].shape == out["cam"].shape == (2, 2, 2) and out["ordinal"].shape == (2, 5)


def test_cell_coverage_and_dilate():
    from edge_thyroid.export.nodule_training import cell_coverage, dilate

    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    np.testing.assert_allclose(cell_coverage(mask, 2), [[1, 0], [0, 0]])
    mask = np.zeros((40, 40), bool)
    mask[15:25, 15:25] = True
    grown = dilate(mask, 0.2)
    assert grown[mask].all() and grown.sum() > mask.sum() and not grown[0, 0]
    assert (dilate(np.zeros((5, 5), bool), 0.2) == 0).all()


def test_training_crop_is_seeded_and_shaped():
    from edge_thyroid.export.nodule_training import NoduleRecipe, training_crop
    from edge_thyroid.kernels.reference import PreprocessSpec

    image = ultrasound_like(120, 120, seed=2)
    yy, xx = np.mgrid[0:120, 0:120]
    mask = ((yy - 60) / 26) ** 2 + ((xx - 60) / 36) ** 2 < 1
    recipe, spec = NoduleRecipe(image_size=64), PreprocessSpec(image_size=64)
    a = training_crop(image, mask, recipe, spec, 2, np.random.default_rng(4))
    b = training_crop(image, mask, recipe, spec, 2, np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    pixels, coverage, has_mask = a
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.float32
    assert coverage.shape == (2, 2) and has_mask
    assert 0 <= coverage.min() and coverage.max() <= 1 and coverage.mean() > 0.2


def test_epoch_draws_balance_classes_and_append_unlabelled():
    from edge_thyroid.export.nodule_training import NoduleRecipe, epoch_draws

    labels = np.array([0] * 5 + [1] * 45 + [-1] * 10)
    labelled, unlabelled = np.arange(50), np.arange(50, 60)
    recipe = NoduleRecipe(batch_size=10, unlabelled_per_batch=2)
    draws = np.array(epoch_draws(labels, labelled, unlabelled, recipe, 0))
    assert len(draws) == 5 * 12
    per_batch = draws.reshape(5, 12)
    assert (labels[per_batch[:, :10]] >= 0).all() and (labels[per_batch[:, 10:]] < 0).all()
    benign_share = np.mean(labels[per_batch[:, :10]] == 0)
    assert 0.3 < benign_share < 0.7  # balanced, though only 10% of the crops are benign
    assert draws.tolist() == epoch_draws(labels, labelled, unlabelled, recipe, 0)
    with pytest.raises(ValueError, match="both classes"):
        epoch_draws(np.ones(50, int), labelled, unlabelled, recipe, 0)


def _write_csv(folder):
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    rows = []
    for case in range(8):
        for k in range(2):
            name = f"{case}_{k}"
            cv2.imwrite(str(folder / "images" / f"{name}.png"), ultrasound_like(60, 60, seed=case * 3 + k))
            mask = np.zeros((60, 60), np.uint8)
            mask[20:40, 15:45] = 255
            cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
            label, tirads = ("", "") if case == 7 else (("benign", "2") if case % 2 else ("malignant", "4b"))
            rows.append({"image": f"images/{name}.png", "mask": f"masks/{name}.png", "case_id": str(case),
                         "tirads": tirads, "label": label, "modality": "bmode"})
    path = folder / "labels.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_natural_sampler_meets_every_labelled_crop_once_and_class_weights_halve_the_loss():
    from edge_thyroid.export.nodule_training import NoduleRecipe, class_weights, epoch_draws

    labels = np.array([0] * 6 + [1] * 30 + [-1] * 8)
    labelled, unlabelled = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    recipe = NoduleRecipe(batch_size=8, unlabelled_per_batch=2, sampler="natural")
    draws = epoch_draws(labels, labelled, unlabelled, recipe, epoch=4)
    steps = len(labelled) // 8
    batches = [draws[k * 10:(k + 1) * 10] for k in range(steps)]
    assert len(draws) == steps * 10
    met = [i for b in batches for i in b[:8]]
    assert len(set(met)) == len(met) == steps * 8 and set(met) <= set(labelled.tolist())   # no crop twice
    assert all(labels[i] == -1 for b in batches for i in b[8:])
    assert draws == epoch_draws(labels, labelled, unlabelled, recipe, epoch=4)              # seeded
    assert draws != epoch_draws(labels, labelled, unlabelled, recipe, epoch=5)
    # The balanced recipe's draws are untouched by the option's existence.
    balanced = epoch_draws(labels, labelled, unlabelled, NoduleRecipe(batch_size=8, unlabelled_per_batch=2), epoch=4)
    assert balanced != draws and len(balanced) == len(draws)
    w0, w1 = class_weights(labels[labelled])
    assert (w0, w1) == (36 / 12, 36 / 60)
    assert 6 * w0 == pytest.approx(30 * w1)                 # each class carries half
    assert (6 * w0 + 30 * w1) / 36 == pytest.approx(1.0)    # a batch in the classes' proportions averages 1
    with pytest.raises(ValueError, match="need both classes"):
        class_weights(np.array([1, 1, -1]))
    with pytest.raises(ValueError, match="unknown sampler 'uniform'"):
        epoch_draws(labels, labelled, unlabelled, NoduleRecipe(sampler="uniform"), epoch=0)


def test_datapack_round_trip_and_folds_follow_evaluate(tmp_path):
    from edge_thyroid.dataset import read_samples, split_by_case
    from edge_thyroid.export.datapack import build_pack, load_pack, save_pack
    from edge_thyroid.export.nodule_training import fold_assignment

    csv_path = _write_csv(tmp_path)
    pack = build_pack(csv_path, progress=False)
    path = save_pack(pack, tmp_path / "pack.npz")
    again = load_pack(path)
    np.testing.assert_array_equal(again.images, pack.images)
    np.testing.assert_array_equal(again.masks, pack.masks)
    assert again.masks[0, 30, 30] and not again.masks[0, 5, 5]
    assert again.labels.tolist()[:4] == [1, 1, 0, 0] and again.labels[-1] == -1
    assert again.tirads.tolist()[:4] == [3, 3, 0, 0] and again.tirads[-1] == -1
    assert len(again.meta["csv_sha256"]) == 64
    small = build_pack(csv_path, size=32, progress=False)
    assert small.images.shape == (16, 32, 32) and small.masks.shape == (16, 32, 32)
    # Folds: the labelled crops are split exactly as `evaluate --split val` splits them; the unlabelled
    # case trains in every fold.
    folds = fold_assignment(again, 2)
    assert (folds[again.labels < 0] == -1).all()
    _, val = split_by_case(read_samples(csv_path), folds=2, fold=1)
    val_names = {str(s.image.relative_to(tmp_path)) for s in val}
    assert val_names == {str(n) for n, f in zip(again.names, folds) if f == 1}
    with pytest.raises(ValueError, match="not a data pack|cannot read"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, meta=json.dumps({"format": "other"}))
        load_pack(bad)


def test_score_rules_heads_reproduce_the_binary_and_ordinal_outputs():
    """benchmarks/score_rules.py scores pooled features with (weight, bias) pairs: the binary rule must be
    the product's logit, the ordinal rule the CORAL logit of 'level >= 4a', and the sum their sum."""
    import torch

    from benchmarks.score_rules import pooled_features, rule_heads
    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(1)
    base = MultimodalClassifier("resnet50").eval()
    torch.nn.init.normal_(base.head.weight, std=1e-2)
    guided = GuidedClassifier(base, "bmode", len(TIRADS_LEVELS)).eval()
    torch.nn.init.normal_(guided.aux_ordinal.weight, std=1e-2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8) for _ in range(3)]
    features = pooled_features(base, images, 64)
    heads = rule_heads(base, guided.state_dict(), TIRADS_LEVELS)
    # What the wrapper computes on each view, averaged over the crop and its mirror image (linear heads).
    from edge_thyroid.export.nodule_training import to_pixels
    from edge_thyroid.kernels.reference import PreprocessSpec

    pixels = torch.from_numpy(np.stack([to_pixels(im, PreprocessSpec(image_size=64)) for im in images]))
    with torch.no_grad():
        one, mirror = guided(pixels), guided(pixels.flip(-1))
    logit = ((one["logit"] + mirror["logit"]) / 2).double().numpy()
    cut = TIRADS_LEVELS.index("4a") - 1
    ordinal = ((one["ordinal"][:, cut] + mirror["ordinal"][:, cut]) / 2).double().numpy()
    score = {rule: features @ weight + bias for rule, (weight, bias) in heads.items()}
    np.testing.assert_allclose(score["binary"], logit, rtol=0, atol=1e-4)
    np.testing.assert_allclose(score["ordinal"], ordinal, rtol=0, atol=1e-4)
    np.testing.assert_allclose(score["sum"], logit + ordinal, rtol=0, atol=2e-4)


def test_backbone_lr_scale_groups_and_the_default_single_group():
    """backbone_lr_scale 1 (the shipped recipe) keeps one parameter group at lr, so its runs stay
    bit-identical; below 1 the backbone gets lr * scale and every head (product and auxiliary) keeps lr."""
    import torch

    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MultimodalClassifier
    from edge_thyroid.export.nodule_training import NoduleRecipe, parameter_groups, same_recipe

    torch.manual_seed(0)
    model = GuidedClassifier(MultimodalClassifier("resnet50"), "bmode")
    everything = {id(p) for p in model.parameters()}
    single = parameter_groups(model, NoduleRecipe())
    assert len(single) == 1 and {id(p) for p in single[0]["params"]} == everything and "lr" not in single[0]
    recipe = NoduleRecipe(lr=1e-3, backbone_lr_scale=0.2)
    backbone, heads = parameter_groups(model, recipe)
    assert backbone["lr"] == pytest.approx(2e-4)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.base.backbone.parameters()}
    assert {id(p) for p in backbone["params"]} | {id(p) for p in heads["params"]} == everything
    assert not {id(p) for p in backbone["params"]} & {id(p) for p in heads["params"]}
    assert {id(model.base.head.weight), id(model.aux_ordinal.weight), id(model.aux_seg.weight)} <= {id(p) for p in heads["params"]}
    optimizer = torch.optim.AdamW([backbone, heads], lr=recipe.lr)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-4, 1e-3])
    # A run saved before the field existed is the default recipe, and not the scaled one.
    saved = NoduleRecipe().to_dict()
    del saved["backbone_lr_scale"]
    assert same_recipe(saved, NoduleRecipe()) and not same_recipe(saved, NoduleRecipe(backbone_lr_scale=0.2))


@needs_torch
def test_recipe_differences_name_the_fields_that_differ():
    from edge_thyroid.export.nodule_training import NoduleRecipe, recipe_differences

    saved = NoduleRecipe(epochs=60, weight_decay=0.5).to_dict()
    assert recipe_differences(saved, NoduleRecipe(epochs=60, weight_decay=0.5)) == []
    assert recipe_differences(saved, NoduleRecipe(epochs=30, weight_decay=0.5)) == ["epochs"]
    assert recipe_differences(saved, NoduleRecipe()) == ["epochs", "weight_decay"]
    del saved["p_cyst"]   # saved before the field existed: equal only to its default
    assert recipe_differences(saved, NoduleRecipe(epochs=60, weight_decay=0.5)) == []
    assert recipe_differences(saved, NoduleRecipe(epochs=60, weight_decay=0.5, p_cyst=0.1)) == ["p_cyst"]
    assert recipe_differences({**saved, "retired_knob": 1}, NoduleRecipe(epochs=60, weight_decay=0.5)) == ["retired_knob"]


def test_recipe_from_dict_round_trips_and_reads_older_and_json_records():
    import json

    from edge_thyroid.export.nodule_training import NoduleRecipe

    recipe = NoduleRecipe(p_cyst=0.1, rank_weight=1.0, pseudo_label_teachers=("a.pt", "b.pt"))
    assert NoduleRecipe.from_dict(recipe.to_dict()) == recipe
    assert NoduleRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe   # lists back to tuples
    older = {k: v for k, v in recipe.to_dict().items() if k != "sampler"} | {"retired_knob": 3}
    assert NoduleRecipe.from_dict(older) == recipe
