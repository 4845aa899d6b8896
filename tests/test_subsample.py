"""export/subsample.py: the learning curve's smaller training sides are whole cases, stratified, nested."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.export.subsample import case_subsample


def _pack(cases: int = 40, benign_every: int = 5, unlabelled_cases: int = 6):
    """Two crops per labelled case (case k benign when k % benign_every == 0), one unlabelled crop per
    unlabelled case."""
    case_ids, labels = [], []
    for k in range(cases):
        for _ in range(2):
            case_ids.append(f"c{k}")
            labels.append(0 if k % benign_every == 0 else 1)
    for k in range(unlabelled_cases):
        case_ids.append(f"u{k}")
        labels.append(-1)
    return np.array(case_ids), np.array(labels)


def test_whole_cases_are_kept_or_dropped():
    case_ids, labels = _pack()
    kept = case_subsample(case_ids, labels, np.arange(len(labels)), 0.3, seed=1)
    dropped = np.setdiff1d(np.arange(len(labels)), kept)
    assert not set(case_ids[kept]) & set(case_ids[dropped])


def test_the_share_of_cases_holds_in_each_stratum():
    case_ids, labels = _pack(cases=40, benign_every=5)   # 8 benign cases, 32 others
    kept = case_subsample(case_ids, labels, np.arange(len(labels)), 0.25, seed=0)
    labelled = kept[labels[kept] >= 0]
    benign_cases = {c for c in case_ids[labelled[labels[labelled] == 0]]}
    other_cases = {c for c in case_ids[labelled[labels[labelled] == 1]]}
    assert (len(benign_cases), len(other_cases)) == (2, 8)


def test_a_tiny_share_still_keeps_a_benign_case():
    case_ids, labels = _pack(cases=40, benign_every=20)   # 2 benign cases
    kept = case_subsample(case_ids, labels, np.arange(len(labels)), 0.05, seed=3)
    assert (labels[kept] == 0).any() and (labels[kept] == 1).any()


def test_smaller_shares_are_nested_in_larger_ones():
    case_ids, labels = _pack()
    index = np.arange(len(labels))
    sets = [set(case_subsample(case_ids, labels, index, f, seed=2).tolist()) for f in (0.25, 0.5, 0.75, 1.0)]
    assert all(a < b for a, b in zip(sets, sets[1:]))


def test_unlabelled_crops_stay_whatever_the_share():
    case_ids, labels = _pack(unlabelled_cases=6)
    kept = case_subsample(case_ids, labels, np.arange(len(labels)), 0.25, seed=0)
    assert int((labels[kept] < 0).sum()) == 6


def test_only_the_training_side_is_drawn_from():
    case_ids, labels = _pack()
    train = np.flatnonzero(np.char.startswith(case_ids, "c1") | (labels < 0))
    kept = case_subsample(case_ids, labels, train[::-1], 0.5, seed=0)
    assert set(kept.tolist()) <= set(train.tolist()) and np.all(np.diff(kept) > 0)


def test_the_draw_depends_on_the_seed_and_only_on_it():
    case_ids, labels = _pack()
    index = np.arange(len(labels))
    a, b = (case_subsample(case_ids, labels, index, 0.5, seed=s) for s in (0, 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, case_subsample(case_ids, labels, index, 0.5, seed=1))


def test_the_whole_share_is_the_training_side_itself():
    case_ids, labels = _pack()
    index = np.array([5, 1, 3])
    assert np.array_equal(case_subsample(case_ids, labels, index, 1.0), [1, 3, 5])


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_share_outside_0_1_is_refused(fraction):
    case_ids, labels = _pack()
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        case_subsample(case_ids, labels, np.arange(len(labels)), fraction)


def test_cross_validation_refuses_a_share_with_the_all_data_model(tmp_path):
    from benchmarks.cross_validate import main

    data = tmp_path / "pack.npz"
    data.write_bytes(b"")
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(tmp_path / "cv"), "--json",
                                       str(tmp_path / "cv.json"), "--train-cases", "0.5", "--also-all"])
    assert result.exit_code == 2 and "cannot be combined with --train-cases" in result.output


def _cross_validate_over(tmp_path, saved: dict, *options: str):
    """cross_validate.py on a tiny pack whose run folder already holds fold 0's result ``saved``."""
    import json
    from dataclasses import replace

    from benchmarks.cross_validate import main
    from edge_thyroid.export.datapack import PACK_FORMAT, save_pack

    from .test_mixup import tiny_pack

    data = save_pack(replace(tiny_pack(), meta={"format": PACK_FORMAT}), tmp_path / "tiny.npz")
    fold_dir = tmp_path / "cv" / "fold0_seed0"
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "result.json").write_text(json.dumps({"fold": 0, "seed": 0, "auc": 0.7, **saved}))
    return CliRunner().invoke(main, ["--data", str(data), "--out", str(tmp_path / "cv"), "--json",
                                     str(tmp_path / "cv.json"), "--only-folds", "0", *options])


def test_cross_validation_refuses_a_run_folder_of_another_share(tmp_path):
    result = _cross_validate_over(tmp_path, {"train_cases": 0.5}, "--train-cases", "0.25")
    assert result.exit_code == 1 and "trained on --train-cases 0.5, not 0.25" in result.output
    assert not (tmp_path / "cv.json").exists()


def test_cross_validation_refuses_a_run_folder_of_another_case_draw(tmp_path):
    result = _cross_validate_over(tmp_path, {"train_cases": 0.5}, "--train-cases", "0.5", "--case-draw", "1")
    assert result.exit_code == 1 and "trained on --case-draw 0, not 1; expected a run folder of its own per draw" in result.output
    assert not (tmp_path / "cv.json").exists()


def test_a_case_draw_needs_a_share_below_one(tmp_path):
    from benchmarks.cross_validate import main

    data = tmp_path / "pack.npz"
    data.write_bytes(b"")
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(tmp_path / "cv"), "--json",
                                       str(tmp_path / "cv.json"), "--case-draw", "1"])
    assert result.exit_code == 2 and "--case-draw 1 picks a subset of cases; it needs --train-cases below 1" in result.output


def test_another_case_draw_keeps_as_many_other_cases_and_draw_zero_is_the_first_curves():
    """Draw 0 is the subset the learning curves were trained on (seed = fold); draw 1 is another subset of the
    same size and strata, and still whole cases."""
    from benchmarks.cross_validate import shrink_training_side, subsample_seed
    from edge_thyroid.export.nodule_training import NoduleRecipe

    from .test_mixup import tiny_pack

    assert [subsample_seed(f) for f in range(4)] == [0, 1, 2, 3] and subsample_seed(2, 1) == 1002
    pack = tiny_pack(count=96, unlabelled=8)
    side = np.arange(len(pack))
    first = shrink_training_side(pack, side, 0.5, fold=2, recipe=NoduleRecipe(batch_size=4))
    np.testing.assert_array_equal(first, case_subsample(pack.case_ids, pack.labels, side, 0.5, seed=2))
    other = shrink_training_side(pack, side, 0.5, fold=2, recipe=NoduleRecipe(batch_size=4), draw=1)

    def cases(index: np.ndarray, benign_only: bool = False) -> set:
        chosen = index[pack.labels[index] == 0] if benign_only else index[pack.labels[index] >= 0]
        return set(pack.case_ids[chosen].tolist())

    assert cases(first) != cases(other) and len(cases(first)) == len(cases(other))
    assert len(cases(first, benign_only=True)) == len(cases(other, benign_only=True))
    dropped = np.setdiff1d(side, other)
    assert not set(pack.case_ids[other].tolist()) & set(pack.case_ids[dropped].tolist())


@pytest.mark.parametrize("schedule", ["steps", "epochs"])
def test_a_shrunk_training_side_keeps_the_steps_or_the_epochs(schedule):
    """"steps": the recipe's epochs scale by the whole side's steps over the kept side's (the learning curve
    as run first); "epochs": the recipe is left as it is (fewer steps). Share 1 changes neither."""
    from benchmarks.cross_validate import shrink_training_side
    from edge_thyroid.export.nodule_training import NoduleRecipe

    from .test_mixup import tiny_pack

    pack = tiny_pack(count=96, unlabelled=8)
    side = np.arange(len(pack))
    recipe = NoduleRecipe(epochs=30, warmup_epochs=2.0, batch_size=4)
    kept = shrink_training_side(pack, side, 0.25, fold=0, recipe=recipe, schedule=schedule)
    labelled_whole, labelled_kept = (pack.labels[side] >= 0).sum(), (pack.labels[kept] >= 0).sum()
    assert labelled_kept < labelled_whole / 2 and set(kept[pack.labels[kept] < 0].tolist()) == set(range(88, 96))
    if schedule == "steps":
        scale = (labelled_whole // 4) / (labelled_kept // 4)
        assert recipe.epochs == round(30 * scale) and recipe.warmup_epochs == pytest.approx(2.0 * scale)
        assert recipe.epochs > 30
    else:
        assert (recipe.epochs, recipe.warmup_epochs) == (30, 2.0)
    untouched = NoduleRecipe(epochs=30, warmup_epochs=2.0, batch_size=4)
    assert np.array_equal(shrink_training_side(pack, side, 1.0, 0, untouched, schedule), side)
    assert (untouched.epochs, untouched.warmup_epochs) == (30, 2.0)
    with pytest.raises(ValueError, match="expected one of steps, epochs"):
        shrink_training_side(pack, side, 0.5, 0, untouched, "minutes")


def test_cross_validation_refuses_a_run_folder_of_another_schedule(tmp_path):
    # a result from before --train-schedule existed was trained with equal steps
    result = _cross_validate_over(tmp_path, {"train_cases": 0.5}, "--train-cases", "0.5", "--train-schedule", "epochs")
    assert result.exit_code == 1 and "trained with --train-schedule steps, not epochs" in result.output
    assert not (tmp_path / "cv.json").exists()


def test_cross_validation_refuses_a_finished_fold_of_another_recipe(tmp_path):
    """Re-running a run folder with other options (here --epochs and --weight-decay) must not report the old
    models under the new options; the same options (init spelt another way) reuse them."""
    torch = pytest.importorskip("torch")
    from edge_thyroid.export.nodule_training import NoduleRecipe

    fold_dir = tmp_path / "cv" / "fold0_seed0"
    fold_dir.mkdir(parents=True)
    trained = NoduleRecipe(backbone="resnet50", epochs=60, seed=0, init="runs/pretrain/final.pt", weight_decay=0.5)
    torch.save({"training": {"recipe": trained.to_dict()}}, fold_dir / "final.pt")
    init = tmp_path / "pretrain.pt"
    init.write_bytes(b"")
    result = _cross_validate_over(tmp_path, {}, "--epochs", "30", "--init", str(init))
    assert result.exit_code == 1
    assert "was trained with epochs 60, weight_decay 0.5, not epochs 30, weight_decay 0.0005" in result.output
    assert "run folder of its own per recipe" in result.output and not (tmp_path / "cv.json").exists()
    import click

    from benchmarks.cross_validate import refuse_another_recipe

    same = NoduleRecipe(backbone="resnet50", epochs=60, seed=0, init=str(init), weight_decay=0.5)
    refuse_another_recipe(fold_dir / "final.pt", same)   # init spelt another way: the same recipe, reused
    refuse_another_recipe(fold_dir / "absent.pt", NoduleRecipe())   # results kept without their model: taken
    with pytest.raises(click.ClickException, match="trained with p_cyst 0.0, not p_cyst 0.1"):
        refuse_another_recipe(fold_dir / "final.pt",
                              NoduleRecipe(backbone="resnet50", epochs=60, seed=0, weight_decay=0.5, p_cyst=0.1))
