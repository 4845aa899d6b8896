"""Soft pseudo-labels for the unlabelled crops (export/pseudo_labels.py, nodule_training.teacher_probabilities):
a fold's teachers, their averaged scores, the labels the training crops carry, and a short run with them."""

import json

import numpy as np
import pytest

from .conftest import needs_torch
from .test_mixup import tiny_pack

pytestmark = needs_torch


def teacher(path, seed: int, image_size: int = 64):
    """A small random checkpoint (GoogLeNet: a quarter of ResNet50's file) whose head gives spread-out scores."""
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(seed)
    model = MultimodalClassifier("googlenet").eval()
    torch.nn.init.normal_(model.head.weight, std=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, CheckpointInfo("googlenet", image_size=image_size))
    return path


def test_fold_teachers_are_every_seed_of_that_fold_or_the_all_data_model(tmp_path):
    from edge_thyroid.export.pseudo_labels import fold_teachers

    for name in ("fold1_seed2", "fold1_seed0", "fold2_seed0", "all"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.pt").write_bytes(b"x")
    (tmp_path / "fold1_seed1").mkdir()            # unfinished: last.pt only
    (tmp_path / "fold1_seed1" / "last.pt").write_bytes(b"x")
    assert fold_teachers(tmp_path, 1) == [str(tmp_path / "fold1_seed0" / "final.pt"),
                                          str(tmp_path / "fold1_seed2" / "final.pt")]
    assert fold_teachers(tmp_path, "all") == [str(tmp_path / "all" / "final.pt")]
    with pytest.raises(FileNotFoundError, match=r"fold3_seed\*.*finished cross-validation run"):
        fold_teachers(tmp_path, 3)


def test_teacher_probabilities_are_the_teachers_mean_mirror_averaged_score_at_the_index_only(tmp_path):
    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import score, teacher_probabilities

    pack = tiny_pack()
    paths = [teacher(tmp_path / f"t{k}.pt", seed=k) for k in range(2)]
    index = np.flatnonzero(pack.labels < 0)
    soft = teacher_probabilities(paths, pack, index)
    assert soft.shape == (len(pack),) and np.isnan(np.delete(soft, index)).all()
    expected = np.zeros(len(index))
    for path in paths:
        model, _, _ = load_checkpoint(path)
        p, _ = score(model, [pack.images[i] for i in index], [None] * len(index), 64, test_time_flip=True)
        expected += p / len(paths)
    np.testing.assert_allclose(soft[index], expected, atol=1e-6)
    single = [teacher_probabilities([path], pack, index)[index] for path in paths]
    assert np.abs(single[0] - single[1]).max() > 1e-3      # two different teachers: the mean is a real average
    with pytest.raises(ValueError, match="at least one teacher"):
        teacher_probabilities([], pack, index)


def test_an_unlabelled_crop_carries_its_soft_label_and_a_synthetic_cyst_stays_benign():
    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe

    pack = tiny_pack()
    unlabelled = np.flatnonzero(pack.labels < 0)
    soft = np.full(len(pack), np.nan, np.float32)
    soft[unlabelled[:-1]] = [0.2, 0.7, 0.9]              # the last unlabelled crop has no teacher score
    draws = [0, 1, *unlabelled]
    items = NoduleBatches(pack, draws, NoduleRecipe(image_size=64), 2, epoch=0, soft_labels=soft)
    labels = [float(items[k][3]) for k in range(len(draws))]
    assert labels[:2] == [float(pack.labels[0]), float(pack.labels[1])]        # labelled crops keep theirs
    np.testing.assert_allclose(labels[2:5], [0.2, 0.7, 0.9], atol=1e-6)
    assert labels[5] == -1.0 and all(int(items[k][4]) == -1 for k in range(2, 6))   # no TI-RADS level is made up
    cysts = NoduleBatches(pack, draws, NoduleRecipe(image_size=64, p_cyst=1.0), 2, epoch=0, soft_labels=soft)
    assert float(cysts[3][3]) == 0.0                    # a crop made a cyst is benign, whatever the teacher said


def test_a_short_run_with_pseudo_labels_records_them_and_trains_on_them(tmp_path):
    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    pack = tiny_pack()
    teachers = (str(teacher(tmp_path / "t.pt", seed=3)),)
    runs = {}
    for name, pseudo in (("plain", ()), ("pseudo", teachers)):
        recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5, unlabelled_per_batch=4,
                              pseudo_label_teachers=pseudo)
        fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path / name, threads=1, log=lambda msg: None)
        runs[name] = json.loads((tmp_path / name / "history.json").read_text())[0]
        _, info, _ = load_checkpoint(tmp_path / name / "final.pt")
        assert info.training["pseudo_labelled_crops"] == (4 if pseudo else 0)
        assert tuple(info.training["recipe"]["pseudo_label_teachers"]) == pseudo
    assert np.isfinite(runs["pseudo"]["cls"])
    # The same draws and the same start: only the unlabelled crops' classifier targets differ.
    assert runs["pseudo"]["cls"] != pytest.approx(runs["plain"]["cls"], abs=1e-6)
    assert runs["pseudo"]["seg"] == pytest.approx(runs["plain"]["seg"], abs=0.05)


def test_cross_validate_names_the_missing_teachers_before_training(tmp_path):
    from click.testing import CliRunner

    from benchmarks.cross_validate import main
    from dataclasses import replace

    from edge_thyroid.export.datapack import PACK_FORMAT, save_pack

    data = save_pack(replace(tiny_pack(), meta={"format": PACK_FORMAT}), tmp_path / "tiny.npz")
    (tmp_path / "teachers").mkdir()
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(tmp_path / "cv"), "--json",
                                       str(tmp_path / "cv.json"), "--pseudo-labels-from", str(tmp_path / "teachers")])
    assert result.exit_code == 2
    assert "--pseudo-labels-from" in result.output and "fold0_seed*" in result.output
    assert not (tmp_path / "cv").exists()
