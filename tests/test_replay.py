"""Replay of the pre-training images during fine-tuning (export/nodule_training.py ``replay``): the draws,
the replayed crops' targets, the head of their own or the thyroid head shared, and short runs with each."""

import json

import numpy as np
import pytest

from .conftest import needs_torch, ultrasound_like
from .test_mixup import tiny_pack

pytestmark = needs_torch


def busi_like_pack(tmp_path, count=10):
    """A pack like runs/pretrain_pack.npz: labelled images without masks, plus unlabelled crops (dropped)."""
    from edge_thyroid.export.datapack import PACK_FORMAT, DataPack, save_pack

    images = np.stack([ultrasound_like(64, 64, seed=100 + k) for k in range(count)])
    labels = np.array([k % 2 for k in range(count)], np.int8)
    labels[-2:] = -1
    names = np.array([f"busi{k}" for k in range(count)])
    pack = DataPack(images, np.zeros((count, 64, 64), bool), labels, np.full(count, -1, np.int8), names, names,
                    {"format": PACK_FORMAT})
    return save_pack(pack, tmp_path / "busi_like.npz")


def test_replay_draws_come_after_the_others_which_stay_as_they_were():
    from edge_thyroid.export.nodule_training import NoduleRecipe, epoch_draws

    labels = np.array([0, 1] * 20 + [-1] * 4)
    labelled, unlabelled = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    plain = epoch_draws(labels, labelled, unlabelled, NoduleRecipe(), epoch=3)
    recipe = NoduleRecipe(replay="x.npz", replay_per_batch=4)
    with_replay = epoch_draws(labels, labelled, unlabelled, recipe, epoch=3, replay_count=7)
    per_batch = recipe.batch_size + recipe.unlabelled_per_batch
    assert len(with_replay) == len(plain) // per_batch * (per_batch + 4)
    batches = [with_replay[k:k + per_batch + 4] for k in range(0, len(with_replay), per_batch + 4)]
    assert sum((b[:per_batch] for b in batches), []) == plain          # the thyroid draws are unchanged
    replayed = [i for b in batches for i in b[per_batch:]]
    assert all(len(labels) <= i < len(labels) + 7 for i in replayed)
    assert len(set(replayed)) > 1
    assert epoch_draws(labels, labelled, unlabelled, recipe, epoch=3) == plain   # no replay pack: no replay draws


def test_a_replayed_crop_has_no_thyroid_target_and_its_own_label(tmp_path):
    from edge_thyroid.export.datapack import load_pack
    from edge_thyroid.export.nodule_training import NoduleBatches, NoduleRecipe, load_replay

    recipe = NoduleRecipe(image_size=64, replay=str(busi_like_pack(tmp_path)), replay_per_batch=2)
    replay = load_replay(recipe)
    assert len(replay) == 8 and (replay.labels >= 0).all()             # the unlabelled rows are not replayed
    pack = tiny_pack()
    batches = NoduleBatches(pack, [0, len(pack) + 3], recipe, 2, epoch=0, replay=replay)
    own = batches[0]
    assert float(own[3]) == float(pack.labels[0]) and float(own[6]) == -1.0
    pixels, coverage, has_mask, label, level, targets, replay_label, origin = batches[1]
    assert pixels.shape == (3, 64, 64) and not bool(has_mask) and float(coverage.sum()) == 0.0
    assert float(label) == -1.0 and int(level) == -1 and targets.numel() == 0
    assert float(replay_label) == float(replay.labels[3]) and int(origin) == -1
    with pytest.raises(ValueError, match="no replay pack was given"):
        load_replay(NoduleRecipe(replay_per_batch=2))
    empty = load_pack(busi_like_pack(tmp_path))
    with pytest.raises(IndexError, match="no replay pack was given"):
        NoduleBatches(empty, [len(empty)], recipe, 2, epoch=0)[0]


def test_the_replay_head_reads_the_pooled_features_and_is_absent_when_off():
    import torch

    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(0)
    base = MultimodalClassifier("resnet50", ("bmode",)).eval()
    with_head = GuidedClassifier(base, replay=True).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = with_head(pixels)
        pooled = out["maps"].mean(dim=(2, 3)).double()
        expected = pooled @ with_head.aux_replay.weight.double()[0] + with_head.aux_replay.bias.double()
    assert torch.allclose(out["replay"].double(), expected, atol=1e-5)
    assert "replay" not in GuidedClassifier(base).eval()(pixels)


def test_a_short_run_with_replay_trains_its_head_and_exports_without_it(tmp_path):
    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5, replay=str(busi_like_pack(tmp_path)),
                          replay_per_batch=2)
    pack = tiny_pack()
    fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path / "run", threads=1, log=lambda msg: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(history[0]["replay"]) and history[0]["replay"] > 0
    model, info, _ = load_checkpoint(tmp_path / "run" / "final.pt")
    assert info.training["recipe"]["replay_per_batch"] == 2
    assert not any("aux" in key for key in model.state_dict())         # the product is the plain classifier


def test_a_shared_head_scores_the_replayed_crops_with_the_thyroid_head(tmp_path):
    """--replay-shared-head: no head of their own is built, the replay loss is the thyroid head's BCE on the
    replayed crops, and the run differs from the one whose replayed crops train a head of their own."""
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    busi, pack = str(busi_like_pack(tmp_path)), tiny_pack()
    heads = {}
    for shared in (False, True):
        recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5, replay=busi, replay_per_batch=2,
                              replay_shared_head=shared)
        out = tmp_path / f"shared{shared}"
        fit_nodule(recipe, pack, np.arange(len(pack)), out, threads=1, log=lambda msg: None)
        history = json.loads((out / "history.json").read_text())
        assert np.isfinite(history[0]["replay"]) and history[0]["replay"] > 0
        saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        assert any(k.startswith("aux_replay") for k in saved["model"]) is not shared
        model, info, _ = load_checkpoint(out / "final.pt")
        assert info.training["recipe"]["replay_shared_head"] is shared
        heads[shared] = model.state_dict()["head.weight"].clone()
    assert not torch.equal(heads[False], heads[True])


def test_cross_validation_refuses_a_shared_head_without_replay(tmp_path):
    from click.testing import CliRunner

    from benchmarks.cross_validate import main

    result = CliRunner().invoke(main, ["--data", str(busi_like_pack(tmp_path)), "--out", str(tmp_path / "cv"),
                                       "--json", str(tmp_path / "cv.json"), "--replay-shared-head"])
    assert result.exit_code == 2 and "--replay-shared-head needs --replay PACK" in result.output
