"""The two cyst benchmarks' own logic on small inputs: which crops become cysts (benchmarks/cyst_check.py)
and how out-of-fold scores are pooled per crop (benchmarks/cross_validate.py, read by cyst_tradeoff.py and
descriptor_ceiling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import cross_validate, cyst_check

from .conftest import needs_torch, ultrasound_like


@needs_torch
def test_cyst_crops_are_fixed_per_fold_and_crop_and_skip_crops_without_a_mask():
    yy, xx = np.mgrid[0:96, 0:96]
    mask = ((xx - 48) / 20.0) ** 2 + ((yy - 50) / 14.0) ** 2 <= 1
    images = [ultrasound_like(96, 96, seed=s) for s in range(3)]
    masks = [mask, np.zeros_like(mask), mask]
    cysts, kept = cyst_check.cyst_crops(images, masks, fold=2, index=[10, 11, 12])
    assert kept == [0, 2] and len(cysts) == 2
    again, _ = cyst_check.cyst_crops(images, masks, fold=2, index=[10, 11, 12])
    assert all(np.array_equal(a, b) for a, b in zip(cysts, again))
    other_fold, _ = cyst_check.cyst_crops(images, masks, fold=1, index=[10, 11, 12])
    assert not np.array_equal(cysts[0], other_fold[0])
    assert cysts[0][mask].mean() < images[0][mask].mean() - 20       # the nodule became fluid
    sponges, kept = cyst_check.cyst_crops(images, masks, fold=2, index=[10, 11, 12], kind="spongiform")
    assert kept == [0, 2] and not np.array_equal(sponges[0], cysts[0])
    assert cysts[0][mask].mean() < sponges[0][mask].mean() < images[0][mask].mean() + 30  # part fluid, part tissue


def test_out_of_fold_pools_each_crops_seeds_at_each_models_own_threshold(tmp_path):
    record = {"per_fold": [{"fold": 0, "seed": 0, "threshold": 0.5}, {"fold": 0, "seed": 1, "threshold": 0.3}],
              "scores": [{"fold": 0, "seed": 0, "scores": [{"image": "images/a_1.png", "p": 0.4},
                                                             {"image": "images/b_1.png", "p": 0.9}]},
                         {"fold": 0, "seed": 1, "scores": [{"image": "images/a_1.png", "p": 0.35},
                                                             {"image": "images/b_1.png", "p": 0.2}]}]}
    path = tmp_path / "cv.json"
    path.write_text(json.dumps(record))
    p, called = cross_validate.out_of_fold_by_crop(path)
    assert p == pytest.approx({"a_1": 0.375, "b_1": 0.55}, abs=1e-12)
    assert called == {"a_1": 0.5, "b_1": 0.5}   # a: 0.4 < 0.5, 0.35 >= 0.3; b: 0.9 >= 0.5, 0.2 < 0.3


def test_prediction_average_is_the_auc_of_each_crops_mean_over_seeds():
    from benchmarks import seed_average

    # Seed 0 ranks b above a wrongly; seed 1 ranks every pair right by more: their mean ranks all right.
    rows = lambda pa, pb, pc, pd: [{"image": "a", "label": 1, "p": pa}, {"image": "b", "label": 0, "p": pb},
                                   {"image": "c", "label": 1, "p": pc}, {"image": "d", "label": 0, "p": pd}]
    record = {"scores": [{"fold": 0, "seed": 0, "scores": rows(0.4, 0.5, 0.9, 0.1)},
                         {"fold": 0, "seed": 1, "scores": rows(0.9, 0.2, 0.8, 0.3)}]}
    fold = seed_average.prediction_average_by_fold(record)[0]
    assert fold["seeds"] == 2
    assert fold["auc_by_seed"] == pytest.approx([0.75, 1.0])
    assert fold["auc_seed_mean"] == pytest.approx(0.875)
    assert fold["auc_prediction_average"] == pytest.approx(1.0)   # a 0.65, c 0.85 against b 0.35, d 0.2


@needs_torch
def test_weight_average_is_the_float64_mean_and_keeps_integer_buffers():
    import torch

    from benchmarks import seed_average

    models = [torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)) for _ in range(3)]
    for i, model in enumerate(models):
        model[1].num_batches_tracked.fill_(10 + i)
    states = [m.state_dict() for m in models]
    soup = seed_average.weight_average(states)
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        expected = np.mean([s[key].double().numpy() for s in states], axis=0)
        np.testing.assert_allclose(soup[key].double().numpy(), expected, rtol=0, atol=1e-7)
        assert soup[key].dtype == torch.float32
    assert int(soup["1.num_batches_tracked"]) == 10
    with pytest.raises(ValueError, match="state_dict keys differ"):
        seed_average.weight_average([states[0], torch.nn.Linear(3, 2).state_dict()])
