"""benchmarks/cross_validate.py's summary: the spread reported is over folds (seeds averaged inside a fold
first), the seed-to-seed spread is reported on its own, and pooled out-of-fold scores count each crop once."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import cross_validate as cv


def _run(fold: int, seed: int, auc: float, scores: dict[str, tuple[int, float]]) -> dict:
    return {"fold": fold, "seed": seed, "auc": auc, "cam_in_mask": 0.5 + 0.1 * seed, "auc_margin_1.2": auc - 0.1,
            "auc_margin_2.0": auc, "scores": [{"image": k, "label": lab, "p": p} for k, (lab, p) in scores.items()]}


def test_one_value_per_fold_and_the_seed_spread_apart():
    runs = [_run(0, 0, 0.60, {}), _run(0, 1, 0.70, {}), _run(1, 0, 0.80, {}), _run(1, 1, 0.90, {})]
    summary = cv.summarise(runs)
    fold_means = [0.65, 0.85]  # each fold: the mean of its two seeds
    assert summary["auc"]["folds"] == pytest.approx(fold_means)
    assert summary["auc"]["mean"] == pytest.approx(0.75)
    assert summary["auc"]["sd"] == pytest.approx(np.std(fold_means, ddof=1))
    assert summary["auc_margin_2_minus_1.2"]["mean"] == pytest.approx(0.1)
    assert summary["auc_by_seed"] == {"0": {"mean": pytest.approx(0.70), "folds_done": 2},
                                      "1": {"mean": pytest.approx(0.80), "folds_done": 2}}
    assert summary["auc_seed_sd"] == pytest.approx(np.std([0.70, 0.80], ddof=1))


def test_a_single_seed_has_no_seed_entries():
    summary = cv.summarise([_run(0, 0, 0.6, {}), _run(1, 0, 0.8, {})])
    assert "auc_by_seed" not in summary and "auc_seed_sd" not in summary
    assert summary["auc"]["sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))


def test_pooled_out_of_fold_averages_each_crop_over_seeds():
    # binary fractions, so the means are exact: b1 0.3125, m1 0.625, m2 0.3125 (a tie with b1)
    a = {"b1": (0, 0.25), "m1": (1, 0.5), "m2": (1, 0.125)}
    b = {"b1": (0, 0.375), "m1": (1, 0.75), "m2": (1, 0.5)}
    pooled = cv.pooled_out_of_fold([_run(0, 0, 0.5, a), _run(0, 1, 0.5, b)])
    assert pooled["crops"] == 3
    assert pooled["auc"] == pytest.approx((1.0 + 0.5) / 2)   # m1 beats b1, m2 ties b1
    assert "2 seeds" in pooled["note"]


def test_pooled_out_of_fold_counts_tirads_2_crops_below_the_pooled_threshold():
    from edge_thyroid.export.datapack import TIRADS_LEVELS

    two, five = TIRADS_LEVELS.index("2"), TIRADS_LEVELS.index("5")
    crops = {"b1": (0, two, 0.1), "b2": (0, two, 0.7), "b3": (0, TIRADS_LEVELS.index("3"), 0.2),
             "m1": (1, five, 0.6), "m2": (1, five, 0.8), "m3": (1, five, 0.9)}
    run = {"fold": 0, "seed": 0, "scores": [{"image": k, "label": lab, "tirads": level, "p": p}
                                             for k, (lab, level, p) in crops.items()]}
    pooled = cv.pooled_out_of_fold([run])
    # Youden: cutting between m1 (0.6) and b2 (0.7) keeps every malignant crop above and 2 of 3 benign
    # below (J = 2/3), the best cut; metrics.youden_threshold takes the midpoint.
    assert pooled["youden_threshold"] == pytest.approx(0.65)
    assert pooled["tirads2_crops"] == 2
    assert pooled["tirads2_benign_at_threshold"] == pytest.approx(0.5)   # b1 below, b2 above
    no_levels = cv.pooled_out_of_fold([_run(0, 0, 0.5, {"b1": (0, 0.2), "b2": (0, 0.7), "m1": (1, 0.6), "m2": (1, 0.8)})])
    assert "tirads2_crops" not in no_levels


def test_cpu_kind_reads_name_family_and_model_of_the_first_processor():
    from benchmarks.cross_validate import cpu_kind

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
            "model name\t: AMD EPYC 9B45\n\nprocessor\t: 1\ncpu family\t: 6\nmodel\t\t: 167\n")
    assert cpu_kind(text) == {"cpu": "AMD EPYC 9B45", "cpu_family": 26, "cpu_model": 2}
    blank = cpu_kind("processor\t: 0\n")
    assert blank["cpu_family"] is None and blank["cpu_model"] is None


def test_cpu_flags_are_the_first_processors_and_empty_without_cpuinfo():
    from edge_thyroid.cpuinfo import cpu_flags

    text = ("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni amx_int8\n\n"
            "processor\t: 1\nflags\t\t: fpu sse2\n")
    assert cpu_flags(text) == {"fpu", "avx2", "avx512_vnni", "amx_int8"}
    assert cpu_flags("processor\t: 0\n") == set()
