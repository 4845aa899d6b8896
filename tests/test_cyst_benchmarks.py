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
